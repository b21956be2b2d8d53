// Bit-exact rounding of float32 results to bfloat16 / float16, written as integer arithmetic on the float32 bits,
// for the CPU loops (GCC vectorizes it: every branch is a select), the CUDA kernels (nvcc) and the simulated ones
// (csrc/sim). The same functions exist in Python (fused_hybrid/rounding.py, torch integer ops) and Triton
// (triton_kernels/rounding.py); tests/test_rounding.py checks all of them agree bit for bit.
//
// Why integer arithmetic and not the hardware cast: the results must be identical on every backend, and the
// casts are not. Triton 3.8's interpreter converts float32 -> bfloat16 by truncation (its cast_impl calls
// _convert_float without a rounding mode) where the GPU's cvt.rn rounds to nearest even, and stochastic rounding
// has no hardware cast at all on CPUs. Integer arithmetic is the same everywhere.
//
// Contents (all FH_RD: inline host and device functions):
//   bf16_rne(x), fp16_rne(x)          float32 -> bits of the nearest bfloat16 / float16, ties to even
//   bf16_sr(x, r), fp16_sr(x, r)      stochastic rounding with 32 random bits r: rounds |x| up with probability
//                                     equal to its distance from the value below, in units of the spacing there
//   bf16_to_float, fp16_to_float      exact widening of the bits
//   philox4x32_10, rand32             the counter-based random bits of stochastic rounding
//   kahan_store<F>(x, w, c)           a store with a compensation buffer (Kahan summation)
#pragma once

#include <cstdint>

#if !defined(__CUDA_ARCH__)
#include <bit>
#endif

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FH_RD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined: the CPU loops vectorize only once the element function is inlined.
#define FH_RD inline __attribute__((always_inline))
#else
#define FH_RD inline
#endif

namespace fused_hybrid {
namespace rounding {

enum class Format : int { kBF16 = 0, kFP16 = 1 };

FH_RD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  return std::bit_cast<uint32_t>(x);
#endif
}

FH_RD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return std::bit_cast<float>(u);
#endif
}

// ---- bfloat16 ----------------------------------------------------------------------------------------------------
// bfloat16 is float32's upper half (same exponent range), so rounding drops the low 16 bits and propagates the
// carry; subnormals, the carry into the exponent and the overflow of the largest values to infinity all fall out
// of the integer addition. NaN: the canonical quiet NaN 0x7FC0 of c10::BFloat16's scalar conversion (torch's
// vectorized CPU cast gives 0xFFFF, measured with torch 2.14, and PTX's cvt a canonical NaN of its own: NaN bits
// differ between torch's own paths; these are the same on every backend). Adding to a NaN's bits could otherwise
// carry it into infinity.

FH_RD bool f32_is_nan(uint32_t u) { return (u & 0x7FFFFFFFu) > 0x7F800000u; }

FH_RD uint16_t bf16_rne(float x) {
  const uint32_t u = float_bits(x);
  // Half the dropped range minus one, plus the kept lsb: a tie (low half exactly 0x8000) rounds up only when the
  // kept part is odd.
  const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(f32_is_nan(u) ? 0x7FC0u : r);
}

// Stochastic rounding: adding 16 uniform random bits to the 16 dropped bits carries into the kept part with
// probability (dropped bits) / 2^16, which makes E[result] = x exactly (sign-magnitude: the magnitude is rounded,
// so negative values are as unbiased as positive ones). Values above the largest bfloat16 round to infinity with
// the probability that a format with one more binade would round them up to 2^128 (as the hardware-free
// formulations of optimi and torchao do: add the random bits, truncate).
FH_RD uint16_t bf16_sr(float x, uint32_t rand) {
  const uint32_t u = float_bits(x);
  const uint32_t r = (u + (rand & 0xFFFFu)) >> 16;
  return static_cast<uint16_t>(f32_is_nan(u) ? 0x7FC0u : r);
}

FH_RD float bf16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

// ---- float16 -----------------------------------------------------------------------------------------------------
// float16: 5 exponent bits (bias 15), 10 mantissa bits; normal from 2^-14, subnormals k * 2^-24 (k < 1024),
// largest finite 65504. NaN: sign | 0x7E00 (the quiet NaN c10::Half's scalar conversion produces; torch's
// vectorized CPU cast may keep payload bits, so tests compare NaN-ness for float16, not the bits).
//
// Normal results (|x| >= 2^-14): rebias the exponent (fp32 bias 127 -> 15: subtract 112 << 23) and round off 13
// mantissa bits as for bfloat16; a carry out of the largest binade gives 0x7C00, infinity. |x| >= 65520 (the
// midpoint between 65504 and 2^16, which ties to even: up) is infinity. Subnormal results: the significand with
// its implicit bit, m (24 bits), scaled to units of 2^-24 is m >> s with s = 126 - (biased exponent), rounded as
// above; s is capped at 25, beyond which everything rounds to zero (|x| < 2^-25 is below half the smallest
// subnormal; exactly 2^-25 ties to even, 0).

