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
//   - The launches that store 16-bit params with stochastic rounding or Kahan summation (issue 16) carry one more
//     8-byte column per tensor (LowpColumn: the seed, or the compensation buffer's address): they hold
//     kMaxTensors(D + 1) tensors (D=3: 315, D=6: 225); every other launch keeps the numbers above.
//   static_asserts below check sizeof(meta) + sizeof(functor) <= 32764.
// ILP 4 with 128-bit loads/stores (float32; 64-bit for 16-bit types, 2 x 128-bit for float64) when every
// pointer of the chunk is aligned to 4 elements, plus a scalar tail for the last n % 4 elements; a scalar
// grid-strided path for unaligned tensors. All element indices are int64 (tensors over 2^31 elements).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "fused_hybrid/launch_plan.h"
#include "fused_hybrid/state_dtype.h"  // bf16_state, as the CPU ops decide it
#include "fused_hybrid/round_mode.h"  // kRound*, kSixteenBit
#include "fused_hybrid/rounding.h"

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

// ---- The argument table ---------------------------------------------------------------------------------------

// The per-tensor 64-bit value of a launch that stores 16-bit params with stochastic rounding (the tensor's seed)
// or Kahan summation (the address of its compensation buffer): one more column of the table, present only in
// the tables of such launches (an empty base otherwise), so the round-to-nearest kernels keep their tables, and
// their tensor counts per launch (kMaxTensors), unchanged. It costs a lowp table what one more address list
// would: kMaxTensors = max_tensors_for(D + 1).
template <int N, bool kOn>
struct LowpColumn {
  uint64_t lowp[N];
};
template <int N>
struct LowpColumn<N, false> {};

