// SWATS's per-step bookkeeping on the CPU in three small ops instead of ~70 tensor ops of fused_hybrid/swats.py
// (~0.5 ms a step on the CPU, where each op costs a few microseconds of dispatch): the per-tensor arguments of the
// next kernel call, the per-segment totals of the kernel's partial sums, and the switch test (rules.h). The sums run
// in tensor order, so they are bitwise reproducible; swats.py stays the implementation on other devices.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

#include "fused_hybrid/rules.h"

namespace fused_hybrid {
namespace cpu {
namespace {

constexpr const char* kOp = "fused_hybrid::swats";

void check(const at::Tensor& t, at::ScalarType dtype, int64_t numel, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous() && t.numel() == numel, kOp, ": ",
              what, " must be a contiguous CPU ", dtype, " tensor of ", numel, " elements (got ", t.scalar_type(), ", ",
              t.numel(), " elements on ", t.device(), ")");
}

// seg_of[t] checked to name a segment.
const int64_t* segments(const at::Tensor& seg_of, int64_t S) {
  check(seg_of, at::kLong, seg_of.numel(), "seg_of");
  const int64_t* seg = seg_of.data_ptr<int64_t>();
  for (int64_t t = 0; t < seg_of.numel(); ++t) {
    TORCH_CHECK(seg[t] >= 0 && seg[t] < S, kOp, ": seg_of[", t, "] = ", seg[t], " is not a segment of ", S);
  }
  return seg;
}

// phase[t] and the SGD-phase step size (1-b1)*Lambda*lr_now/lr_at_switch of every tensor (swats.per_tensor_args).
std::tuple<at::Tensor, at::Tensor> swats_args(const at::Tensor& seg_of, const at::Tensor& phase,
                                              const at::Tensor& Lambda, const at::Tensor& lr_ref,
                                              const at::Tensor& lr, const at::Tensor& one_minus_b1) {
  const int64_t T = seg_of.numel(), S = phase.numel();
  const int64_t* seg = segments(seg_of, S);
  check(phase, at::kInt, S, "phase");
  check(Lambda, at::kDouble, S, "Lambda");
  check(lr_ref, at::kDouble, T, "lr_ref");
  check(lr, at::kDouble, T, "lr");
  check(one_minus_b1, at::kDouble, T, "one_minus_b1");
  at::Tensor phase_t = at::empty({T}, phase.options());
  at::Tensor sgd_lr = at::empty({T}, Lambda.options());
  const int32_t* ph = phase.data_ptr<int32_t>();
  const double *Lam = Lambda.data_ptr<double>(), *ref = lr_ref.data_ptr<double>(), *lrs = lr.data_ptr<double>(),
               *omb1 = one_minus_b1.data_ptr<double>();
  int32_t* out_ph = phase_t.data_ptr<int32_t>();
  double* out_lr = sgd_lr.data_ptr<double>();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = seg[t];
    out_ph[t] = ph[s];
    const double ratio = ph[s] == rules::kPhaseSgd ? lrs[t] / ref[t] : 0.0;
    out_lr[t] = omb1[t] * Lam[s] * ratio;
  }
  return {phase_t, sgd_lr};
}

// Per segment: <p,g>, <p,p> and how many tensors stepped ([S, 3] float64; swats.segment_totals). stepped: one
// flag per tensor, or None when every tensor stepped.
at::Tensor swats_totals(const at::Tensor& partials, const std::optional<at::Tensor>& stepped, const at::Tensor& seg_of,
                        int64_t S) {
  const int64_t T = seg_of.numel();
  const int64_t* seg = segments(seg_of, S);
  check(partials, at::kDouble, 2 * T, "partials");
  const double* part = partials.data_ptr<double>();
  const double* st = nullptr;
  if (stepped.has_value()) {
    check(*stepped, at::kDouble, T, "stepped");
    st = stepped->data_ptr<double>();
  }
  at::Tensor totals = at::zeros({S, 3}, partials.options());
  double* tot = totals.data_ptr<double>();
  for (int64_t t = 0; t < T; ++t) {
    double* row = tot + 3 * seg[t];
    row[0] += part[2 * t];
    row[1] += part[2 * t + 1];
    row[2] += st ? st[t] : 1.0;
  }
  return totals;
}

// The switch test of every segment, in place on the SWATS state (swats.finalize).
void swats_finalize_(const at::Tensor& totals, const at::Tensor& seg_of, const at::Tensor& phase, const at::Tensor& lam,
                     const at::Tensor& Lambda, const at::Tensor& switch_step, const at::Tensor& seg_step,
                     const at::Tensor& gamma, const at::Tensor& lr_ref, const at::Tensor& lr, const at::Tensor& b2,
                     const at::Tensor& rtol, const at::Tensor& atol, const std::optional<at::Tensor>& found_inf) {
  const int64_t T = seg_of.numel(), S = phase.numel();
  const int64_t* seg = segments(seg_of, S);
  check(totals, at::kDouble, 3 * S, "totals");
  check(phase, at::kInt, S, "phase");
  for (const auto* t : {&lam, &Lambda, &gamma, &b2, &rtol, &atol}) check(*t, at::kDouble, S, "a segment vector");
  check(switch_step, at::kLong, S, "switch_step");
  check(seg_step, at::kLong, S, "seg_step");
  check(lr_ref, at::kDouble, T, "lr_ref");
  check(lr, at::kDouble, T, "lr");
  if (found_inf.has_value() && found_inf->defined()) {
    TORCH_CHECK(found_inf->device().is_cpu() && found_inf->numel() == 1, kOp, ": found_inf must be one CPU value");
    if (found_inf->item<double>() != 0.0) return;  // GradScaler skipped the step: nothing changes
  }
  const double* tot = totals.data_ptr<double>();
  int32_t* ph = phase.data_ptr<int32_t>();
  double *la = lam.data_ptr<double>(), *La = Lambda.data_ptr<double>(), *ga = gamma.data_ptr<double>();
  int64_t *sw = switch_step.data_ptr<int64_t>(), *ks = seg_step.data_ptr<int64_t>();
  const double *b2s = b2.data_ptr<double>(), *rt = rtol.data_ptr<double>(), *at_ = atol.data_ptr<double>();
  std::vector<char> switched(S, 0);
  for (int64_t s = 0; s < S; ++s) {
    rules::SwatsSegment g{ph[s], la[s], La[s], ga[s], sw[s], ks[s]};
    switched[s] = rules::swats_switch_test(g, tot[3 * s + 2] > 0, tot[3 * s], tot[3 * s + 1], b2s[s], rt[s], at_[s]);
    ph[s] = g.phase;
    la[s] = g.lam;
    La[s] = g.Lambda;
    ga[s] = g.gamma;
    sw[s] = g.switch_step;
    ks[s] = g.seg_step;
  }
  double* ref = lr_ref.data_ptr<double>();
  const double* lrs = lr.data_ptr<double>();
  for (int64_t t = 0; t < T; ++t) {
    if (switched[seg[t]]) ref[t] = lrs[t];
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_hybrid, m) {
  m.def("swats_args(Tensor seg_of, Tensor phase, Tensor Lambda, Tensor lr_ref, Tensor lr, Tensor one_minus_b1) -> "
        "(Tensor, Tensor)");
  m.def("swats_totals(Tensor partials, Tensor? stepped, Tensor seg_of, int S) -> Tensor");
  m.def("swats_finalize_(Tensor totals, Tensor seg_of, Tensor(a!) phase, Tensor(b!) lam, Tensor(c!) Lambda, "
        "Tensor(d!) switch_step, Tensor(e!) seg_step, Tensor(f!) gamma, Tensor(g!) lr_ref, Tensor lr, Tensor b2, "
        "Tensor rtol, Tensor atol, Tensor? found_inf) -> ()");
}

TORCH_LIBRARY_IMPL(fused_hybrid, CPU, m) {
  m.impl("swats_args", &swats_args);
  m.impl("swats_totals", &swats_totals);
  m.impl("swats_finalize_", &swats_finalize_);
}

}  // namespace cpu
}  // namespace fused_hybrid
