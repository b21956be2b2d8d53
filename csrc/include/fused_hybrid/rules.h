// The per-element arithmetic of every fused_hybrid rule, written once for the CPU loops and the CUDA kernels.
//
// Each function works on one element in the compute type T (float, or double for float64 parameters) and
// mirrors a function of fused_hybrid/reference.py operation for operation, so that float32 results agree with
// the reference (and torch.optim) to a few ulps. Uniform flags (amsgrad, nesterov, ...) are plain bools: they
// are the same for every element of a call, so the branches cost nothing inside vectorized loops.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FH_HD __host__ __device__ __forceinline__
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
FH_HD T fh_max(T a, T b) { return a > b ? a : (b != b ? b : a); }  // NaN-propagating like torch.maximum
template <typename T>
FH_HD T fh_clamp(T x, T lo, T hi) { return x < lo ? lo : (x > hi ? hi : x); }

// torch.lerp's formula (aten/src/ATen/native/Lerp.h), which torch.optim.Adam uses for the first moment.
template <typename T>
FH_HD T lerp(T self, T end, T weight) {
  return (weight < T(0.5) && weight > T(-0.5)) ? self + weight * (end - self) : end - (end - self) * (T(1) - weight);
}

// The gradient the rules see: unscaled (GradScaler's 1/scale, 1 without a scaler), negated for maximize.
template <typename T>
FH_HD T effective_grad(T g, T inv_scale, bool maximize) {
  g = g * inv_scale;
  return maximize ? -g : g;
}

// ---- SGD family -----------------------------------------------------------------------------------------------

// torch.optim.SGD: buf = g on the first step, else momentum*buf + (1-dampening)*g; Nesterov: g + momentum*buf.
template <typename T>
FH_HD T sgd_direction(T g, T& buf, T momentum, T dampening, bool nesterov, bool first) {
  buf = first ? g : buf * momentum + (T(1) - dampening) * g;
  return nesterov ? g + momentum * buf : buf;
}

// SWATS SGD phase (Keskar & Socher, Alg. 1 lines 5-6): v = b1*v + g; w -= (1-b1)*Lambda*v, where
// sgd_lr = (1-b1)*Lambda*lr_now/lr_at_switch. The buffer is zero at the switch, so the first SGD step uses v = g.
template <typename T>
FH_HD void swats_sgd_phase(T& w, T g, T& buf, T beta1, T sgd_lr, bool nesterov) {
  buf = buf * beta1 + g;
  const T d = nesterov ? g + beta1 * buf : buf;
  w = w + (-sgd_lr) * d;
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

// Adam-family moments (Kingma & Ba, Alg. 1), in torch.optim's order of operations.
template <typename T>
FH_HD void adam_moments(T& m, T& v, T g, T beta1, T beta2) {
  m = lerp(m, g, T(1) - beta1);
  v = v * beta2 + (T(1) - beta2) * g * g;
}

// x^(2p) for Padam's partial power, with exact nested square roots for p = 1/2, 1/4, 1/8.
template <typename T>
FH_HD T partial_power(T x, T p) {
  if (p == T(0.5)) return x;
  if (p == T(0.25)) return fh_sqrt(x);
  if (p == T(0.125)) return fh_sqrt(fh_sqrt(x));
  return std::exp2(T(2) * p * std::log2(x));
}

// One adaptive step on one element. Returns p, the change applied to w (SWATS projects it on g).
// g is the effective gradient; L2 weight decay is added to it here (it is then the g of SWATS's p^T g).
template <typename T>
FH_HD T adaptive_update(T& w, T& g, T& m, T& v, T& vmax, const AdaptiveScalars<T>& a) {
  if (a.weight_decay != T(0)) {
    if (a.decoupled) w = w * (T(1) - a.lr * a.weight_decay);
    else g = g + a.weight_decay * w;
  }
  adam_moments(m, v, g, a.beta1, a.beta2);
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

// ---- MAS (Landro, Gallo, La Grassa 2020) ----------------------------------------------------------------------

// Adam's normalized direction d_a = m / (sqrt(v)/sqrt(bc2) + eps) after the moment update.
template <typename T>
FH_HD T mas_adam_direction(T& m, T& v, T d, T beta1, T beta2, T bc2_sqrt, T eps) {
  adam_moments(m, v, d, beta1, beta2);
  return m / (fh_sqrt(v) / bc2_sqrt + eps);
}

// The "sum" variant: w -= (sgd_w*lr + adam_w*eta_a) * (sgd_w*d_s + adam_w*d_a).
template <typename T>
FH_HD void mas_sum_update(T& w, T d_a, T d_s, T lr, T eta_a, T adam_w, T sgd_w) {
  w = w + (d_s * sgd_w + d_a * adam_w) * (-(sgd_w * lr + adam_w * eta_a));
}

}  // namespace rules
}  // namespace fused_hybrid
