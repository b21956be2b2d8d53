// The adaptive family's inner loops (Adam/AdamW/AMSGrad, Padam, Adam-Clip, AdaBound, SWATS), shared by the
// adaptive op and by ND-Adam's plain-Adam tensors. Every behaviour flag is a template parameter, so each
// instantiation is a branch-free loop the compiler vectorizes (checked with -fopt-info-vec and objdump: packed
// vsqrtps/vdivps on ymm registers in the avx2 clones; only the general Padam power, exp2/log2 per element, stays
// scalar); the arithmetic itself is rules::adaptive_update_exact.
//
// Internal linkage (anonymous namespace): the instantiations are multiversioned (FH_CPU_CLONES), and each
// translation unit keeps its own copies and ifunc resolvers instead of relying on COMDAT merging of them.
#pragma once

#include <algorithm>
#include <cstdint>

#include "fused_hybrid/rules.h"
#include "multi_tensor.h"

namespace fused_hybrid {
namespace cpu {
namespace {

// Which form of the adaptive step a loop computes. The paper forms' partial power gets a loop per fast path
// (exact nested square roots, which vectorize) plus the general exp2/log2 form.
enum AdaptiveKind : int {
  kKindTorch = 0,         // torch.optim.Adam's eps placement (Adam, AdamW, AMSGrad, SWATS's Adam phase)
  kKindPaperHalf = 1,     // paper form, partial = 1/2
  kKindPaperQuarter = 2,  // partial = 1/4
  kKindPaperEighth = 3,   // partial = 1/8 (Padam's default)
  kKindPaperGeneral = 4,  // any other partial
};

// The loops take `inv` with maximize folded into its sign: rules::effective_grad's -(g*inv) equals g*(-inv)
// bit for bit (rounding is symmetric), and a select on a runtime bool keeps GCC from vectorizing a loop.
template <typename T>
inline T signed_inv(double inv, bool maximize) {
  return static_cast<T>(maximize ? -inv : inv);
}

enum WeightDecayMode : int { kWdNone = 0, kWdL2 = 1, kWdDecoupled = 2 };
inline int wd_mode(double weight_decay, bool decoupled) {
  return weight_decay == 0.0 ? kWdNone : (decoupled ? kWdDecoupled : kWdL2);
}

inline int adaptive_kind(int64_t form, double partial) {
  if (form == rules::kFormTorch) return kKindTorch;
  if (partial == 0.5) return kKindPaperHalf;
  if (partial == 0.25) return kKindPaperQuarter;
  if (partial == 0.125) return kKindPaperEighth;
  return kKindPaperGeneral;
}

template <typename scalar_t, typename opmath_t>
using AdaptiveFn = void (*)(scalar_t*, const scalar_t*, opmath_t*, opmath_t*, opmath_t*, int64_t,
                            const rules::AdaptiveScalars<opmath_t>&, const rules::OneMinus<opmath_t>&, opmath_t,
                            double*);

// Element i of a chunk; returns the step p applied to w. With g_out, the effective gradient (after L2 decay)
// is stored there for SWATS's <p, g>.
template <bool AMS, typename scalar_t, typename opmath_t>
__attribute__((always_inline)) inline opmath_t adaptive_element(
    scalar_t* __restrict__ w, const scalar_t* __restrict__ g, opmath_t* __restrict__ m, opmath_t* __restrict__ v,
    opmath_t* __restrict__ vmax, int64_t i, const rules::AdaptiveScalars<opmath_t>& a,
    const rules::OneMinus<opmath_t>& om, opmath_t inv, opmath_t* __restrict__ g_out = nullptr) {
  opmath_t wi = static_cast<opmath_t>(w[i]);
  // maximize is folded into the sign of inv (see signed_inv), so no bool select remains in the loop.
  opmath_t gi = rules::effective_grad(static_cast<opmath_t>(g[i]), inv, false);
  opmath_t vmi = AMS ? vmax[i] : opmath_t(0);
  const opmath_t p = rules::adaptive_update_exact(wi, gi, m[i], v[i], vmi, a, om);
  w[i] = static_cast<scalar_t>(wi);
  if (AMS) vmax[i] = vmi;
  if (g_out != nullptr) g_out[i] = gi;
  return p;
}

// One chunk of one tensor. With SWATS, partials[0..1] receive the chunk's <p, g> and <p, p> in float64.
template <typename scalar_t, typename opmath_t, int KIND, bool AMS, int WD, bool SWATS>
FH_CPU_CLONES void adaptive_chunk(scalar_t* __restrict__ w, const scalar_t* __restrict__ g,
                                  opmath_t* __restrict__ m, opmath_t* __restrict__ v, opmath_t* __restrict__ vmax,
                                  int64_t n, const rules::AdaptiveScalars<opmath_t>& scalars,
                                  const rules::OneMinus<opmath_t>& om, opmath_t inv, double* __restrict__ partials) {
  // Pin the flags to compile-time constants so that the branches inside rules::adaptive_update fold away.
  rules::AdaptiveScalars<opmath_t> a = scalars;
  a.form = KIND == kKindTorch ? rules::kFormTorch : rules::kFormPaper;
  // The paper forms always clamp: without a clip the host passes [0, inf], which is the identity on every
  // step size the form can produce (>= 0, +inf or NaN), so one loop serves clipped and unclipped rules.
  a.clip = rules::kClipConst;
  a.amsgrad = AMS;
  a.decoupled = WD == kWdDecoupled;
  if (WD == kWdNone) a.weight_decay = opmath_t(0);
  if (KIND == kKindPaperHalf) a.partial = opmath_t(0.5);
  if (KIND == kKindPaperQuarter) a.partial = opmath_t(0.25);
  if (KIND == kKindPaperEighth) a.partial = opmath_t(0.125);
  if constexpr (!SWATS) {
    for (int64_t i = 0; i < n; ++i) adaptive_element<AMS>(w, g, m, v, vmax, i, a, om, inv);
  } else {
    // The update loop stores p and g of a block on the stack and a second loop reduces them (a reduction inside
    // the update loop keeps GCC from vectorizing it). The float64 sums run in kLanes explicit lanes, element i
    // into lane i % kLanes, then the lanes in order: independent dependency chains that vectorize without
    // reassociation (one accumulator was bound by the add latency: SWATS ran at ~0.8x of Adam's GB/s), and an
    // order fixed by the code, not by the vector width of the clone that runs.
    constexpr int64_t kBlock = 256;
    constexpr int64_t kLanes = 16;
    opmath_t pb[kBlock], gb[kBlock];
    double acc_pg[kLanes] = {}, acc_pp[kLanes] = {};
    for (int64_t b = 0; b < n; b += kBlock) {
      const int64_t nb = std::min(kBlock, n - b);
      opmath_t* vmax_b = AMS ? vmax + b : nullptr;
      for (int64_t i = 0; i < nb; ++i) {
        pb[i] = adaptive_element<AMS>(w + b, g + b, m + b, v + b, vmax_b, i, a, om, inv, gb);
      }
      int64_t i = 0;
      for (; i + kLanes <= nb; i += kLanes) {
        for (int64_t j = 0; j < kLanes; ++j) {
          acc_pg[j] += rules::dot_term(pb[i + j], gb[i + j]);
          acc_pp[j] += rules::dot_term(pb[i + j], pb[i + j]);
        }
      }
      for (int64_t j = 0; i + j < nb; ++j) {
        acc_pg[j] += rules::dot_term(pb[i + j], gb[i + j]);
        acc_pp[j] += rules::dot_term(pb[i + j], pb[i + j]);
      }
    }
    double s_pg = 0.0, s_pp = 0.0;
    for (int64_t j = 0; j < kLanes; ++j) {
      s_pg += acc_pg[j];
      s_pp += acc_pp[j];
    }
    partials[0] = s_pg;
    partials[1] = s_pp;
  }
}

template <typename scalar_t, typename opmath_t, int KIND, bool AMS, int WD>
AdaptiveFn<scalar_t, opmath_t> pick_adaptive_swats(bool swats) {
  if constexpr (KIND == kKindTorch) {
    if (swats) return &adaptive_chunk<scalar_t, opmath_t, KIND, AMS, WD, true>;
  }
  // SWATS with a paper-form Adam phase gets zero partials, as in the reference backend.
  return &adaptive_chunk<scalar_t, opmath_t, KIND, AMS, WD, false>;
}

template <typename scalar_t, typename opmath_t, int KIND, bool AMS>
AdaptiveFn<scalar_t, opmath_t> pick_adaptive_wd(int wd, bool swats) {
  switch (wd) {
    case kWdNone: return pick_adaptive_swats<scalar_t, opmath_t, KIND, AMS, kWdNone>(swats);
    case kWdL2: return pick_adaptive_swats<scalar_t, opmath_t, KIND, AMS, kWdL2>(swats);
    default: return pick_adaptive_swats<scalar_t, opmath_t, KIND, AMS, kWdDecoupled>(swats);
  }
}

template <typename scalar_t, typename opmath_t, int KIND>
AdaptiveFn<scalar_t, opmath_t> pick_adaptive_ams(bool ams, int wd, bool swats) {
  return ams ? pick_adaptive_wd<scalar_t, opmath_t, KIND, true>(wd, swats)
             : pick_adaptive_wd<scalar_t, opmath_t, KIND, false>(wd, swats);
}

// The loop for a call's uniform flags.
template <typename scalar_t, typename opmath_t>
AdaptiveFn<scalar_t, opmath_t> pick_adaptive(int kind, bool ams, int wd, bool swats) {
  switch (kind) {
    case kKindTorch: return pick_adaptive_ams<scalar_t, opmath_t, kKindTorch>(ams, wd, swats);
    case kKindPaperHalf: return pick_adaptive_ams<scalar_t, opmath_t, kKindPaperHalf>(ams, wd, swats);
    case kKindPaperQuarter: return pick_adaptive_ams<scalar_t, opmath_t, kKindPaperQuarter>(ams, wd, swats);
    case kKindPaperEighth: return pick_adaptive_ams<scalar_t, opmath_t, kKindPaperEighth>(ams, wd, swats);
    default: return pick_adaptive_ams<scalar_t, opmath_t, kKindPaperGeneral>(ams, wd, swats);
  }
}

// The call's 1 - x scalars, computed in double and rounded once as the reference does (see rules::OneMinus).
template <typename opmath_t>
rules::OneMinus<opmath_t> one_minus(double beta1, double beta2, double lr, double weight_decay) {
  return {opmath_t(1.0 - beta1), opmath_t(1.0 - beta2), opmath_t(1.0 - lr * weight_decay)};
}

}  // namespace
}  // namespace cpu
}  // namespace fused_hybrid
