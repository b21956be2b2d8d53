// The fused_hybrid_sim operator library: the rule-family ops of csrc/cuda, built with the host compiler against
// the SIMT simulator (cuda_sim.h) and registered for CPU tensors (kernels_*.cpp), under the same schemas as
// torch.ops.fused_hybrid (op_families.h); plus the simulator's settings and counters for the tests.
//
// fused_hybrid._C must be loaded first: it registers the TensorTable class the table ops' schemas name (the
// Python package imports it before this module).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <Python.h>

#include <cstring>
#include <string>
#include <vector>

#include "../cpu/tensor_table.h"
#include "../op_families.h"
#include "cuda_sim.h"

namespace {

// The table op `<family>_table_(table, grads, rest...)` of the simulated kernels: the list op with the table's
// lists, through the dispatcher, as the cpu library's table ops hand a CUDA table to the CUDA kernels (a boxed
// kernel: one function serves every family). Empty grads: the params' .grad (the optimizer's fast path).
void table_op(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t nargs = schema.arguments().size();
  const std::string& name = schema.name();
  const auto list_op = c10::Dispatcher::singleton().findSchemaOrThrow(
      name.substr(0, name.size() - std::strlen("table_")).c_str(), "");
  auto args = torch::jit::last(*stack, nargs);
  const auto table = args[0].toCustomClass<fused_hybrid::TensorTable>();
  std::vector<at::Tensor> grads = args[1].toTensorVector();
  std::vector<c10::IValue> rest(args.begin() + 2, args.end());
  TORCH_CHECK(list_op.schema().arguments().size() == table->size() + 1 + rest.size(), name, ": a TensorTable of ",
              table->size(), " lists does not fit ", list_op.schema().name());
  torch::jit::drop(*stack, nargs);
  if (grads.empty() && !table->list(0).empty() && !fused_hybrid::grads_of(table->list(0), grads)) {
    stack->emplace_back(false);  // a param has no gradient: nothing stepped (csrc/cpu/tensor_table.h)
    return;
  }
  stack->emplace_back(table->list(0).vec());
  stack->emplace_back(std::move(grads));
  for (size_t i = 1; i < table->size(); ++i) stack->emplace_back(table->list(i).vec());
  for (auto& v : rest) stack->push_back(std::move(v));
  list_op.callBoxed(stack);
  stack->emplace_back(true);
}

// sim_set(key, value) -> the previous value. Keys: thread_order / block_order (0 forward, 1 reversed, 2 shuffled),
// seed; the injected faults fault_no_syncthreads, fault_skip_shuffle (a lane mask), fault_assume_aligned; the launch
// geometry base_chunk, max_chunk, max_blocks, max_tensors (launch_plan.h: Geometry).
int64_t sim_set(const std::string& key, int64_t value) {
  auto& c = fh_sim::config();
  auto& g = fh_sim::geometry();
  int64_t old = 0;
  auto set = [&](auto& field) {
    old = static_cast<int64_t>(field);
    field = static_cast<std::remove_reference_t<decltype(field)>>(value);
  };
  if (key == "thread_order" || key == "block_order") {
    TORCH_CHECK(value >= 0 && value <= 2, "sim_set: ", key, " is 0 (forward), 1 (reversed) or 2 (shuffled)");
    set(key == "thread_order" ? c.thread_order : c.block_order);
  } else if (key == "seed") {
    set(c.seed);
  } else if (key == "fault_no_syncthreads") {
    set(c.fault_no_syncthreads);
  } else if (key == "fault_skip_shuffle") {
    set(c.fault_skip_shuffle);
  } else if (key == "fault_assume_aligned") {
    set(c.fault_assume_aligned);
  } else if (key == "base_chunk" || key == "max_chunk" || key == "max_blocks" || key == "max_tensors") {
    TORCH_CHECK(value >= 1, "sim_set: ", key, " must be >= 1");
    set(key == "base_chunk" ? g.base_chunk : key == "max_chunk" ? g.max_chunk
          : key == "max_blocks" ? g.max_blocks : g.max_tensors);
  } else {
    TORCH_CHECK(false, "sim_set: unknown key ", key);
  }
  return old;
}

// [launches, blocks, threads, block barriers, warp barriers, vector accesses] since the last reset.
std::vector<int64_t> sim_stats(bool reset) {
  auto& s = fh_sim::stats();
  std::vector<int64_t> out{s.launches, s.blocks, s.threads, s.block_barriers, s.warp_barriers, s.vector_accesses};
  if (reset) s = fh_sim::Stats{};
  return out;
}

// Kernels that misuse CUDA on purpose, to show what the simulator reports (tests/test_cuda_sim.py).
enum SelfTest : int { kDivergentReturn = 0, kDivergentLines = 1, kWarpSums = 2, kSharedBeforeWrite = 3 };

__global__ void self_test_kernel(int what, double* out) {
  __shared__ double cell;
  const unsigned t = threadIdx.x;
  if (what == kDivergentReturn) {
    if (t == 0) return;  // thread 0 leaves; the others wait for it forever on a GPU (or undefined behaviour)
    __syncthreads();
  } else if (what == kDivergentLines) {
    if (t % 2 == 0) {
      __syncthreads();
    } else {
      __syncthreads();
    }
  } else if (what == kWarpSums) {
    double v = static_cast<double>(t);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[blockIdx.x * blockDim.x + t] = v;
  } else if (what == kSharedBeforeWrite) {
    out[blockIdx.x * blockDim.x + t] = cell;  // no thread wrote it in this block
    __syncthreads();
    if (t == 0) cell = 1.0;
  }
}

// Runs self-test `what` (SelfTest) with `blocks` x `threads`; returns out[blocks * threads].
at::Tensor sim_self_test(int64_t what, int64_t blocks, int64_t threads) {
  at::Tensor out = at::zeros({blocks * threads}, at::kDouble);
  FH_LAUNCH(static_cast<unsigned>(blocks), static_cast<unsigned>(threads), 0, 0, self_test_kernel)(
      static_cast<int>(what), out.data_ptr<double>());
  return out;
}

}  // namespace

TORCH_LIBRARY(fused_hybrid_sim, m) {
  fused_hybrid::families::define(m);
  m.def("sim_set(str key, int value) -> int", &sim_set);
  m.def("sim_stats(bool reset=False) -> int[]", &sim_stats);
  m.def("sim_self_test(int what, int blocks, int threads) -> Tensor", &sim_self_test);
}

TORCH_LIBRARY_IMPL(fused_hybrid_sim, Autograd, m) { fused_hybrid::families::autograd_fallthrough(m); }

TORCH_LIBRARY_IMPL(fused_hybrid_sim, CompositeExplicitAutograd, m) {
  for (const auto& f : fused_hybrid::families::kFamilies) {
    const std::string table = fused_hybrid::families::table_name(f.name);
    m.impl(table.c_str(), torch::CppFunction::makeFromBoxedFunction<&table_op>());
  }
}

// An empty Python module, so that `import fused_hybrid._C_sim` loads this library and runs the registrations.
extern "C" PyObject* PyInit__C_sim(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_sim", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
