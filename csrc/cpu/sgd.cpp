// The SGD family on the CPU: torch.optim.SGD (momentum, dampening, Nesterov, weight decay, maximize).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "adaptive_kernel.h"  // signed_inv
#include "lowp_store.h"
#include "../op_families.h"
#include "fused_hybrid/contiguous_grads.h"
#include "fused_hybrid/rules.h"
#include "multi_tensor.h"
#include "tensor_table.h"

namespace fused_hybrid {
namespace cpu {
namespace {

// One chunk. Every flag is a template parameter (GCC does not vectorize a select on a runtime bool), and
// maximize travels as the sign of inv (see signed_inv).
template <typename scalar_t, typename opmath_t, bool MOM, int WD, bool NESTEROV, bool FIRST>
FH_CPU_CLONES void sgd_chunk(scalar_t* __restrict__ w, const scalar_t* __restrict__ g, opmath_t* __restrict__ buf,
                             int64_t n, opmath_t lr, opmath_t momentum, opmath_t one_minus_dampening, opmath_t wd,
                             opmath_t decay, opmath_t inv) {
  for (int64_t i = 0; i < n; ++i) {
    opmath_t wi = static_cast<opmath_t>(w[i]);
    opmath_t gi = rules::effective_grad(static_cast<opmath_t>(g[i]), inv, false);
    if constexpr (WD != kWdNone) rules::weight_decay_exact(wi, gi, wd, decay, WD == kWdDecoupled);
    opmath_t d = gi;
    if constexpr (MOM) d = rules::sgd_direction_exact(gi, buf[i], momentum, one_minus_dampening, NESTEROV, FIRST);
    w[i] = static_cast<scalar_t>(rules::sgd_step(wi, d, lr));
  }
}

template <typename scalar_t, typename opmath_t>
using SgdFn = void (*)(scalar_t*, const scalar_t*, opmath_t*, int64_t, opmath_t, opmath_t, opmath_t, opmath_t,
                       opmath_t, opmath_t);

template <typename scalar_t, typename opmath_t, int WD>
SgdFn<scalar_t, opmath_t> pick_sgd_wd(bool mom, bool nesterov, bool first) {
  if (!mom) return &sgd_chunk<scalar_t, opmath_t, false, WD, false, false>;
  if (first) {
    return nesterov ? &sgd_chunk<scalar_t, opmath_t, true, WD, true, true>
                    : &sgd_chunk<scalar_t, opmath_t, true, WD, false, true>;
  }
  return nesterov ? &sgd_chunk<scalar_t, opmath_t, true, WD, true, false>
                  : &sgd_chunk<scalar_t, opmath_t, true, WD, false, false>;
}

template <typename scalar_t, typename opmath_t>
SgdFn<scalar_t, opmath_t> pick_sgd(bool mom, int wd, bool nesterov, bool first) {
  switch (wd) {
    case kWdNone: return pick_sgd_wd<scalar_t, opmath_t, kWdNone>(mom, nesterov, first);
    case kWdL2: return pick_sgd_wd<scalar_t, opmath_t, kWdL2>(mom, nesterov, first);
    default: return pick_sgd_wd<scalar_t, opmath_t, kWdDecoupled>(mom, nesterov, first);
  }
}

void sgd_(at::TensorList params, at::TensorList grads_in, at::TensorList momentum_buffers, at::TensorList steps,
          at::TensorList kahan_comps, const families::sgd_args& args) {
  FH_BIND_ARGS(FH_SGD_ARGS)
  const ContiguousGrads contiguous(grads_in);
  const at::TensorList grads = contiguous.list();
  const bool has_momentum = momentum != 0.0;
  check_lists("fused_hybrid::sgd_", params, grads, {});
  TORCH_CHECK(!has_momentum || momentum_buffers.size() == params.size(),
              "fused_hybrid::sgd_: momentum needs one buffer per param");
  TORCH_CHECK(firsts.empty() || firsts.size() == params.size(),
              "fused_hybrid::sgd_: firsts needs one flag per param (or none: no buffer is fresh)");
  if (params.empty() || skip_step(found_inf)) return;
  // SGD counts steps only for stochastic rounding (the counter of its random bits).
  const std::vector<double> ks = rounding == kRoundStochastic
                                      ? advance_steps("fused_hybrid::sgd_", steps, params.size())
                                      : std::vector<double>{};
  const bool bf16 = has_momentum && bf16_state("fused_hybrid::sgd_", params[0].scalar_type(), {momentum_buffers});
  const LowpStore lp = lowp_setup("fused_hybrid::sgd_", params, rounding, seeds, kahan_comps, ks, bf16);
  const double inv = inv_scale(grad_scale);
  const double lrv = lr_value(lr, lr_tensor);
  const auto chunks = make_chunks(params);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_hybrid_sgd", [&] {
    using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    if (has_momentum) {
      check_state("fused_hybrid::sgd_", "momentum buffer", momentum_buffers,
                  bf16 ? at::kBFloat16 : c10::CppTypeToScalarType<opmath_t>::value,
                  [&](size_t i) { return params[i].numel(); });
    }
    std::vector<scalar_t*> pw(params.size());
    std::vector<const scalar_t*> pg(params.size());
    std::vector<opmath_t*> pbuf(params.size(), nullptr);
    for (const auto i : c10::irange(params.size())) {
      for (const auto l : {params, grads, momentum_buffers}) prefetch_meta(l, i + kMetaAhead);
      pw[i] = data_as<scalar_t>(params[i]);
      pg[i] = data_as<scalar_t>(grads[i]);
      if (has_momentum) pbuf[i] = data_as<opmath_t>(momentum_buffers[i]);
    }
    const int wd = wd_mode(weight_decay, decoupled);
    const SgdFn<scalar_t, opmath_t> fns[2] = {pick_sgd<scalar_t, opmath_t>(has_momentum, wd, nesterov, false),
                                              pick_sgd<scalar_t, opmath_t>(has_momentum, wd, nesterov, true)};
    const opmath_t inv_o = signed_inv<opmath_t>(inv, maximize);
    // 16-bit params with stochastic rounding or Kahan summation, and bfloat16 buffers: the float32 loops on staged
    // copies (lowp_store.h).
    const SgdFn<opmath_t, opmath_t> fns32[2] = {pick_sgd<opmath_t, opmath_t>(has_momentum, wd, nesterov, false),
                                                pick_sgd<opmath_t, opmath_t>(has_momentum, wd, nesterov, true)};
    for_each_chunk(chunks, [&](const Chunk& c) {
      const int64_t t = c.tensor, b = c.begin, n = c.end - c.begin;
      const bool first = !firsts.empty() && firsts[t] != 0;
      if (lp.active() || bf16) {
        using R = StateRange<opmath_t>;
        const std::array<R, 1> st{has_momentum ? R{pbuf[t], b, n} : R{}};
        staged_step<scalar_t, opmath_t, 1>(
            pw[t] + b, pg[t] + b, n, b, lp, t, bf16, st, [&](auto* w32, const auto* g32, opmath_t* const* s) {
              fns32[first ? 1 : 0](w32, g32, s[0], n, opmath_t(lrv), opmath_t(momentum), opmath_t(1.0 - dampening),
                                   opmath_t(weight_decay), opmath_t(1.0 - lrv * weight_decay), inv_o);
            });
        return;
      }
      fns[first ? 1 : 0](pw[t] + b, pg[t] + b, has_momentum ? pbuf[t] + b : nullptr, c.end - b, opmath_t(lrv),
                         opmath_t(momentum), opmath_t(1.0 - dampening), opmath_t(weight_decay),
                         opmath_t(1.0 - lrv * weight_decay), inv_o);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_hybrid, CPU, m) { m.impl("sgd_", &families::sgd_op<&sgd_>); }

// The table op may carry no tensor argument at all (no grads: they come from the params), so it is registered for
// every dispatch key, the empty key set included; it serves CPU tensors only and says so otherwise.
TORCH_LIBRARY_IMPL(fused_hybrid, CompositeExplicitAutograd, m) {
  impl_table_op<families::sgd_lists, &families::sgd_op<&sgd_>>(m, "sgd_table_");
}

}  // namespace cpu
}  // namespace fused_hybrid
