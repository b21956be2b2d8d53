// Host helpers shared by the CUDA ops (checks, device scalars) and the post-step kernel (step counts, fixed-order
// sums of the per-chunk reduction slots).
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include "multi_tensor_apply.cuh"

namespace fused_hybrid {
namespace cuda {

DeviceScalar device_scalar(const std::optional<at::Tensor>& t, double fallback, const at::Device& device,
                           std::vector<at::Tensor>& keep_alive) {
  if (!t.has_value() || !t->defined()) return {nullptr, fallback, false};
  TORCH_CHECK(t->numel() == 1, "fused_hybrid: a scalar tensor argument must have one element");
  // A CPU tensor is host memory: read here, no device sync. (Not in the simulator, where CPU tensors are the device
  // memory: its scalars take the device path below, as GPU tensors do.)
  if (t->device().is_cpu() && !FH_CPU_TENSORS_ARE_DEVICE) return {nullptr, t->item<double>(), false};
  TORCH_CHECK(t->device() == device, "fused_hybrid: a scalar tensor is on ", t->device(), ", the params on ",
              device);
  at::Tensor x = *t;
  if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble) x = x.to(at::kFloat);  // async on device
  keep_alive.push_back(x);
  return {x.data_ptr(), 0.0, x.scalar_type() == at::kDouble};
}

StepScalars step_scalars(const std::optional<at::Tensor>& lr_tensor, double lr,
                         const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                         const at::Device& device, std::vector<at::Tensor>& keep_alive) {
  return {device_scalar(lr_tensor, lr, device, keep_alive), device_scalar(grad_scale, 1.0, device, keep_alive),
          device_scalar(found_inf, 0.0, device, keep_alive)};
}

Operands gather_operands(const char* op, at::TensorList params, at::TensorList grads,
                         std::initializer_list<at::TensorList> states, at::TensorList steps) {
  Operands o;  // (the ops checked that every list has one tensor per param)
  o.lists.resize(2 + states.size());
  for (const auto i : c10::irange(params.size())) {
    o.lists[0].push_back(params[i]);
    o.lists[1].push_back(grads[i]);
    size_t j = 2;
    for (const auto& s : states) o.lists[j++].push_back(s.empty() ? at::Tensor() : s[i]);
    const auto dev = params[i].device();
    TORCH_CHECK(steps[i].device() == dev && steps[i].scalar_type() == at::kFloat && steps[i].numel() == 1, op,
                ": steps[", i, "] must be a one-element float32 tensor on ", dev, " (capturable state)");
    o.step_ptrs.push_back(steps[i].data_ptr());
    o.steps.push_back(steps[i]);
  }
  return o;
}

void check_lists(const char* op, at::TensorList params, at::TensorList grads,
                 std::initializer_list<std::pair<const char*, at::TensorList>> states, bool states_like_params,
                 bool bf16_state) {
  TORCH_CHECK(params.size() == grads.size(), op, ": ", params.size(), " params but ", grads.size(), " grads");
  TORCH_CHECK(params.size() < (size_t(1) << 31), op, ": too many tensors");
  for (const auto& s : states) {
    TORCH_CHECK(s.second.size() == params.size(), op, ": ", s.first, " has ", s.second.size(), " tensors for ",
                params.size(), " params");
  }
  if (params.empty()) return;
  const auto device = params[0].device();
  const auto dtype = params[0].scalar_type();
  const auto state_dtype = dtype == at::kDouble ? at::kDouble : bf16_state ? at::kBFloat16 : at::kFloat;
  for (const auto i : c10::irange(params.size())) {
    const auto& p = params[i];
    const auto& g = grads[i];
    TORCH_CHECK(p.device() == device && g.device() == device, op,
                ": the cuda backend takes tensors on one CUDA device (tensor ", i, ")");
    TORCH_CHECK(g.layout() == at::kStrided, op, ": sparse gradients are not supported");
    TORCH_CHECK(p.is_contiguous(), op, ": params must be contiguous (tensor ", i, ")");
    TORCH_CHECK(g.numel() == p.numel(), op, ": grad ", i, " has ", g.numel(), " elements, its param ", p.numel());
    TORCH_CHECK(p.scalar_type() == dtype && g.scalar_type() == dtype, op,
                ": all params and grads of one call share a dtype (tensor ", i, ")");
    for (const auto& s : states) {
      const auto& x = s.second[i];
      TORCH_CHECK(x.device() == device && x.is_contiguous() && x.scalar_type() == state_dtype, op, ": ", s.first,
                  "[", i, "] must be a contiguous ", state_dtype, " tensor on ", device);
      if (states_like_params) {
        TORCH_CHECK(x.numel() == p.numel(), op, ": ", s.first, "[", i, "] has ", x.numel(), " elements, its param ",
                    p.numel());
      }
    }
  }
}

std::vector<uint64_t> lowp_column(const char* op, at::TensorList params, int64_t rounding, at::IntArrayRef seeds,
                                  at::TensorList kahan_comps, bool bf16_state) {
  TORCH_CHECK(rounding == kRoundNearest || rounding == kRoundStochastic || rounding == kRoundKahan, op,
              ": unknown rounding mode ", rounding, " (0 nearest, 1 stochastic, 2 Kahan)");
  std::vector<uint64_t> col;
  if (params.empty()) return col;
  const size_t T = params.size();
  if (rounding == kRoundNearest) {
    if (bf16_state) col.assign(T, 0u);  // (the bfloat16-state kernels read the column whatever the mode)
    return col;
  }
  const auto dt = params[0].scalar_type();
  const bool state_sr = dt == at::kFloat && bf16_state && rounding == kRoundStochastic;  // (the state's stores only)
  TORCH_CHECK(dt == at::kBFloat16 || dt == at::kHalf || state_sr, op, ": rounding mode ", rounding,
              " applies to bfloat16/float16 params (and stochastic rounding to bfloat16 state), not ", dt, " params",
              bf16_state ? " with bfloat16 state" : "");
  col.reserve(T);
  if (rounding == kRoundStochastic) {
    TORCH_CHECK(seeds.size() == T, op, ": stochastic rounding needs one seed per param (got ", seeds.size(),
                " for ", T, ")");
    for (const int64_t s : seeds) col.push_back(static_cast<uint64_t>(s));
  } else {
    TORCH_CHECK(kahan_comps.size() == T, op, ": Kahan summation needs one compensation buffer per param (got ",
                kahan_comps.size(), " for ", T, ")");
    for (const auto t : c10::irange(T)) {
      const auto& c = kahan_comps[t];
      const auto& p = params[t];
      TORCH_CHECK(c.defined() && c.device() == p.device() && c.scalar_type() == dt && c.is_contiguous() &&
                      c.numel() == p.numel(),
                  op, ": Kahan compensation buffer ", t, " must be a contiguous ", dt, " tensor of ", p.numel(),
                  " elements on ", p.device());
      col.push_back(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(c.data_ptr())));
    }
  }
  return col;
}

