// Multi-tensor plumbing for the CPU kernels: every tensor of a call is cut into fixed-size chunks and one
// parallel region runs over the chunks of all tensors at once (not tensor by tensor), so many small tensors
// cost one thread pool dispatch, not one each.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/irange.h>

#include <cstdint>
#include <vector>

namespace fused_hybrid {
namespace cpu {

// Elements per chunk: large enough to amortize the per-chunk overhead, small enough to balance two threads
// over a ResNet-sized tensor list (64 KiB of float32 per operand).
constexpr int64_t kChunk = 16384;

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

inline std::vector<Chunk> make_chunks(at::TensorList tensors, int64_t chunk = kChunk) {
  std::vector<Chunk> out;
  for (const auto t : c10::irange(static_cast<int64_t>(tensors.size()))) {
    const int64_t n = tensors[t].numel();
    for (int64_t b = 0; b < n; b += chunk) out.push_back({t, b, std::min(n, b + chunk)});
  }
  return out;
}

// Runs f(chunk) over all chunks in one parallel region.
template <typename F>
void for_each_chunk(const std::vector<Chunk>& chunks, const F& f) {
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) f(chunks[i]);
  });
}

// Checks shared by every op: matching lengths, one device (CPU), contiguous dense tensors of equal size.
void check_lists(const char* op, at::TensorList params, at::TensorList grads,
                 std::initializer_list<at::TensorList> states);

// 1/grad_scale (1 without a scaler) and whether GradScaler found inf/NaN (then the op changes nothing).
double inv_scale(const std::optional<at::Tensor>& grad_scale);
bool found_inf(const std::optional<at::Tensor>& found_inf);
// The lr: the 0-dim tensor's value when given, else the float.
double lr_value(double lr, const std::optional<at::Tensor>& lr_tensor);

}  // namespace cpu
}  // namespace fused_hybrid
