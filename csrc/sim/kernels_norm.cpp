// The simulated CUDA kernels, part 3: the gradient-norm op (csrc/cuda/grad_norm.cu, compiled unchanged by the host
// compiler, see kernels_a.cpp), with its schemas and table op in the fused_hybrid_sim namespace (csrc/grad_norm.h).
#include "../cuda/grad_norm.cu"

TORCH_LIBRARY_FRAGMENT(fused_hybrid_sim, m) { fused_hybrid::grad_norm::define(m); }

TORCH_LIBRARY_IMPL(fused_hybrid_sim, Autograd, m) {
  m.impl("grad_norm_partial", torch::CppFunction::makeFallthrough());
  m.impl("grad_norm_partial_table", torch::CppFunction::makeFallthrough());
}

TORCH_LIBRARY_IMPL(fused_hybrid_sim, CompositeExplicitAutograd, m) {
  m.impl("grad_norm_partial_table", &fused_hybrid::grad_norm::table_op<1>);
}
