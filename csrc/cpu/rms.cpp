// The rms family on the CPU: torch.optim.RMSprop (alpha, centered, momentum) and torch.optim.Adagrad (lr_decay,
// initial accumulator), one update (rules::rms_denominator, rules::rms_step; fused_hybrid.hyper.RMS).
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

// One chunk. The flags are template parameters (GCC does not vectorize a select on a runtime bool); maximize
// travels as the sign of inv (see signed_inv). lr is this tensor's lr / (1 + (k-1)*lr_decay), in double.
template <typename scalar_t, typename opmath_t, int WD, bool CENTERED, bool MOM>
FH_CPU_CLONES void rms_chunk(scalar_t* __restrict__ w, const scalar_t* __restrict__ g, opmath_t* __restrict__ sq,
                             opmath_t* __restrict__ g_avg, opmath_t* __restrict__ buf, int64_t n, opmath_t lr,
                             opmath_t keep, opmath_t add, opmath_t eps, opmath_t momentum, opmath_t wd,
                             opmath_t decay, opmath_t inv) {
  for (int64_t i = 0; i < n; ++i) {
    opmath_t wi = static_cast<opmath_t>(w[i]);
    opmath_t gi = rules::effective_grad(static_cast<opmath_t>(g[i]), inv, false);
    if constexpr (WD != kWdNone) rules::weight_decay_exact(wi, gi, wd, decay, WD == kWdDecoupled);
    opmath_t ga = CENTERED ? g_avg[i] : opmath_t(0);
    opmath_t b = MOM ? buf[i] : opmath_t(0);
    const opmath_t avg = rules::rms_denominator(gi, sq[i], ga, keep, add, eps, CENTERED);
    w[i] = static_cast<scalar_t>(rules::rms_step(wi, gi, avg, b, momentum, lr, MOM));
    if constexpr (CENTERED) g_avg[i] = ga;
    if constexpr (MOM) buf[i] = b;
  }
}

template <typename scalar_t, typename opmath_t>
using RmsFn = void (*)(scalar_t*, const scalar_t*, opmath_t*, opmath_t*, opmath_t*, int64_t, opmath_t, opmath_t,
                       opmath_t, opmath_t, opmath_t, opmath_t, opmath_t, opmath_t);

template <typename scalar_t, typename opmath_t, int WD>
RmsFn<scalar_t, opmath_t> pick_rms_wd(bool centered, bool mom) {
  if (centered) {
    return mom ? &rms_chunk<scalar_t, opmath_t, WD, true, true> : &rms_chunk<scalar_t, opmath_t, WD, true, false>;
  }
  return mom ? &rms_chunk<scalar_t, opmath_t, WD, false, true> : &rms_chunk<scalar_t, opmath_t, WD, false, false>;
}

