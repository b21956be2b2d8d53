// The fused_hybrid operator library: schemas for every op, implemented per dispatch key in csrc/cpu and
// csrc/cuda. Registering through TORCH_LIBRARY (not pybind11) keeps the ops visible to torch.compile and
// lets Python give them fake implementations (fused_hybrid/_meta.py).
#include <torch/library.h>

#include "cpu/tensor_table.h"
#include "op_families.h"

#include <Python.h>

namespace {
bool built_with_cuda() {
#ifdef FUSED_HYBRID_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

TORCH_LIBRARY(fused_hybrid, m) {
  m.def("built_with_cuda() -> bool", &built_with_cuda);
  fused_hybrid::register_tensor_table();  // the table ops' schemas name it
  fused_hybrid::families::define(m);
}

TORCH_LIBRARY_IMPL(fused_hybrid, Autograd, m) { fused_hybrid::families::autograd_fallthrough(m); }

// An empty Python module, so that `import fused_hybrid._C` loads this library and runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
