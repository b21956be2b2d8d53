// A small SIMT simulator: just enough CUDA for the host compiler to build and run csrc/cuda's kernels on CPU
// tensors (the fused_hybrid._C_sim extension, backend "cuda_sim"), so that kernels no GPU has run are tested in CI.
//
// What the kernels use, and how it is simulated:
//   - __global__ / __device__ / __host__ / __forceinline__ / __launch_bounds__ / __grid_constant__: plain C++;
//     kernel parameters (FH_GRID_CONSTANT) are references to the launch's one copy.
//   - threadIdx, blockIdx, blockDim, gridDim (1-D): globals the scheduler sets before it resumes a thread.
//   - The threads of a block are fibers (a stack each; cuda_sim.cpp: started by makecontext, switched by
//     _setjmp/_longjmp) on the calling OS thread, run round-robin: each runs until it reaches a barrier or
//     returns; blocks run one after another. No preemption, so a run is
//     deterministic, and the order (threads within a block, blocks within a grid) is a setting: reversed or seeded
//     shuffles must give bitwise the same results, or a kernel depends on an order CUDA does not promise.
//   - __syncthreads: a block barrier. Every thread must reach the same barrier (the same source line); a thread
//     that returns while others wait, or threads waiting at different lines, is an error (divergent barrier), not
//     a hang.
//   - __shfl_xor_sync: a per-warp exchange plus a warp barrier (lanes of one warp only; other warps run on).
//   - static __shared__ variables: ordinary statics in their own ELF section, one copy (blocks run one at a
//     time), filled with 0xff bytes (a NaN in every float type) before each block: a read before any write of
//     the block shows up in the results.
//   - 128-bit vector loads/stores (FH_ASSERT_ALIGNED in multi_tensor_apply.cuh): the address is checked, a
//     misaligned one is an error (the hardware faults; x86 would silently do it).
//   - Host glue: the c10/cuda headers are shadowed by csrc/sim/shim (guard, stream, launch check are no-ops) and
//     FH_LAUNCH(grid, block, smem, stream, kernel)(args...) runs the grid synchronously.
//
// Faults can be injected (fh_sim::config(): a __syncthreads that does nothing, a skipped shuffle step, an
// alignment test that always passes) so that tests show the simulator catches the bugs they stand for.
//
// What it cannot show: races inside one barrier interval (a thread runs a whole interval at once), memory ordering
// between blocks (they never overlap), resource limits (registers, shared memory size, the 32 KB argument limit
// is checked by static_asserts of the sources), and speed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <tuple>
#include <type_traits>
#include <utility>

#include "fused_hybrid/launch_plan.h"

#define FUSED_HYBRID_SIM 1
// The ops register as fused_hybrid_sim::* on the CPU key (multi_tensor_apply.cuh): CPU tensors stand in for
// device memory, and the real fused_hybrid::* ops are left alone.
#define FH_CUDA_NAMESPACE fused_hybrid_sim
#define FH_CUDA_KEY CPU

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __grid_constant__
// One copy per program: blocks never run at the same time. The section lets the scheduler poison it per block.
#define __shared__ static __attribute__((section("fh_sim_shared")))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Set by the scheduler before it resumes a thread (the fibers of a launch share the OS thread; launches are
// serialized by a lock, so plain globals suffice).
extern dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace fh_sim {

constexpr unsigned kWarp = 32;

// What the tests can change (fused_hybrid_sim::sim_set). Orders: 0 forward, 1 reversed, 2 shuffled with `seed`.
struct Config {
  int thread_order = 0;
  int block_order = 0;
  uint64_t seed = 0;
  // Injected faults.
  bool fault_no_syncthreads = false;  // __syncthreads returns at once
  int fault_skip_shuffle = 0;         // a __shfl_xor_sync with this lane mask returns the caller's own value
  bool fault_assume_aligned = false;  // the kernels' alignment test always says "aligned"
};
Config& config();

// The launch geometry the CUDA host code plans with (multi_tensor_apply.cuh: geometry()); tests shrink it.
fused_hybrid::plan::Geometry& geometry();

// Counters since the last reset (fused_hybrid_sim::sim_stats).
struct Stats {
  int64_t launches = 0, blocks = 0, threads = 0, block_barriers = 0, warp_barriers = 0, vector_accesses = 0;
};
Stats& stats();

// Runs body(ctx) as every thread of every block of the grid; throws on a divergent barrier or a kernel error.
void run_grid(dim3 grid, dim3 block, void (*body)(void*), void* ctx);

void block_barrier(const std::source_location& where);
uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask, int width, const std::source_location& where);
[[noreturn]] void misaligned(const void* p, size_t bytes);

inline void check_aligned(const void* p, size_t bytes) {
  ++stats().vector_accesses;
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0) misaligned(p, bytes);
}

// A kernel launch: FH_LAUNCH(...)(args...) copies the arguments once (as a launch does) and every simulated
// thread calls the kernel on that copy (its parameters are references here: FH_GRID_CONSTANT).
template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  template <typename... A>
  void operator()(A&&... a) const {
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> args;
    } ctx{kernel, {std::forward<A>(a)...}};
    run_grid(grid, block, [](void* c) {
      auto* x = static_cast<Ctx*>(c);
      std::apply(x->kernel, x->args);
    }, &ctx);
  }
};

template <typename... P>
Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block) {
  return {kernel, grid, block};
}

}  // namespace fh_sim

#define FH_LAUNCH(grid, block, smem, stream, ...) \
  ((void)(smem), (void)(stream), ::fh_sim::launch(&__VA_ARGS__, dim3(grid), dim3(block)))
#define FH_GRID_CONSTANT(...) const __VA_ARGS__&
#define FH_CPU_TENSORS_ARE_DEVICE true
#define FH_ASSERT_ALIGNED(ptr, bytes) ::fh_sim::check_aligned(ptr, bytes)
#define FH_ASSUME_ALIGNED_FAULT() (::fh_sim::config().fault_assume_aligned)

inline void __syncthreads(const std::source_location& where = std::source_location::current()) {
  fh_sim::block_barrier(where);
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                         const std::source_location& where = std::source_location::current()) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "__shfl_xor_sync: a 1- to 8-byte value");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = fh_sim::shfl_xor(mask, bits, lane_mask, width, where);
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}
