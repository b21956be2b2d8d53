// The test ops that expose rounding.h's primitives element by element (tests/test_rounding.py compares them bit
// for bit with fused_hybrid/rounding.py and triton_kernels/rounding.py). One element function serves the CPU op
// (csrc/cpu/rounding_ops.cpp), the CUDA kernel (csrc/cuda/rounding.cu) and its simulated build (csrc/sim).
#pragma once

#include <cstdint>

#include "fused_hybrid/rounding.h"

namespace fused_hybrid {
namespace rounding {

// _round_test(x, mode, seed, step, tensor_id, offset): element i of the int64 result, for float32 x[i] and the
// element index offset + i:
//   0 bf16_rne   1 bf16_sr   2 fp16_rne   3 fp16_sr   (16-bit patterns; stochastic modes draw rand32 of the index)
//   4 rand32 of the index (x unused)
// With `rand` given (int64, the 32 random bits per element), the stochastic modes use those bits instead of rand32:
// the tests enumerate every value of the bits a rounding consumes.
// _kahan_store_test(x, w, c, fp16): rounding.h's kahan_store per element; w, c are 16-bit patterns in int64.
constexpr const char* kRoundTestSchema =
    "_round_test(Tensor x, int mode, int seed=0, int step=0, int tensor_id=0, int offset=0, Tensor? rand=None) "
    "-> Tensor";
constexpr const char* kKahanTestSchema = "_kahan_store_test(Tensor x, Tensor w, Tensor c, bool fp16) -> Tensor[]";
constexpr int kRoundTestModes = 5;

// `given`: the element's random bits from the op's `rand` tensor, or nullptr (then rand32 of the index).
FH_RD int64_t round_test_element(int mode, float x, uint64_t seed, uint32_t step, uint32_t tensor_id, uint64_t idx,
                                 const int64_t* given) {
  const uint32_t r = given != nullptr ? static_cast<uint32_t>(*given) : rand32(seed, step, tensor_id, idx);
  switch (mode) {
    case 0: return bf16_rne(x);
    case 1: return bf16_sr(x, r);
    case 2: return fp16_rne(x);
    case 3: return fp16_sr(x, r);
    default: return r;
  }
}

FH_RD void kahan_test_element(bool fp16, float x, int64_t& w, int64_t& c) {
  uint16_t wb = static_cast<uint16_t>(w), cb = static_cast<uint16_t>(c);
  if (fp16) kahan_store<Format::kFP16>(x, wb, cb);
  else kahan_store<Format::kBF16>(x, wb, cb);
  w = wb;
  c = cb;
}

}  // namespace rounding
}  // namespace fused_hybrid
