// The adaptive family on the CPU: Adam / AdamW / AMSGrad (torch form), Padam (paper form, partial power),
// Adam-Clip and AdaBound (paper form with clip bounds) and SWATS (per-tensor phase; the Adam phase writes the
// partial sums <p,g>, <p,p> that fused_hybrid/swats.py turns into the switch test).
//
// One parallel region per call over fixed-size chunks of all tensors. The per-tensor scalars (bias
// corrections, AdaBound's bounds at the tensor's own step k) are computed on the host in double before the
// region, as the reference does. SWATS partials: one slot per chunk, summed per tensor in chunk order after the
// region, so they are bitwise identical for any thread count.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "adaptive_kernel.h"
#include "lowp_store.h"
#include "../op_families.h"
#include "fused_hybrid/contiguous_grads.h"
#include "fused_hybrid/rules.h"
#include "multi_tensor.h"
#include "tensor_table.h"

namespace fused_hybrid {
namespace cpu {
namespace {

// SWATS's SGD phase (Alg. 1 lines 5-6) on one chunk, after the adaptive family's weight decay.
template <typename scalar_t, typename opmath_t, int WD, bool NESTEROV>
FH_CPU_CLONES void swats_sgd_chunk(scalar_t* __restrict__ w, const scalar_t* __restrict__ g,
                                   opmath_t* __restrict__ buf, int64_t n, opmath_t decay, opmath_t weight_decay,
                                   opmath_t inv, opmath_t beta1, opmath_t sgd_lr) {
  const opmath_t wd = WD == kWdNone ? opmath_t(0) : weight_decay;
  for (int64_t i = 0; i < n; ++i) {
    opmath_t wi = static_cast<opmath_t>(w[i]);
    opmath_t gi = rules::effective_grad(static_cast<opmath_t>(g[i]), inv, false);  // inv: see signed_inv
    rules::weight_decay_exact(wi, gi, wd, decay, WD == kWdDecoupled);
    rules::swats_sgd_phase(wi, gi, buf[i], beta1, sgd_lr, NESTEROV);
    w[i] = static_cast<scalar_t>(wi);
  }
}

template <typename scalar_t, typename opmath_t>
using SwatsSgdFn = void (*)(scalar_t*, const scalar_t*, opmath_t*, int64_t, opmath_t, opmath_t, opmath_t, opmath_t,
                            opmath_t);

template <typename scalar_t, typename opmath_t, bool NESTEROV>
SwatsSgdFn<scalar_t, opmath_t> pick_swats_sgd_wd(int wd) {
  switch (wd) {
    case kWdNone: return &swats_sgd_chunk<scalar_t, opmath_t, kWdNone, NESTEROV>;
    case kWdL2: return &swats_sgd_chunk<scalar_t, opmath_t, kWdL2, NESTEROV>;
    default: return &swats_sgd_chunk<scalar_t, opmath_t, kWdDecoupled, NESTEROV>;
  }
}

template <typename scalar_t, typename opmath_t>
SwatsSgdFn<scalar_t, opmath_t> pick_swats_sgd(int wd, bool nesterov) {
  return nesterov ? pick_swats_sgd_wd<scalar_t, opmath_t, true>(wd) : pick_swats_sgd_wd<scalar_t, opmath_t, false>(wd);
}

void adaptive_(at::TensorList params, at::TensorList grads_in, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
               at::TensorList max_exp_avg_sqs, at::TensorList steps, at::TensorList swats_momentum_buffers,
               at::TensorList kahan_comps, const families::adaptive_args& args) {
  FH_BIND_ARGS(FH_ADAPTIVE_ARGS)
  const ContiguousGrads contiguous(grads_in);
  const at::TensorList grads = contiguous.list();
  static constexpr const char* op = "fused_hybrid::adaptive_";
  const size_t T = params.size();
  check_lists(op, params, grads, {exp_avgs, exp_avg_sqs});
  TORCH_CHECK(!amsgrad || max_exp_avg_sqs.size() == T, op, ": amsgrad needs one max_exp_avg_sq per param");
  TORCH_CHECK(form == rules::kFormTorch || form == rules::kFormPaper, op, ": unknown form ", form);
  TORCH_CHECK(clip_mode == rules::kClipNone || clip_mode == rules::kClipConst || clip_mode == rules::kClipAdaBound,
              op, ": unknown clip_mode ", clip_mode);
  TORCH_CHECK(form == rules::kFormPaper || clip_mode == rules::kClipNone, op, ": clip bounds need the paper form");
  const bool swats = !swats_momentum_buffers.empty();
  if (swats) {
    TORCH_CHECK(swats_momentum_buffers.size() == T, op, ": SWATS needs one momentum buffer per param");
    TORCH_CHECK(swats_phase.has_value() && swats_sgd_lr.has_value() && swats_partials.has_value(), op,
                ": SWATS needs swats_phase, swats_sgd_lr and swats_partials");
    const auto n = static_cast<int64_t>(T);
    TORCH_CHECK(swats_phase->device().is_cpu() && swats_phase->scalar_type() == at::kInt &&
                    swats_phase->is_contiguous() && swats_phase->numel() == n,
                op, ": swats_phase must be a contiguous int32 CPU tensor with one entry per param");
    TORCH_CHECK(swats_sgd_lr->device().is_cpu() && swats_sgd_lr->scalar_type() == at::kDouble &&
                    swats_sgd_lr->is_contiguous() && swats_sgd_lr->numel() == n,
                op, ": swats_sgd_lr must be a contiguous float64 CPU tensor with one entry per param");
    TORCH_CHECK(swats_partials->device().is_cpu() && swats_partials->scalar_type() == at::kDouble &&
                    swats_partials->is_contiguous() && swats_partials->numel() == 2 * n,
                op, ": swats_partials must be a contiguous float64 CPU tensor of shape [T, 2]");
  }
  if (T == 0 || skip_step(found_inf)) return;  // GradScaler found inf/NaN: nothing changes, steps included
  const std::vector<double> ks = advance_steps(op, steps, T);
  const bool bf16 = bf16_state(op, params[0].scalar_type(), {exp_avgs, exp_avg_sqs});
  const LowpStore lp = lowp_setup(op, params, rounding, seeds, kahan_comps, ks, bf16);
  const double inv = inv_scale(grad_scale);
  const double lrv = lr_value(lr, lr_tensor);
  const auto chunks = make_chunks(params);
  const int kind = adaptive_kind(form, partial);
  const int wd = wd_mode(weight_decay, decoupled);
  std::vector<double> part(swats ? 2 * chunks.size() : 0, 0.0);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_hybrid_adaptive", [&] {
    using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto state_dtype = bf16 ? at::kBFloat16 : c10::CppTypeToScalarType<opmath_t>::value;
    auto same_numel = [&](size_t i) { return params[i].numel(); };
    check_state(op, "exp_avg", exp_avgs, state_dtype, same_numel);
    check_state(op, "exp_avg_sq", exp_avg_sqs, state_dtype, same_numel);
    if (amsgrad) check_state(op, "max_exp_avg_sq", max_exp_avg_sqs, state_dtype, same_numel);
    // Per-tensor pointers and scalars, gathered once so the parallel region touches no Tensor objects. SWATS's
    // momentum buffers are read only in the SGD phase: only those tensors' buffers are checked and gathered (in the
    // Adam phase that saves two passes over T tensors' metadata).
    std::vector<scalar_t*> pw(T);
    std::vector<const scalar_t*> pg(T);
    std::vector<opmath_t*> pm(T), pv(T), pvmax(T, nullptr), pbuf(T, nullptr);
    std::vector<rules::AdaptiveScalars<opmath_t>> sc(T);
    const int32_t* phase = swats ? swats_phase->data_ptr<int32_t>() : nullptr;
    const double* sgd_lr = swats ? swats_sgd_lr->data_ptr<double>() : nullptr;
    for (size_t t = 0; t < T; ++t) {
      for (const auto l : {params, grads, exp_avgs, exp_avg_sqs}) prefetch_meta(l, t + kMetaAhead);
      pw[t] = data_as<scalar_t>(params[t]);
      pg[t] = data_as<scalar_t>(grads[t]);
      pm[t] = data_as<opmath_t>(exp_avgs[t]);
      pv[t] = data_as<opmath_t>(exp_avg_sqs[t]);
      if (amsgrad) pvmax[t] = data_as<opmath_t>(max_exp_avg_sqs[t]);
      if (swats && phase[t] == rules::kPhaseSgd) {
        const at::Tensor& buf = swats_momentum_buffers[t];
        TORCH_CHECK(buf.scalar_type() == state_dtype && buf.is_contiguous() && buf.device().is_cpu() &&
                        buf.numel() == params[t].numel(),
                    op, ": SWATS momentum buffer ", t, " must be a contiguous CPU ", state_dtype, " tensor of ",
                    params[t].numel(), " elements");
        pbuf[t] = data_as<opmath_t>(buf);
      }
      const double k = ks[t];
      if (t > 0 && k == ks[t - 1]) {  // the usual case: every tensor at the same step, so no pow() again
        sc[t] = sc[t - 1];
        continue;
      }
      sc[t] = rules::adaptive_scalars<opmath_t>(args, lrv, k, 1.0 - std::pow(beta1, k), 1.0 - std::pow(beta2, k));
      sc[t].amsgrad = amsgrad;
    }
    const auto adam_fn = pick_adaptive<scalar_t, opmath_t>(kind, amsgrad, wd, swats);
    const auto sgd_fn = pick_swats_sgd<scalar_t, opmath_t>(wd, swats_nesterov);
    const opmath_t inv_o = signed_inv<opmath_t>(inv, maximize);
    const auto om = one_minus<opmath_t>(beta1, beta2, lrv, weight_decay);
    // 16-bit params with stochastic rounding or Kahan summation, and bfloat16 state: the float32 loops on staged
    // copies (lowp_store.h; the SWATS sums are then those of the float32 loop, over the same float32 values).
    const auto adam_fn32 = pick_adaptive<opmath_t, opmath_t>(kind, amsgrad, wd, swats);
    const auto sgd_fn32 = pick_swats_sgd<opmath_t, opmath_t>(wd, swats_nesterov);
    for_each_chunk(chunks, [&](const Chunk& c) {
      const int64_t t = c.tensor, b = c.begin, n = c.end - c.begin;
      const size_t ci = static_cast<size_t>(&c - chunks.data());
      if (lp.active() || bf16) {
        const bool sgd_phase = swats && phase[t] == rules::kPhaseSgd;
        using R = StateRange<opmath_t>;
        // Only the buffers the phase touches: the Adam phase's m, v (vmax), the SGD phase's momentum buffer.
        const std::array<R, 4> st = sgd_phase ? std::array<R, 4>{R{}, R{}, R{}, R{pbuf[t], b, n}}
                                              : std::array<R, 4>{R{pm[t], b, n}, R{pv[t], b, n},
                                                                 amsgrad ? R{pvmax[t], b, n} : R{}, R{}};
        staged_step<scalar_t, opmath_t, 4>(
            pw[t] + b, pg[t] + b, n, b, lp, t, bf16, st, [&](auto* w32, const auto* g32, opmath_t* const* s) {
              if (sgd_phase) {
                sgd_fn32(w32, g32, s[3], n, om.lr_wd, sc[t].weight_decay, inv_o, sc[t].beta1, opmath_t(sgd_lr[t]));
                return;
              }
              adam_fn32(w32, g32, s[0], s[1], s[2], n, sc[t], om, inv_o, swats ? part.data() + 2 * ci : nullptr);
            });
        return;
      }
      if (swats && phase[t] == rules::kPhaseSgd) {
        sgd_fn(pw[t] + b, pg[t] + b, pbuf[t] + b, n, om.lr_wd, sc[t].weight_decay, inv_o, sc[t].beta1,
               opmath_t(sgd_lr[t]));
        return;  // its partial slots stay zero
      }
      adam_fn(pw[t] + b, pg[t] + b, pm[t] + b, pv[t] + b, amsgrad ? pvmax[t] + b : nullptr, n, sc[t], om, inv_o,
              swats ? part.data() + 2 * ci : nullptr);
    });
  });
  if (swats) sum_partials(chunks, part, 2, swats_partials->data_ptr<double>(), static_cast<int64_t>(T));
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_hybrid, CPU, m) { m.impl("adaptive_", &families::adaptive_op<&adaptive_>); }

// The table op may carry no tensor argument at all (no grads: they come from the params), so it is registered for
// every dispatch key, the empty key set included; it serves CPU tensors only and says so otherwise.
TORCH_LIBRARY_IMPL(fused_hybrid, CompositeExplicitAutograd, m) {
  impl_table_op<families::adaptive_lists, &families::adaptive_op<&adaptive_>>(m, "adaptive_table_");
}

}  // namespace cpu
}  // namespace fused_hybrid
