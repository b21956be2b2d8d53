// Registers the gradient-norm op (csrc/grad_norm.h) in the fused_hybrid library: its schemas, the table entry point
// and the Autograd fallthroughs. The kernels register themselves: csrc/cpu/grad_norm.cpp (CPU), csrc/cuda/grad_norm.cu
// (CUDA).
#include <torch/library.h>

#include "cpu/tensor_table.h"
#include "grad_norm.h"

TORCH_LIBRARY_FRAGMENT(fused_hybrid, m) {
  fused_hybrid::register_tensor_table();  // the table op's schema names it
  fused_hybrid::grad_norm::define(m);
}

TORCH_LIBRARY_IMPL(fused_hybrid, Autograd, m) {
  m.impl("grad_norm_partial", torch::CppFunction::makeFallthrough());
  m.impl("grad_norm_partial_table", torch::CppFunction::makeFallthrough());
}

// The table op may carry no tensor at all (grad_scale None), so it is registered for every key, as the family table
// ops are (csrc/cpu/sgd.cpp).
TORCH_LIBRARY_IMPL(fused_hybrid, CompositeExplicitAutograd, m) {
  m.impl("grad_norm_partial_table", &fused_hybrid::grad_norm::table_op<0>);
}
