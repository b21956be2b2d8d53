// The rms family on CUDA: torch.optim.RMSprop (alpha, centered, momentum) and torch.optim.Adagrad (lr_decay,
// initial accumulator) in one update (rules::rms_denominator, rules::rms_step; fused_hybrid.hyper.RMS): one
// multi-tensor launch per call plus the post-step kernel that advances the step counts.
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

struct RmsArgs : StepScalars {
  double keep, add, eps, weight_decay, momentum, lr_decay;
  int rounding;  // kRound* (the kLowp kernels branch on it)
  bool decoupled, maximize;
};

// Lists: 0 params, 1 grads, 2 square_avgs, 3 grad_avgs (centered), 4 momentum buffers; aux: the step tensors;
// lowp (kLowpStore): seeds or compensation buffers.
// SS: the buffers' type (O, or bfloat16: Bf16StateStore, kLowpStore).
template <typename P, typename SS, bool kCentered, bool kMomentum, bool kLowpStore>
struct RmsFunctor {
  using O = state_math_t<SS>;
  static constexpr bool kLowp = kLowpStore;
  RmsArgs a;

  __device__ __forceinline__ void operator()(const TensorListMeta<5, kLowp>& meta) const {
    if (a.found_inf.get() != 0.0) return;
    const int t = meta.block_tensor[blockIdx.x];
    const int64_t start = static_cast<int64_t>(meta.block_chunk[blockIdx.x]) * meta.chunk_size;
    const int64_t n = std::min(meta.chunk_size, meta.numel[t] - start);
    P* w = static_cast<P*>(meta.addresses[0][t]) + start;
    const P* g = static_cast<const P*>(meta.addresses[1][t]) + start;
    constexpr int S = 1 + (kCentered ? 1 : 0) + (kMomentum ? 1 : 0);
    SS* st[S];
    int j = 0;
    st[j++] = static_cast<SS*>(meta.addresses[2][t]) + start;
    if constexpr (kCentered) st[j++] = static_cast<SS*>(meta.addresses[3][t]) + start;
    if constexpr (kMomentum) st[j++] = static_cast<SS*>(meta.addresses[4][t]) + start;
    // the random streams of the slots (hyper.STATE_STREAMS: square_avg, grad_avg, momentum_buffer)
    constexpr uint32_t kStreams = kCentered ? state_streams(1, 2, 3) : state_streams(1, 3);
    const float k = *static_cast<const float*>(meta.aux[t]) + 1.0f;  // this step's count (post-step writes it)
    // torch.optim.Adagrad's clr = lr / (1 + (k-1)*lr_decay), in double as on its host (lr_decay 0: RMSprop).
    const double group_lr = a.lr.get();
    const O lr = static_cast<O>(group_lr / (1.0 + (static_cast<double>(k) - 1.0) * a.lr_decay));
    const O decay = static_cast<O>(1.0 - group_lr * a.weight_decay);  // decoupled: the group's lr, not clr
    const O inv = static_cast<O>(1.0 / a.grad_scale.get());
    const O keep = static_cast<O>(a.keep), add = static_cast<O>(a.add), eps = static_cast<O>(a.eps);
    const O wd = static_cast<O>(a.weight_decay), mom = static_cast<O>(a.momentum);
    const bool maximize = a.maximize, decoupled = a.decoupled;
    chunk_elementwise<S>(w, g, st, n, [&](O& wv, O gv, O(&s)[S]) FH_INLINE_LAMBDA {
      O gi = rules::effective_grad(gv, inv, maximize);
      rules::weight_decay_exact(wv, gi, wd, decay, decoupled);
      O ga = O(0), buf = O(0);
      if constexpr (kCentered) ga = s[1];
      if constexpr (kMomentum) buf = s[S - 1];
      const O avg = rules::rms_denominator(gi, s[0], ga, keep, add, eps, kCentered);
      wv = rules::rms_step(wv, gi, avg, buf, mom, lr, kMomentum);
      if constexpr (kCentered) s[1] = ga;
      if constexpr (kMomentum) s[S - 1] = buf;
    }, store_for<P, SS, kLowp>(meta, t, a.rounding, static_cast<double>(k), start, kStreams));
  }
};

void rms_(at::TensorList params, at::TensorList grads_in, at::TensorList square_avgs, at::TensorList grad_avgs,
          at::TensorList momentum_buffers, at::TensorList steps, at::TensorList kahan_comps,
          const families::rms_args& args) {
  FH_BIND_ARGS(FH_RMS_ARGS)
  const ContiguousGrads contiguous(grads_in);
  const at::TensorList grads = contiguous.list();
  const char* op = "fused_hybrid::rms_";
  const bool has_momentum = momentum != 0.0;
  const bool bf16 = !params.empty() && bf16_state(op, params[0].scalar_type(), {square_avgs});
  check_lists(op, params, grads, {{"square_avgs", square_avgs}}, true, bf16);
  if (centered) check_lists(op, params, grads, {{"grad_avgs", grad_avgs}}, true, bf16);
  if (has_momentum) check_lists(op, params, grads, {{"momentum_buffers", momentum_buffers}}, true, bf16);
  TORCH_CHECK(steps.size() == params.size(), op, ": steps needs one tensor per param");
  const std::vector<uint64_t> lowp = lowp_column(op, params, rounding, seeds, kahan_comps, bf16);
  if (params.empty()) return;
  const auto dev = params[0].device();
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<at::Tensor> keep_alive;
  RmsArgs a;
  static_cast<StepScalars&>(a) = step_scalars(lr_tensor, lr, grad_scale, found_inf, dev, keep_alive);
  a.keep = keep;
  a.add = add;
  a.eps = eps;
  a.weight_decay = weight_decay;
  a.momentum = momentum;
  a.lr_decay = lr_decay;
  a.maximize = maximize;
  a.decoupled = decoupled;
  a.rounding = static_cast<int>(rounding);
  Operands ops = gather_operands(op, params, grads,
                                 {square_avgs, centered ? grad_avgs : at::TensorList(),
                                  has_momentum ? momentum_buffers : at::TensorList()},
                                 steps);
  std::vector<int64_t> numels;
  for (const auto& p : params) numels.push_back(p.numel());
  const plan::ChunkGrid grid = plan::chunk_grid(numels, geometry());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_hybrid_rms_cuda", [&] {
    auto launch = [&](auto f) {
      f.a = a;
      multi_tensor_apply<5>(ops.lists, grid.chunks, grid.chunk_size, ops.step_ptrs, {}, f, nullptr, &lowp);
    };
    with_kernel_types<scalar_t>(bf16, rounding, [&](auto k) {
      using K = decltype(k);
      using P = typename K::P;
      using S = typename K::S;
      if (centered) {
        if (has_momentum) launch(RmsFunctor<P, S, true, true, K::kLowp>{});
        else launch(RmsFunctor<P, S, true, false, K::kLowp>{});
      } else {
        if (has_momentum) launch(RmsFunctor<P, S, false, true, K::kLowp>{});
        else launch(RmsFunctor<P, S, false, false, K::kLowp>{});
      }
    });
  });
  launch_post_step(ops.steps, a.found_inf, at::Tensor(), {}, {}, nullptr, nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(FH_CUDA_NAMESPACE, FH_CUDA_KEY, m) { m.impl("rms_", &families::rms_op<&rms_>); }

}  // namespace cuda
}  // namespace fused_hybrid
