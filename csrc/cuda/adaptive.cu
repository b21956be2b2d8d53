// The adaptive family on CUDA: Adam / AdamW / AMSGrad (torch form), Padam's partial power, Adam-Clip and
// AdaBound's clip bounds (paper form), and SWATS: each tensor's phase is read on the device; the Adam phase writes
// per-chunk partials of <p, g> and <p, p> (float64) to slots, and the post-step kernel sums each tensor's slots
// in a fixed order into swats_partials (no float atomics). Launches per call: the main kernel (one launch per
// 2048 chunks / per table of tensors) plus the post-step kernel (step += 1, SWATS sums).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <cmath>

#include "../op_families.h"
#include "fused_hybrid/contiguous_grads.h"
#include "fused_hybrid/rules.h"
#include "multi_tensor_apply.cuh"

namespace fused_hybrid {
namespace cuda {
namespace {

// Hyperparameters of one call (per-step scalars are derived on the device from each tensor's step count).
struct AdaptiveArgs : StepScalars {
  double beta1, beta2, eps, weight_decay, partial, clip_lo, clip_hi, final_lr, gamma;
  int form, clip_mode;
  int rounding;  // the store of 16-bit params (kRound*; the kLowp kernels branch on it)
  bool decoupled, maximize, swats_nesterov, final_lr_relative;
  const int32_t* swats_phase;  // [T] (op tensor index), or nullptr without SWATS
  const double* swats_sgd_lr;  // [T]
  double* slots;               // [total chunks, 2]: this chunk's <p, g>, <p, p>
};

// The 1 - x scalars, computed in double and rounded once (rules::OneMinus).
template <typename O>
__device__ __forceinline__ rules::OneMinus<O> one_minus(const AdaptiveArgs& a, double lr) {
  return {static_cast<O>(1.0 - a.beta1), static_cast<O>(1.0 - a.beta2), static_cast<O>(1.0 - lr * a.weight_decay)};
}

// Lists: 0 params, 1 grads, 2 exp_avgs, 3 exp_avg_sqs, 4 max_exp_avg_sqs, 5 SWATS momentum buffers; aux: steps;
// lowp (kLowpStore: 16-bit params with stochastic rounding or Kahan summation): seeds or compensation buffers.
// SS: the moment buffers' type (O, or bfloat16: Bf16StateStore, kLowpStore).
template <typename P, typename SS, bool kAmsgrad, bool kSwats, bool kLowpStore>
struct AdaptiveFunctor {
  using O = state_math_t<SS>;
  static constexpr bool kLowp = kLowpStore;
  AdaptiveArgs a;

