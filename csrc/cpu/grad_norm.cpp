// The gradient-norm op on the CPU (csrc/grad_norm.h): one parallel region over fixed-size chunks of all gradients,
// a float64 partial per chunk, and the chunks combined in chunk order. The chunk grid depends only on the tensor
// sizes, so the result is bitwise the same for any number of threads.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../grad_norm.h"
#include "fused_hybrid/contiguous_grads.h"
#include "multi_tensor.h"

namespace fused_hybrid {
namespace cpu {
namespace {

using grad_norm::Mode;

// max with NaN winning (torch.linalg.vector_norm(inf) of a NaN is NaN): once acc is NaN, `a > acc` is false.
inline double nan_max(double acc, double a) { return (a > acc || a != a) ? a : acc; }

// One chunk's partial: the sum of |x|^p (lane_sum's fixed lanes) or the max of |x|, where x = (C)(g * inv) is the
// gradient element as the update kernels see it (rules::effective_grad, in the compute dtype C).
template <Mode kMode, typename scalar_t, typename C>
FH_CPU_CLONES double chunk_partial(const scalar_t* __restrict__ g, int64_t n, C inv, double p) {
  if constexpr (kMode == grad_norm::kInf) {
    // max |x| on the bit patterns: with the sign bit cleared, unsigned integer order is the order of |x|, inf
    // included, and every NaN pattern is above inf, so a NaN wins as in vector_norm. An integer max vectorizes
    // (vpmaxud); a float select that lets NaN win does not (6-8x slower single-threaded, measured). The max is
    // exact, so computing it in C (not double) loses nothing.
    using U = std::conditional_t<sizeof(C) == 4, uint32_t, uint64_t>;
    constexpr U kAbs = ~(U(1) << (sizeof(U) * 8 - 1));
    constexpr int64_t L = kLaneSum;
    U m[L] = {};
    auto bits = [&](int64_t i) __attribute__((always_inline)) {
      const C x = static_cast<C>(g[i]) * inv;
      U b;
      std::memcpy(&b, &x, sizeof b);
      return b & kAbs;
    };
    // Whole groups of L, then the tail (a bound test inside the lane loop keeps GCC from vectorizing it).
    int64_t i = 0;
    for (; i + L <= n; i += L) {
      for (int64_t j = 0; j < L; ++j) {
        const U b = bits(i + j);
        m[j] = b > m[j] ? b : m[j];
      }
    }
    for (int64_t j = 0; i + j < n; ++j) {
      const U b = bits(i + j);
      m[j] = b > m[j] ? b : m[j];
    }
    U r = 0;
    for (int64_t j = 0; j < L; ++j) r = m[j] > r ? m[j] : r;
    C out;
    std::memcpy(&out, &r, sizeof out);
    return static_cast<double>(out);
  } else {
    return lane_sum(n, [&](int64_t i) {
      const double x = static_cast<double>(static_cast<C>(g[i]) * inv);
      if constexpr (kMode == grad_norm::kL1) return std::fabs(x);
      else if constexpr (kMode == grad_norm::kL2) return x * x;
      else return std::pow(std::fabs(x), p);
    });
  }
}

template <Mode kMode, typename scalar_t>
double partial_of(at::TensorList grads, const std::vector<Chunk>& chunks, double inv, double p) {
  using C = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  std::vector<const scalar_t*> pg(grads.size());
  for (const auto i : c10::irange(grads.size())) {
    prefetch_meta(grads, i + kMetaAhead);
    pg[i] = data_as<scalar_t>(grads[i]);
  }
  std::vector<double> part(chunks.size());
  const C inv_c = static_cast<C>(inv);
  for_each_chunk(chunks, [&](const Chunk& c) {
    part[&c - chunks.data()] = chunk_partial<kMode, scalar_t, C>(pg[c.tensor] + c.begin, c.end - c.begin, inv_c, p);
  });
  double total = 0.0;
  for (const double x : part) total = kMode == grad_norm::kInf ? nan_max(total, x) : total + x;  // chunk order
  return total;
}

at::Tensor grad_norm_partial(at::TensorList grads_in, double norm_type, const std::optional<at::Tensor>& grad_scale) {
  const char* op = "fused_hybrid::grad_norm_partial";
  const Mode mode = grad_norm::mode_of(op, norm_type);
  const ContiguousGrads contiguous(grads_in);
  const at::TensorList grads = contiguous.list();
  at::Tensor out = at::empty({}, at::TensorOptions().dtype(at::kDouble));
  if (grads.empty()) {
    out.fill_(0.0);
    return out;
  }
  const auto dtype = grads[0].scalar_type();
  for (const auto i : c10::irange(grads.size())) {
    prefetch_meta(grads, i + kMetaAhead);
    const auto& g = grads[i];
    TORCH_CHECK(g.device().is_cpu() && g.layout() == at::kStrided, op, ": the cpu backend takes dense CPU tensors");
    TORCH_CHECK(g.scalar_type() == dtype, op, ": all gradients of one call share a dtype (tensor ", i, " is ",
                g.scalar_type(), ", tensor 0 ", dtype, ")");
  }
  const double inv = inv_scale(grad_scale);
  const auto chunks = make_chunks(grads);
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_hybrid_grad_norm", [&] {
    switch (mode) {
      case grad_norm::kL1: total = partial_of<grad_norm::kL1, scalar_t>(grads, chunks, inv, norm_type); break;
      case grad_norm::kL2: total = partial_of<grad_norm::kL2, scalar_t>(grads, chunks, inv, norm_type); break;
      case grad_norm::kLp: total = partial_of<grad_norm::kLp, scalar_t>(grads, chunks, inv, norm_type); break;
      case grad_norm::kInf: total = partial_of<grad_norm::kInf, scalar_t>(grads, chunks, inv, norm_type); break;
    }
  });
  *out.data_ptr<double>() = total;
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_hybrid, CPU, m) { m.impl("grad_norm_partial", &grad_norm_partial); }

}  // namespace cpu
}  // namespace fused_hybrid
