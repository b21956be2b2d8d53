// The CPU implementations of the rounding test ops (fused_hybrid/rounding_test_ops.h): rounding.h compiled by the
// host compiler with the CPU kernels' flags. The ops are defined here, for every dispatch key that implements them
// (csrc/cuda/rounding.cu adds CUDA).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "fused_hybrid/rounding_test_ops.h"

namespace fused_hybrid {
namespace cpu {
namespace {

namespace r = ::fused_hybrid::rounding;

void check_round_test(const at::Tensor& x, int64_t mode, int64_t step, int64_t tensor_id, int64_t offset) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "_round_test: x must be float32, got ", x.scalar_type());
  TORCH_CHECK(mode >= 0 && mode < r::kRoundTestModes, "_round_test: mode ", mode, " is not 0..",
              r::kRoundTestModes - 1);
  TORCH_CHECK(step >= 0 && step <= 0xFFFFFFFFLL, "_round_test: step must fit 32 unsigned bits");
  TORCH_CHECK(tensor_id >= 0 && tensor_id <= 0xFFFFFFFFLL, "_round_test: tensor_id must fit 32 unsigned bits");
  TORCH_CHECK(offset >= 0, "_round_test: offset must be >= 0");
}

at::Tensor round_test(const at::Tensor& x_in, int64_t mode, int64_t seed, int64_t step, int64_t tensor_id,
                      int64_t offset, const std::optional<at::Tensor>& rand_in) {
  check_round_test(x_in, mode, step, tensor_id, offset);
  const at::Tensor x = x_in.contiguous();
  at::Tensor rand;
  if (rand_in.has_value()) {
    TORCH_CHECK(rand_in->scalar_type() == at::kLong && rand_in->numel() == x.numel(),
                "_round_test: rand must be an int64 tensor with one element per element of x");
    rand = rand_in->contiguous();
  }
  const int64_t* rp = rand.defined() ? rand.data_ptr<int64_t>() : nullptr;
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  const int m = static_cast<int>(mode);
  for (const auto i : c10::irange(x.numel())) {
    op[i] = r::round_test_element(m, xp[i], static_cast<uint64_t>(seed), static_cast<uint32_t>(step),
                                  static_cast<uint32_t>(tensor_id), static_cast<uint64_t>(offset + i),
                                  rp != nullptr ? rp + i : nullptr);
  }
  return out;
}

std::vector<at::Tensor> kahan_store_test(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& c_in,
                                         bool fp16) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "_kahan_store_test: x must be float32");
  TORCH_CHECK(w_in.scalar_type() == at::kLong && c_in.scalar_type() == at::kLong,
              "_kahan_store_test: w and c are int64 tensors of 16-bit patterns");
  TORCH_CHECK(w_in.numel() == x_in.numel() && c_in.numel() == x_in.numel(), "_kahan_store_test: sizes differ");
  const at::Tensor x = x_in.contiguous();
  at::Tensor w = w_in.contiguous().clone();
  at::Tensor c = c_in.contiguous().clone();
  const float* xp = x.data_ptr<float>();
  int64_t* wp = w.data_ptr<int64_t>();
  int64_t* cp = c.data_ptr<int64_t>();
  for (const auto i : c10::irange(x.numel())) r::kahan_test_element(fp16, xp[i], wp[i], cp[i]);
  return {w, c};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_hybrid, m) {
  m.def(r::kRoundTestSchema);
  m.def(r::kKahanTestSchema);
}

TORCH_LIBRARY_IMPL(fused_hybrid, CPU, m) {
  m.impl("_round_test", &round_test);
  m.impl("_kahan_store_test", &kahan_store_test);
}

}  // namespace cpu
}  // namespace fused_hybrid
