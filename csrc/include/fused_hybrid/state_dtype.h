// Whether an op's moment buffers are bfloat16 (a group's state_dtype, issue 16), decided the same way by the CPU
// and CUDA ops: the first non-empty state list decides (the ops' list checks then hold every list to it); float64
// params always have float64 state (rules.state_dtype never narrows it), so bfloat16 state with them is refused.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>

namespace fused_hybrid {

inline bool bf16_state(const char* op, at::ScalarType param_dtype, std::initializer_list<at::TensorList> lists) {
  for (const auto& l : lists) {
    if (l.empty() || !l[0].defined()) continue;
    const bool b = l[0].scalar_type() == at::kBFloat16;
    TORCH_CHECK(!b || param_dtype != at::kDouble, op, ": bfloat16 state needs float32/bfloat16/float16 params, not ",
                param_dtype);
    return b;
  }
  return false;
}

}  // namespace fused_hybrid
