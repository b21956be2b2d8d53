// The simulated CUDA kernels, part 2 of 2 (see kernels_a.cpp).
#include "../cuda/sgd.cu"
#include "../cuda/mas.cu"
#include "../cuda/ndadam.cu"
