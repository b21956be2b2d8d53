// MAS on the CPU (Landro, Gallo, La Grassa 2020; reference.mas_steps / mas_update).
//
// "sum" is one pass over memory: both branches and the weighted update per element.
// The reducing variants ("correction", "normalized", "vector") need per-tensor (per-layer) reductions of the
// two directions before anything can be applied, so they make two passes, each one parallel region over the
// chunks of all tensors:
//   pass 1 updates m, v and the momentum buffer and writes each chunk's float64 partials <d_a,d_s>, <d_a,d_a>,
//          <d_s,d_s> (w is not written, so pass 2 sees the same w and recomputes the same gradient);
//   host   sums the partials per tensor in chunk order (bitwise identical for any thread count) and turns them
//          into each tensor's coefficients, as reference.mas_update does;
//   pass 2 recomputes d_a from the updated m, v and d_s from the updated buffer (bitwise the values of pass 1)
//          and applies the update to w.
// Memory traffic of the reducing variants: pass 1 reads w, g, m, v, buf and writes m, v, buf; pass 2 reads
// w, g, m, v, buf and writes w.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "adaptive_kernel.h"
#include "lowp_store.h"  // signed_inv
#include "../op_families.h"
#include "fused_hybrid/contiguous_grads.h"
#include "fused_hybrid/rules.h"
#include "multi_tensor.h"
#include "tensor_table.h"

