// Multi-tensor plumbing for the CPU kernels: every tensor of a call is cut into fixed-size chunks and one
// parallel region runs over the chunks of all tensors at once (not tensor by tensor), so many small tensors
// cost one thread pool dispatch, not one each.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cstdint>
#include <vector>

// The default x86-64 target is SSE2 only; the inner loops are compiled a second time for AVX2 and picked at load
// time (GCC function multiversioning through an ifunc). No FMA in the AVX2 clone: both clones then round every
// operation the same way, so results do not depend on the machine's ISA except through reduction order.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FH_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FH_CPU_CLONES
#endif

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

// The host-side passes over thousands of small tensors (checks, step counts, data pointers) are bound by cache
// misses on scattered TensorImpl metadata, which the previous step's data streaming evicted; each pass prefetches
// the metadata a few tensors ahead so that those misses overlap instead of serializing.
constexpr size_t kMetaAhead = 8;

inline void prefetch_meta(at::TensorList l, size_t i) {
  if (i >= l.size()) return;
  const char* p = reinterpret_cast<const char*>(l[i].unsafeGetTensorImpl());
  __builtin_prefetch(p);
  __builtin_prefetch(p + 64);
  __builtin_prefetch(p + 128);
}

// The data pointer of a tensor whose dtype a check already verified (data_ptr<T>() checks it again).
template <typename T>
inline T* data_as(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// sum over i in [0, n) of term(i), in double, in kLaneSum explicit lanes (element i into lane i % kLaneSum, then
// the lanes in order). One accumulator would make a row reduction latency-bound (one double add per ~4 cycles per
// chain); independent lanes vectorize without reassociation, and the order is fixed by the code, not by the
// vector width of the clone that runs. term may have side effects (the update it reduces over).
constexpr int64_t kLaneSum = 16;

template <typename F>
__attribute__((always_inline)) inline double lane_sum(int64_t n, const F& term) {
  double acc[kLaneSum] = {};
  int64_t i = 0;
  for (; i + kLaneSum <= n; i += kLaneSum) {
    for (int64_t j = 0; j < kLaneSum; ++j) acc[j] += term(i + j);
  }
  for (int64_t j = 0; i + j < n; ++j) acc[j] += term(i + j);
  double s = 0.0;
  for (int64_t j = 0; j < kLaneSum; ++j) s += acc[j];
  return s;
}

// Sums per-chunk partials (npart doubles per chunk, chunk-major) into per-tensor totals, always in chunk
// order: the chunk grid depends only on the tensor sizes, so the totals are bitwise identical for any number
// of threads. out has npart doubles per tensor (zero for tensors without chunks).
inline void sum_partials(const std::vector<Chunk>& chunks, const std::vector<double>& part, int64_t npart,
                         double* out, int64_t ntensors) {
  std::fill(out, out + ntensors * npart, 0.0);
  for (size_t c = 0; c < chunks.size(); ++c) {
    for (int64_t j = 0; j < npart; ++j) out[chunks[c].tensor * npart + j] += part[c * npart + j];
  }
}

// Reads and advances each tensor's step count (0-dim float32 CPU tensors, as in torch.optim) and returns the
// new counts. Read through data pointers: item() costs a dispatcher round trip per tensor.
std::vector<double> advance_steps(const char* op, at::TensorList steps, size_t n);

// Checks that a state list holds contiguous tensors of dtype `dtype` with `numel(i)` elements each.
template <typename F>
void check_state(const char* op, const char* what, at::TensorList s, at::ScalarType dtype, const F& numel) {
  for (const auto i : c10::irange(s.size())) {
    prefetch_meta(s, i + kMetaAhead);
    TORCH_CHECK(s[i].scalar_type() == dtype && s[i].is_contiguous() && s[i].device().is_cpu() &&
                    s[i].numel() == numel(i),
                op, ": ", what, " ", i, " must be a contiguous CPU ", dtype, " tensor of ", numel(i),
                " elements (got ", s[i].scalar_type(), ", ", s[i].numel(), " elements)");
  }
}

// Checks shared by every op: matching lengths, one device (CPU), contiguous dense tensors of equal size.
void check_lists(const char* op, at::TensorList params, at::TensorList grads,
                 std::initializer_list<at::TensorList> states);

// 1/grad_scale (1 without a scaler) and whether GradScaler found inf/NaN (then the op changes nothing).
double inv_scale(const std::optional<at::Tensor>& grad_scale);
bool skip_step(const std::optional<at::Tensor>& found_inf);
// The lr: the 0-dim tensor's value when given, else the float.
double lr_value(double lr, const std::optional<at::Tensor>& lr_tensor);

}  // namespace cpu
}  // namespace fused_hybrid
