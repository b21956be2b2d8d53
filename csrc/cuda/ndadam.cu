// ND-Adam on CUDA (Zhang 2017, Algorithm 1; reference.ndadam_vector_step; csrc/cpu/ndadam.cpp on the CPU).
//
// A tensor with row_len L > 0 is numel/L weight vectors of L contiguous elements (the Python backend makes the
// vector dims trailing); exp_avg_sq holds one value per vector. Each vector needs three reductions in sequence
// (<g,w>, <g,g> of the projected gradient, ||w|| after the step; a fourth, ||w||, on the first step), so the unit
// of work is a row: rows of at least 2048 elements get a whole block each, shorter rows a warp each, several rows
// per block (launch_plan.h: rows_per_chunk). The passes re-read the row (from L1/L2) rather than keep it in
// registers, and recompute the intermediate w in float32 from the original (no scratch, bf16/fp16 params round
// once at the end as in the reference). Sums are float64 in a fixed order. Tensors with row_len 0 (biases) get
// torch-form Adam with L2 weight decay in the same launch (flat chunks). Launches: the main kernel + post-step;
// when the rows and flat chunks would need more blocks than one launch's table holds (2048), every chunk grows by
// one power-of-two row_scale (launch_plan.h: ndadam_grid), so a block loops over several rows and a 1.1B-parameter
// model still takes one main launch. The row passes use scalar (coalesced) accesses.
#include <ATen/Dispatch.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <cmath>

#include "../op_families.h"
#include "fused_hybrid/contiguous_grads.h"
#include "fused_hybrid/rules.h"
#include "multi_tensor_apply.cuh"

