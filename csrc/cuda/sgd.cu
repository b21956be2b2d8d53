// The SGD family on CUDA: torch.optim.SGD (momentum, dampening, Nesterov, weight decay, maximize), one
// multi-tensor launch per call (two when some buffers are on their first step and others are not). With
// stochastic rounding of 16-bit params (issue 16) SGD counts steps (the counter of the random bits): the kernels
// read each tensor's count and the post-step kernel advances them, one launch more.
#include <ATen/Dispatch.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include "../op_families.h"
#include "fused_hybrid/contiguous_grads.h"
#include "fused_hybrid/rules.h"
#include "multi_tensor_apply.cuh"

namespace fused_hybrid {
namespace cuda {
namespace {

// Lists: 0 params, 1 grads, 2 momentum buffers; aux: the step counts (stochastic rounding only); lowp
// (kLowpStore): seeds or compensation buffers. SS: the buffers' type (O, or bfloat16: Bf16StateStore, kLowpStore).
template <typename P, typename SS, bool kMomentum, bool kLowpStore>
struct SgdFunctor {
  using O = state_math_t<SS>;
  static constexpr bool kLowp = kLowpStore;
  DeviceScalar lr, grad_scale, found_inf;
  O momentum, one_minus_dampening, weight_decay;  // 1 - dampening rounded once from double (rules::OneMinus)
  double weight_decay_d;  // for 1 - lr*weight_decay, in double with the lr read on the device
  int rounding;  // kRound* (the kLowp kernels branch on it)
  bool decoupled, nesterov, maximize, first;

