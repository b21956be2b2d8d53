// The SGD family on the CPU: torch.optim.SGD (momentum, dampening, Nesterov, weight decay, maximize).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "fused_hybrid/rules.h"
#include "multi_tensor.h"

namespace fused_hybrid {
namespace cpu {
namespace {

template <typename scalar_t, typename opmath_t>
void sgd_chunk(scalar_t* __restrict__ w, const scalar_t* __restrict__ g, opmath_t* __restrict__ buf, int64_t n,
               opmath_t lr, opmath_t momentum, opmath_t dampening, opmath_t wd, opmath_t inv, bool nesterov,
               bool maximize, bool first) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    opmath_t wi = static_cast<opmath_t>(w[i]);
    opmath_t gi = rules::effective_grad(static_cast<opmath_t>(g[i]), inv, maximize);
    if (wd != opmath_t(0)) gi = gi + wd * wi;
    opmath_t d = gi;
    if (buf != nullptr) d = rules::sgd_direction(gi, buf[i], momentum, dampening, nesterov, first);
    w[i] = static_cast<scalar_t>(wi + (-lr) * d);
  }
}

void sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, at::IntArrayRef firsts,
          double lr, const std::optional<at::Tensor>& lr_tensor, double momentum, double dampening, bool nesterov,
          double weight_decay, bool maximize, const std::optional<at::Tensor>& grad_scale,
          const std::optional<at::Tensor>& found_inf_t) {
  const bool has_momentum = momentum != 0.0;
  check_lists("fused_hybrid::sgd_", params, grads, {});
  TORCH_CHECK(!has_momentum || momentum_buffers.size() == params.size(),
              "fused_hybrid::sgd_: momentum needs one buffer per param");
  TORCH_CHECK(firsts.size() == params.size(), "fused_hybrid::sgd_: firsts needs one flag per param");
  if (params.empty() || found_inf(found_inf_t)) return;
  const double inv = inv_scale(grad_scale);
  const double lrv = lr_value(lr, lr_tensor);
  const auto chunks = make_chunks(params);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_hybrid_sgd", [&] {
    using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    if (has_momentum) {
      for (const auto i : c10::irange(params.size())) {
        TORCH_CHECK(momentum_buffers[i].scalar_type() == c10::CppTypeToScalarType<opmath_t>::value &&
                        momentum_buffers[i].is_contiguous() && momentum_buffers[i].numel() == params[i].numel(),
                    "fused_hybrid::sgd_: momentum buffer ", i, " must be a contiguous ",
                    c10::CppTypeToScalarType<opmath_t>::value, " tensor like its param");
      }
    }
    for_each_chunk(chunks, [&](const Chunk& c) {
      opmath_t* buf = has_momentum ? momentum_buffers[c.tensor].data_ptr<opmath_t>() + c.begin : nullptr;
      sgd_chunk<scalar_t, opmath_t>(params[c.tensor].data_ptr<scalar_t>() + c.begin,
                                    grads[c.tensor].data_ptr<scalar_t>() + c.begin, buf, c.end - c.begin,
                                    opmath_t(lrv), opmath_t(momentum), opmath_t(dampening), opmath_t(weight_decay),
                                    opmath_t(inv), nesterov, maximize, firsts[c.tensor] != 0);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_hybrid, CPU, m) { m.impl("sgd_", &sgd_); }

}  // namespace cpu
}  // namespace fused_hybrid
