// The rounding test ops in the simulator's library: csrc/cuda/rounding.cu compiled unchanged by the host compiler
// (cuda_sim.h comes in through the shimmed c10/cuda headers), so that the header's CUDA build path, kernels
// and launches included, runs in the tests; registered as fused_hybrid_sim::_round_test / _kahan_store_test.
#include "../cuda/rounding.cu"

TORCH_LIBRARY_FRAGMENT(fused_hybrid_sim, m) {
  m.def(::fused_hybrid::rounding::kRoundTestSchema);
  m.def(::fused_hybrid::rounding::kKahanTestSchema);
}