namespace fused_hybrid {
namespace cuda {
namespace {

struct NdArgs : StepScalars {
  double beta1, beta2, eps, weight_decay;
  int64_t row_scale;  // a row tensor's chunk is rows_per_chunk(L) * row_scale rows (launch_plan.h: ndadam_grid)
  int rounding;       // kRound* (the kLowp kernels branch on it)
  bool maximize;
};

template <typename O>
struct NdScalars {
  O inv, beta2, one_minus_beta1, one_minus_beta2, eps, wd, step_size;  // 1 - x in double, rounded once
  bool first, maximize, has_wd;
};

// One row (number `row` of its tensor) of L elements, processed by `lanes` threads (lane = 0..lanes-1) that reduce
// with `red` (a warp or the whole block; every lane gets the sum). make_store() gives the store of w
// (multi_tensor_apply.cuh: NearestStore, LowpStore or Bf16StateStore from the row's first element); it is called
// after the reductions, so that the store's values are not held in registers across them (built before, they made
// the float16 kernel keep 56 bytes on the stack).
// Float32 / float64 state: the second pass writes the new m, the later passes read it back. Bfloat16 state (SS):
// m is written once, rounded, in the last pass; the passes before recompute the new m in float32 from the old one
// (bitwise the second pass's value), so w moves by the unrounded moments, as on the cpu backend and the reference.
template <typename P, typename SS, typename O, typename Red, typename MakeStore>
__device__ __forceinline__ void ndadam_row(P* __restrict__ w, const P* __restrict__ g, SS* __restrict__ m, SS* v,
                                           int64_t L, int64_t row, int lane, int lanes, const NdScalars<O>& s,
                                           const Red& red, const MakeStore& make_store) {
  constexpr bool kB = kBf16State<SS>;
  const O v_old = load_state(v, 0);
  O norm0 = O(1);
  if (s.first) {  // the paper normalizes at initialization; we do it on the first step
    double ss = 0.0;
    for (int64_t i = lane; i < L; i += lanes) {
      const O x = static_cast<O>(w[i]);
      ss += rules::dot_term(x, x);
    }
    norm0 = static_cast<O>(::sqrt(red(ss)));
  }
  auto x_at = [&](int64_t i) FH_INLINE_LAMBDA {
    const O x = static_cast<O>(w[i]);
    return s.first ? rules::ndadam_normalize(x, norm0) : x;
  };
  auto g_at = [&](int64_t i, O x) FH_INLINE_LAMBDA {
    O gi = rules::effective_grad(static_cast<O>(g[i]), s.inv, s.maximize);
    if (s.has_wd) gi = rules::l2_weight_decay(gi, x, s.wd);
    return gi;
  };
  double gw = 0.0;
  for (int64_t i = lane; i < L; i += lanes) {
    const O x = x_at(i);
    gw += rules::dot_term(g_at(i, x), x);
  }
  const O dot = static_cast<O>(red(gw));
  // The new m of element i (x its row value): the first moment update of the projected gradient.
  auto m_new = [&](int64_t i, O x, O& gp) FH_INLINE_LAMBDA {
    gp = rules::ndadam_project(g_at(i, x), dot, x);
    O mi = load_state(m, i);
    rules::ndadam_first_moment_exact(mi, gp, s.one_minus_beta1);
    return mi;
  };
  // The new m in the passes after the second: recomputed (bfloat16 state) or read back (this thread wrote it).
  auto m_again = [&](int64_t i, O x) FH_INLINE_LAMBDA {
    if constexpr (kB) {
      O gp;
      return m_new(i, x, gp);
    } else {
      return m[i];
    }
  };
  double gg = 0.0;
  for (int64_t i = lane; i < L; i += lanes) {
    O gp;
    const O mi = m_new(i, x_at(i), gp);
    if constexpr (!kB) m[i] = mi;
    gg += rules::dot_term(gp, gp);
  }
  const O vr = rules::ndadam_second_moment_exact(v_old, static_cast<O>(red(gg)), s.beta2, s.one_minus_beta2);
  const O denom = rules::ndadam_denominator(vr, s.eps);
  double ww = 0.0;
  for (int64_t i = lane; i < L; i += lanes) {
    const O x0 = x_at(i);
    const O x = rules::ndadam_descent(x0, m_again(i, x0), denom, s.step_size);
    ww += rules::dot_term(x, x);
  }
  const O norm = static_cast<O>(::sqrt(red(ww)));  // every lane has read v and w before anyone writes them
  const auto store = make_store();
  for (int64_t i = lane; i < L; i += lanes) {
    const O x0 = x_at(i);
    const O mi = m_again(i, x0);
    const O x = rules::ndadam_descent(x0, mi, denom, s.step_size);
    if constexpr (std::decay_t<decltype(store)>::kNearest) w[i] = static_cast<P>(rules::ndadam_normalize(x, norm));
    else store.store1(w, i, rules::ndadam_normalize(x, norm));
    if constexpr (kB) store.state1(0, reinterpret_cast<uint16_t*>(m), i, mi);
  }
  if (lane == 0) {
    if constexpr (kB) store.state_at(1, reinterpret_cast<uint16_t*>(v), static_cast<uint64_t>(row), vr);
    else *v = vr;
  }
}

// A LowpStore or Bf16StateStore that always takes chunk_elementwise's scalar path (vector_ok() is constantly false,
// so the vector loop is not compiled), for the 1-D tensors (biases: few elements) of the kLowp kernels: with that
// vector loop next to the row passes, ptxas kept 56 bytes of stack (spills) in the float16 kernel; the row passes'
// stores are scalar anyway.
template <typename Store>
struct ScalarOnly : Store {
  __device__ __forceinline__ bool vector_ok() const { return false; }
};

// Lists: 0 params, 1 grads, 2 exp_avgs, 3 exp_avg_sqs; aux: steps; info: row_len (0: plain Adam, flat chunks);
// lowp (kLowpStore): seeds or compensation buffers. SS: the moment buffers' type (O, or bfloat16: Bf16StateStore,
// kLowpStore, the random streams of exp_avg and exp_avg_sq 1 and 2 as in hyper.STATE_STREAMS["ndadam"]).
template <typename P, typename SS, bool kLowpStore>
struct NdAdamFunctor {
  using O = state_math_t<SS>;
  static constexpr bool kLowp = kLowpStore;
  static constexpr uint32_t kStreams = state_streams(1, 2);
  NdArgs a;