FH_RD uint16_t fp16_rne(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // Normal range.
  const uint32_t rb = a - 0x38000000u;
  const uint32_t normal = (rb + 0x0FFFu + ((rb >> 13) & 1u)) >> 13;
  // Subnormal range (e <= 112). fp32 subnormals (e = 0) have no implicit bit and are far below 2^-25.
  const uint32_t e = a >> 23;
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t s0 = 126u - (e < 126u ? e : 126u);  // e >= 126 only in the normal range (then unused)
  const uint32_t s = s0 < 14u ? 14u : s0 > 25u ? 25u : s0;  // clamped: no shift out of range in unused lanes
  const uint32_t sub = (m + ((1u << (s - 1)) - 1u) + ((m >> s) & 1u)) >> s;
  const uint32_t mag = a > 0x7F800000u ? 0x7E00u                      // NaN
                       : a >= 0x477FF000u ? 0x7C00u                   // >= 65520 (and infinity): infinity
                       : a >= 0x38800000u ? normal                    // >= 2^-14
                       : sub;
  return static_cast<uint16_t>(sign | mag);
}

// Stochastic rounding to float16. Normal results: 13 random bits added to the 13 dropped bits, exact probability
// (dropped)/2^13 (a carry out of the top binade gives infinity: |x| in (65504, 65536) rounds to infinity with
// probability (|x| - 65504) / 32, and |x| >= 65536 is infinity). Subnormal results: the result is m / 2^s rounded
// up with probability equal to the dropped fraction, which for large s has more bits than the 32 random ones; it
// uses the fraction's top 32 bits f (m << (32 - s) for s <= 32, m >> (s - 32) beyond) and rounds up when f + r
// carries out of 32 bits: P(up) is exact when s <= 32 and low by less than 2^-32 otherwise (a bias below 2^-56
// in absolute value: far below anything float16 resolves). So tiny values keep their expectation instead of
// flushing to zero, which is why this path exists at all. (The same as floor(((m * 2^32 >> s) + r) / 2^32) in 64
// bits, fused_hybrid/rounding.py's form; written in 32 bits so that GCC vectorizes it with AVX2's variable shifts.)
FH_RD uint16_t fp16_sr(float x, uint32_t rand) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  const uint32_t normal = (a - 0x38000000u + (rand & 0x1FFFu)) >> 13;
  const uint32_t e = a >> 23;
  const uint32_t m = e != 0u ? ((a & 0x7FFFFFu) | 0x800000u) : (a & 0x7FFFFFu);
  const uint32_t ee = e != 0u ? e : 1u;  // fp32 subnormals: exponent 1 - 127 without the implicit bit
  const uint32_t s0 = 126u - (ee < 126u ? ee : 126u);
  // Shift counts clamped into [0, 31] (C++ and PTX leave wider shifts undefined; the clamped lanes are unused
  // or, for q, already 0 since m < 2^24).
  const uint32_t q = m >> (s0 < 31u ? s0 : 31u);
  const uint32_t up_shift = s0 < 1u ? 31u : s0 > 32u ? 0u : 32u - s0;
  const uint32_t down_shift = s0 > 32u ? (s0 - 32u < 31u ? s0 - 32u : 31u) : 0u;
  const uint32_t f = s0 > 32u ? (m >> down_shift) : (m << up_shift);
  const uint32_t sub = q + (f + rand < f ? 1u : 0u);
  const uint32_t mag = a > 0x7F800000u ? 0x7E00u
                       : a >= 0x47800000u ? 0x7C00u  // >= 2^16 (and infinity)
                       : a >= 0x38800000u ? normal
                       : sub;
  return static_cast<uint16_t>(sign | mag);
}

