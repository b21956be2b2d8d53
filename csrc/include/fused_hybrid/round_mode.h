// The ops' `rounding` argument (fused_hybrid.hyper.ROUND_*: how 16-bit params are stored, issue 16) and the param
// types it applies to, for the CPU and the CUDA ops alike.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

namespace fused_hybrid {

constexpr int kRoundNearest = 0;     // round to nearest even: the plain conversion
constexpr int kRoundStochastic = 1;  // stochastic rounding with counter-based bits (rounding.h: rand32)
constexpr int kRoundKahan = 2;       // nearest even plus a compensation buffer per element

// The param types the stores above apply to (float32 / float64 params are stored exactly).
template <typename T>
inline constexpr bool kSixteenBit = std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

}  // namespace fused_hybrid
