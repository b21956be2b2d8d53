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

#include <cstdint>
#include <type_traits>
#include <vector>

#include "fused_hybrid/rounding.h"
#include "multi_tensor.h"

namespace fused_hybrid {
namespace cpu {

// fused_hybrid.hyper.ROUND_*
constexpr int64_t kRoundNearest = 0;
constexpr int64_t kRoundStochastic = 1;
constexpr int64_t kRoundKahan = 2;

template <typename T>
inline constexpr bool kLowPrecision = std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

// The per-tensor data of a call's 16-bit stores.
struct LowpStore {
  int64_t mode = kRoundNearest;
  std::vector<uint64_t> seeds;    // stochastic rounding: each tensor's seed
  std::vector<uint32_t> steps;    // stochastic rounding: each tensor's step count after this step's increment
  std::vector<uint16_t*> comps;   // Kahan: each tensor's compensation buffer
  bool active() const { return mode != kRoundNearest; }
};

// Checks the rounding arguments of an op and gathers them. ks: the tensors' new step counts (stochastic rounding).
LowpStore lowp_setup(const char* op, at::TensorList params, int64_t rounding, at::IntArrayRef seeds,
                     at::TensorList kahan_comps, const std::vector<double>& ks);

// Stores the float32 results x[0, n) into the 16-bit w (elements index0 .. index0 + n of tensor t).
template <typename scalar_t>
void lowp_store(scalar_t* w, const float* x, int64_t n, int64_t index0, const LowpStore& lp, int64_t t) {
  constexpr auto F = std::is_same_v<scalar_t, c10::BFloat16> ? rounding::Format::kBF16 : rounding::Format::kFP16;
  uint16_t* wb = reinterpret_cast<uint16_t*>(w);
  if (lp.mode == kRoundKahan) {
    uint16_t* cb = lp.comps[t] + index0;
    for (int64_t i = 0; i < n; ++i) rounding::kahan_store<F>(x[i], wb[i], cb[i]);
    return;
  }
  // One Philox call serves the four elements of an aligned group (rand32's layout); groups cut by the range's
  // ends are computed whole and partly used.
  const uint64_t seed = lp.seeds[t];
  const uint32_t step = lp.steps[t];
  const auto k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  int64_t i = 0;
  while (i < n) {
    const auto idx = static_cast<uint64_t>(index0 + i);
    const uint64_t group = idx >> 2;
    const rounding::Philox4 r = rounding::philox4x32_10(static_cast<uint32_t>(group),
                                                        static_cast<uint32_t>(group >> 32), 0u, step, k0, k1);
    const uint32_t words[4] = {r.x0, r.x1, r.x2, r.x3};
    for (uint32_t j = static_cast<uint32_t>(idx & 3u); j < 4u && i < n; ++j, ++i) {
      wb[i] = rounding::round_sr<F>(x[i], words[j]);
    }
  }
}

// Thread-local float32 staging buffers (grown as needed: chunks are kChunk elements, ND-Adam row blocks may be
// longer).
template <typename O>
O* staging(int which, int64_t n) {
  thread_local std::vector<O> bufs[2];
  auto& b = bufs[which];
  if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
  return b.data();
}

// Runs run(w32, g32) on float32 copies of w[0, n) and g[0, n) (g may be null: run gets null), then stores w32 into
// w as lp says. index0: the flat index of w[0] within tensor t. O is the family's opmath type: the callers compile
// this for every dtype they dispatch on (their dispatch lambda is no template, so an `if constexpr` there would
// not discard anything), but lowp_setup lets only 16-bit params (O = float) get here.
template <typename scalar_t, typename O, typename Run>
void staged_step(scalar_t* w, const scalar_t* g, int64_t n, int64_t index0, const LowpStore& lp, int64_t t,
                 const Run& run) {
  if constexpr (kLowPrecision<scalar_t> && std::is_same_v<O, float>) {
    float* w32 = staging<float>(0, n);
    float* g32 = g != nullptr ? staging<float>(1, n) : nullptr;
    for (int64_t i = 0; i < n; ++i) w32[i] = static_cast<float>(w[i]);
    if (g != nullptr) {
      for (int64_t i = 0; i < n; ++i) g32[i] = static_cast<float>(g[i]);
    }
    run(w32, static_cast<const float*>(g32));
    lowp_store(w, w32, n, index0, lp, t);
  } else {
    TORCH_CHECK(false, "fused_hybrid: stochastic rounding / Kahan stores apply to bfloat16/float16 params only");
  }
}

}  // namespace cpu
}  // namespace fused_hybrid
