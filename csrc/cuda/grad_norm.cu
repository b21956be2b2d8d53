// The gradient-norm op on CUDA (csrc/grad_norm.h): one multi-tensor launch reads every gradient once (4 bytes per
// float32 element, 128-bit loads) and writes one float64 partial per chunk to a slot; a one-block kernel then
// combines the slots in slot order (tensor order, then chunk order). Every thread reduces the same elements in the
// same order whatever the alignment, and the block reductions are fixed shuffle trees: the result is bitwise
// reproducible for a given launch geometry, with no atomics. Nothing is read on the host: grad_scale is a device
// scalar and the result stays on the device.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <cmath>

#include "../grad_norm.h"
#include "fused_hybrid/contiguous_grads.h"
#include "multi_tensor_apply.cuh"

namespace fused_hybrid {
namespace cuda {
namespace {

using grad_norm::Mode;

// max with NaN winning (torch.linalg.vector_norm(inf) of a NaN is NaN): once acc is NaN, `a > acc` is false.
__device__ __forceinline__ double nan_max(double acc, double a) { return (a > acc || a != a) ? a : acc; }

template <int kMode>
__device__ __forceinline__ double combine(double acc, double a) {
  if constexpr (kMode == grad_norm::kInf) return nan_max(acc, a);
  else return acc + a;
}

template <int kMode>
__device__ __forceinline__ double term(double x, double p) {
  if constexpr (kMode == grad_norm::kL1) return fabs(x);
  else if constexpr (kMode == grad_norm::kL2) return x * x;
  else if constexpr (kMode == grad_norm::kLp) return pow(fabs(x), p);
  else return fabs(x);
}

// The block's combined value, valid in thread 0 (sum: block_sum's tree; max: the same tree with nan_max). Every
// thread of the block must call it.
template <int kMode>
__device__ __forceinline__ double block_reduce(double v) {
  if constexpr (kMode != grad_norm::kInf) {
    return block_sum(v);
  } else {
    __shared__ double warp_max[kBlockSize / 32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) warp_max[warp] = v;
    __syncthreads();
    double x = 0.0;
    if (warp == 0) {
      x = lane < static_cast<int>(blockDim.x / 32) ? warp_max[lane] : 0.0;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) x = nan_max(x, __shfl_xor_sync(0xffffffffu, x, o));
    }
    return x;
  }
}

template <typename P, typename C, int kMode>  // (an int: the kernels' names stay short in cuobjdump)
struct NormFunctor {
  DeviceScalar grad_scale;
  double p;
  double* slots;  // one per chunk of the call, in tensor and chunk order

