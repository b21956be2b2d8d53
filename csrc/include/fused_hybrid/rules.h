// The per-element arithmetic of every fused_hybrid rule, written once for the CPU loops and the CUDA kernels.
//
// Each function works on one element in the compute type T (float, or double for float64 parameters) and
// mirrors a function of fused_hybrid/reference.py operation for operation, so that float32 results agree with
// the reference (and torch.optim) to a few ulps. Uniform flags (amsgrad, nesterov, ...) are plain bools: they
// are the same for every element of a call, so the branches cost nothing inside vectorized loops.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FH_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined on the host too: the CPU loops only vectorize once the rule is inlined, and in a translation
// unit with many instantiations GCC's unit-growth limits otherwise leave a call per element.
#define FH_HD inline __attribute__((always_inline))
#else
#define FH_HD inline
#endif

namespace fused_hybrid {
namespace rules {

enum Form : int { kFormTorch = 0, kFormPaper = 1 };       // see fused_hybrid/hyper.py
enum Clip : int { kClipNone = 0, kClipConst = 1, kClipAdaBound = 2 };
enum Phase : int { kPhaseAdam = 0, kPhaseSgd = 1 };

template <typename T>
FH_HD T fh_sqrt(T x) { return std::sqrt(x); }
template <typename T>
FH_HD T fh_max(T a, T b) { return a > b ? a : (a != a ? a : b); }  // NaN-propagating like torch.maximum
// |x| as a compare-and-select, which vectorizes as a mask (and means the same for -0 and NaN in a compare).
template <typename T>
FH_HD T fh_abs(T x) { return x < T(0) ? -x : x; }
template <typename T>
FH_HD T fh_clamp(T x, T lo, T hi) { return x < lo ? lo : (x > hi ? hi : x); }

// torch.lerp's formula (aten/src/ATen/native/Lerp.h), which torch.optim.Adam uses for the first moment.
// |weight| < 0.5 is torch's `weight < 0.5 && weight > -0.5` as one comparison: GCC cannot vectorize a select on
// the && of two comparisons.
template <typename T>
FH_HD T lerp(T self, T end, T weight) {
  return fh_abs(weight) < T(0.5) ? self + weight * (end - self) : end - (end - self) * (T(1) - weight);
}

// The gradient the rules see: unscaled (GradScaler's 1/scale, 1 without a scaler), negated for maximize.
template <typename T>
FH_HD T effective_grad(T g, T inv_scale, bool maximize) {
  g = g * inv_scale;
  return maximize ? -g : g;
}

// ---- rms family: RMSprop and Adagrad (reference.rms_step) -------------------------------------------------------

// sq = keep*sq + add*g^2 (RMSprop: keep = alpha, add = 1 - alpha; Adagrad: keep = add = 1, both exact) and the
// denominator sqrt(sq) + eps; centered RMSprop: g_avg = lerp(g_avg, g, add), sqrt(sq - g_avg^2) + eps.
template <typename T>
FH_HD T rms_denominator(T g, T& sq, T& g_avg, T keep, T add, T eps, bool centered) {
  sq = keep * sq + add * g * g;
  if (centered) {
    g_avg = lerp(g_avg, g, add);
    return fh_sqrt(sq - g_avg * g_avg) + eps;
  }
  return fh_sqrt(sq) + eps;
}

// The step: with momentum buf = momentum*buf + g/avg and w - lr*buf (torch's addcdiv/add order), else w - lr*g/avg.
template <typename T>
FH_HD T rms_step(T w, T g, T avg, T& buf, T momentum, T lr, bool has_momentum) {
  if (has_momentum) {
    buf = buf * momentum + g / avg;
    return w + (-lr) * buf;
  }
  return w + (-lr) * (g / avg);
}

// ---- SGD family -----------------------------------------------------------------------------------------------

// torch.optim.SGD: buf = g on the first step, else momentum*buf + (1-dampening)*g; Nesterov: g + momentum*buf.
// The direction from an already updated momentum buffer (Nesterov: g + momentum*buf, else buf). MAS's
// reducing variants recompute it in their second pass.
template <typename T>
FH_HD T sgd_direction_from_buffer(T g, T buf, T momentum, bool nesterov) {
  return nesterov ? g + momentum * buf : buf;
}

// torch.optim.SGD's buffer update and direction, with 1 - dampening computed by the caller in double (see
// OneMinus).
template <typename T>
FH_HD T sgd_direction_exact(T g, T& buf, T momentum, T one_minus_dampening, bool nesterov, bool first) {
  buf = first ? g : buf * momentum + one_minus_dampening * g;
  return sgd_direction_from_buffer(g, buf, momentum, nesterov);
}

// The plain SGD step w - lr*d, written w + (-lr)*d as torch's add_(d, alpha=-lr) computes it.
template <typename T>
FH_HD T sgd_step(T w, T d, T lr) {
  return w + (-lr) * d;
}

// SWATS SGD phase (Keskar & Socher, Alg. 1 lines 5-6): v = b1*v + g; w -= (1-b1)*Lambda*v, where
// sgd_lr = (1-b1)*Lambda*lr_now/lr_at_switch. The buffer is zero at the switch, so the first SGD step uses v = g.
template <typename T>
FH_HD void swats_sgd_phase(T& w, T g, T& buf, T beta1, T sgd_lr, bool nesterov) {
  buf = buf * beta1 + g;
  const T d = nesterov ? g + beta1 * buf : buf;
  w = w + (-sgd_lr) * d;
}

// SWATS switch test for one segment after an Adam-phase step (Keskar & Socher, Alg. 1 lines 11-22), in double,
// in the order of operations of fused_hybrid/swats.py's finalize (the reference the GPU paths run as torch ops):
//   gamma = <p,p> / -<p,g> (only where <p,g> != 0; otherwise lam is kept, line 22)
//   lam = b2*lam + (1-b2)*gamma;  Lambda_k = lam / (1 - b2^k)  (b2^k: pow_whole)
//   switch when k > 1, Lambda_k > 0 and |Lambda_k - gamma| < atol + rtol*|Lambda_k|.
// `active`: some tensor of the segment stepped (and GradScaler found no inf); an inactive segment is untouched.
// Returns true when the segment switches now.
// b^k for a whole number k >= 0, by binary exponentiation in double: the same sequence of roundings on the CPU, the
// GPU, the simulator and in Triton (triton_kernels/common.py pow_whole), where std::pow, the device's pow and
// Triton's exp2(k*log2(b)) each differ in the last bits. The switch test compares Lambda_k with gamma, so a bit of
// difference there could switch one backend a step before another; measured on an H200 before this: the cuda
// backend's (Triton) bookkeeping and cuda_sim's (this file) differed in the last bits of lam and gamma.
// The CUDA kernels take their bias corrections from it too: the device's double pow is an out-of-line call, and the
// registers saved around it were the only spills (8-16 bytes) of the adaptive, MAS and ND-Adam kernels.
FH_HD double pow_whole(double b, int64_t k) {
  double r = 1.0;
  for (uint64_t e = k > 0 ? static_cast<uint64_t>(k) : 0u; e != 0; e >>= 1) {
    if (e & 1u) r *= b;
    b *= b;
  }
  return r;
}

struct SwatsSegment {
  int32_t phase;
  double lam, Lambda, gamma;
  int64_t switch_step, seg_step;
};

FH_HD bool swats_switch_test(SwatsSegment& s, bool active, double s_pg, double s_pp, double b2, double rtol,
                             double atol) {
  if (!active) return false;
  s.seg_step += 1;
  if (s.phase != kPhaseAdam || s_pg == 0.0) return false;
  const double gamma = s_pp / -s_pg;
  s.lam = b2 * s.lam + (1 - b2) * gamma;
  s.gamma = gamma;
  const int64_t k = s.seg_step;
  const double lam_k = s.lam / (1 - pow_whole(b2, k));
  if (!(k > 1 && lam_k > 0 && fh_abs(lam_k - gamma) < atol + rtol * fh_abs(lam_k))) return false;
  s.phase = kPhaseSgd;
  s.Lambda = lam_k;
  s.switch_step = k;
  return true;
}

// ---- Adaptive family ------------------------------------------------------------------------------------------

// Per-tensor scalars of one adaptive step, computed on the host (or device) from the tensor's step count k.
template <typename T>
struct AdaptiveScalars {
  T lr, beta1, beta2, eps, weight_decay;
  T step_size;     // torch form: lr/bc1;            paper form: lr*sqrt(bc2)/bc1
  T bc2_sqrt;      // torch form: sqrt(bc2)
  T partial;       // paper form: the denominator is (sqrt(v)+eps)^(2*partial)
  T clip_lo, clip_hi;  // paper form with clip: bounds of the per-coordinate step size at this k
  int form, clip;
  bool decoupled, amsgrad;
};

// The per-tensor scalars of an adaptive step at step count k: fused_hybrid/reference.py's, computed in double and
// rounded to T once (as torch does with Python-float scalars), written once for the CPU (host, before its parallel
// region) and the GPU (in each block). h: the family's hyperparameters (the fields of fused_hybrid.hyper.Adaptive);
// lr as read (a tensor lr where the kernel runs); bc1 = 1 - beta1^k and bc2 = 1 - beta2^k from the caller (the CPU
// takes std::pow, the GPU repeated squaring, pow_whole). Without a clip the bounds are [0, inf], the identity on
// every step size the paper form produces; amsgrad is the caller's (a template flag on the GPU).
template <typename T, typename H>
FH_HD AdaptiveScalars<T> adaptive_scalars(const H& h, double lr, double k, double bc1, double bc2) {
  AdaptiveScalars<T> s{};
  s.lr = static_cast<T>(lr);
  s.beta1 = static_cast<T>(h.beta1);
  s.beta2 = static_cast<T>(h.beta2);
  s.eps = static_cast<T>(h.eps);
  s.weight_decay = static_cast<T>(h.weight_decay);
  s.form = static_cast<int>(h.form);
  s.clip = static_cast<int>(h.clip_mode);
  s.decoupled = h.decoupled;
  s.amsgrad = false;
  s.partial = static_cast<T>(h.partial);
  s.bc2_sqrt = static_cast<T>(sqrt(bc2));
  s.clip_lo = T(0);
  s.clip_hi = static_cast<T>(INFINITY);
  if (h.form == kFormTorch) {
    s.step_size = static_cast<T>(lr / bc1);
    return s;
  }
  s.step_size = static_cast<T>(lr * sqrt(bc2) / bc1);
  if (h.clip_mode == kClipConst) {
    s.clip_lo = static_cast<T>(h.clip_lo);
    s.clip_hi = static_cast<T>(h.clip_hi);
  } else if (h.clip_mode == kClipAdaBound) {  // reference.adabound_bounds; final_lr: see hyper.Adaptive
    const double gk = h.gamma * k;
    const double final_lr = h.final_lr_relative ? h.final_lr * lr : h.final_lr;
    s.clip_lo = static_cast<T>(final_lr * (1.0 - 1.0 / (gk + 1.0)));
    s.clip_hi = static_cast<T>(gk > 0.0 ? final_lr * (1.0 + 1.0 / gk) : static_cast<double>(INFINITY));
  }
  return s;
}

// The hyperparameters of plain torch-form Adam with L2 weight decay (no AMSGrad, clip or decoupled decay), as
// adaptive_scalars reads them: ND-Adam's 1-D tensors (biases) take this step (reference.ndadam_steps).
struct TorchFormAdam {
  double beta1, beta2, eps, weight_decay;
  double partial = 0.5, clip_lo = 0.0, clip_hi = 0.0, final_lr = 0.0, gamma = 0.0;
  int form = kFormTorch, clip_mode = kClipNone;
  bool decoupled = false, final_lr_relative = false;
};

// The scalars of the form 1 - x that torch.optim and the Python reference compute in double and round once:
// 1 - float(beta) is not float(1 - beta) (1 - float(0.999) is 1.3e-5 relative away from float(0.001)), so the
// *_exact functions take them from the caller, who computes them in double. The functions without the suffix
// keep their signatures and compute them in T.
template <typename T>
struct OneMinus {
  T beta1;         // 1 - beta1
  T beta2;         // 1 - beta2
  T lr_wd;         // 1 - lr*weight_decay (decoupled weight decay)
};

// Adam-family moments (Kingma & Ba, Alg. 1), in torch.optim's order of operations.
template <typename T>
FH_HD void adam_moments_exact(T& m, T& v, T g, T beta2, T one_minus_beta1, T one_minus_beta2) {
  m = lerp(m, g, one_minus_beta1);
  v = v * beta2 + one_minus_beta2 * g * g;
}

// x^(2p) for Padam's partial power, with exact nested square roots for p = 1/2, 1/4, 1/8.
template <typename T>
FH_HD T partial_power(T x, T p) {
  if (p == T(0.5)) return x;
  if (p == T(0.25)) return fh_sqrt(x);
  if (p == T(0.125)) return fh_sqrt(fh_sqrt(x));
  return std::exp2(T(2) * p * std::log2(x));
}

// L2 weight decay folded into the gradient: g + wd*w.
template <typename T>
FH_HD T l2_weight_decay(T g, T w, T weight_decay) {
  return g + weight_decay * w;
}

// The adaptive family's weight decay, applied before the phase branch of SWATS: decoupled (AdamW) shrinks w
// by decay = 1 - lr*wd (from the caller, see OneMinus), L2 adds wd*w to g.
template <typename T>
FH_HD void weight_decay_exact(T& w, T& g, T weight_decay, T decay, bool decoupled) {
  if (weight_decay != T(0)) {
    if (decoupled) w = w * decay;
    else g = l2_weight_decay(g, w, weight_decay);
  }
}

// One adaptive step on one element, with the 1 - x scalars from the caller (see OneMinus). Returns p, the change
// applied to w (SWATS projects it on g). g is the effective gradient; L2 weight decay is added to it here (it is
// then the g of SWATS's p^T g).
template <typename T>
FH_HD T adaptive_update_exact(T& w, T& g, T& m, T& v, T& vmax, const AdaptiveScalars<T>& a, const OneMinus<T>& om) {
  weight_decay_exact(w, g, a.weight_decay, om.lr_wd, a.decoupled);
  adam_moments_exact(m, v, g, a.beta2, om.beta1, om.beta2);
  T vv = v;
  if (a.amsgrad) {
    vmax = fh_max(vmax, v);
    vv = vmax;
  }
  T p;
  if (a.form == kFormTorch) {
    const T denom = fh_sqrt(vv) / a.bc2_sqrt + a.eps;
    p = (-a.step_size) * (m / denom);
  } else {
    const T denom = partial_power(fh_sqrt(vv) + a.eps, a.partial);
    T s = a.step_size / denom;
    if (a.clip != kClipNone) s = fh_clamp(s, a.clip_lo, a.clip_hi);
    p = -(s * m);
  }
  w = w + p;
  return p;
}

// One adaptive step on one element. Returns p, the change applied to w (SWATS projects it on g).
// g is the effective gradient; L2 weight decay is added to it here (it is then the g of SWATS's p^T g).
template <typename T>
FH_HD T adaptive_update(T& w, T& g, T& m, T& v, T& vmax, const AdaptiveScalars<T>& a) {
  const OneMinus<T> om{T(1) - a.beta1, T(1) - a.beta2, T(1) - a.lr * a.weight_decay};
  return adaptive_update_exact(w, g, m, v, vmax, a, om);
}

// ---- MAS (Landro, Gallo, La Grassa 2020) ----------------------------------------------------------------------

// Adam's normalized direction m / (sqrt(v)/sqrt(bc2) + eps) from already updated moments (MAS's reducing
// variants recompute it in their second pass).
template <typename T>
FH_HD T adam_direction(T m, T v, T bc2_sqrt, T eps) {
  return m / (fh_sqrt(v) / bc2_sqrt + eps);
}

// Adam's normalized direction d_a = m / (sqrt(v)/sqrt(bc2) + eps) after the moment update (1 - beta from the
// caller, see OneMinus).
template <typename T>
FH_HD T mas_adam_direction_exact(T& m, T& v, T d, T beta2, T one_minus_beta1, T one_minus_beta2, T bc2_sqrt, T eps) {
  adam_moments_exact(m, v, d, beta2, one_minus_beta1, one_minus_beta2);
  return adam_direction(m, v, bc2_sqrt, eps);
}

// The "sum" variant with its step size coef = sgd_w*lr + adam_w*eta_a from the caller (computed in double):
// w -= coef * (sgd_w*d_s + adam_w*d_a).
template <typename T>
FH_HD void mas_sum_update_exact(T& w, T d_a, T d_s, T adam_w, T sgd_w, T coef) {
  w = w + (d_s * sgd_w + d_a * adam_w) * (-coef);
}

// The reducing MAS variants (seed 003, III.B; reference.mas_update), applied once the per-tensor sums are known.
// "correction" and "normalized" take one direction d with its step size c (w += d * -c: the Adam step
// (d_a, eta_a) or the SGD step (d_s, lr) for correction, (d_s, ||eta_a d_a|| / ||d_s||) for normalized).
template <typename T>
FH_HD void mas_single_update(T& w, T d, T c) {
  w = w + d * (-c);
}

// "vector": w -= adam_w*eta_a*d_a + sgd_w*ratio*d_s, with ca = adam_w*eta_a and cs = sgd_w*ratio.
template <typename T>
FH_HD void mas_vector_update(T& w, T d_a, T d_s, T ca, T cs) {
  w = w + (-(d_a * ca + d_s * cs));
}

// ---- Reductions -----------------------------------------------------------------------------------------------

// One term of a float64 inner product (SWATS's <p,g>, <p,p>; MAS's <d_a,d_s>, norms; ND-Adam's row sums).
// Partial sums are always accumulated in double, whatever T, so their order is the only source of rounding.
template <typename T>
FH_HD double dot_term(T a, T b) {
  return static_cast<double>(a) * static_cast<double>(b);
}

// ---- ND-Adam (Zhang 2017, Algorithm 1; reference.ndadam_vector_step) ------------------------------------------

// w / ||w||: the first-step normalization and the renormalization after each step.
template <typename T>
FH_HD T ndadam_normalize(T w, T norm) {
  return w / norm;
}

// The gradient with its radial part removed: g - <g, w> w (w has unit norm).
template <typename T>
FH_HD T ndadam_project(T g, T dot_gw, T w) {
  return g - dot_gw * w;
}

// The vector's first moment: m = b1*m + (1-b1)*g in torch's lerp form (1 - b1 from the caller, see OneMinus).
template <typename T>
FH_HD void ndadam_first_moment_exact(T& m, T g, T one_minus_beta1) {
  m = lerp(m, g, one_minus_beta1);
}

// The vector's second moment, one scalar per vector: v = b2*v + (1-b2)*<g, g> (1 - b2 from the caller).
template <typename T>
FH_HD T ndadam_second_moment_exact(T v, T gg, T beta2, T one_minus_beta2) {
  return v * beta2 + one_minus_beta2 * gg;
}

// The per-vector denominator sqrt(v) + eps.
template <typename T>
FH_HD T ndadam_denominator(T v, T eps) {
  return fh_sqrt(v) + eps;
}

// The descent step of one element: w - (m / denom) * step_size, step_size = lr*sqrt(bc2)/bc1.
template <typename T>
FH_HD T ndadam_descent(T w, T m, T denom, T step_size) {
  return w - (m / denom) * step_size;
}

}  // namespace rules
}  // namespace fused_hybrid