  __device__ __forceinline__ void operator()(const TensorListMeta<4, kLowp>& meta) const {
    if (a.found_inf.get() != 0.0) return;
    const int t = meta.block_tensor[blockIdx.x];
    const int64_t chunk = meta.block_chunk[blockIdx.x];
    const int64_t L = meta.info[t];
    P* w = static_cast<P*>(meta.addresses[0][t]);
    const P* g = static_cast<const P*>(meta.addresses[1][t]);
    SS* m = static_cast<SS*>(meta.addresses[2][t]);
    SS* v = static_cast<SS*>(meta.addresses[3][t]);
    const double lr = a.lr.get();
    const double k = static_cast<double>(*static_cast<const float*>(meta.aux[t]) + 1.0f);
    const double bc1 = 1.0 - rules::pow_whole(a.beta1, static_cast<int64_t>(k));
    const double bc2 = 1.0 - rules::pow_whole(a.beta2, static_cast<int64_t>(k));
    const O inv = static_cast<O>(1.0 / a.grad_scale.get());
    const bool maximize = a.maximize;
    if (L == 0) {  // plain Adam (reference.adam_step_torch_form with L2 weight decay)
      const rules::AdaptiveScalars<O> sc =
          rules::adaptive_scalars<O>(rules::TorchFormAdam{a.beta1, a.beta2, a.eps, a.weight_decay}, lr, k, bc1, bc2);
      const rules::OneMinus<O> om{static_cast<O>(1.0 - a.beta1), static_cast<O>(1.0 - a.beta2), O(1)};
      const int64_t start = chunk * meta.chunk_size;
      const int64_t n = std::min(meta.chunk_size, meta.numel[t] - start);
      SS* const st[2] = {m + start, v + start};
      // Stochastic rounding / Kahan stores and bfloat16 state: the scalar path only (ScalarOnly).
      using Store = StoreFor<P, SS, kLowp>;
      using FlatStore = std::conditional_t<Store::kNearest, NearestStore, ScalarOnly<Store>>;
      const FlatStore flat_store{store_for<P, SS, kLowp>(meta, t, a.rounding, k, start, kStreams)};
      chunk_elementwise<2>(w + start, g + start, st, n, [&](O& wv, O gv, O(&s)[2]) FH_INLINE_LAMBDA {
        O gi = rules::effective_grad(gv, inv, maximize);
        O unused = O(0);
        rules::adaptive_update_exact(wv, gi, s[0], s[1], unused, sc, om);
      }, flat_store);
      return;
    }
    NdScalars<O> s;
    s.inv = inv;
    s.beta2 = static_cast<O>(a.beta2);
    s.one_minus_beta1 = static_cast<O>(1.0 - a.beta1);
    s.one_minus_beta2 = static_cast<O>(1.0 - a.beta2);
    s.eps = static_cast<O>(a.eps);
    s.wd = static_cast<O>(a.weight_decay);
    s.has_wd = a.weight_decay != 0.0;
    s.step_size = static_cast<O>(lr * ::sqrt(bc2) / bc1);
    s.first = k == 1.0;
    s.maximize = maximize;
    const int64_t rows = meta.numel[t] / L;
    const bool long_rows = plan::rows_per_chunk(L) == 1;
    const int64_t rpc = plan::rows_per_chunk(L) * a.row_scale;
    const int64_t r1 = std::min(rows, (chunk + 1) * rpc);
    if (long_rows) {  // the whole block per row, one row after another
      for (int64_t r = chunk * rpc; r < r1; ++r) {
        ndadam_row(w + r * L, g + r * L, m + r * L, v + r, L, r, threadIdx.x, blockDim.x, s,
                   [](double x) FH_INLINE_LAMBDA { return block_sum(x); },
                   [&]() FH_INLINE_LAMBDA { return store_for<P, SS, kLowp>(meta, t, a.rounding, k, r * L, kStreams); });
      }
    } else {  // short rows: a warp each
      const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
      for (int64_t r = chunk * rpc + warp; r < r1; r += warps) {
        ndadam_row(w + r * L, g + r * L, m + r * L, v + r, L, r, lane, 32, s,
                   [](double x) FH_INLINE_LAMBDA { return warp_sum(x); },
                   [&]() FH_INLINE_LAMBDA { return store_for<P, SS, kLowp>(meta, t, a.rounding, k, r * L, kStreams); });
      }
    }
  }
};

void ndadam_(at::TensorList params, at::TensorList grads_in, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
             at::TensorList steps, at::TensorList kahan_comps,
             const families::ndadam_args& args) {
  FH_BIND_ARGS(FH_NDADAM_ARGS)
  const ContiguousGrads contiguous(grads_in);
  const at::TensorList grads = contiguous.list();
  const char* op = "fused_hybrid::ndadam_";
  const bool bf16 = !params.empty() && bf16_state(op, params[0].scalar_type(), {exp_avgs, exp_avg_sqs});
  check_lists(op, params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}}, false, bf16);
  TORCH_CHECK(steps.size() == params.size(), op, ": steps needs one tensor per param");
  TORCH_CHECK(row_lens.size() == params.size(), op, ": row_lens needs one entry per param");
  const std::vector<uint64_t> lowp = lowp_column(op, params, rounding, seeds, kahan_comps, bf16);
  if (params.empty()) return;
  const auto dev = params[0].device();
  std::vector<int64_t> numels;
  for (const auto i : c10::irange(params.size())) {
    const int64_t n = params[i].numel(), L = row_lens[i];
    TORCH_CHECK(L >= 0 && (L == 0 || n % L == 0), op, ": row_lens[", i, "] = ", L, " does not divide ", n);
    TORCH_CHECK(exp_avgs[i].numel() == n, op, ": exp_avgs[", i, "] must have the param's size");
    // An empty param updates nothing, so its v may have any shape: a (5, 0) weight is 5 vectors of length 0 (row_len
    // 0, v of 5 elements), which the cpu op and the reference accept (found by running this op under cuda_sim).
    TORCH_CHECK(n == 0 || exp_avg_sqs[i].numel() == (L == 0 ? n : n / L), op, ": exp_avg_sqs[", i,
                "] must have ", L == 0 ? n : n / L, " elements");
    numels.push_back(n);
  }
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<at::Tensor> keep;
  NdArgs a;
  static_cast<StepScalars&>(a) = step_scalars(lr_tensor, lr, grad_scale, found_inf, dev, keep);
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.weight_decay = weight_decay;
  a.maximize = maximize;
  a.rounding = static_cast<int>(rounding);

  const std::vector<int64_t> info(row_lens.begin(), row_lens.end());
  const plan::RowGrid grid = plan::ndadam_grid(numels, info, geometry().max_blocks, geometry().base_chunk,
                                                 geometry().max_chunk);
  a.row_scale = grid.row_scale;
  Operands ops = gather_operands(op, params, grads, {exp_avgs, exp_avg_sqs}, steps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_hybrid_ndadam_cuda", [&] {
    with_kernel_types<scalar_t>(bf16, rounding, [&](auto k) {
      using K = decltype(k);
      NdAdamFunctor<typename K::P, typename K::S, K::kLowp> f;
      f.a = a;
      multi_tensor_apply<4>(ops.lists, grid.chunks, grid.chunk_size, ops.step_ptrs, info, f, nullptr, &lowp);
    });
  });
  launch_post_step(ops.steps, a.found_inf, at::Tensor(), {}, {}, nullptr, nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(FH_CUDA_NAMESPACE, FH_CUDA_KEY, m) { m.impl("ndadam_", &families::ndadam_op<&ndadam_>); }

}  // namespace cuda
}  // namespace fused_hybrid
