// Stochastic rounding and Kahan-compensated stores of bfloat16 / float16 params on the CPU (issue 16).
//
// How: a 16-bit tensor whose group asked for either option is stepped through float32 staging. Per chunk, its
// weights and gradients are widened (exactly) into two thread-local float32 buffers, the family's own float32
// chunk function runs on them (the same rules.h arithmetic: a bfloat16 loop widens each element to float32 and
// computes in float32 too, so the float32 results are bitwise those that loop would round), and the results are
// stored through rounding.h (round_sr with the counter-based bits of rand32, or kahan_store). So the per-element
// arithmetic is not duplicated, and no chunk loop gets another template parameter (the option costs no
// instantiations: the float32 loops exist already). Its price is one extra pass over the chunk in cache.
//
// The random bits of element i of tensor t at step k are rand32(seed[t], k, 0, i) with i the flat index within
// the tensor (stream 0: the param store), whatever the chunking or thread count: the same bits as every backend.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "fused_hybrid/round_mode.h"  // kRound*, kSixteenBit
#include "fused_hybrid/rounding.h"
#include "fused_hybrid/state_dtype.h"  // bf16_state
#include "multi_tensor.h"

namespace fused_hybrid {
namespace cpu {

// The per-tensor data of a call's 16-bit stores.
struct LowpStore {
  int64_t mode = kRoundNearest;
  std::vector<uint64_t> seeds;    // stochastic rounding: each tensor's seed
  std::vector<uint32_t> steps;    // stochastic rounding: each tensor's step count after this step's increment
  std::vector<uint16_t*> comps;   // Kahan: each tensor's compensation buffer
  bool active() const { return mode != kRoundNearest; }
};

// Checks the rounding arguments of an op and gathers them. ks: the tensors' new step counts (stochastic rounding).
// bf16_state: the call's moment buffers are bfloat16, whose stores stochastic rounding rounds too (float32 params
// may then carry rounding mode 1 for their state alone).
LowpStore lowp_setup(const char* op, at::TensorList params, int64_t rounding, at::IntArrayRef seeds,
                     at::TensorList kahan_comps, const std::vector<double>& ks, bool bf16_state = false);

// The loops (internal linkage from here on, as adaptive_kernel.h's: they are multiversioned with FH_CPU_CLONES),
// each a straight loop for GCC to vectorize: Philox over whole groups of four into a buffer of random words, then the
// rounding; or the compensated store.
namespace {

FH_CPU_CLONES void philox_words(uint32_t* __restrict__ out, uint64_t group0, int64_t ngroups, uint32_t step,
                                uint32_t k0, uint32_t k1, uint32_t stream = 0) {
  for (int64_t j = 0; j < ngroups; ++j) {
    const uint64_t g = group0 + static_cast<uint64_t>(j);
    const rounding::Philox4 r =
        rounding::philox4x32_10(static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), stream, step, k0, k1);
    out[4 * j] = r.x0;
    out[4 * j + 1] = r.x1;
    out[4 * j + 2] = r.x2;
    out[4 * j + 3] = r.x3;
  }
}

template <rounding::Format F>
FH_CPU_CLONES void sr_loop(uint16_t* __restrict__ w, const float* __restrict__ x, const uint32_t* __restrict__ r,
                           int64_t n) {
  for (int64_t i = 0; i < n; ++i) w[i] = rounding::round_sr<F>(x[i], r[i]);
}

template <rounding::Format F>
FH_CPU_CLONES void kahan_loop(uint16_t* __restrict__ w, uint16_t* __restrict__ c, const float* __restrict__ x,
                              int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t wi = w[i], ci = c[i];
    rounding::kahan_store<F>(x[i], wi, ci);
    w[i] = wi;
    c[i] = ci;
  }
}

template <typename S>
FH_CPU_CLONES void widen(float* __restrict__ out, const S* __restrict__ in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

// Thread-local random words (grown as needed).
inline uint32_t* random_words(int64_t n) {
  thread_local std::vector<uint32_t> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// The random words rand32(seed[t], step[t], stream, i) of elements i = index0 .. index0 + n (a thread-local buffer,
// valid until the next call). rand32's layout: one Philox call per aligned group of four elements; the groups cut by
// the range's ends are computed whole and partly used.
inline const uint32_t* sr_words(int64_t n, int64_t index0, const LowpStore& lp, int64_t t, uint32_t stream) {
  const uint64_t seed = lp.seeds[t];
  const auto first = static_cast<uint64_t>(index0) >> 2, last = static_cast<uint64_t>(index0 + n - 1) >> 2;
  const auto ngroups = static_cast<int64_t>(last - first + 1);
  uint32_t* r = random_words(4 * ngroups);
  philox_words(r, first, ngroups, lp.steps[t], static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), stream);
  return r + (index0 & 3);
}

// Stores the float32 results x[0, n) into the 16-bit w (elements index0 .. index0 + n of tensor t).
template <typename scalar_t>
void lowp_store(scalar_t* w, const float* x, int64_t n, int64_t index0, const LowpStore& lp, int64_t t) {
  constexpr auto F = std::is_same_v<scalar_t, c10::BFloat16> ? rounding::Format::kBF16 : rounding::Format::kFP16;
  uint16_t* wb = reinterpret_cast<uint16_t*>(w);
  if (n <= 0) return;
  if (lp.mode == kRoundKahan) {
    kahan_loop<F>(wb, lp.comps[t] + index0, x, n);
    return;
  }
  sr_loop<F>(wb, x, sr_words(n, index0, lp, t, 0), n);
}

// Thread-local float32 staging buffers (grown as needed: chunks are kChunk elements, ND-Adam row blocks may be
// longer): 0 and 1 for a 16-bit param's weights and gradients, 2 + j for state buffer j.
constexpr int kMaxStates = 4;

template <typename O>
O* staging(int which, int64_t n) {
  thread_local std::vector<O> bufs[2 + kMaxStates];
  auto& b = bufs[which];
  if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
  return b.data();
}

// ---- bfloat16 moment buffers (a group's state_dtype=torch.bfloat16, issue 16) -----------------------------------
// A call's state is all float32 or all bfloat16 (the optimizer makes every moment buffer of a bucket in its group's
// state dtype). bfloat16 state is staged like a 16-bit param: per chunk each buffer the chunk function uses is
// widened (exactly) into a float32 staging buffer, the family's float32 chunk function runs on it, and it is stored
// back rounded to nearest even by rounding.h's bf16_rne (integer arithmetic: the bits of the reference's
// rounding.py and of the Triton kernels' store_cast). So the math is float32 throughout (this step's update uses the
// unrounded new moments, as a fused kernel keeping them in registers would), no loop gets another template
// parameter, and the float32 loops serve every param dtype. Float32 params with bfloat16 state are stepped in place;
// 16-bit params are staged too, then stored as the nearest-even cast of the unstaged loops (or lp's rounding).

// One state buffer of a chunk: the tensor's data (as O*, whatever its dtype: offset only through bf16_at when the
// state is bfloat16), the chunk's first element and count in that buffer. base null: the chunk function does not
// use it.
template <typename O>
struct StateRange {
  O* base = nullptr;
  int64_t off = 0;
  int64_t n = 0;
};

inline uint16_t* bf16_at(void* base, int64_t off) { return static_cast<uint16_t*>(base) + off; }

FH_CPU_CLONES void widen_bf16(float* __restrict__ out, const uint16_t* __restrict__ in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = rounding::bf16_to_float(in[i]);
}

FH_CPU_CLONES void store_bf16(uint16_t* __restrict__ out, const float* __restrict__ in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = rounding::bf16_rne(in[i]);
}

// A bfloat16 moment store: nearest even, or (lp in stochastic-rounding mode) stochastically rounded with the bits of
// stream 1 + j (j: the buffer's place in the family's state array, hyper.STATE_STREAMS; stream 0 is the param
// store), element index0 + i of the buffer.
inline void store_state_bf16(uint16_t* out, const float* in, int64_t n, int64_t index0, const LowpStore* lp, int64_t t,
                             size_t j) {
  if (lp == nullptr || lp->mode != kRoundStochastic) {
    store_bf16(out, in, n);
    return;
  }
  sr_loop<rounding::Format::kBF16>(out, in, sr_words(n, index0, *lp, t, static_cast<uint32_t>(1 + j)), n);
}

template <typename S>
FH_CPU_CLONES void narrow(S* __restrict__ out, const float* __restrict__ in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<S>(in[i]);
}

// Runs run(s) with s[j] the float32 view of state buffer j: the buffer itself (float32 state) or its widened copy
// (bfloat16 state, stored back rounded afterwards when `store`; MAS's first pass computes its sums from the new
// moments but leaves storing them to its second pass, which recomputes them: see mas.cpp).
template <typename O, size_t K, typename Run>
void with_states(bool bf16, bool store, const std::array<StateRange<O>, K>& st, const Run& run,
                 const LowpStore* lp = nullptr, int64_t t = 0) {
  O* s[K];
  for (size_t j = 0; j < K; ++j) {
    s[j] = st[j].base == nullptr ? nullptr : st[j].base + (bf16 ? 0 : st[j].off);
  }
  if (!bf16) {
    run(static_cast<O* const*>(s));
    return;
  }
  if constexpr (std::is_same_v<O, float>) {
    for (size_t j = 0; j < K; ++j) {
      if (st[j].base == nullptr) continue;
      s[j] = staging<float>(2 + static_cast<int>(j), st[j].n);
      widen_bf16(s[j], bf16_at(st[j].base, st[j].off), st[j].n);
    }
    run(static_cast<O* const*>(s));
    if (!store) return;
    for (size_t j = 0; j < K; ++j) {
      if (st[j].base != nullptr) store_state_bf16(bf16_at(st[j].base, st[j].off), s[j], st[j].n, st[j].off, lp, t, j);
    }
  } else {
    TORCH_CHECK(false, "fused_hybrid: bfloat16 state needs float32/bfloat16/float16 params");
  }
}

// Runs run(w32, g32, s) on float32 views of w[0, n), g[0, n) (g may be null: run gets null) and the state ranges st
// (as with_states), then stores w32 into w as lp says (the nearest-even cast when lp is inactive) and the bfloat16
// state rounded to nearest even. index0: the flat index of w[0] within tensor t. For float32 params (bfloat16 state
// only: lp is inactive for them) w and g are used in place. O is the family's opmath type: the callers compile this
// for every dtype they dispatch on (their dispatch lambda is no template, so an `if constexpr` there would not
// discard anything), but lowp_setup and bf16_state let only float32 opmath get here.
template <typename scalar_t, typename O, size_t K, typename Run>
void staged_step(scalar_t* w, const scalar_t* g, int64_t n, int64_t index0, const LowpStore& lp, int64_t t, bool bf16,
                 const std::array<StateRange<O>, K>& st, const Run& run) {
  if constexpr (std::is_same_v<O, float> && (kSixteenBit<scalar_t> || std::is_same_v<scalar_t, float>)) {
    with_states<O, K>(bf16, true, st, [&](O* const* s) {
      if constexpr (kSixteenBit<scalar_t>) {
        float* w32 = staging<float>(0, n);
        float* g32 = g != nullptr ? staging<float>(1, n) : nullptr;
        widen(w32, w, n);
        if (g != nullptr) widen(g32, g, n);
        run(w32, static_cast<const float*>(g32), s);
        if (lp.active()) {
          lowp_store(w, w32, n, index0, lp, t);
        } else {
          narrow(w, w32, n);
        }
      } else {
        run(w, g, s);  // (float32 params: lp, if active, is their state's stochastic rounding)
      }
    }, &lp, t);
  } else {
    TORCH_CHECK(false, "fused_hybrid: stochastic rounding / Kahan stores apply to bfloat16/float16 params only, "
                "bfloat16 state to float32/bfloat16/float16 ones");
  }
}

}  // namespace
}  // namespace cpu
}  // namespace fused_hybrid
