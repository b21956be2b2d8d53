// The schemas of the rule-family ops, shared by the fused_hybrid library (csrc/ops.cpp) and the simulated CUDA
// kernels' fused_hybrid_sim library (csrc/sim/ops_sim.cpp), so both namespaces take exactly the same arguments.
#pragma once

#include <torch/library.h>

#include <string>

namespace fused_hybrid {
namespace families {

// Each family's op: params, grads and its state lists, then the rest. The family's table op takes a TensorTable of
// the params and state lists instead (csrc/cpu/tensor_table.h), then grads and the same rest, so both schemas are
// built from one argument string.
struct Family {
  const char* name;
  const char* lists;  // after "Tensor(a!)[] params, Tensor[] grads, "
  const char* rest;
};

// The adaptive family (Adam/AdamW/AMSGrad, Padam, Adam-Clip, AdaBound, SWATS); arguments mirror
// fused_hybrid.hyper.Adaptive and SwatsArgs. steps are advanced by one unless found_inf is set. For SWATS,
// swats_phase (int32 [T]) picks each tensor's branch on the device, swats_sgd_lr (float64 [T]) is the SGD-phase
// step size and swats_partials (float64 [T, 2]) receives <p, g> and <p, p> of the Adam step (zeros in the SGD
// phase); swats_momentum_buffers is empty when SWATS is off.
// MAS: variant 0 sum, 1 correction, 2 normalized, 3 vector (fused_hybrid.rules.MAS_VARIANTS order);
// momentum_buffers is empty when momentum == 0.
// rms (RMSprop, Adagrad; fused_hybrid.hyper.RMS): grad_avgs is empty unless centered, momentum_buffers unless
// momentum != 0.
// ND-Adam: each tensor is rows of row_lens[t] contiguous elements (one weight vector per row; exp_avg_sqs[t] holds
// one value per row); row_lens[t] == 0 means plain Adam (1-D parameters).
inline constexpr Family kFamilies[] = {
    {"sgd_", "Tensor(b!)[] momentum_buffers, ",
     "int[] firsts, float lr, Tensor? lr_tensor, float momentum, float dampening, bool nesterov, "
     "float weight_decay, bool maximize, Tensor? grad_scale, Tensor? found_inf) -> ()"},
    {"adaptive_",
     "Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, "
     "Tensor(f!)[] swats_momentum_buffers, ",
     "float lr, Tensor? lr_tensor, float beta1, float beta2, float eps, float weight_decay, bool decoupled, "
     "bool amsgrad, bool maximize, int form, float partial, int clip_mode, float clip_lo, float clip_hi, "
     "float final_lr, bool final_lr_relative, float gamma, Tensor? grad_scale, Tensor? found_inf, Tensor? swats_phase, "
     "Tensor? swats_sgd_lr, Tensor(g!)? swats_partials, bool swats_nesterov) -> ()"},
    {"mas_",
     "Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] momentum_buffers, Tensor(e!)[] steps, ",
     "float lr, Tensor? lr_tensor, float beta1, float beta2, float eps, float weight_decay, float momentum, "
     "float dampening, bool nesterov, float adam_w, float sgd_w, int variant, bool maximize, Tensor? grad_scale, "
     "Tensor? found_inf) -> ()"},
    {"ndadam_", "Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] steps, ",
     "int[] row_lens, float lr, Tensor? lr_tensor, float beta1, float beta2, float eps, float weight_decay, "
     "bool maximize, Tensor? grad_scale, Tensor? found_inf) -> ()"},
    {"rms_", "Tensor(b!)[] square_avgs, Tensor(c!)[] grad_avgs, Tensor(d!)[] momentum_buffers, Tensor(e!)[] steps, ",
     "float lr, Tensor? lr_tensor, float keep, float add, float eps, float weight_decay, float momentum, "
     "bool centered, float lr_decay, bool maximize, Tensor? grad_scale, Tensor? found_inf) -> ()"},
};

inline std::string table_name(const char* op) { return std::string(op) + "table_"; }

// Defines every family's list op and table op in m's namespace (the TensorTable class must be registered).
inline void define(torch::Library& m) {
  for (const auto& f : kFamilies) {
    const std::string lists = std::string(f.name) + "(Tensor(a!)[] params, Tensor[] grads, " + f.lists + f.rest;
    const std::string table =
        table_name(f.name) + "(__torch__.torch.classes.fused_hybrid.TensorTable table, Tensor[] grads, " + f.rest;
    m.def(torch::schema(lists.c_str()));
    m.def(torch::schema(table.c_str()));
  }
}

// The ops run under torch.no_grad() on parameters and state that autograd does not track, so the Autograd keys
// fall through to the kernels. Without this, torch's default autograd fallback walks every tensor argument
// looking for requires_grad on each call: ~0.4 ms per step for a group of 2000 tensors on the CPU.
inline void autograd_fallthrough(torch::Library& m) {
  for (const auto& f : kFamilies) {
    m.impl(f.name, torch::CppFunction::makeFallthrough());
    const std::string table = table_name(f.name);
    m.impl(table.c_str(), torch::CppFunction::makeFallthrough());
  }
}

}  // namespace families
}  // namespace fused_hybrid