  __device__ __forceinline__ void operator()(const TensorListMeta<3, kLowp>& meta) const {
    if (found_inf.get() != 0.0) return;
    const int t = meta.block_tensor[blockIdx.x];
    const int64_t start = static_cast<int64_t>(meta.block_chunk[blockIdx.x]) * meta.chunk_size;
    const int64_t n = std::min(meta.chunk_size, meta.numel[t] - start);
    P* w = static_cast<P*>(meta.addresses[0][t]) + start;
    const P* g = static_cast<const P*>(meta.addresses[1][t]) + start;
    SS* const st[1] = {kMomentum ? static_cast<SS*>(meta.addresses[2][t]) + start : nullptr};
    const double lr_d = lr.get();
    const O lrv = static_cast<O>(lr_d);
    const O decay = static_cast<O>(1.0 - lr_d * weight_decay_d);
    const O inv = static_cast<O>(1.0 / grad_scale.get());
    double k = 0.0;  // stochastic rounding: this step's count (the post-step kernel writes it)
    if constexpr (kLowp) {
      if (rounding == kRoundStochastic) k = static_cast<double>(*static_cast<const float*>(meta.aux[t]) + 1.0f);
    }
    chunk_elementwise<kMomentum ? 1 : 0>(w, g, st, n, [&](O& wv, O gv, O(&s)[1]) FH_INLINE_LAMBDA {
      O gi = rules::effective_grad(gv, inv, maximize);
      rules::weight_decay_exact(wv, gi, weight_decay, decay, decoupled);
      O d = gi;
      if constexpr (kMomentum) d = rules::sgd_direction_exact(gi, s[0], momentum, one_minus_dampening, nesterov, first);
      wv = rules::sgd_step(wv, d, lrv);
    }, store_for<P, SS, kLowp>(meta, t, rounding, k, start, state_streams(1)));
  }
};

void sgd_(at::TensorList params, at::TensorList grads_in, at::TensorList momentum_buffers, at::TensorList steps,
          at::TensorList kahan_comps, const families::sgd_args& args) {
  FH_BIND_ARGS(FH_SGD_ARGS)
  const ContiguousGrads contiguous(grads_in);
  const at::TensorList grads = contiguous.list();
  const char* op = "fused_hybrid::sgd_";
  const bool has_momentum = momentum != 0.0;
  const bool bf16 = has_momentum && !params.empty() && bf16_state(op, params[0].scalar_type(), {momentum_buffers});
  if (has_momentum) check_lists(op, params, grads, {{"momentum_buffers", momentum_buffers}}, true, bf16);
  else check_lists(op, params, grads, {}, true);
  TORCH_CHECK(firsts.empty() || firsts.size() == params.size(), op,
              ": firsts needs one flag per param (or none: no buffer is fresh)");
  const std::vector<uint64_t> lowp = lowp_column(op, params, rounding, seeds, kahan_comps, bf16);
  const bool counts_steps = rounding == kRoundStochastic;
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  std::vector<at::Tensor> keep;
  const auto dev = params[0].device();
  const StepScalars sc = step_scalars(lr_tensor, lr, grad_scale, found_inf, dev, keep);
  // Stochastic rounding: each tensor's step count (the random bits' counter), read by the kernels, advanced by the
  // post-step kernel.
  Operands counted;
  if (counts_steps) {
    TORCH_CHECK(steps.size() == params.size(), op, ": stochastic rounding needs one step count per param");
    counted = gather_operands(op, params, grads, {}, steps);
  }
  // Buffers on their first step (buf = g) and the others go to separate launches: `first` is a kernel constant.
  for (const bool first : {true, false}) {
    std::vector<std::vector<at::Tensor>> lists(3);
    std::vector<int64_t> numels, ids;
    std::vector<void*> aux;
    std::vector<uint64_t> lowp_sub;
    for (const auto i : c10::irange(params.size())) {
      if (has_momentum && (!firsts.empty() && firsts[i] != 0) != first) continue;
      lists[0].push_back(params[i]);
      lists[1].push_back(grads[i]);
      lists[2].push_back(has_momentum ? momentum_buffers[i] : at::Tensor());
      numels.push_back(params[i].numel());
      ids.push_back(static_cast<int64_t>(i));
      if (counts_steps) aux.push_back(counted.step_ptrs[i]);
      if (!lowp.empty()) lowp_sub.push_back(lowp[i]);
    }
    if (numels.empty()) continue;
    const int64_t chunk = plan::pick_chunk_size(numels, geometry().max_blocks, geometry().base_chunk,
                                                geometry().max_chunk);
    std::vector<int64_t> chunks;
    for (const int64_t n : numels) chunks.push_back(plan::num_chunks(n, chunk));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_hybrid_sgd_cuda", [&] {
      using O = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      auto launch = [&](auto f) {
        f.lr = sc.lr;
        f.grad_scale = sc.grad_scale;
        f.found_inf = sc.found_inf;
        f.momentum = static_cast<O>(momentum);
        f.one_minus_dampening = static_cast<O>(1.0 - dampening);
        f.weight_decay = static_cast<O>(weight_decay);
        f.weight_decay_d = weight_decay;
        f.decoupled = decoupled;
        f.nesterov = nesterov;
        f.maximize = maximize;
        f.first = first;
        f.rounding = static_cast<int>(rounding);
        multi_tensor_apply<3>(lists, chunks, chunk, aux, {}, f, &ids, &lowp_sub);
      };
      with_kernel_types<scalar_t>(bf16, rounding, [&](auto k) {
        using K = decltype(k);
        if constexpr (kBf16State<typename K::S>) {  // bfloat16 buffers: there is a buffer (has_momentum)
          launch(SgdFunctor<typename K::P, typename K::S, true, K::kLowp>{});
        } else {
          if (has_momentum) launch(SgdFunctor<typename K::P, typename K::S, true, K::kLowp>{});
          else launch(SgdFunctor<typename K::P, typename K::S, false, K::kLowp>{});
        }
      });
    });
    if (!has_momentum) break;  // without momentum `first` changes nothing: one launch for all tensors
  }
  if (counts_steps) launch_post_step(counted.steps, sc.found_inf, at::Tensor(), {}, {}, nullptr, nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(FH_CUDA_NAMESPACE, FH_CUDA_KEY, m) { m.impl("sgd_", &families::sgd_op<&sgd_>); }

}  // namespace cuda
}  // namespace fused_hybrid
