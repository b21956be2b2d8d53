#include "multi_tensor.h"
#include "lowp_store.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

namespace fused_hybrid {
namespace cpu {

void check_lists(const char* op, at::TensorList params, at::TensorList grads,
                 std::initializer_list<at::TensorList> states) {
  TORCH_CHECK(params.size() == grads.size(), op, ": ", params.size(), " params but ", grads.size(), " grads");
  for (const auto& s : states) {
    TORCH_CHECK(s.size() == params.size(), op, ": a state list has ", s.size(), " tensors for ", params.size(),
                " params");
  }
  for (const auto i : c10::irange(params.size())) {
    prefetch_meta(params, i + kMetaAhead);
    prefetch_meta(grads, i + kMetaAhead);
    const auto& p = params[i];
    const auto& g = grads[i];
    TORCH_CHECK(p.device().is_cpu() && g.device().is_cpu(), op, ": the cpu backend takes CPU tensors");
    TORCH_CHECK(g.layout() == at::kStrided, op, ": sparse gradients are not supported");
    TORCH_CHECK(p.is_contiguous(), op, ": params must be contiguous (tensor ", i, ")");
    TORCH_CHECK(g.numel() == p.numel(), op, ": grad ", i, " has ", g.numel(), " elements, its param ", p.numel());
    TORCH_CHECK(g.scalar_type() == p.scalar_type(), op, ": grad ", i, " dtype ", g.scalar_type(),
                " differs from its param's ", p.scalar_type());
    TORCH_CHECK(p.scalar_type() == params[0].scalar_type(), op, ": all params of one call share a dtype");
  }
}

std::vector<double> advance_steps(const char* op, at::TensorList steps, size_t n) {
  TORCH_CHECK(steps.size() == n, op, ": ", steps.size(), " step tensors for ", n, " params");
  std::vector<double> k(n);
  for (const auto i : c10::irange(n)) {
    prefetch_meta(steps, i + kMetaAhead);
    const auto& s = steps[i];
    TORCH_CHECK(s.device().is_cpu() && s.scalar_type() == at::kFloat && s.numel() == 1, op, ": step ", i,
                " must be a one-element float32 CPU tensor");
    float* p = s.data_ptr<float>();
    *p = *p + 1.0f;  // float32 arithmetic, like torch.optim's `step += 1` on a float32 tensor
    k[i] = static_cast<double>(*p);
  }
  return k;
}

double inv_scale(const std::optional<at::Tensor>& grad_scale) {
  if (!grad_scale.has_value() || !grad_scale->defined()) return 1.0;
  return 1.0 / grad_scale->item<double>();  // CPU tensor: a plain memory read, no device sync
}

bool skip_step(const std::optional<at::Tensor>& found_inf) {
  return found_inf.has_value() && found_inf->defined() && found_inf->item<double>() != 0.0;
}

double lr_value(double lr, const std::optional<at::Tensor>& lr_tensor) {
  return lr_tensor.has_value() && lr_tensor->defined() ? lr_tensor->item<double>() : lr;
}

LowpStore lowp_setup(const char* op, at::TensorList params, int64_t rounding, at::IntArrayRef seeds,
                     at::TensorList kahan_comps, const std::vector<double>& ks, bool bf16_state) {
  LowpStore lp;
  lp.mode = rounding;
  TORCH_CHECK(rounding == kRoundNearest || rounding == kRoundStochastic || rounding == kRoundKahan, op,
              ": unknown rounding mode ", rounding, " (0 nearest, 1 stochastic, 2 Kahan)");
  if (rounding == kRoundNearest || params.empty()) return lp;
  const auto dt = params[0].scalar_type();
  const bool state_sr = dt == at::kFloat && bf16_state && rounding == kRoundStochastic;  // (the state's stores only)
  TORCH_CHECK(dt == at::kBFloat16 || dt == at::kHalf || state_sr, op, ": rounding mode ", rounding,
              " applies to bfloat16/float16 params (and stochastic rounding to bfloat16 state), not ", dt, " params",
              bf16_state ? " with bfloat16 state" : "");
  const size_t T = params.size();
  if (rounding == kRoundStochastic) {
    TORCH_CHECK(seeds.size() == T, op, ": stochastic rounding needs one seed per param (got ", seeds.size(),
                " for ", T, ")");
    TORCH_CHECK(ks.size() == T, op, ": stochastic rounding needs one step count per param");
    lp.seeds.resize(T);
    lp.steps.resize(T);
    for (size_t t = 0; t < T; ++t) {
      lp.seeds[t] = static_cast<uint64_t>(seeds[t]);
      lp.steps[t] = static_cast<uint32_t>(static_cast<uint64_t>(ks[t]));
    }
  } else {
    TORCH_CHECK(kahan_comps.size() == T, op, ": Kahan summation needs one compensation buffer per param (got ",
                kahan_comps.size(), " for ", T, ")");
    lp.comps.resize(T);
    for (size_t t = 0; t < T; ++t) {
      const auto& c = kahan_comps[t];
      TORCH_CHECK(c.defined() && c.device().is_cpu() && c.scalar_type() == dt && c.is_contiguous() &&
                      c.numel() == params[t].numel(),
                  op, ": Kahan compensation buffer ", t, " must be a contiguous CPU ", dt, " tensor of ",
                  params[t].numel(), " elements");
      lp.comps[t] = static_cast<uint16_t*>(c.data_ptr());
    }
  }
  return lp;
}

}  // namespace cpu
}  // namespace fused_hybrid
