// TensorTable: a bucket's params and state lists, handed to the extension once and kept on the C++ side.
//
// Passing a Python list of N tensors to an op costs ~0.1-0.2 us per tensor (unwrapping each Python object,
// boxing it into an IValue, unboxing it again), dominated by cache misses on objects the previous step's data
// streaming evicted: for 2000 small tensors and five lists that was ~0.7 ms of a ~3.5 ms Adam step. Params and
// state keep their identity from step to step (the optimizer already caches its state lists per bucket), so the
// eager path builds a table of them once and passes only the table and the gradients (new tensors every
// backward) per step. The `<family>_table_` ops take (table, grads, <the list op's other arguments>) and call the
// list op with the table's lists: one implementation per device, two entry points. CPU tables call the CPU
// implementation directly; others go through the dispatcher to the list op's kernel for their device (the CUDA
// backend's fast path). torch.compile traces the list ops, whose mutations the schemas declare; the table ops'
// mutations are invisible to it.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/custom_class.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <torch/library.h>
#include <c10/util/Exception.h>

#include <cstddef>
#include <string>
#include <type_traits>
#include <tuple>
#include <utility>
#include <vector>

namespace fused_hybrid {

struct TensorTable : torch::CustomClassHolder {
  explicit TensorTable(std::vector<std::vector<at::Tensor>> lists) : lists_(std::move(lists)) {}

  // List i (0 holds the params); empty lists stand for optional state (no momentum, no AMSGrad).
  at::TensorList list(size_t i) const {
    TORCH_CHECK(i < lists_.size(), "fused_hybrid: a TensorTable with ", lists_.size(), " lists has no list ", i);
    return lists_[i];
  }
  size_t size() const { return lists_.size(); }

  // The Triton backend's change detector (it launches on raw pointers, in device tables it builds once): an int64
  // CPU tensor [3 + size(), T] holding each param's numel and a 64-bit hash of its shape (ND-Adam's tables follow
  // the shape), then the data pointers of the params, of their .grad and of every other list's tensors (a row of
  // 0 for an empty list). Equal snapshots mean the tables built for the earlier one still describe these tensors.
  // `usable` is false when a gradient cannot be read through its param's flat layout (not dense and contiguous,
  // another dtype or size) or the params mix dtypes: the caller then takes its general path. A missing gradient
  // makes `complete` false (and the snapshot empty): the caller steps nothing and says so (see grads_of).
  std::tuple<at::Tensor, bool, bool> snapshot() const;

 private:
  std::vector<std::vector<at::Tensor>> lists_;
};

// Registers the class as torch.classes.fused_hybrid.TensorTable (idempotent). Every op registration that names the
// class calls it first.
void register_tensor_table();

// The params' .grad, read here instead of in Python (the eager fast path passes no gradient list: 2000 `.grad`
// reads cost ~0.15 ms in Python). False, before anything is written, when a param has no gradient: the table op
// then steps nothing and returns false, and the optimizer takes its general path (which skips that param). A
// result, not an exception: a missing gradient is an expected case, not an error.
// (Inline: the simulated CUDA kernels' library, csrc/sim, reads them too.)
inline bool grads_of(at::TensorList params, std::vector<at::Tensor>& grads) {
  grads.reserve(params.size());
  for (const auto& p : params) {
    const at::Tensor& g = p.grad();
    if (!g.defined()) return false;
    grads.push_back(g);
  }
  return true;
}

namespace detail {

template <typename... Ts>
struct Types {};

// Drops params, grads and the N state lists from a list op's argument types, leaving its other arguments.
template <size_t N, typename... Args>
struct AfterLists;
template <typename... Rest>
struct AfterLists<0, at::TensorList, at::TensorList, Rest...> {
  using type = Types<Rest...>;
};
template <size_t N, typename... Rest>
struct AfterLists<N, at::TensorList, at::TensorList, at::TensorList, Rest...>
    : AfterLists<N - 1, at::TensorList, at::TensorList, Rest...> {};

template <size_t N, auto Impl, typename Fn = decltype(Impl)>
struct ListsOf;
template <size_t N, auto Impl, typename... Args>
struct ListsOf<N, Impl, void (*)(Args...)> {
  using rest = typename AfterLists<N, Args...>::type;
};

template <size_t N, auto Impl, typename Rest>
struct TableCall;
template <size_t N, auto Impl, typename... Rest>
struct TableCall<N, Impl, Types<Rest...>> {
  // The list op's schema name ("fused_hybrid::adaptive_"), set when the table op is registered (a function-local
  // static: registration runs during static initialization, in no fixed order with other statics).
  static std::string& list_op() {
    static std::string name;
    return name;
  }

  // True when it stepped; false when grads is empty (read the params' .grad) and a param has none.
  static bool call(const c10::intrusive_ptr<TensorTable>& table, at::TensorList grads, Rest... rest) {
    TORCH_CHECK(table->size() == N + 1, "fused_hybrid: this op needs a TensorTable of ", N + 1, " lists, got ",
                table->size());
    if (grads.empty() && !table->list(0).empty()) {
      std::vector<at::Tensor> own;
      if (!grads_of(table->list(0), own)) return false;
      with(std::make_index_sequence<N>{}, *table, own, rest...);
      return true;
    }
    with(std::make_index_sequence<N>{}, *table, grads, rest...);
    return true;
  }
  template <size_t... I>
  static void with(std::index_sequence<I...>, const TensorTable& table, at::TensorList grads, Rest... rest) {
    if (table.list(0).empty() || table.list(0)[0].is_cpu()) {
      Impl(table.list(0), grads, table.list(I + 1)..., rest...);
      return;
    }
    // Another device: the list op's kernel for it (an unboxed dispatcher call; the tensors pick the key).
    static const auto handle = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow(list_op().c_str(), "")
                                   .template typed<std::remove_pointer_t<decltype(Impl)>>();
    handle.call(table.list(0), grads, table.list(I + 1)..., rest...);
  }
};

}  // namespace detail

// The table entry point of a list op `void Impl(params, grads, state_1, ..., state_N, rest...)`.
template <size_t N, auto Impl>
constexpr auto table_op = &detail::TableCall<N, Impl, typename detail::ListsOf<N, Impl>::rest>::call;

// Registers `<name>table_` as the table entry point of the list op Impl.
template <size_t N, auto Impl>
void impl_table_op(torch::Library& m, const char* name) {
  register_tensor_table();
  using Call = detail::TableCall<N, Impl, typename detail::ListsOf<N, Impl>::rest>;
  const std::string table(name);  // "<family>_table_" -> "fused_hybrid::<family>_"
  Call::list_op() = "fused_hybrid::" + table.substr(0, table.size() - std::string("table_").size());
  m.impl(name, table_op<N, Impl>);
}

}  // namespace fused_hybrid
