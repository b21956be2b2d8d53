// ND-Adam on the CPU (Zhang 2017, Algorithm 1; reference.ndadam_vector_step).
//
// A tensor with row_len L > 0 is numel/L weight vectors of L contiguous elements (the Python backend makes the
// vector dims trailing); exp_avg_sq holds one value per vector. Each vector needs three reductions in sequence
// (<g,w>, then <g,g> of the projected gradient, then ||w|| after the step), so the unit of work is a block of
// whole rows: one thread does a row's passes back to back while the row is in its cache, and every sum is
// accumulated in float64 in a fixed order inside the row, so results do not depend on the thread count.
// Tensors with row_len 0 (biases, other 1-D params) get torch-form Adam with L2 weight decay, chunked like the
// adaptive op. Both kinds of work share one parallel region.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "adaptive_kernel.h"
#include "lowp_store.h"
#include "../op_families.h"
#include "fused_hybrid/contiguous_grads.h"
#include "fused_hybrid/rules.h"
#include "multi_tensor.h"
#include "tensor_table.h"

namespace fused_hybrid {
namespace cpu {
namespace {

template <typename T>
struct NdScalars {
  T one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, step_size;  // step_size = lr*sqrt(bc2)/bc1
  bool first;                                    // k == 1: normalize the vectors first
};

// Rows [r0, r1) of one tensor; inv carries maximize in its sign (see signed_inv). x is the row in the compute
// type: the parameter itself for float32/float64, a scratch copy for bf16/fp16 (the reference keeps w in float32
// between its passes and rounds once at the end).
template <typename scalar_t, typename opmath_t, bool WD>
FH_CPU_CLONES void ndadam_rows(scalar_t* __restrict__ w, const scalar_t* __restrict__ g, opmath_t* __restrict__ m,
                               opmath_t* __restrict__ v, int64_t L, int64_t r0, int64_t r1,
                               const NdScalars<opmath_t>& s, opmath_t inv, opmath_t* __restrict__ scratch) {
  constexpr bool kInPlace = std::is_same_v<scalar_t, opmath_t>;
  const opmath_t omb1 = s.one_minus_beta1, beta2 = s.beta2, omb2 = s.one_minus_beta2, eps = s.eps;
  const opmath_t wd = s.weight_decay, step_size = s.step_size;
  for (int64_t r = r0; r < r1; ++r) {
    scalar_t* wr = w + r * L;
    const scalar_t* gr = g + r * L;
    opmath_t* mr = m + r * L;
    opmath_t* x;
    if constexpr (kInPlace) {
      x = wr;
    } else {
      x = scratch;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) x[i] = static_cast<opmath_t>(wr[i]);
    }
    if (s.first) {
      const double ss = lane_sum(L, [&](int64_t i) { return rules::dot_term(x[i], x[i]); });
      const opmath_t norm = static_cast<opmath_t>(std::sqrt(ss));
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) x[i] = rules::ndadam_normalize(x[i], norm);
    }
    auto grad = [&](int64_t i) __attribute__((always_inline)) {
      opmath_t gi = rules::effective_grad(static_cast<opmath_t>(gr[i]), inv, false);
      if (WD) gi = rules::l2_weight_decay(gi, x[i], wd);
      return gi;
    };
    const opmath_t dot = static_cast<opmath_t>(lane_sum(L, [&](int64_t i) { return rules::dot_term(grad(i), x[i]); }));
    const double gg = lane_sum(L, [&](int64_t i) {
      const opmath_t gp = rules::ndadam_project(grad(i), dot, x[i]);
      rules::ndadam_first_moment_exact(mr[i], gp, omb1);
      return rules::dot_term(gp, gp);
    });
    const opmath_t vr = rules::ndadam_second_moment_exact(v[r], static_cast<opmath_t>(gg), beta2, omb2);
    v[r] = vr;
    const opmath_t denom = rules::ndadam_denominator(vr, eps);
    const double ww = lane_sum(L, [&](int64_t i) {
      x[i] = rules::ndadam_descent(x[i], mr[i], denom, step_size);
      return rules::dot_term(x[i], x[i]);
    });
    const opmath_t norm = static_cast<opmath_t>(std::sqrt(ww));
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) wr[i] = static_cast<scalar_t>(rules::ndadam_normalize(x[i], norm));
  }
}