  __device__ __forceinline__ void operator()(const TensorListMeta<1>& meta) const {
    const int t = meta.block_tensor[blockIdx.x];
    const int64_t start = static_cast<int64_t>(meta.block_chunk[blockIdx.x]) * meta.chunk_size;
    const int64_t n = std::min(meta.chunk_size, meta.numel[t] - start);
    const P* g = static_cast<const P*>(meta.addresses[0][t]) + start;
    const C inv = static_cast<C>(1.0 / grad_scale.get());
    // Thread i takes groups i, i + blockDim, ... of kILP elements, by one 128-bit load when the group is whole and
    // aligned, else element by element: the same elements in the same order either way, so the result does not
    // depend on the gradient's address. Missing elements of the last group count as zeros (no-ops for sum and max).
    const bool aligned = is_aligned(g);
    const int64_t groups = (n + kILP - 1) / kILP;
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < groups; i += blockDim.x) {
      P r[kILP];
      if (aligned && (i + 1) * kILP <= n) {
        load_vec(r, g, i);
      } else {
#pragma unroll
        for (int j = 0; j < kILP; ++j) r[j] = i * kILP + j < n ? g[i * kILP + j] : P(0);
      }
#pragma unroll
      for (int j = 0; j < kILP; ++j) {
        acc = combine<kMode>(acc, term<kMode>(static_cast<double>(static_cast<C>(r[j]) * inv), p));
      }
    }
    acc = block_reduce<kMode>(acc);
    if (threadIdx.x == 0) slots[meta.slot_base + blockIdx.x] = acc;
  }
};

// One block: out = the combination of slots[0..n) in slot order (each thread a strided run, then the block tree).
// The mode is a run-time argument, the same for every thread (so every thread meets the same barriers).
__global__ void __launch_bounds__(kBlockSize) norm_finalize_kernel(const double* slots, int64_t n, int mode,
                                                                   double* out) {
  double acc = 0.0;
  if (mode == grad_norm::kInf) {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc = combine<grad_norm::kInf>(acc, slots[i]);
    acc = block_reduce<grad_norm::kInf>(acc);
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += slots[i];
    acc = block_reduce<grad_norm::kL2>(acc);
  }
  if (threadIdx.x == 0) *out = acc;
}

struct Launch {
  const std::vector<std::vector<at::Tensor>>& lists;
  const std::vector<int64_t>& chunks;
  int64_t chunk;
  DeviceScalar scale;
  double p;
  double* slots;
  int64_t nslots;
  double* out;
};

// The two launches of one call: the chunk partials (one multi-tensor launch while the call fits one argument
// table), then the one-block finalize.
template <typename P, typename C, int kMode>
void launch_norm(const Launch& l) {
  NormFunctor<P, C, kMode> f;
  f.grad_scale = l.scale;
  f.p = l.p;
  f.slots = l.slots;
  multi_tensor_apply<1>(l.lists, l.chunks, l.chunk, {}, {}, f);
  FH_LAUNCH(1, kBlockSize, 0, c10::cuda::getCurrentCUDAStream(), norm_finalize_kernel)(l.slots, l.nslots, kMode,
                                                                                      l.out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor grad_norm_partial(at::TensorList grads_in, double norm_type, const std::optional<at::Tensor>& grad_scale) {
  const char* op = "fused_hybrid::grad_norm_partial";
  const Mode mode = grad_norm::mode_of(op, norm_type);
  const ContiguousGrads contiguous(grads_in);
  const at::TensorList grads = contiguous.list();
  TORCH_CHECK(!grads.empty(), op, ": no gradients (the caller skips empty buckets)");
  const auto dev = grads[0].device();
  const auto dtype = grads[0].scalar_type();
  std::vector<std::vector<at::Tensor>> lists(1);
  std::vector<int64_t> numels;
  for (const auto i : c10::irange(grads.size())) {
    const auto& g = grads[i];
    TORCH_CHECK(g.device() == dev && g.layout() == at::kStrided, op,
                ": the cuda backend takes dense tensors on one CUDA device (tensor ", i, ")");
    TORCH_CHECK(g.scalar_type() == dtype, op, ": all gradients of one call share a dtype (tensor ", i, ")");
    lists[0].push_back(g);
    numels.push_back(g.numel());
  }
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<at::Tensor> keep;
  const DeviceScalar scale = device_scalar(grad_scale, 1.0, dev, keep);
  const int64_t chunk = plan::pick_chunk_size(numels, geometry().max_blocks, geometry().base_chunk,
                                              geometry().max_chunk);
  std::vector<int64_t> chunks;
  int64_t total = 0;
  for (const int64_t n : numels) {
    chunks.push_back(plan::num_chunks(n, chunk));
    total += chunks.back();
  }
  const auto dopts = at::TensorOptions().dtype(at::kDouble).device(dev);
  at::Tensor slots = at::empty({std::max<int64_t>(total, 1)}, dopts);
  at::Tensor out = at::empty({}, dopts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_hybrid_grad_norm_cuda", [&] {
    using C = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const Launch l{lists, chunks, chunk, scale, norm_type, slots.data_ptr<double>(), total, out.data_ptr<double>()};
    switch (mode) {
      case grad_norm::kL1: launch_norm<scalar_t, C, grad_norm::kL1>(l); break;
      case grad_norm::kL2: launch_norm<scalar_t, C, grad_norm::kL2>(l); break;
      case grad_norm::kLp: launch_norm<scalar_t, C, grad_norm::kLp>(l); break;
      case grad_norm::kInf: launch_norm<scalar_t, C, grad_norm::kInf>(l); break;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(FH_CUDA_NAMESPACE, FH_CUDA_KEY, m) { m.impl("grad_norm_partial", &grad_norm_partial); }

}  // namespace cuda
}  // namespace fused_hybrid
