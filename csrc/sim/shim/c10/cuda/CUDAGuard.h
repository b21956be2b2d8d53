// The simulator's stand-in for c10/cuda/CUDAGuard.h (csrc/sim/shim shadows torch's c10/cuda headers when the
// CUDA sources are built with the host compiler): there is no device to switch to.
#pragma once

#include <c10/core/Device.h>

#include "../../../cuda_sim.h"

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(const c10::Device&) {}
};
}  // namespace c10::cuda