template <int D, bool kLowp = false>
struct TensorListMeta : LowpColumn<plan::max_tensors_for(D + (kLowp ? 1 : 0)), kLowp> {
  static constexpr int kMaxTensors = plan::max_tensors_for(D + (kLowp ? 1 : 0));
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

// Whether a functor's kernels read the lowp column (its static member kLowp; false without one).
template <typename F, typename = void>
struct functor_lowp : std::false_type {};
template <typename F>
struct functor_lowp<F, std::void_t<decltype(F::kLowp)>> : std::bool_constant<F::kLowp> {};

template <typename Meta, typename F>
__global__ void __launch_bounds__(kBlockSize) multi_tensor_kernel(FH_GRID_CONSTANT(Meta) meta,
                                                                 FH_GRID_CONSTANT(F) f) {
  f(meta);
}

// Launch f over the chunks of the tensors in `lists` (D lists of equal length; lists[d][t] may be undefined for a
// list the rule does not read for tensor t). chunks[t] is tensor t's chunk count (num_chunks(numel, chunk_size)
// for the flat kernels). aux[t] / info[t] are the per-tensor extras (may be empty); lowp[t] the lowp column
// (functors with kLowp: lowp_column's values). Returns the number of launches.
template <int D, typename F>
int multi_tensor_apply(const std::vector<std::vector<at::Tensor>>& lists, const std::vector<int64_t>& chunks,
                       int64_t chunk_size, const std::vector<void*>& aux, const std::vector<int64_t>& info,
                       const F& f, const std::vector<int64_t>* tensor_ids = nullptr,
                       const std::vector<uint64_t>* lowp = nullptr) {
  constexpr bool kLowp = functor_lowp<F>::value;
  using Meta = TensorListMeta<D, kLowp>;
  static_assert(sizeof(Meta) + sizeof(F) <= 32764, "kernel arguments exceed CUDA's 32764-byte limit");
  TORCH_CHECK(lists.size() == static_cast<size_t>(D), "multi_tensor_apply: expected ", D, " tensor lists");
  TORCH_CHECK(!kLowp || (lowp != nullptr && lowp->size() == lists[0].size()),
              "multi_tensor_apply: a lowp launch needs one lowp value per tensor");
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
      if constexpr (kLowp) meta.lowp[i] = (*lowp)[t];
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

// ---- Stores of the param ----------------------------------------------------------------------------------------
// Issue 16: a bfloat16 / float16 param whose group asked for stochastic rounding or Kahan summation is stored from
// its float32 result through rounding.h (the same integer arithmetic as the cpu, reference and Triton backends,
// so the bits are the same everywhere); every other store is the plain conversion. The rules' arithmetic does not
// change: only the store of w does. Which store a kernel has is a template parameter of its functor (kLowp), so
// the round-to-nearest kernels are compiled exactly as before; a lowp kernel picks stochastic rounding or Kahan
// summation by a uniform branch on the launch's mode (one kernel for both: fewer instantiations).

// The plain conversion (round to nearest even): chunk_elementwise's default.
struct NearestStore {
  static constexpr bool kNearest = true;
};

// The store of a 16-bit param with stochastic rounding or Kahan summation, for a run of a tensor's elements
// starting at flat index `index0` (a chunk, or an ND-Adam row).
//   Stochastic rounding: element i (flat index in its tensor) at step k gets the bits rand32(seed, k, 0, i), the
//   same on every backend whatever the chunking (rounding.h). The vector path computes one Philox call per aligned
//   group of four elements, which is rand32's own grouping, so it needs index0 % 4 == 0 (every chunk start on a GPU,
//   whose chunks are 65536 * 2^k elements; the scalar path serves the others, the simulator's odd chunk sizes in
//   the tests, and the tails, one Philox call per element).
//   Kahan summation: the compensation buffer (param dtype, as contiguous as the param) is read and written
//   alongside w, 64-bit vector accesses where aligned.
template <typename P>
struct LowpStore {
  static constexpr bool kNearest = false;
  static constexpr rounding::Format F =
      std::is_same_v<P, c10::BFloat16> ? rounding::Format::kBF16 : rounding::Format::kFP16;
  int mode;          // kRoundStochastic or kRoundKahan (also kRoundNearest inside a Bf16StateStore)
  uint32_t step;     // stochastic: the tensor's step count after this step's increment
  uint64_t seed;     // stochastic: the tensor's seed
  uint64_t index0;   // stochastic: the flat index of the run's first element
  uint16_t* comp;    // Kahan: the compensation of the run's first element

  // The store of tensor t's elements from flat index index0 on, at step count k (a whole number; read only for
  // stochastic rounding), from the launch's lowp column (a seed, or a compensation buffer's address).
  template <typename Meta>
  static __device__ __forceinline__ LowpStore at(const Meta& meta, int t, int mode, double k, int64_t index0) {
    LowpStore s;
    s.mode = mode;
    s.step = mode == kRoundStochastic ? static_cast<uint32_t>(k) : 0u;
    s.seed = mode == kRoundStochastic ? meta.lowp[t] : 0u;
    s.index0 = static_cast<uint64_t>(index0);
    s.comp = mode == kRoundKahan ? reinterpret_cast<uint16_t*>(static_cast<uintptr_t>(meta.lowp[t])) + index0
                                 : nullptr;
    return s;
  }

  __device__ __forceinline__ bool vector_ok() const {
    return mode == kRoundKahan ? is_aligned(comp) : (index0 & 3u) == 0u;
  }

  // The random words of elements 4*vi .. 4*vi+3 of the run on `stream` (0: the param; 1 + j: state buffer j, see
  // Bf16StateStore): one Philox call per aligned group of four, rand32's grouping (needs index0 % 4 == 0).
  __device__ __forceinline__ rounding::Philox4 bits4(int64_t vi, uint32_t stream) const {
    const uint64_t g = (index0 >> 2) + static_cast<uint64_t>(vi);
    return rounding::philox4x32_10(static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), stream, step,
                                   static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  }

  // Elements 4*vi .. 4*vi+3 of the run (the vector path): x their float32 results.
  __device__ __forceinline__ void store4(P* w, int64_t vi, const float (&x)[kILP]) const {
    uint16_t r[kILP];
    if (mode == kRoundKahan) {
      uint16_t c[kILP];
      load_vec(c, comp, vi);
#pragma unroll
      for (int i = 0; i < kILP; ++i) rounding::kahan_store<F>(x[i], r[i], c[i]);
      store_vec(comp, vi, c);
    } else {
      const rounding::Philox4 q = bits4(vi, 0u);
      r[0] = rounding::round_sr<F>(x[0], q.x0);
      r[1] = rounding::round_sr<F>(x[1], q.x1);
      r[2] = rounding::round_sr<F>(x[2], q.x2);
      r[3] = rounding::round_sr<F>(x[3], q.x3);
    }
    store_vec(reinterpret_cast<uint16_t*>(w), vi, r);
  }

  // Element i of the run (the scalar path).
  __device__ __forceinline__ void store1(P* w, int64_t i, float x) const {
    uint16_t r;
    if (mode == kRoundKahan) {
      uint16_t c = comp[i];
      rounding::kahan_store<F>(x, r, c);
      comp[i] = c;
    } else {
      r = rounding::round_sr<F>(x, rounding::rand32(seed, step, 0u, index0 + static_cast<uint64_t>(i)));
    }
    reinterpret_cast<uint16_t*>(w)[i] = r;
  }
};

// ---- bfloat16 moment buffers (a group's state_dtype=torch.bfloat16, issue 16) ----------------------------------
// A functor's state type S (its second template argument) is its opmath type O for float32 / float64 state, or
// c10::BFloat16 for bfloat16 state (S = BFloat16 is instantiated for float32 / bfloat16 / float16 params only). The
// math stays float32: chunk_elementwise widens each state element exactly (rounding::bf16_to_float) into registers,
// the rule updates it there, and this step's update of w uses the unrounded new moments; the stores round (below).
// So the round-to-nearest kernels of float32 state are compiled exactly as before.
template <typename S>
struct StateMath {
  using type = S;
};
template <>
struct StateMath<c10::BFloat16> {
  using type = float;
};
template <typename S>
using state_math_t = typename StateMath<S>::type;
template <typename S>
inline constexpr bool kBf16State = std::is_same_v<S, c10::BFloat16>;

// The store of a kernel with bfloat16 state (always a kLowp instantiation: its table carries the lowp column, the
// seeds when rounding is stochastic, zeros for round to nearest). The params: the plain conversion, or (16-bit
// params, rounding != nearest) LowpStore's. The moment buffers: rounding::bf16_rne (the cpu backend's store_bf16, the
// Triton kernels' store_cast), or with stochastic rounding bf16_sr with the bits rand32(seed, k, 1 + j, i): j the
// buffer's place in hyper.STATE_STREAMS (stream[s] = 1 + j for the functor's state slot s), i its flat index; the
// vector path one Philox call per aligned group of four (index0 % 4 == 0, as LowpStore's). Float32 params with
// stochastic rounding (their state's stores only) take this kernel too.
template <typename P>
struct Bf16StateStore {
  static constexpr bool kNearest = false;
  LowpStore<P> param;   // 16-bit params with rounding != nearest
  uint8_t stream[4];    // the random stream of state slot s (stochastic rounding)

  template <typename Meta>
  static __device__ __forceinline__ Bf16StateStore at(const Meta& meta, int t, int mode, double k, int64_t index0,
                                                      uint32_t streams) {
    Bf16StateStore s;
    s.param = LowpStore<P>::at(meta, t, mode, k, index0);  // (float32 params: never Kahan, lowp_column checked)
#pragma unroll
    for (int j = 0; j < 4; ++j) s.stream[j] = static_cast<uint8_t>(streams >> (8 * j));
    return s;
  }

  __device__ __forceinline__ bool vector_ok() const {
    return param.mode == kRoundNearest || (kSixteenBit<P> ? param.vector_ok() : (param.index0 & 3u) == 0u);
  }

  __device__ __forceinline__ void store4(P* w, int64_t vi, const float (&x)[kILP]) const {
    if constexpr (kSixteenBit<P>) {
      if (param.mode != kRoundNearest) {
        param.store4(w, vi, x);
        return;
      }
    }
    P r[kILP];
#pragma unroll
    for (int i = 0; i < kILP; ++i) r[i] = static_cast<P>(x[i]);
    store_vec(w, vi, r);
  }

  __device__ __forceinline__ void store1(P* w, int64_t i, float x) const {
    if constexpr (kSixteenBit<P>) {
      if (param.mode != kRoundNearest) {
        param.store1(w, i, x);
        return;
      }
    }
    w[i] = static_cast<P>(x);
  }

  // State slot s, elements 4*vi .. 4*vi+3 of the run.
  __device__ __forceinline__ void state4(int s, uint16_t* p, int64_t vi, const float (&x)[kILP]) const {
    uint16_t r[kILP];
    if (param.mode == kRoundStochastic) {
      const rounding::Philox4 q = param.bits4(vi, stream[s]);
      r[0] = rounding::bf16_sr(x[0], q.x0);
      r[1] = rounding::bf16_sr(x[1], q.x1);
      r[2] = rounding::bf16_sr(x[2], q.x2);
      r[3] = rounding::bf16_sr(x[3], q.x3);
    } else {
#pragma unroll
      for (int i = 0; i < kILP; ++i) r[i] = rounding::bf16_rne(x[i]);
    }
    store_vec(p, vi, r);
  }

  // State slot s, element i of the run.
  __device__ __forceinline__ void state1(int s, uint16_t* p, int64_t i, float x) const {
    state_at(s, p + i, param.index0 + static_cast<uint64_t>(i), x);
  }

  // State slot s, the element *p, whose flat index in its buffer is `index` (ND-Adam's exp_avg_sq: its row).
  __device__ __forceinline__ void state_at(int s, uint16_t* p, uint64_t index, float x) const {
    *p = param.mode == kRoundStochastic
             ? rounding::bf16_sr(x, rounding::rand32(param.seed, param.step, stream[s], index))
             : rounding::bf16_rne(x);
  }
};

// Element i of a state buffer in its math type: as stored, or a bfloat16 element widened (exactly).
template <typename SS>
__device__ __forceinline__ state_math_t<SS> load_state(const SS* p, int64_t i) {
  if constexpr (kBf16State<SS>) return rounding::bf16_to_float(reinterpret_cast<const uint16_t*>(p)[i]);
  else return p[i];
}

// The random streams of a functor's state slots for Bf16StateStore, one byte each (slot 0 in the low byte).
constexpr uint32_t state_streams(uint32_t s0, uint32_t s1 = 0, uint32_t s2 = 0, uint32_t s3 = 0) {
  return s0 | (s1 << 8) | (s2 << 16) | (s3 << 24);
}

// The store type of a functor: Bf16StateStore for bfloat16 state, LowpStore for its other kLowp instantiations
// (16-bit params only), else NearestStore.
template <typename P, typename S, bool kLowp>
using StoreFor = std::conditional_t<kBf16State<S>, Bf16StateStore<P>,
                                    std::conditional_t<kLowp, LowpStore<P>, NearestStore>>;

// The store of tensor t from flat index index0 on: an empty NearestStore, LowpStore::at or Bf16StateStore::at
// (streams: state_streams of the functor's state slots).
template <typename P, typename S, bool kLowp, typename Meta>
__device__ __forceinline__ StoreFor<P, S, kLowp> store_for(const Meta& meta, int t, int mode, double k,
                                                           int64_t index0, uint32_t streams = 0) {
  if constexpr (kBf16State<S>) {
    return Bf16StateStore<P>::at(meta, t, mode, k, index0, streams);
  } else if constexpr (kLowp) {
    (void)streams;
    return LowpStore<P>::at(meta, t, mode, k, index0);
  } else {
    (void)meta, (void)t, (void)mode, (void)k, (void)index0, (void)streams;
    return {};
  }
}

// The type arguments of a family's kernel for one call: P the param type, S the state type (opmath, or bfloat16),
// kLowp whether the table carries the lowp column (multi_tensor_apply: LowpColumn).
template <typename P_, typename S_, bool kLowp_>
struct KernelTypes {
  using P = P_;
  using S = S_;
  static constexpr bool kLowp = kLowp_;
};

// Host side: calls pick(KernelTypes<...>{}) with the kernel types of a call whose params have type P (the op's
// dispatched scalar_t):
//   bf16 (the state is bfloat16): <P, BFloat16, true>, the kernels that take every rounding mode, which exist for
//     float32 / bfloat16 / float16 params only (bf16_state refused float64 ones);
//   otherwise <P, opmath, true> for 16-bit params stored with stochastic rounding or Kahan summation (rounding not
//     nearest; the op checked that other params come with nearest), else <P, opmath, false>.
// A template, so that `if constexpr` discards what is not instantiated (in the ops' AT_DISPATCH lambdas, no
// templates, it would not), and pick a generic lambda, so that its functor types are named once, where it is called.
template <typename P, typename Pick>
void with_kernel_types(bool bf16, int64_t rounding, const Pick& pick) {
  using O = std::conditional_t<std::is_same_v<P, double>, double, float>;
  if (bf16) {
    if constexpr (!std::is_same_v<P, double>) {
      pick(KernelTypes<P, c10::BFloat16, true>{});
    } else {
      TORCH_CHECK(false, "fused_hybrid: bfloat16 state needs float32/bfloat16/float16 params");
    }
    return;
  }
  if constexpr (kSixteenBit<P>) {
    if (rounding != kRoundNearest) {
      pick(KernelTypes<P, O, true>{});
      return;
    }
  }
  pick(KernelTypes<P, O, false>{});
}

// The elementwise loop of one chunk: w (param dtype P, read and written), g (P, read), S state arrays (state type
// SS: opmath O, or bfloat16 widened to O = float, see Bf16StateStore; read and written; st points to S pointers).
// elem(O& w, O g, O (&s)[S]) updates one element in registers.
// Aligned: 4 elements per thread per iteration with vector loads, then a scalar tail; unaligned: scalar,
// block-strided. kStoreW / kStoreStates = false read w / the states without writing them back (the passes of
// two-pass rules). `store` writes w (NearestStore: the plain conversion; LowpStore: see above) and bfloat16 state.
template <int S, bool kStoreW = true, bool kStoreStates = true, typename P, typename SS, typename Elem,
          typename Store = NearestStore>
__device__ __forceinline__ void chunk_elementwise(P* __restrict__ w, const P* __restrict__ g, SS* const* st,
                                                  int64_t n, const Elem& elem, const Store& store = {}) {
  using O = state_math_t<SS>;
  constexpr bool kB = kBf16State<SS>;
  bool aligned = is_aligned(w) && is_aligned(g);
  if constexpr (!Store::kNearest && (kStoreW || kB)) aligned = aligned && store.vector_ok();
#pragma unroll
  for (int s = 0; s < S; ++s) aligned = aligned && is_aligned(st[s]);
  int64_t done = 0;
  if (aligned) {
    const int64_t nv = n / kILP;
    for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
      P rw[kILP], rg[kILP];
      O rs[S > 0 ? S : 1][kILP];
      [[maybe_unused]] O xw[Store::kNearest ? 1 : kILP];  // lowp: the float32 results, rounded by the store
      load_vec(rw, w, i);
      load_vec(rg, g, i);
#pragma unroll
      for (int s = 0; s < S; ++s) {
        if constexpr (kB) {
          uint16_t b[kILP];
          load_vec(b, reinterpret_cast<const uint16_t*>(st[s]), i);
#pragma unroll
          for (int ii = 0; ii < kILP; ++ii) rs[s][ii] = rounding::bf16_to_float(b[ii]);
        } else {
          load_vec(rs[s], st[s], i);
        }
      }
#pragma unroll
      for (int ii = 0; ii < kILP; ++ii) {
        O wv = static_cast<O>(rw[ii]);
        O sv[S > 0 ? S : 1];
#pragma unroll
        for (int s = 0; s < S; ++s) sv[s] = rs[s][ii];
        elem(wv, static_cast<O>(rg[ii]), sv);
        if constexpr (Store::kNearest) rw[ii] = static_cast<P>(wv);
        else xw[ii] = wv;
#pragma unroll
        for (int s = 0; s < S; ++s) rs[s][ii] = sv[s];
      }
      if constexpr (kStoreW) {
        if constexpr (Store::kNearest) store_vec(w, i, rw);
        else store.store4(w, i, xw);
      }
      if constexpr (kStoreStates) {
#pragma unroll
        for (int s = 0; s < S; ++s) {
          if constexpr (kB) store.state4(s, reinterpret_cast<uint16_t*>(st[s]), i, rs[s]);
          else store_vec(st[s], i, rs[s]);
        }
      }
    }
    done = nv * kILP;
  }
  for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) {
    O wv = static_cast<O>(w[i]);
    O sv[S > 0 ? S : 1];
#pragma unroll
    for (int s = 0; s < S; ++s) sv[s] = load_state(st[s], i);
    elem(wv, static_cast<O>(g[i]), sv);
    if constexpr (kStoreW) {
      if constexpr (Store::kNearest) w[i] = static_cast<P>(wv);
      else store.store1(w, i, wv);
    }
    if constexpr (kStoreStates) {
#pragma unroll
      for (int s = 0; s < S; ++s) {
        if constexpr (kB) store.state1(s, reinterpret_cast<uint16_t*>(st[s]), i, sv[s]);
        else st[s][i] = sv[s];
      }
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
// bf16_state: the states are bfloat16 (see bf16_state below) instead of the opmath type.
void check_lists(const char* op, at::TensorList params, at::TensorList grads,
                 std::initializer_list<std::pair<const char*, at::TensorList>> states, bool states_like_params,
                 bool bf16_state = false);

// The rounding arguments of an op (issue 16), checked as the cpu backend checks them (csrc/cpu: lowp_setup):
// rounding is kRound*; a mode other than nearest needs bfloat16/float16 params and one seed per param (stochastic)
// or one compensation buffer per param (Kahan: the param's dtype, device and size, contiguous). Returns the lowp
// column of the launches (TensorListMeta): each param's seed or its buffer's address; empty for nearest.
// With bf16_state, float32 params may carry stochastic rounding too (their state's stores only), and the column
// is never empty (zeros for nearest: the bfloat16-state kernels always read it).
std::vector<uint64_t> lowp_column(const char* op, at::TensorList params, int64_t rounding, at::IntArrayRef seeds,
                                  at::TensorList kahan_comps, bool bf16_state = false);

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