namespace fused_hybrid {
namespace cpu {
namespace {

template <typename T>
struct MasScalars {
  T beta2, eps, weight_decay, momentum;
  T bc2_sqrt, adam_w, sgd_w;
  T c_a, c_s;  // pass 2: the coefficients from the per-tensor sums (see mas_)
  T one_minus_beta1, one_minus_beta2, one_minus_dampening, sum_coef;  // in double on the host (rules::OneMinus)
  T decay;  // 1 - lr*weight_decay (decoupled weight decay), in double on the host
};

enum MasMode : int {
  kModeSum = 0,         // the "sum" variant, one pass
  kModeReduce = 1,      // pass 1 of the reducing variants
  kModeApplyAdam = 2,   // pass 2, w += d_a * -c_a   (correction, Adam side)
  kModeApplySgd = 3,    // pass 2, w += d_s * -c_s   (correction, SGD side; normalized)
  kModeApplyVector = 4  // pass 2, w -= d_a*c_a + d_s*c_s   (vector)
};

// One chunk in one mode. Every flag is a template parameter (a select on a runtime bool keeps GCC from
// vectorizing); maximize is folded into the sign of inv (see signed_inv).
template <typename scalar_t, typename opmath_t, int MODE, bool MOM, int WD, bool NESTEROV, bool FIRST>
FH_CPU_CLONES void mas_chunk(scalar_t* __restrict__ w, const scalar_t* __restrict__ g, opmath_t* __restrict__ m,
                             opmath_t* __restrict__ v, opmath_t* __restrict__ buf, int64_t n,
                             const MasScalars<opmath_t>& s, opmath_t inv, double* __restrict__ partials) {
  const opmath_t beta2 = s.beta2, eps = s.eps, wd = s.weight_decay, momentum = s.momentum, bc2_sqrt = s.bc2_sqrt;
  const opmath_t adam_w = s.adam_w, sgd_w = s.sgd_w, c_a = s.c_a, c_s = s.c_s;
  const opmath_t omb1 = s.one_minus_beta1, omb2 = s.one_minus_beta2, omd = s.one_minus_dampening;
  // The gradient both branches see: unscaled, sign-flipped for maximize, plus L2 weight decay (decoupled decay
  // shrinks w where it is written instead).
  auto grad = [&](int64_t i, opmath_t wi) {
    opmath_t d = rules::effective_grad(static_cast<opmath_t>(g[i]), inv, false);
    return WD == kWdL2 ? rules::l2_weight_decay(d, wi, wd) : d;
  };
  if constexpr (MODE == kModeReduce) {
    // No local is passed by reference here, so `omp simd` can vectorize the float64 sums (in a fixed order).
    double s_as = 0.0, s_aa = 0.0, s_ss = 0.0;
#pragma omp simd reduction(+ : s_as, s_aa, s_ss)
    for (int64_t i = 0; i < n; ++i) {
      const opmath_t d = grad(i, static_cast<opmath_t>(w[i]));
      const opmath_t d_a = rules::mas_adam_direction_exact(m[i], v[i], d, beta2, omb1, omb2, bc2_sqrt, eps);
      opmath_t d_s = d;
      if constexpr (MOM) d_s = rules::sgd_direction_exact(d, buf[i], momentum, omd, NESTEROV, FIRST);
      s_as += rules::dot_term(d_a, d_s);
      s_aa += rules::dot_term(d_a, d_a);
      s_ss += rules::dot_term(d_s, d_s);
    }
    partials[0] = s_as;
    partials[1] = s_aa;
    partials[2] = s_ss;
  } else {
    for (int64_t i = 0; i < n; ++i) {
      opmath_t wi = static_cast<opmath_t>(w[i]);
      const opmath_t d = grad(i, wi);
      if constexpr (WD == kWdDecoupled) wi = wi * s.decay;
      if constexpr (MODE == kModeSum) {
        const opmath_t d_a = rules::mas_adam_direction_exact(m[i], v[i], d, beta2, omb1, omb2, bc2_sqrt, eps);
        opmath_t d_s = d;
        if constexpr (MOM) d_s = rules::sgd_direction_exact(d, buf[i], momentum, omd, NESTEROV, FIRST);
        rules::mas_sum_update_exact(wi, d_a, d_s, adam_w, sgd_w, s.sum_coef);
      } else if constexpr (MODE == kModeApplyAdam) {
        rules::mas_single_update(wi, rules::adam_direction(m[i], v[i], bc2_sqrt, eps), c_a);
      } else {
        opmath_t d_s = d;
        if constexpr (MOM) d_s = rules::sgd_direction_from_buffer(d, buf[i], momentum, NESTEROV);
        if constexpr (MODE == kModeApplySgd) {
          rules::mas_single_update(wi, d_s, c_s);
        } else {
          rules::mas_vector_update(wi, rules::adam_direction(m[i], v[i], bc2_sqrt, eps), d_s, c_a, c_s);
        }
      }
      w[i] = static_cast<scalar_t>(wi);
    }
  }
}

template <typename scalar_t, typename opmath_t>
using MasFn = void (*)(scalar_t*, const scalar_t*, opmath_t*, opmath_t*, opmath_t*, int64_t,
                       const MasScalars<opmath_t>&, opmath_t, double*);

template <typename scalar_t, typename opmath_t, int MODE, int WD>
MasFn<scalar_t, opmath_t> pick_mas_mom(bool mom, bool nesterov, bool first) {
  if (!mom) return &mas_chunk<scalar_t, opmath_t, MODE, false, WD, false, false>;
  // pass 2 never reads FIRST (the buffer is already updated): one instantiation fewer per mode.
  if constexpr (MODE == kModeSum || MODE == kModeReduce) {
    if (first) {
      return nesterov ? &mas_chunk<scalar_t, opmath_t, MODE, true, WD, true, true>
                      : &mas_chunk<scalar_t, opmath_t, MODE, true, WD, false, true>;
    }
  }
  return nesterov ? &mas_chunk<scalar_t, opmath_t, MODE, true, WD, true, false>
                  : &mas_chunk<scalar_t, opmath_t, MODE, true, WD, false, false>;
}

template <typename scalar_t, typename opmath_t, int MODE>
MasFn<scalar_t, opmath_t> pick_mas(bool mom, int wd, bool nesterov, bool first) {
  switch (wd) {
    case kWdNone: return pick_mas_mom<scalar_t, opmath_t, MODE, kWdNone>(mom, nesterov, first);
    case kWdL2: return pick_mas_mom<scalar_t, opmath_t, MODE, kWdL2>(mom, nesterov, first);
    default: return pick_mas_mom<scalar_t, opmath_t, MODE, kWdDecoupled>(mom, nesterov, first);
  }
}

enum MasVariant : int64_t { kSum = 0, kCorrection = 1, kNormalized = 2, kVector = 3 };

void mas_(at::TensorList params, at::TensorList grads_in, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
          at::TensorList momentum_buffers, at::TensorList steps, at::TensorList kahan_comps,
          const families::mas_args& args) {
  FH_BIND_ARGS(FH_MAS_ARGS)
  const ContiguousGrads contiguous(grads_in);
  const at::TensorList grads = contiguous.list();
  static constexpr const char* op = "fused_hybrid::mas_";
  const size_t T = params.size();
  const bool mom = momentum != 0.0;
  check_lists(op, params, grads, {exp_avgs, exp_avg_sqs});
  TORCH_CHECK(variant >= kSum && variant <= kVector, op, ": unknown variant ", variant);
  TORCH_CHECK(!mom || momentum_buffers.size() == T, op, ": momentum needs one buffer per param");
  if (T == 0 || skip_step(found_inf)) return;
  const std::vector<double> ks = advance_steps(op, steps, T);
  const bool bf16 = bf16_state(op, params[0].scalar_type(), {exp_avgs, exp_avg_sqs});
  const LowpStore lp = lowp_setup(op, params, rounding, seeds, kahan_comps, ks, bf16);
  const double inv = inv_scale(grad_scale);
  const double lrv = lr_value(lr, lr_tensor);
  const auto chunks = make_chunks(params);
  const int wd = wd_mode(weight_decay, decoupled);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_hybrid_mas", [&] {
    using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto state_dtype = bf16 ? at::kBFloat16 : c10::CppTypeToScalarType<opmath_t>::value;
    auto same_numel = [&](size_t i) { return params[i].numel(); };
    check_state(op, "exp_avg", exp_avgs, state_dtype, same_numel);
    check_state(op, "exp_avg_sq", exp_avg_sqs, state_dtype, same_numel);
    if (mom) check_state(op, "momentum buffer", momentum_buffers, state_dtype, same_numel);

    std::vector<scalar_t*> pw(T);
    std::vector<const scalar_t*> pg(T);
    std::vector<opmath_t*> pm(T), pv(T), pbuf(T, nullptr);
    std::vector<MasScalars<opmath_t>> sc(T);
    std::vector<double> eta(T);
    std::vector<char> first(T);
    for (size_t t = 0; t < T; ++t) {
      for (const auto l : {params, grads, exp_avgs, exp_avg_sqs, momentum_buffers}) {
        prefetch_meta(l, t + kMetaAhead);
      }
      pw[t] = data_as<scalar_t>(params[t]);
      pg[t] = data_as<scalar_t>(grads[t]);
      pm[t] = data_as<opmath_t>(exp_avgs[t]);
      pv[t] = data_as<opmath_t>(exp_avg_sqs[t]);
      if (mom) pbuf[t] = data_as<opmath_t>(momentum_buffers[t]);
      const double k = ks[t];
      const double bc1 = 1.0 - std::pow(beta1, k);
      const double bc2 = 1.0 - std::pow(beta2, k);
      eta[t] = lrv / bc1;
      auto& s = sc[t];
      s.beta2 = opmath_t(beta2);
      s.eps = opmath_t(eps);
      s.weight_decay = opmath_t(weight_decay);
      s.decay = opmath_t(1.0 - lrv * weight_decay);
      s.momentum = opmath_t(momentum);
      s.bc2_sqrt = opmath_t(std::sqrt(bc2));
      s.adam_w = opmath_t(adam_w);
      s.sgd_w = opmath_t(sgd_w);
      s.c_a = s.c_s = opmath_t(0);
      s.one_minus_beta1 = opmath_t(1.0 - beta1);
      s.one_minus_beta2 = opmath_t(1.0 - beta2);
      s.one_minus_dampening = opmath_t(1.0 - dampening);
      s.sum_coef = opmath_t(sgd_w * lrv + adam_w * eta[t]);
      first[t] = k == 1.0;  // reference.mas_steps: torch.optim.SGD's buf = g on the tensor's first step
    }
    const opmath_t inv_o = signed_inv<opmath_t>(inv, maximize);
    // fns[which(t)] runs tensor t's chunks; a tensor's first step (buf = g) takes its own loop. fns32: the float32
    // loops that a pass writing w runs on staged copies of 16-bit params with stochastic rounding or Kahan
    // summation, or of bfloat16 state (lowp_store.h); null for pass 1, which does not write w.
    //
    // bfloat16 state and the two passes: pass 1 runs on widened copies of the state and stores nothing (its sums
    // are over the float32 moments); pass 2 widens the old state again, recomputes the new moments with the reduce
    // loop (`redo`, the same float32 arithmetic, bitwise pass 1's values), applies the update from them and stores
    // them rounded. So the update uses the unrounded moments, as the one-pass variants, the reference and the
    // Triton kernels do, at the price of the moment arithmetic twice in pass 2 (on data in cache).
    auto run = [&](const MasFn<scalar_t, opmath_t>* fns, const MasFn<opmath_t, opmath_t>* fns32, const auto& which,
                   double* part, const MasFn<opmath_t, opmath_t>* redo) {
      for_each_chunk(chunks, [&](const Chunk& c) {
        const int64_t t = c.tensor, b = c.begin, n = c.end - c.begin;
        const size_t ci = static_cast<size_t>(&c - chunks.data());
        using R = StateRange<opmath_t>;
        const std::array<R, 3> st{R{pm[t], b, n}, R{pv[t], b, n}, mom ? R{pbuf[t], b, n} : R{}};
        if (bf16 && fns32 == nullptr) {  // pass 1: the params are only read, the state is not stored
          with_states<opmath_t, 3>(true, false, st, [&](opmath_t* const* s) {
            fns[which(t)](pw[t] + b, pg[t] + b, s[0], s[1], s[2], n, sc[t], inv_o, part ? part + 3 * ci : nullptr);
          });
          return;
        }
        if ((lp.active() && fns32 != nullptr) || bf16) {
          staged_step<scalar_t, opmath_t, 3>(
              pw[t] + b, pg[t] + b, n, b, lp, t, bf16, st, [&](auto* w32, const auto* g32, opmath_t* const* s) {
                if (bf16 && redo != nullptr) {
                  double unused[3];
                  redo[first[t] ? 1 : 0](w32, g32, s[0], s[1], s[2], n, sc[t], inv_o, unused);
                }
                fns32[which(t)](w32, g32, s[0], s[1], s[2], n, sc[t], inv_o, part ? part + 3 * ci : nullptr);
              });
          return;
        }
        fns[which(t)](pw[t] + b, pg[t] + b, pm[t] + b, pv[t] + b, mom ? pbuf[t] + b : nullptr, n, sc[t], inv_o,
                      part ? part + 3 * ci : nullptr);
      });
    };
    auto by_first = [&](int64_t t) { return first[t] ? 1 : 0; };
    if (variant == kSum) {
      const MasFn<scalar_t, opmath_t> fns[2] = {pick_mas<scalar_t, opmath_t, kModeSum>(mom, wd, nesterov, false),
                                                pick_mas<scalar_t, opmath_t, kModeSum>(mom, wd, nesterov, true)};
      const MasFn<opmath_t, opmath_t> fns32[2] = {pick_mas<opmath_t, opmath_t, kModeSum>(mom, wd, nesterov, false),
                                            pick_mas<opmath_t, opmath_t, kModeSum>(mom, wd, nesterov, true)};
      run(fns, fns32, by_first, nullptr, nullptr);
      return;
    }
    // Pass 1: moments, buffer and per-chunk partials.
    std::vector<double> part(3 * chunks.size(), 0.0), sums(3 * T);
    const MasFn<scalar_t, opmath_t> reduce[2] = {pick_mas<scalar_t, opmath_t, kModeReduce>(mom, wd, nesterov, false),
                                                 pick_mas<scalar_t, opmath_t, kModeReduce>(mom, wd, nesterov, true)};
    run(reduce, nullptr, by_first, part.data(), nullptr);
    sum_partials(chunks, part, 3, sums.data(), static_cast<int64_t>(T));
    // Host: each tensor's coefficients, in double as in reference.mas_update (a zero SGD norm gives ratio 0).
    const MasFn<scalar_t, opmath_t> apply[3] = {
        pick_mas<scalar_t, opmath_t, kModeApplyAdam>(mom, wd, nesterov, false),
        pick_mas<scalar_t, opmath_t, kModeApplySgd>(mom, wd, nesterov, false),
        pick_mas<scalar_t, opmath_t, kModeApplyVector>(mom, wd, nesterov, false)};
    std::vector<int> which(T);
    for (size_t t = 0; t < T; ++t) {
      const double dot = sums[3 * t], norm_a = eta[t] * std::sqrt(sums[3 * t + 1]);
      const double norm_s = std::sqrt(sums[3 * t + 2]);
      const double ratio = norm_s > 0.0 ? norm_a / norm_s : 0.0;
      auto& s = sc[t];
      if (variant == kCorrection) {
        which[t] = dot < 0.0 ? 0 : 1;  // the Adam step when the directions disagree, else the SGD step
        s.c_a = opmath_t(eta[t]);
        s.c_s = opmath_t(lrv);
      } else if (variant == kNormalized) {
        which[t] = 1;
        s.c_s = opmath_t(ratio);
      } else {
        which[t] = 2;
        s.c_a = opmath_t(adam_w * eta[t]);
        s.c_s = opmath_t(sgd_w * ratio);
      }
    }
    // Pass 2: apply.
    const MasFn<opmath_t, opmath_t> apply32[3] = {
        pick_mas<opmath_t, opmath_t, kModeApplyAdam>(mom, wd, nesterov, false),
        pick_mas<opmath_t, opmath_t, kModeApplySgd>(mom, wd, nesterov, false),
        pick_mas<opmath_t, opmath_t, kModeApplyVector>(mom, wd, nesterov, false)};
    const MasFn<opmath_t, opmath_t> reduce32[2] = {
        pick_mas<opmath_t, opmath_t, kModeReduce>(mom, wd, nesterov, false),
        pick_mas<opmath_t, opmath_t, kModeReduce>(mom, wd, nesterov, true)};
    run(apply, apply32, [&](int64_t t) { return which[t]; }, nullptr, reduce32);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_hybrid, CPU, m) { m.impl("mas_", &families::mas_op<&mas_>); }

// The table op may carry no tensor argument at all (no grads: they come from the params), so it is registered for
// every dispatch key, the empty key set included; it serves CPU tensors only and says so otherwise.
TORCH_LIBRARY_IMPL(fused_hybrid, CompositeExplicitAutograd, m) {
  impl_table_op<families::mas_lists, &families::mas_op<&mas_>>(m, "mas_table_");
}

}  // namespace cpu
}  // namespace fused_hybrid
