// The gradient-norm op (issue 17: clipping fused into the step), shared by the fused_hybrid library (csrc/ops.cpp's
// fragment in csrc/grad_norm_ops.cpp) and the simulated CUDA kernels' fused_hybrid_sim library
// (csrc/sim/kernels_norm.cpp), so both namespaces take the same arguments.
//
// grad_norm_partial(grads, norm_type, grad_scale) -> a 0-dim float64 tensor on the grads' device: the sum of
// |g_i / grad_scale|^p over every element of every gradient for a finite norm_type p, max |g_i / grad_scale| for
// p = inf (NaN when any element is NaN, as torch.linalg.vector_norm). Each element is unscaled exactly as the update
// kernels unscale it (g * (compute dtype)(1 / grad_scale), in float32, float64 for float64 gradients), so the norm
// is that of the gradients the kernels step with, which is the norm of GradScaler's unscale_ output. The sum runs in
// float64 over fixed chunks in a fixed order: bitwise the same for any thread count or launch grid. The caller
// (fused_hybrid/grad_clip.py) combines the buckets' partials, takes the p-th root and clips.
//
// grad_norm_partial_table(table, norm_type, grad_scale): the same over the .grad of the table's first list (the
// params), read in C++ (the optimizer's fast path passes no Python list of gradients). A missing gradient gives an
// empty tensor before anything is computed (an expected case, as for the family table ops: see grads_of).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>

namespace fused_hybrid {
namespace grad_norm {

// How a kernel reduces |x|: sum of |x| (p = 1), of x^2 (p = 2), of |x|^p (any other finite p > 0), or the max.
enum Mode : int { kL1 = 0, kL2 = 1, kLp = 2, kInf = 3 };

inline Mode mode_of(const char* op, double p) {
  TORCH_CHECK(p > 0.0, op, ": norm_type must be > 0 (or inf), got ", p);  // (NaN fails this too)
  if (std::isinf(p)) return kInf;
  if (p == 1.0) return kL1;
  if (p == 2.0) return kL2;
  return kLp;
}

inline void define(torch::Library& m) {
  m.def("grad_norm_partial(Tensor[] grads, float norm_type, Tensor? grad_scale) -> Tensor");
  m.def("grad_norm_partial_table(__torch__.torch.classes.fused_hybrid.TensorTable table, float norm_type, "
        "Tensor? grad_scale) -> Tensor");
}

}  // namespace grad_norm
}  // namespace fused_hybrid

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "cpu/tensor_table.h"

namespace fused_hybrid {
namespace grad_norm {

// The table op of namespace kNs (0: fused_hybrid, 1: fused_hybrid_sim): the params' .grad, then that namespace's list
// op through the dispatcher (the tensors' device picks the CPU, CUDA or simulated kernel).
template <int kNs>
at::Tensor table_op(const c10::intrusive_ptr<TensorTable>& table, double norm_type,
                    const std::optional<at::Tensor>& grad_scale) {
  using Sig = at::Tensor(at::TensorList, double, const std::optional<at::Tensor>&);
  static const auto handle =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow(kNs == 0 ? "fused_hybrid::grad_norm_partial" : "fused_hybrid_sim::grad_norm_partial", "")
          .typed<Sig>();
  TORCH_CHECK(table->size() >= 1, "grad_norm_partial_table: an empty TensorTable");
  if (table->list(0).empty()) return at::zeros({}, at::kDouble);
  std::vector<at::Tensor> grads;
  if (!grads_of(table->list(0), grads)) return at::zeros({0}, at::TensorOptions().dtype(at::kDouble));
  return handle.call(grads, norm_type, grad_scale);
}

}  // namespace grad_norm
}  // namespace fused_hybrid
