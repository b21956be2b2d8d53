// The simulator's stand-in for c10/cuda/CUDAStream.h: launches run synchronously, so there is one stream, none.
#pragma once

#include "../../../cuda_sim.h"

namespace c10::cuda {
struct CUDAStream {};
inline CUDAStream getCurrentCUDAStream() { return {}; }
}  // namespace c10::cuda
