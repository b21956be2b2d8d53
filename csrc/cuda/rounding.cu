// The CUDA implementations of the rounding test ops (fused_hybrid/rounding_test_ops.h): rounding.h compiled by
// nvcc for the device (and, through csrc/sim/rounding_sim.cpp, by the host compiler against the SIMT simulator,
// which is how the tests run this file's kernels without a GPU). One thread per element, grid-strided.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "fused_hybrid/rounding_test_ops.h"
#include "multi_tensor_apply.cuh"

namespace fused_hybrid {
namespace cuda {
namespace {

namespace r = ::fused_hybrid::rounding;

#ifdef FUSED_HYBRID_SIM
constexpr unsigned kRoundThreads = 64, kRoundMaxBlocks = 4;  // fibers are slow: a few, grid-strided
#else
constexpr unsigned kRoundThreads = 256, kRoundMaxBlocks = 1024;
#endif

unsigned round_blocks(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kRoundThreads - 1) / kRoundThreads, 1, kRoundMaxBlocks));
}

__global__ void round_test_kernel(const float* x, const int64_t* rand, int64_t* out, int64_t n, int mode,
                                  uint64_t seed, uint32_t step, uint32_t tensor_id, uint64_t offset) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = r::round_test_element(mode, x[i], seed, step, tensor_id, offset + static_cast<uint64_t>(i),
                                   rand != nullptr ? rand + i : nullptr);
  }
}

__global__ void kahan_test_kernel(const float* x, int64_t* w, int64_t* c, int64_t n, bool fp16) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    r::kahan_test_element(fp16, x[i], w[i], c[i]);
  }
}

at::Tensor round_test(const at::Tensor& x_in, int64_t mode, int64_t seed, int64_t step, int64_t tensor_id,
                      int64_t offset, const std::optional<at::Tensor>& rand_in) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "_round_test: x must be float32, got ", x_in.scalar_type());
  TORCH_CHECK(mode >= 0 && mode < r::kRoundTestModes, "_round_test: mode ", mode, " is not 0..",
              r::kRoundTestModes - 1);
  TORCH_CHECK(step >= 0 && step <= 0xFFFFFFFFLL && tensor_id >= 0 && tensor_id <= 0xFFFFFFFFLL && offset >= 0,
              "_round_test: step and tensor_id must fit 32 unsigned bits, offset must be >= 0");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor rand;
  if (rand_in.has_value()) {
    TORCH_CHECK(rand_in->scalar_type() == at::kLong && rand_in->numel() == x.numel() &&
                    rand_in->device() == x.device(),
                "_round_test: rand must be an int64 tensor on x's device with one element per element of x");
    rand = rand_in->contiguous();
  }
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kLong));
  const int64_t n = x.numel();
  if (n == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  FH_LAUNCH(round_blocks(n), kRoundThreads, 0, stream, round_test_kernel)(
      x.data_ptr<float>(), rand.defined() ? rand.data_ptr<int64_t>() : nullptr, out.data_ptr<int64_t>(), n,
      static_cast<int>(mode), static_cast<uint64_t>(seed),
      static_cast<uint32_t>(step), static_cast<uint32_t>(tensor_id), static_cast<uint64_t>(offset));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::vector<at::Tensor> kahan_store_test(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& c_in,
                                         bool fp16) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "_kahan_store_test: x must be float32");
  TORCH_CHECK(w_in.scalar_type() == at::kLong && c_in.scalar_type() == at::kLong,
              "_kahan_store_test: w and c are int64 tensors of 16-bit patterns");
  TORCH_CHECK(w_in.numel() == x_in.numel() && c_in.numel() == x_in.numel(), "_kahan_store_test: sizes differ");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor w = w_in.contiguous().clone();
  at::Tensor c = c_in.contiguous().clone();
  const int64_t n = x.numel();
  if (n == 0) return {w, c};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  FH_LAUNCH(round_blocks(n), kRoundThreads, 0, stream, kahan_test_kernel)(
      x.data_ptr<float>(), w.data_ptr<int64_t>(), c.data_ptr<int64_t>(), n, fp16);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {w, c};
}

}  // namespace

TORCH_LIBRARY_IMPL(FH_CUDA_NAMESPACE, FH_CUDA_KEY, m) {
  m.impl("_round_test", &round_test);
  m.impl("_kahan_store_test", &kahan_store_test);
}

}  // namespace cuda
}  // namespace fused_hybrid