  __device__ __forceinline__ void operator()(const TensorListMeta<6, kLowp>& meta) const {
    if (a.found_inf.get() != 0.0) return;
    const int t = meta.block_tensor[blockIdx.x];
    const int64_t start = static_cast<int64_t>(meta.block_chunk[blockIdx.x]) * meta.chunk_size;
    const int64_t n = std::min(meta.chunk_size, meta.numel[t] - start);
    P* w = static_cast<P*>(meta.addresses[0][t]) + start;
    const P* g = static_cast<const P*>(meta.addresses[1][t]) + start;
    const O inv = static_cast<O>(1.0 / a.grad_scale.get());
    const double lr = a.lr.get();
    const bool maximize = a.maximize;
    const int64_t slot = meta.slot_base + blockIdx.x;
    if constexpr (kSwats) {
      const int32_t ti = meta.tensor_index[t];
      if (a.swats_phase[ti] == rules::kPhaseSgd) {
        SS* const st[1] = {static_cast<SS*>(meta.addresses[5][t]) + start};
        const O sgd_lr = static_cast<O>(a.swats_sgd_lr[ti]);
        const O wd = static_cast<O>(a.weight_decay), b1 = static_cast<O>(a.beta1);
        const O decay = one_minus<O>(a, lr).lr_wd;
        const bool decoupled = a.decoupled, nesterov = a.swats_nesterov;
        double k_store = 0.0;  // the step count of stochastic rounding's bits (both phases count steps)
        if constexpr (kLowp) k_store = static_cast<double>(*static_cast<const float*>(meta.aux[t]) + 1.0f);
        chunk_elementwise<1>(w, g, st, n, [&](O& wv, O gv, O(&s)[1]) FH_INLINE_LAMBDA {
          O gi = rules::effective_grad(gv, inv, maximize);
          rules::weight_decay_exact(wv, gi, wd, decay, decoupled);
          rules::swats_sgd_phase(wv, gi, s[0], b1, sgd_lr, nesterov);
        }, store_for<P, SS, kLowp>(meta, t, a.rounding, k_store, start, state_streams(4)));
        if (threadIdx.x == 0) {
          a.slots[2 * slot] = 0.0;
          a.slots[2 * slot + 1] = 0.0;
        }
        return;
      }
    }
    const float k = *static_cast<const float*>(meta.aux[t]) + 1.0f;  // this step's count (post-step writes it)
    const double kd = static_cast<double>(k);
    const auto ki = static_cast<int64_t>(k);
    rules::AdaptiveScalars<O> sc = rules::adaptive_scalars<O>(a, lr, kd, 1.0 - rules::pow_whole(a.beta1, ki),
                                                              1.0 - rules::pow_whole(a.beta2, ki));
    sc.amsgrad = kAmsgrad;
    const rules::OneMinus<O> om = one_minus<O>(a, lr);
    constexpr int S = kAmsgrad ? 3 : 2;
    SS* const st[3] = {static_cast<SS*>(meta.addresses[2][t]) + start, static_cast<SS*>(meta.addresses[3][t]) + start,
                      kAmsgrad ? static_cast<SS*>(meta.addresses[4][t]) + start : nullptr};
    double pg = 0.0, pp = 0.0;
    const bool reduce = kSwats && sc.form == rules::kFormTorch;  // reference: partials in the torch form only
    chunk_elementwise<S>(w, g, st, n, [&](O& wv, O gv, O(&s)[S]) FH_INLINE_LAMBDA {
      O gi = rules::effective_grad(gv, inv, maximize);
      O vmax_unused = O(0);
      O& vmax = kAmsgrad ? s[kAmsgrad ? 2 : 0] : vmax_unused;
      const O p = rules::adaptive_update_exact(wv, gi, s[0], s[1], vmax, sc, om);
      if constexpr (kSwats) {
        if (reduce) {
          pg += rules::dot_term(p, gi);
          pp += rules::dot_term(p, p);
        }
      }
    }, store_for<P, SS, kLowp>(meta, t, a.rounding, kd, start, state_streams(1, 2, 3)));
    if constexpr (kSwats) {
      pg = block_sum(pg);
      pp = block_sum(pp);
      if (threadIdx.x == 0) {
        a.slots[2 * slot] = pg;
        a.slots[2 * slot + 1] = pp;
      }
    }
  }
};

void adaptive_(at::TensorList params, at::TensorList grads_in, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
               at::TensorList max_exp_avg_sqs, at::TensorList steps, at::TensorList swats_momentum_buffers,
               at::TensorList kahan_comps, const families::adaptive_args& args) {
  FH_BIND_ARGS(FH_ADAPTIVE_ARGS)
  const ContiguousGrads contiguous(grads_in);
  const at::TensorList grads = contiguous.list();
  const char* op = "fused_hybrid::adaptive_";
  const bool swats = !swats_momentum_buffers.empty();
  const bool bf16 = !params.empty() && bf16_state(op, params[0].scalar_type(), {exp_avgs, exp_avg_sqs});
  check_lists(op, params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}}, true, bf16);
  if (amsgrad) check_lists(op, params, grads, {{"max_exp_avg_sqs", max_exp_avg_sqs}}, true, bf16);
  if (swats) check_lists(op, params, grads, {{"swats_momentum_buffers", swats_momentum_buffers}}, true, bf16);
  TORCH_CHECK(steps.size() == params.size(), op, ": steps needs one tensor per param");
  TORCH_CHECK(form == rules::kFormTorch || form == rules::kFormPaper, op, ": unknown form ", form);
  TORCH_CHECK(clip_mode >= rules::kClipNone && clip_mode <= rules::kClipAdaBound, op, ": unknown clip_mode ",
              clip_mode);
  const std::vector<uint64_t> lowp = lowp_column(op, params, rounding, seeds, kahan_comps, bf16);
  if (params.empty()) return;
  const auto dev = params[0].device();
  const int64_t T = static_cast<int64_t>(params.size());
  if (swats) {
    TORCH_CHECK(swats_phase.has_value() && swats_sgd_lr.has_value() && swats_partials.has_value(), op,
                ": SWATS needs swats_phase, swats_sgd_lr and swats_partials");
    TORCH_CHECK(swats_phase->device() == dev && swats_phase->scalar_type() == at::kInt &&
                    swats_phase->is_contiguous() && swats_phase->numel() == T,
                op, ": swats_phase must be a contiguous int32 [T] tensor on ", dev);
    TORCH_CHECK(swats_sgd_lr->device() == dev && swats_sgd_lr->scalar_type() == at::kDouble &&
                    swats_sgd_lr->is_contiguous() && swats_sgd_lr->numel() == T,
                op, ": swats_sgd_lr must be a contiguous float64 [T] tensor on ", dev);
    TORCH_CHECK(swats_partials->device() == dev && swats_partials->scalar_type() == at::kDouble &&
                    swats_partials->is_contiguous() && swats_partials->numel() == 2 * T,
                op, ": swats_partials must be a contiguous float64 [T, 2] tensor on ", dev);
  }
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<at::Tensor> keep;
  AdaptiveArgs a;
  static_cast<StepScalars&>(a) = step_scalars(lr_tensor, lr, grad_scale, found_inf, dev, keep);
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.weight_decay = weight_decay;
  a.partial = partial;
  a.clip_lo = clip_lo;
  a.clip_hi = clip_hi;
  a.final_lr = final_lr;
  a.final_lr_relative = final_lr_relative;
  a.gamma = gamma;
  a.form = static_cast<int>(form);
  a.clip_mode = static_cast<int>(clip_mode);
  a.decoupled = decoupled;
  a.maximize = maximize;
  a.swats_nesterov = swats_nesterov;
  a.rounding = static_cast<int>(rounding);
  a.swats_phase = swats ? swats_phase->data_ptr<int32_t>() : nullptr;
  a.swats_sgd_lr = swats ? swats_sgd_lr->data_ptr<double>() : nullptr;
  a.slots = nullptr;

