// The simulated CUDA kernels, part 1 of 2 (two translation units: the build runs on two cores): csrc/cuda's
// sources compiled unchanged by the host compiler; cuda_sim.h comes in through the shimmed c10/cuda headers.
#include "../cuda/common.cu"
#include "../cuda/adaptive.cu"
#include "../cuda/rms.cu"