namespace {

constexpr int kPostMax = 1024;

struct PostTable {
  float* step[kPostMax];
  int64_t slot_begin[kPostMax];
  int32_t nslots[kPostMax];     // a tensor has fewer than 2^31 chunks
  int32_t out_index[kPostMax];
  int n;
  int width;
  const double* slots;
  double* partials;
  DeviceScalar found_inf;
};
static_assert(sizeof(PostTable) <= 32764, "post-step table exceeds the kernel parameter limit");

__global__ void post_step_kernel(FH_GRID_CONSTANT(PostTable) tab) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= tab.n) return;
  const bool skip = tab.found_inf.get() != 0.0;
  if (tab.step[i] != nullptr && !skip) *tab.step[i] += 1.0f;
  if (tab.partials != nullptr) {
    for (int w = 0; w < tab.width; ++w) {
      double s = 0.0;
      if (!skip) {
        const double* p = tab.slots + tab.slot_begin[i] * tab.width + w;
        for (int64_t j = 0; j < tab.nslots[i]; ++j) s += p[j * tab.width];  // fixed order: reproducible
      }
      tab.partials[static_cast<int64_t>(tab.out_index[i]) * tab.width + w] = s;
    }
  }
}

}  // namespace

void launch_post_step(const std::vector<at::Tensor>& steps, const DeviceScalar& found_inf, const at::Tensor& slots,
                      const std::vector<int64_t>& slot_begin, const std::vector<int64_t>& nslots, double* partials,
                      const std::vector<int64_t>* tensor_ids, int width) {
  const int64_t n = static_cast<int64_t>(std::max(steps.size(), nslots.size()));
  if (n == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  PostTable tab;
  tab.width = width;
  tab.slots = slots.defined() ? slots.data_ptr<double>() : nullptr;
  tab.partials = partials;
  tab.found_inf = found_inf;
  for (int64_t b = 0; b < n; b += kPostMax) {
    tab.n = static_cast<int>(std::min<int64_t>(kPostMax, n - b));
    for (int i = 0; i < tab.n; ++i) {
      const int64_t t = b + i;
      tab.step[i] = steps.empty() ? nullptr : steps[t].data_ptr<float>();
      tab.slot_begin[i] = slot_begin.empty() ? 0 : slot_begin[t];
      tab.nslots[i] = static_cast<int32_t>(nslots.empty() ? 0 : nslots[t]);
      tab.out_index[i] = static_cast<int32_t>(tensor_ids ? (*tensor_ids)[t] : t);
    }
    FH_LAUNCH((tab.n + 127) / 128, 128, 0, stream, post_step_kernel)(tab);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace cuda
}  // namespace fused_hybrid