// Exact: normal values by rebiasing the exponent, subnormals k * 2^-24 as float(k) * 2^-24 (both factors and the
// product are exact float32 normals), infinity and NaN by setting the exponent to all ones.
FH_RD float fp16_to_float(uint16_t h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu;
  const uint32_t m = h & 0x3FFu;
  const uint32_t normal = sign | ((e + 112u) << 23) | (m << 13);
  const uint32_t special = sign | 0x7F800000u | (m << 13);
  const float sub = static_cast<float>(m) * 5.9604644775390625e-08f;  // 2^-24
  const float mag = e == 0u ? sub : bits_float(e == 31u ? special : normal);
  return e == 0u && sign != 0u ? -mag : mag;
}

template <Format F>
FH_RD uint16_t round_rne(float x) {
  if constexpr (F == Format::kBF16) return bf16_rne(x);
  else return fp16_rne(x);
}

template <Format F>
FH_RD uint16_t round_sr(float x, uint32_t rand) {
  if constexpr (F == Format::kBF16) return bf16_sr(x, rand);
  else return fp16_sr(x, rand);
}

template <Format F>
FH_RD float to_float(uint16_t b) {
  if constexpr (F == Format::kBF16) return bf16_to_float(b);
  else return fp16_to_float(b);
}

template <Format F>
FH_RD bool is_finite(uint16_t b) {
  if constexpr (F == Format::kBF16) return (b & 0x7F80u) != 0x7F80u;
  else return (b & 0x7C00u) != 0x7C00u;
}

// ---- counter-based random bits -----------------------------------------------------------------------------------
// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a 128-bit
// counter and a 64-bit key through 10 rounds of two 32x32->64 multiplies; it passes TestU01's BigCrush (ibid.,
// Table 2) and is the generator of cuRAND's and torch's CUDA RNG. Written here from the paper's definition (the
// multipliers 0xD2511F53 / 0xCD9E8D57 and Weyl key increments 0x9E3779B9 / 0xBB67AE85); tests/test_rounding.py
// checks it against the Random123 known-answer vectors and Triton's own tl.philox.

FH_RD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

struct Philox4 {
  uint32_t x0, x1, x2, x3;
};

FH_RD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)  // (the host pass of nvcc hands __host__ __device__ bodies to GCC too)
#pragma unroll
#endif
  for (int i = 0; i < 10; ++i) {
    const uint32_t hi0 = mulhi32(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = mulhi32(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {c0, c1, c2, c3};
}

// The 32 random bits of element `index` (its index within its tensor, so that the bits do not depend on how a
// backend splits the work) of tensor `tensor_id` at optimizer step `step`, under the 64-bit `seed`: one Philox
// call serves four consecutive elements, counter (index / 4 low word, high word, tensor_id, step), key = seed,
// word index % 4. (A kernel that handles four aligned elements may call philox4x32_10 once: same bits.)
FH_RD uint32_t rand32(uint64_t seed, uint32_t step, uint32_t tensor_id, uint64_t index) {
  const uint64_t group = index >> 2;
  const Philox4 r = philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32), tensor_id, step,
                                  static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const uint32_t j = static_cast<uint32_t>(index) & 3u;
  return j == 0u ? r.x0 : j == 1u ? r.x1 : j == 2u ? r.x2 : r.x3;
}

// ---- Kahan-compensated stores --------------------------------------------------------------------------------------
// A low-precision parameter w with a compensation buffer c of the same format: the value the optimizer tracks is
// w + c, and c carries each store's rounding error into the next one, so updates far below half an ulp of w
// accumulate instead of being lost (Kahan summation applied to weight updates: Zamirai et al., "Revisiting
// BFloat16 Training", arXiv:2010.06192, Alg. 2; optimi's kahan_sum option, optimi/sgd.py and the optimi docs'
// "Low Precision Training with Kahan Summation").
//
// Given the rule's float32 result x (computed from the stored w) and the stored (w, c):
//     y     = x + float(c)                 (float32)
//     w_new = round_nearest_even(y)
//     c_new = round_nearest_even(y - float(w_new))   (y - float(w_new) is exact in float32), 0 if w_new is not
//                                                     finite (an infinite or NaN weight must not turn c into NaN)
// This is optimi's sequence (c += u; p_new = p + c; c += p_old - p_new) with the sums kept in float32 instead of
// rounded to the buffer's format after each operation. w and c are in/out bits.
template <Format F>
FH_RD void kahan_store(float x, uint16_t& w, uint16_t& c) {
  const float y = x + to_float<F>(c);
  const uint16_t wn = round_rne<F>(y);
  const uint16_t cn = round_rne<F>(y - to_float<F>(wn));
  w = wn;
  c = is_finite<F>(wn) ? cn : static_cast<uint16_t>(0);
}

}  // namespace rounding
}  // namespace fused_hybrid
