#include "tensor_table.h"

#include <ATen/ops/zeros.h>
#include <torch/custom_class.h>

#include <cstdint>

namespace fused_hybrid {

namespace {

// The dims mixed by splitmix64's finalizer (Steele, Lea, Flood 2014): a reshape that keeps numel and data pointer
// changes the value.
int64_t shape_hash(at::IntArrayRef sizes) {
  uint64_t h = 0x9e3779b97f4a7c15ull ^ sizes.size();
  for (const int64_t d : sizes) {
    h ^= static_cast<uint64_t>(d) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
    h ^= h >> 31;
  }
  return static_cast<int64_t>(h);
}

}  // namespace

std::tuple<at::Tensor, bool, bool> TensorTable::snapshot() const {
  const at::TensorList params = list(0);
  const int64_t T = static_cast<int64_t>(params.size());
  const int64_t rows = 3 + static_cast<int64_t>(lists_.size());
  at::Tensor out = at::zeros({rows, T}, at::TensorOptions().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  auto ptr = [](const at::Tensor& x) { return static_cast<int64_t>(reinterpret_cast<intptr_t>(x.data_ptr())); };
  bool usable = true;
  for (int64_t t = 0; t < T; ++t) {
    const at::Tensor& p = params[t];
    const at::Tensor& g = p.grad();
    if (!g.defined()) return {at::zeros({0}, at::TensorOptions().dtype(at::kLong)), false, false};  // (see snapshot)
    usable = usable && g.layout() == at::kStrided && g.is_contiguous() && g.scalar_type() == p.scalar_type() &&
             g.numel() == p.numel() && g.device() == p.device() && p.scalar_type() == params[0].scalar_type();
    o[t] = p.numel();
    o[T + t] = shape_hash(p.sizes());
    o[2 * T + t] = ptr(p);
    o[3 * T + t] = ptr(g);
  }
  for (size_t l = 1; l < lists_.size(); ++l) {
    const auto& xs = lists_[l];
    if (xs.empty()) continue;
    TORCH_CHECK(static_cast<int64_t>(xs.size()) == T, "fused_hybrid: TensorTable list ", l, " has ", xs.size(),
                " tensors for ", T, " params");
    for (int64_t t = 0; t < T; ++t) o[(3 + static_cast<int64_t>(l)) * T + t] = ptr(xs[t]);
  }
  return {out, usable, true};
}

void register_tensor_table() {
  // Called by every registration that names the class: static initializers run in no fixed order across files.
  static const auto cls = torch::class_<TensorTable>("fused_hybrid", "TensorTable")
                              .def(torch::init<std::vector<std::vector<at::Tensor>>>())
                              .def("__len__", [](const c10::intrusive_ptr<TensorTable>& t) {
                                return static_cast<int64_t>(t->size());
                              })
                              .def("snapshot", [](const c10::intrusive_ptr<TensorTable>& t) {
                                return t->snapshot();
                              });
  (void)cls;
}

}  // namespace fused_hybrid