  Operands ops = gather_operands(op, params, grads,
                                 {exp_avgs, exp_avg_sqs, amsgrad ? max_exp_avg_sqs : at::TensorList(),
                                  swats ? swats_momentum_buffers : at::TensorList()},
                                 steps);
  std::vector<int64_t> numels;
  for (const auto& p : params) numels.push_back(p.numel());
  const plan::ChunkGrid grid = plan::chunk_grid(numels, geometry());
  const int64_t chunk = grid.chunk_size, total = grid.slots;
  const std::vector<int64_t>& chunks = grid.chunks;
  const std::vector<int64_t>& slot_begin = grid.slot_begin;
  at::Tensor slots;
  if (swats) {
    slots = at::empty({std::max<int64_t>(total, 1), 2}, params[0].options().dtype(at::kDouble));
    a.slots = slots.data_ptr<double>();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_hybrid_adaptive_cuda",
                                  [&] {
    auto launch = [&](auto f) {
      f.a = a;
      multi_tensor_apply<6>(ops.lists, chunks, chunk, ops.step_ptrs, {}, f, nullptr, &lowp);
    };
    with_kernel_types<scalar_t>(bf16, rounding, [&](auto k) {
      using K = decltype(k);
      using P = typename K::P;
      using S = typename K::S;
      if (swats) {
        if (amsgrad) launch(AdaptiveFunctor<P, S, true, true, K::kLowp>{});
        else launch(AdaptiveFunctor<P, S, false, true, K::kLowp>{});
      } else {
        if (amsgrad) launch(AdaptiveFunctor<P, S, true, false, K::kLowp>{});
        else launch(AdaptiveFunctor<P, S, false, false, K::kLowp>{});
      }
    });
  });
  launch_post_step(ops.steps, a.found_inf, slots, swats ? slot_begin : std::vector<int64_t>{},
                   swats ? chunks : std::vector<int64_t>{}, swats ? swats_partials->data_ptr<double>() : nullptr,
                   nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(FH_CUDA_NAMESPACE, FH_CUDA_KEY, m) { m.impl("adaptive_", &families::adaptive_op<&adaptive_>); }

}  // namespace cuda
}  // namespace fused_hybrid
