// Multi-tensor apply for the fused_hybrid CUDA kernels, in the style of PyTorch's
// aten/src/ATen/native/cuda/MultiTensorApply.cuh and Apex's csrc/multi_tensor_apply.cuh: one launch updates
// many tensors; the chunk table (block -> (tensor, chunk)) and the tensors' addresses travel in the kernel
// arguments, so nothing is copied to the device before a launch (CUDA-graph capturable, no host sync).
//
// Sizing of the argument table (TensorListMeta<D>). CUDA 12.1+ on Volta and newer accepts 32764 bytes of
// kernel parameters (4096 before; NVIDIA blog "CUDA 12.1 Supports Large Kernel Parameters"; the driver must be
// r530 or newer, which CUDA 13 requires anyway). PyTorch sizes its tables for 4 KB (110..30 tensors, 320
// blocks); we size them for 32 KB:
//   - 2048 blocks per launch (launch_plan.h: kMaxBlocks): 6 bytes each (uint16 local tensor, int32 chunk)
//     = 12288 bytes. pick_chunk_size() grows the chunk (65536 elements, doubled as needed) so that a call of up
//     to 2048 * 2^22 elements needs one launch when it has few enough tensors.
//   - per tensor 8*D + 28 bytes (D addresses, numel, aux pointer (the step), info (ND-Adam row length),
//     global tensor index): kMaxTensors(D) = 18908 / (8*D + 28), i.e. D=2: 429, D=3: 363, D=4: 315,
//     D=5: 278, D=6: 248 tensors per launch.
//   - 1536 bytes are left for the functor (hyperparameters, device-scalar pointers) and the other arguments.
//   static_asserts below check sizeof(meta) + sizeof(functor) <= 32764.
// ILP 4 with 128-bit loads/stores (float32; 64-bit for 16-bit types, 2 x 128-bit for float64) when every
// pointer of the chunk is aligned to 4 elements, plus a scalar tail for the last n % 4 elements; a scalar
// grid-strided path for unaligned tensors. All element indices are int64 (tensors over 2^31 elements).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "fused_hybrid/launch_plan.h"

// Hooks of the SIMT simulator (csrc/sim/cuda_sim.h defines them first when it builds these sources with the host
// compiler); under nvcc they are the plain CUDA forms.
#ifndef FUSED_HYBRID_SIM
#define FH_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define FH_ASSERT_ALIGNED(ptr, bytes)  // the hardware faults on a misaligned vector access
#define FH_ASSUME_ALIGNED_FAULT() false
// A kernel parameter read in place from the parameter space. The simulator passes it by reference instead: every
// simulated thread calls the kernel, and a 32 KB table copied per thread would cost more than the kernel.
#define FH_GRID_CONSTANT(...) const __grid_constant__ __VA_ARGS__
#define FH_CPU_TENSORS_ARE_DEVICE false
#endif
// The ops' namespace and dispatch key: the simulator registers the same kernels as fused_hybrid_sim::* for CPU
// tensors.
#ifndef FH_CUDA_NAMESPACE
#define FH_CUDA_NAMESPACE fused_hybrid
#define FH_CUDA_KEY CUDA
#endif

