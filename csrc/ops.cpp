// The fused_hybrid operator library: schemas for every op, implemented per dispatch key in csrc/cpu and
// csrc/cuda. Registering through TORCH_LIBRARY (not pybind11) keeps the ops visible to torch.compile and
// lets Python give them fake implementations (fused_hybrid/_meta.py).
#include <torch/library.h>

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
  m.def(
      "sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, int[] firsts, float lr, "
      "Tensor? lr_tensor, float momentum, float dampening, bool nesterov, float weight_decay, bool maximize, "
      "Tensor? grad_scale, Tensor? found_inf) -> ()");
}

// An empty Python module, so that `import fused_hybrid._C` loads this library and runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
