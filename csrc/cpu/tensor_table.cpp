#include "tensor_table.h"

#include <torch/custom_class.h>

namespace fused_hybrid {

void register_tensor_table() {
  // Called by every registration that names the class: static initializers run in no fixed order across files.
  static const auto cls = torch::class_<TensorTable>("fused_hybrid", "TensorTable")
                              .def(torch::init<std::vector<std::vector<at::Tensor>>>())
                              .def("__len__", [](const c10::intrusive_ptr<TensorTable>& t) {
                                return static_cast<int64_t>(t->size());
                              });
  (void)cls;
}

}  // namespace fused_hybrid
