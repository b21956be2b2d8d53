#include "multi_tensor.h"

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

}  // namespace cpu
}  // namespace fused_hybrid