void rms_(at::TensorList params, at::TensorList grads_in, at::TensorList square_avgs, at::TensorList grad_avgs,
          at::TensorList momentum_buffers, at::TensorList steps, at::TensorList kahan_comps,
          const families::rms_args& args) {
  FH_BIND_ARGS(FH_RMS_ARGS)
  const ContiguousGrads contiguous(grads_in);
  const at::TensorList grads = contiguous.list();
  static constexpr const char* op = "fused_hybrid::rms_";
  const size_t T = params.size();
  const bool has_momentum = momentum != 0.0;
  check_lists(op, params, grads, {square_avgs});
  TORCH_CHECK(!centered || grad_avgs.size() == T, op, ": centered needs one grad_avg per param");
  TORCH_CHECK(!has_momentum || momentum_buffers.size() == T, op, ": momentum needs one buffer per param");
  if (T == 0 || skip_step(found_inf)) return;  // GradScaler found inf/NaN: nothing changes, steps included
  const std::vector<double> ks = advance_steps(op, steps, T);
  const bool bf16 = bf16_state(op, params[0].scalar_type(), {square_avgs});
  const LowpStore lp = lowp_setup(op, params, rounding, seeds, kahan_comps, ks, bf16);
  const double inv = inv_scale(grad_scale);
  const double lrv = lr_value(lr, lr_tensor);
  const auto chunks = make_chunks(params);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_hybrid_rms", [&] {
    using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto state_dtype = bf16 ? at::kBFloat16 : c10::CppTypeToScalarType<opmath_t>::value;
    auto same_numel = [&](size_t i) { return params[i].numel(); };
    check_state(op, "square_avg", square_avgs, state_dtype, same_numel);
    if (centered) check_state(op, "grad_avg", grad_avgs, state_dtype, same_numel);
    if (has_momentum) check_state(op, "momentum buffer", momentum_buffers, state_dtype, same_numel);
    std::vector<scalar_t*> pw(T);
    std::vector<const scalar_t*> pg(T);
    std::vector<opmath_t*> psq(T), pga(T, nullptr), pbuf(T, nullptr);
    std::vector<opmath_t> lrs(T);
    for (size_t t = 0; t < T; ++t) {
      for (const auto l : {params, grads, square_avgs}) prefetch_meta(l, t + kMetaAhead);
      pw[t] = data_as<scalar_t>(params[t]);
      pg[t] = data_as<scalar_t>(grads[t]);
      psq[t] = data_as<opmath_t>(square_avgs[t]);
      if (centered) pga[t] = data_as<opmath_t>(grad_avgs[t]);
      if (has_momentum) pbuf[t] = data_as<opmath_t>(momentum_buffers[t]);
      lrs[t] = static_cast<opmath_t>(lrv / (1.0 + (ks[t] - 1.0) * lr_decay));  // torch.optim.Adagrad's clr
    }
    const int wd = wd_mode(weight_decay, decoupled);
    const bool mom = has_momentum;
    const RmsFn<scalar_t, opmath_t> fn = wd == kWdNone ? pick_rms_wd<scalar_t, opmath_t, kWdNone>(centered, mom)
                                         : wd == kWdL2 ? pick_rms_wd<scalar_t, opmath_t, kWdL2>(centered, mom)
                                                       : pick_rms_wd<scalar_t, opmath_t, kWdDecoupled>(centered, mom);
    const opmath_t inv_o = signed_inv<opmath_t>(inv, maximize);
    // 16-bit params with stochastic rounding or Kahan summation, and bfloat16 state: the float32 loop on staged
    // copies (lowp_store.h).
    const RmsFn<opmath_t, opmath_t> fn32 = wd == kWdNone ? pick_rms_wd<opmath_t, opmath_t, kWdNone>(centered, mom)
                                     : wd == kWdL2 ? pick_rms_wd<opmath_t, opmath_t, kWdL2>(centered, mom)
                                                   : pick_rms_wd<opmath_t, opmath_t, kWdDecoupled>(centered, mom);
    for_each_chunk(chunks, [&](const Chunk& c) {
      const int64_t t = c.tensor, b = c.begin, n = c.end - c.begin;
      if (lp.active() || bf16) {
        using R = StateRange<opmath_t>;
        const std::array<R, 3> st{R{psq[t], b, n}, centered ? R{pga[t], b, n} : R{},
                                  has_momentum ? R{pbuf[t], b, n} : R{}};
        staged_step<scalar_t, opmath_t, 3>(
            pw[t] + b, pg[t] + b, n, b, lp, t, bf16, st, [&](auto* w32, const auto* g32, opmath_t* const* s) {
              fn32(w32, g32, s[0], s[1], s[2], n, lrs[t], opmath_t(keep), opmath_t(add), opmath_t(eps),
                   opmath_t(momentum), opmath_t(weight_decay), opmath_t(1.0 - lrv * weight_decay), inv_o);
            });
        return;
      }
      fn(pw[t] + b, pg[t] + b, psq[t] + b, centered ? pga[t] + b : nullptr, has_momentum ? pbuf[t] + b : nullptr,
         c.end - b, lrs[t], opmath_t(keep), opmath_t(add), opmath_t(eps), opmath_t(momentum), opmath_t(weight_decay),
         opmath_t(1.0 - lrv * weight_decay), inv_o);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_hybrid, CPU, m) { m.impl("rms_", &families::rms_op<&rms_>); }

// The table op may carry no tensor argument at all (no grads: they come from the params), so it is registered for
// every dispatch key, the empty key set included; it serves CPU tensors only and says so otherwise.
TORCH_LIBRARY_IMPL(fused_hybrid, CompositeExplicitAutograd, m) {
  impl_table_op<families::rms_lists, &families::rms_op<&rms_>>(m, "rms_table_");
}

}  // namespace cpu
}  // namespace fused_hybrid