namespace fused_hybrid {
namespace cuda {

constexpr int kILP = 4;

// The launch geometry (launch_plan.h: Geometry): the defaults on a GPU; the simulator's tests shrink it.
#ifdef FUSED_HYBRID_SIM
inline const plan::Geometry& geometry() { return fh_sim::geometry(); }
#else
constexpr plan::Geometry geometry() { return {}; }
#endif

// For the per-element lambdas handed to chunk_elementwise: they are called from 5 places (4 unrolled + the tail)
// and capture by reference; if the inliner leaves one out of line, its captures go to the stack (seen as 8-16 B
// of local memory in the bf16/fp16 SWATS kernel). Force them inline.
#define FH_INLINE_LAMBDA __attribute__((always_inline))
constexpr int kBlockSize = 512;

// ---- Device scalars: lr, grad_scale, found_inf, read on the device (no host sync) ------------------------------

// A 0-dim tensor on the device (float32 or float64), or a host value when no tensor is given.
struct DeviceScalar {
  const void* ptr;
  double host;
  bool is_double;
  __device__ __forceinline__ double get() const {
    if (ptr == nullptr) return host;
    return is_double ? *static_cast<const double*>(ptr) : static_cast<double>(*static_cast<const float*>(ptr));
  }
};

// A DeviceScalar from an optional tensor: a device tensor is read in the kernel (converted to float32 first if it
// has another dtype); a CPU tensor is read here (a plain memory read); none gives `fallback`.
DeviceScalar device_scalar(const std::optional<at::Tensor>& t, double fallback, const at::Device& device,
                           std::vector<at::Tensor>& keep_alive);

// lr, grad_scale and found_inf of one step, as every family's kernels read them. The Args structs derive from it.
struct StepScalars {
  DeviceScalar lr, grad_scale, found_inf;
};

StepScalars step_scalars(const std::optional<at::Tensor>& lr_tensor, double lr,
                         const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                         const at::Device& device, std::vector<at::Tensor>& keep_alive);

// The operands of a multi-tensor launch: params, grads and the given state lists (an empty state list stands for
// an absent state: its slots hold undefined tensors), and each tensor's step counter (its address for the kernels,
// the tensor for the post-step kernel), each checked to be a one-element float32 tensor on the params' device.
struct Operands {
  std::vector<std::vector<at::Tensor>> lists;
  std::vector<void*> step_ptrs;
  std::vector<at::Tensor> steps;
};

Operands gather_operands(const char* op, at::TensorList params, at::TensorList grads,
                         std::initializer_list<at::TensorList> states, at::TensorList steps);

// beta^k for the step count k (a whole number, as torch.optim's steps are), by binary exponentiation in double:
// within a few ulps of pow (itself up to 2 ulps off on the device), i.e. identical after rounding the bias
// corrections to float. Why not pow: the device's double pow is an out-of-line call, and the registers saved around
// it were the only spills (8-16 bytes) of the adaptive, MAS and ND-Adam kernels.
__device__ __forceinline__ double pow_step(double beta, double k) {
  double r = 1.0;
  for (uint64_t e = k > 0.0 ? static_cast<uint64_t>(k) : 0u; e != 0; e >>= 1) {
    if (e & 1u) r *= beta;
    beta *= beta;
  }
  return r;
}

// ---- The argument table ---------------------------------------------------------------------------------------

template <int D>
struct TensorListMeta {
  static constexpr int kMaxTensors = plan::max_tensors_for(D);
  static constexpr int kMaxBlocks = plan::kMaxBlocks;
  void* addresses[D][kMaxTensors];
  int64_t numel[kMaxTensors];
  void* aux[kMaxTensors];        // per-tensor pointer (the step count of the adaptive family), or nullptr
  int64_t info[kMaxTensors];     // per-tensor integer (ND-Adam: row length)
  int32_t tensor_index[kMaxTensors];  // index of the tensor in the op's lists
  int64_t slot_base;             // global slot of block 0 (reductions: one slot per chunk)
  int64_t chunk_size;            // elements per chunk (flat kernels)
  uint16_t block_tensor[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
};

template <typename Meta, typename F>
__global__ void __launch_bounds__(kBlockSize) multi_tensor_kernel(FH_GRID_CONSTANT(Meta) meta,
                                                                 FH_GRID_CONSTANT(F) f) {
  f(meta);
}

// Launch f over the chunks of the tensors in `lists` (D lists of equal length; lists[d][t] may be undefined for a
// list the rule does not read for tensor t). chunks[t] is tensor t's chunk count (num_chunks(numel, chunk_size)
// for the flat kernels). aux[t] / info[t] are the per-tensor extras (may be empty). Returns the number of
// launches.
template <int D, typename F>
int multi_tensor_apply(const std::vector<std::vector<at::Tensor>>& lists, const std::vector<int64_t>& chunks,
                       int64_t chunk_size, const std::vector<void*>& aux, const std::vector<int64_t>& info,
                       const F& f, const std::vector<int64_t>* tensor_ids = nullptr) {
  using Meta = TensorListMeta<D>;
  static_assert(sizeof(Meta) + sizeof(F) <= 32764, "kernel arguments exceed CUDA's 32764-byte limit");
  TORCH_CHECK(lists.size() == static_cast<size_t>(D), "multi_tensor_apply: expected ", D, " tensor lists");
  const auto launches = plan::plan_launches(chunks, std::min<int64_t>(Meta::kMaxTensors, geometry().max_tensors),
                                            std::min<int64_t>(Meta::kMaxBlocks, geometry().max_blocks));
  if (launches.empty()) return 0;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  Meta meta;
  meta.chunk_size = chunk_size;
  for (const auto& l : launches) {
    for (size_t i = 0; i < l.tensors.size(); ++i) {
      const int64_t t = l.tensors[i];
      for (int d = 0; d < D; ++d) {
        const at::Tensor& x = lists[d][t];
        meta.addresses[d][i] = x.defined() ? x.data_ptr() : nullptr;
      }
      meta.numel[i] = lists[0][t].numel();
      meta.aux[i] = aux.empty() ? nullptr : aux[t];
      meta.info[i] = info.empty() ? 0 : info[t];
      meta.tensor_index[i] = static_cast<int32_t>(tensor_ids ? (*tensor_ids)[t] : t);
    }
    for (size_t b = 0; b < l.block_tensor.size(); ++b) {
      meta.block_tensor[b] = static_cast<uint16_t>(l.block_tensor[b]);
      meta.block_chunk[b] = static_cast<int32_t>(l.block_chunk[b]);
    }
    meta.slot_base = l.slot_base;
    const auto blocks = static_cast<unsigned>(l.block_tensor.size());
    FH_LAUNCH(blocks, kBlockSize, 0, stream, multi_tensor_kernel<Meta, F>)(meta, f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return static_cast<int>(launches.size());
}

// ---- Vector access --------------------------------------------------------------------------------------------

template <typename T>
struct alignas(sizeof(T) * kILP) Vec {
  T v[kILP];
};

template <typename T>
__device__ __forceinline__ bool is_aligned(const T* p) {
  return FH_ASSUME_ALIGNED_FAULT() || reinterpret_cast<uintptr_t>(p) % (sizeof(T) * kILP) == 0;
}

template <typename T>
__device__ __forceinline__ void load_vec(T (&r)[kILP], const T* p, int64_t vi) {
  FH_ASSERT_ALIGNED(p + vi * kILP, sizeof(Vec<T>));
  const Vec<T> x = reinterpret_cast<const Vec<T>*>(p)[vi];
#pragma unroll
  for (int i = 0; i < kILP; ++i) r[i] = x.v[i];
}

template <typename T>
__device__ __forceinline__ void store_vec(T* p, int64_t vi, const T (&r)[kILP]) {
  FH_ASSERT_ALIGNED(p + vi * kILP, sizeof(Vec<T>));
  Vec<T> x;
#pragma unroll
  for (int i = 0; i < kILP; ++i) x.v[i] = r[i];
  reinterpret_cast<Vec<T>*>(p)[vi] = x;
}

// The elementwise loop of one chunk: w (param dtype P, read and written), g (P, read), S state arrays (opmath
// O, read and written; st points to S pointers). elem(O& w, O g, O (&s)[S]) updates one element in registers.
// Aligned: 4 elements per thread per iteration with vector loads, then a scalar tail; unaligned: scalar,
// block-strided. kStoreW / kStoreStates = false read w / the states without writing them back (the passes of
// two-pass rules).
template <int S, bool kStoreW = true, bool kStoreStates = true, typename P, typename O, typename Elem>
__device__ __forceinline__ void chunk_elementwise(P* __restrict__ w, const P* __restrict__ g, O* const* st,
                                                  int64_t n, const Elem& elem) {
  bool aligned = is_aligned(w) && is_aligned(g);
#pragma unroll
  for (int s = 0; s < S; ++s) aligned = aligned && is_aligned(st[s]);
  int64_t done = 0;
  if (aligned) {
    const int64_t nv = n / kILP;
    for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
      P rw[kILP], rg[kILP];
      O rs[S > 0 ? S : 1][kILP];
      load_vec(rw, w, i);
      load_vec(rg, g, i);
#pragma unroll
      for (int s = 0; s < S; ++s) load_vec(rs[s], st[s], i);
#pragma unroll
      for (int ii = 0; ii < kILP; ++ii) {
        O wv = static_cast<O>(rw[ii]);
        O sv[S > 0 ? S : 1];
#pragma unroll
        for (int s = 0; s < S; ++s) sv[s] = rs[s][ii];
        elem(wv, static_cast<O>(rg[ii]), sv);
        rw[ii] = static_cast<P>(wv);
#pragma unroll
        for (int s = 0; s < S; ++s) rs[s][ii] = sv[s];
      }
      if constexpr (kStoreW) store_vec(w, i, rw);
      if constexpr (kStoreStates) {
#pragma unroll
        for (int s = 0; s < S; ++s) store_vec(st[s], i, rs[s]);
      }
    }
    done = nv * kILP;
  }
  for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) {
    O wv = static_cast<O>(w[i]);
    O sv[S > 0 ? S : 1];
#pragma unroll
    for (int s = 0; s < S; ++s) sv[s] = st[s][i];
    elem(wv, static_cast<O>(g[i]), sv);
    if constexpr (kStoreW) w[i] = static_cast<P>(wv);
    if constexpr (kStoreStates) {
#pragma unroll
      for (int s = 0; s < S; ++s) st[s][i] = sv[s];
    }
  }
}

// ---- Block reductions (fixed order: bitwise reproducible) ------------------------------------------------------

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of v over the block, valid in every thread. Every thread of the block must call it.
__device__ __forceinline__ double block_sum(double v) {
  __shared__ double partial[kBlockSize / 32];
  __shared__ double total;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  __syncthreads();  // the shared buffers may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double x = lane < static_cast<int>(blockDim.x / 32) ? partial[lane] : 0.0;
    x = warp_sum(x);
    if (lane == 0) total = x;
  }
  __syncthreads();
  return total;
}

// ---- Checks and the post-step kernel shared by the ops ---------------------------------------------------------

// Matching lengths, one CUDA device, contiguous dense tensors of equal size, one parameter dtype.
void check_lists(const char* op, at::TensorList params, at::TensorList grads,
                 std::initializer_list<std::pair<const char*, at::TensorList>> states, bool states_like_params);

// After the main kernel: steps[t] += 1 unless found_inf (the main kernel read the old value: several blocks of
// one tensor read it, so it cannot be written there), and, when slots is defined, partials[tensor_ids[t]] =
// the fixed-order sum of tensor t's slots (two doubles each; zeros when found_inf). slot_begin[t] / nslots[t]
// locate tensor t's slots. One launch per 1024 tensors.
void launch_post_step(const std::vector<at::Tensor>& steps, const DeviceScalar& found_inf,
                      const at::Tensor& slots, const std::vector<int64_t>& slot_begin,
                      const std::vector<int64_t>& nslots, double* partials, const std::vector<int64_t>* tensor_ids,
                      int width = 2);

}  // namespace cuda
}  // namespace fused_hybrid