struct Work {
  int64_t tensor, begin, end;  // rows for vector tensors, elements for plain-Adam ones
};

void ndadam_(at::TensorList params, at::TensorList grads_in, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
             at::TensorList steps, at::TensorList kahan_comps, const families::ndadam_args& args) {
  FH_BIND_ARGS(FH_NDADAM_ARGS)
  const ContiguousGrads contiguous(grads_in);
  const at::TensorList grads = contiguous.list();
  static constexpr const char* op = "fused_hybrid::ndadam_";
  const size_t T = params.size();
  check_lists(op, params, grads, {exp_avgs, exp_avg_sqs});
  TORCH_CHECK(row_lens.size() == T, op, ": row_lens needs one entry per param");
  for (size_t t = 0; t < T; ++t) {
    const int64_t n = params[t].numel(), L = row_lens[t];
    TORCH_CHECK(L >= 0, op, ": negative row length for tensor ", t);
    TORCH_CHECK(n == 0 || L == 0 || n % L == 0, op, ": tensor ", t, " has ", n,
                " elements, not a multiple of its row length ", L);
  }
  if (T == 0 || skip_step(found_inf)) return;
  const std::vector<double> ks = advance_steps(op, steps, T);
  const bool bf16 = bf16_state(op, params[0].scalar_type(), {exp_avgs, exp_avg_sqs});
  const LowpStore lp = lowp_setup(op, params, rounding, seeds, kahan_comps, ks, bf16);
  const double inv = inv_scale(grad_scale);
  const double lrv = lr_value(lr, lr_tensor);

  // The work list: blocks of whole rows (about kChunk elements each) and element chunks for plain-Adam tensors.
  std::vector<Work> work;
  int64_t max_row = 0;
  for (size_t t = 0; t < T; ++t) {
    const int64_t n = params[t].numel(), L = row_lens[t];
    if (n == 0) continue;
    if (L == 0) {
      for (int64_t b = 0; b < n; b += kChunk) work.push_back({static_cast<int64_t>(t), b, std::min(n, b + kChunk)});
    } else {
      const int64_t rows = n / L, per = std::max<int64_t>(1, kChunk / L);
      max_row = std::max(max_row, L);
      for (int64_t r = 0; r < rows; r += per) work.push_back({static_cast<int64_t>(t), r, std::min(rows, r + per)});
    }
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "fused_hybrid_ndadam", [&] {
    using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto state_dtype = bf16 ? at::kBFloat16 : c10::CppTypeToScalarType<opmath_t>::value;
    check_state(op, "exp_avg", exp_avgs, state_dtype, [&](size_t i) { return params[i].numel(); });
    check_state(op, "exp_avg_sq", exp_avg_sqs, state_dtype, [&](size_t i) {
      const int64_t n = params[i].numel();
      if (n == 0) return exp_avg_sqs[i].numel();  // nothing to update; v's shape does not matter
      return row_lens[i] == 0 ? n : n / row_lens[i];
    });

    std::vector<scalar_t*> pw(T);
    std::vector<const scalar_t*> pg(T);
    std::vector<opmath_t*> pm(T), pv(T);
    std::vector<NdScalars<opmath_t>> nd(T);
    std::vector<rules::AdaptiveScalars<opmath_t>> adam(T);
    for (size_t t = 0; t < T; ++t) {
      pw[t] = params[t].data_ptr<scalar_t>();
      pg[t] = grads[t].data_ptr<scalar_t>();
      pm[t] = data_as<opmath_t>(exp_avgs[t]);  // (bfloat16 state: read through lowp_store.h's staging)
      pv[t] = data_as<opmath_t>(exp_avg_sqs[t]);
      const double k = ks[t];
      if (row_lens[t] == 0) {
        adam[t] = rules::adaptive_scalars<opmath_t>(rules::TorchFormAdam{beta1, beta2, eps, weight_decay}, lrv, k,
                                                    1.0 - std::pow(beta1, k), 1.0 - std::pow(beta2, k));
      } else {
        const double bc1 = 1.0 - std::pow(beta1, k), bc2 = 1.0 - std::pow(beta2, k);
        nd[t] = {opmath_t(1.0 - beta1),        opmath_t(beta2),
                 opmath_t(1.0 - beta2),        opmath_t(eps),
                 opmath_t(weight_decay),       opmath_t(lrv * std::sqrt(bc2) / bc1),
                 k == 1.0};
      }
    }
    const bool wd = weight_decay != 0.0;
    const auto rows_fn = wd ? &ndadam_rows<scalar_t, opmath_t, true> : &ndadam_rows<scalar_t, opmath_t, false>;
    const auto adam_fn = pick_adaptive<scalar_t, opmath_t>(kKindTorch, false, wd ? kWdL2 : kWdNone, false);
    const opmath_t inv_o = signed_inv<opmath_t>(inv, maximize);  // maximize folded into inv's sign
    const auto om = one_minus<opmath_t>(beta1, beta2, lrv, weight_decay);
    constexpr bool kNeedScratch = !std::is_same_v<scalar_t, opmath_t>;
    // 16-bit params with stochastic rounding or Kahan summation, and bfloat16 state: the float32 loops on staged
    // copies of the work item's elements (lowp_store.h); rows r0..r1 of the tensor are rows 0..r1-r0 of the staged
    // copy, and the rows' v values (one per row) are staged with them. The row sums stay float64 (rules.h).
    const auto rows_fn32 = wd ? &ndadam_rows<opmath_t, opmath_t, true> : &ndadam_rows<opmath_t, opmath_t, false>;
    const auto adam_fn32 = pick_adaptive<opmath_t, opmath_t>(kKindTorch, false, wd ? kWdL2 : kWdNone, false);
    at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t wb, int64_t we) {
      std::vector<opmath_t> scratch(kNeedScratch ? max_row : 0);
      for (int64_t i = wb; i < we; ++i) {
        const Work& u = work[i];
        const int64_t t = u.tensor;
        if (lp.active() || bf16) {
          const int64_t L = row_lens[t];
          const int64_t b = L == 0 ? u.begin : u.begin * L, n = L == 0 ? u.end - u.begin : (u.end - u.begin) * L;
          using R = StateRange<opmath_t>;
          const std::array<R, 2> st{R{pm[t], b, n}, L == 0 ? R{pv[t], b, n} : R{pv[t], u.begin, u.end - u.begin}};
          staged_step<scalar_t, opmath_t, 2>(
              pw[t] + b, pg[t] + b, n, b, lp, t, bf16, st, [&](auto* w32, const auto* g32, opmath_t* const* s) {
                if (L == 0) {
                  adam_fn32(w32, g32, s[0], s[1], nullptr, n, adam[t], om, inv_o, nullptr);
                } else {
                  rows_fn32(w32, g32, s[0], s[1], L, 0, u.end - u.begin, nd[t], inv_o, nullptr);
                }
              });
          continue;
        }
        if (row_lens[t] == 0) {
          adam_fn(pw[t] + u.begin, pg[t] + u.begin, pm[t] + u.begin, pv[t] + u.begin, nullptr, u.end - u.begin,
                  adam[t], om, inv_o, nullptr);
        } else {
          rows_fn(pw[t], pg[t], pm[t], pv[t], row_lens[t], u.begin, u.end, nd[t], inv_o, scratch.data());
        }
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_hybrid, CPU, m) { m.impl("ndadam_", &families::ndadam_op<&ndadam_>); }

// The table op may carry no tensor argument at all (no grads: they come from the params), so it is registered for
// every dispatch key, the empty key set included; it serves CPU tensors only and says so otherwise.
TORCH_LIBRARY_IMPL(fused_hybrid, CompositeExplicitAutograd, m) {
  impl_table_op<families::ndadam_lists, &families::ndadam_op<&ndadam_>>(m, "ndadam_table_");
}

}  // namespace cpu
}  // namespace fused_hybrid
