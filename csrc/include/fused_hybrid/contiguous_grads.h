// The gradients as the kernels read them: linearly, through data pointers. A non-contiguous gradient (an expanded
// or transposed one some autograd function produced; AccumulateGrad normally matches the param's layout) is copied
// once per step; the usual all-contiguous list passes through without allocating. Gradients are only read, so a
// copy is as good as the original. Shared by the CPU and CUDA ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace fused_hybrid {

class ContiguousGrads {
 public:
  explicit ContiguousGrads(at::TensorList grads) : grads_(grads) {
    for (size_t i = 0; i < grads.size(); ++i) {
      const at::Tensor& g = grads[i];
      if (g.defined() && g.layout() == at::kStrided && !g.is_contiguous()) {  // sparse ones get the op's error
        if (copies_.empty()) copies_.assign(grads.begin(), grads.end());
        copies_[i] = g.contiguous();
      }
    }
  }
  at::TensorList list() const { return copies_.empty() ? grads_ : at::TensorList(copies_); }

 private:
  at::TensorList grads_;
  std::vector<at::Tensor> copies_;
};

}  // namespace fused_hybrid
