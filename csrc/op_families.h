// The rule-family ops' arguments, declared once per family. Each family is three X-macro lists:
//   <FAM>_LISTS(L)  its state lists, after "Tensor(a!)[] params, Tensor[] grads" (L(name, alias letter));
//   <FAM>_ARGS(X)   its keyword-only arguments, in the order of its fused_hybrid.hyper record's fields (then its
//                   extras), as X(schema type, name);
//   FH_STEP_ARGS(X) the arguments every family ends with: a 0-dim tensor lr, GradScaler's grad_scale / found_inf.
// From them expand: the op schemas (csrc/ops.cpp and the simulated kernels' csrc/sim/ops_sim.cpp define them from
// kFamilies), the `<fam>_args` struct every CPU and CUDA implementation takes, and the `<fam>_op<Impl>` entry point
// with the schema's full C++ signature that the dispatcher calls. Python builds the same schemas from the records
// (fused_hybrid/families.py), and tests/test_shared_constants.py checks that both agree.
//
// Every family also takes the storing of 16-bit params (issue 16): its record's last field `rounding` (0 nearest
// even, 1 stochastic, 2 Kahan: fused_hybrid.hyper.ROUND_*), then `seeds` (each tensor's 64-bit stochastic-rounding
// seed; empty unless rounding == 1) and the last state list `kahan_comps` (each 16-bit param's compensation
// buffer, of the param's dtype; empty unless rounding == 2). SGD takes `steps` (empty unless rounding == 1: the
// step is a counter of the random bits). Neither applies to float32 / float64 params (the callers pass 0).
//
// Schema types: float -> double, bool -> bool, int -> int64_t, ints (int[]) -> at::IntArrayRef,
// opt (Tensor?) -> std::optional<at::Tensor>, optw (a Tensor? the op writes) -> the same.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <string>

// ---- Per family ----------------------------------------------------------------------------------------------

// SGD with momentum (torch.optim.SGD). firsts[t] != 0: momentum_buffers[t] was just created, and takes buf = g
// (torch's first step); empty when no buffer is fresh. momentum_buffers is empty when momentum == 0.
#define FH_SGD_LISTS(L) L(momentum_buffers, b) L(steps, c) L(kahan_comps, d)
#define FH_SGD_ARGS(X)                                                                                           \
  X(ints, firsts) X(float, lr) X(float, momentum) X(float, dampening) X(bool, nesterov) X(float, weight_decay) \
  X(bool, decoupled) X(bool, maximize) X(int, rounding) X(ints, seeds)

// The adaptive family (Adam/AdamW/AMSGrad, Padam, Adam-Clip, AdaBound, SWATS): fused_hybrid.hyper.Adaptive, then
// SWATS's fused_hybrid.hyper.SwatsArgs. For SWATS, swats_phase (int32 [T]) picks each tensor's branch on the
// device, swats_sgd_lr (float64 [T]) is the SGD-phase step size and swats_partials (float64 [T, 2]) receives
// <p, g> and <p, p> of the Adam step (zeros in the SGD phase); swats_momentum_buffers is empty when SWATS is off.
#define FH_ADAPTIVE_LISTS(L) \
  L(exp_avgs, b) L(exp_avg_sqs, c) L(max_exp_avg_sqs, d) L(steps, e) L(swats_momentum_buffers, f) L(kahan_comps, g)
#define FH_ADAPTIVE_ARGS(X)                                                                                      \
  X(float, lr) X(float, beta1) X(float, beta2) X(float, eps) X(float, weight_decay) X(bool, decoupled)         \
  X(bool, amsgrad) X(bool, maximize) X(int, form) X(float, partial) X(int, clip_mode) X(float, clip_lo)        \
  X(float, clip_hi) X(float, final_lr) X(bool, final_lr_relative) X(float, gamma) X(int, rounding)            \
  X(ints, seeds) X(opt, swats_phase) X(opt, swats_sgd_lr) X(optw, swats_partials) X(bool, swats_nesterov)

// MAS (fused_hybrid.hyper.MAS): variant 0 sum, 1 correction, 2 normalized, 3 vector (hyper.MAS_VARIANTS order);
// momentum_buffers is empty when momentum == 0.
#define FH_MAS_LISTS(L) L(exp_avgs, b) L(exp_avg_sqs, c) L(momentum_buffers, d) L(steps, e) L(kahan_comps, f)
#define FH_MAS_ARGS(X)                                                                                           \
  X(float, lr) X(float, beta1) X(float, beta2) X(float, eps) X(float, weight_decay) X(bool, decoupled)         \
  X(float, momentum) X(float, dampening) X(bool, nesterov) X(float, adam_w) X(float, sgd_w) X(int, variant)    \
  X(bool, maximize) X(int, rounding) X(ints, seeds)

// ND-Adam (fused_hybrid.hyper.NDAdam): each tensor is rows of row_lens[t] contiguous elements (one weight vector
// per row; exp_avg_sqs[t] holds one value per row); row_lens[t] == 0 means plain Adam (1-D parameters).
#define FH_NDADAM_LISTS(L) L(exp_avgs, b) L(exp_avg_sqs, c) L(steps, d) L(kahan_comps, e)
#define FH_NDADAM_ARGS(X)                                                                                        \
  X(ints, row_lens) X(float, lr) X(float, beta1) X(float, beta2) X(float, eps) X(float, weight_decay)           \
  X(bool, maximize) X(int, rounding) X(ints, seeds)

// rms: RMSprop and Adagrad (fused_hybrid.hyper.RMS). grad_avgs is empty unless centered, momentum_buffers unless
// momentum != 0.
#define FH_RMS_LISTS(L) L(square_avgs, b) L(grad_avgs, c) L(momentum_buffers, d) L(steps, e) L(kahan_comps, f)
#define FH_RMS_ARGS(X)                                                                                           \
  X(float, lr) X(float, keep) X(float, add) X(float, eps) X(float, weight_decay) X(bool, decoupled)            \
  X(float, momentum) X(bool, centered) X(float, lr_decay) X(bool, maximize)   \
  X(int, rounding) X(ints, seeds)

// Every family's step ends with these: the lr as a 0-dim tensor (then lr is unused; read where the kernels run),
// GradScaler's scale (the kernels multiply the gradients by its inverse) and found_inf (nothing changes, step
// counts included, when it is nonzero).
#define FH_STEP_ARGS(X) X(opt, lr_tensor) X(opt, grad_scale) X(opt, found_inf)

// Every family, as F(name, LISTS, ARGS).
#define FH_FAMILIES(F)                                  \
  F(sgd, FH_SGD_LISTS, FH_SGD_ARGS)                     \
  F(adaptive, FH_ADAPTIVE_LISTS, FH_ADAPTIVE_ARGS)      \
  F(mas, FH_MAS_LISTS, FH_MAS_ARGS)                     \
  F(ndadam, FH_NDADAM_LISTS, FH_NDADAM_ARGS)            \
  F(rms, FH_RMS_LISTS, FH_RMS_ARGS)

// ---- Expansions ----------------------------------------------------------------------------------------------

namespace fused_hybrid {
namespace families {

// C++ types of the schema types: as fields of <fam>_args, and as parameters of the entry point.
#define FH_FIELD_T_float double
#define FH_FIELD_T_bool bool
#define FH_FIELD_T_int int64_t
#define FH_FIELD_T_ints at::IntArrayRef
#define FH_FIELD_T_opt std::optional<at::Tensor>
#define FH_FIELD_T_optw std::optional<at::Tensor>
#define FH_PARAM_T_float double
#define FH_PARAM_T_bool bool
#define FH_PARAM_T_int int64_t
#define FH_PARAM_T_ints at::IntArrayRef
#define FH_PARAM_T_opt const std::optional<at::Tensor>&
#define FH_PARAM_T_optw const std::optional<at::Tensor>&
// Schema spellings. optw's alias set is the last letter: a family has fewer state lists than that.
#define FH_SCHEMA_T_float "float"
#define FH_SCHEMA_T_bool "bool"
#define FH_SCHEMA_T_int "int"
#define FH_SCHEMA_T_ints "int[]"
#define FH_SCHEMA_T_opt "Tensor?"
#define FH_SCHEMA_T_optw "Tensor(z!)?"

#define FH_ARG_FIELD(type, name) FH_FIELD_T_##type name;
#define FH_ARG_PARAM(type, name) , FH_PARAM_T_##type name
#define FH_ARG_NAME(type, name) name,
#define FH_ARG_SCHEMA(type, name) FH_SCHEMA_T_##type " " #name ", "
#define FH_LIST_TYPE(name, alias) , at::TensorList
#define FH_LIST_PARAM(name, alias) , at::TensorList name
#define FH_LIST_NAME(name, alias) , name
#define FH_LIST_SCHEMA(name, alias) ", Tensor(" #alias "!)[] " #name
#define FH_LIST_COUNT(name, alias) +1

// struct <fam>_args: the family's keyword arguments, by name; <fam>_op<Impl>: the op's entry point, which takes the
// schema's arguments in order and calls Impl(params, grads, <state lists>, args).
#define FH_DECLARE_FAMILY(fam, LISTS, ARGS)                                                                       \
  struct fam##_args {                                                                                            \
    ARGS(FH_ARG_FIELD)                                                                                           \
    FH_STEP_ARGS(FH_ARG_FIELD)                                                                                   \
  };                                                                                                             \
  inline constexpr size_t fam##_lists = 0 LISTS(FH_LIST_COUNT);                                                  \
  using fam##_impl = void (*)(at::TensorList, at::TensorList LISTS(FH_LIST_TYPE), const fam##_args&);           \
  template <fam##_impl Impl>                                                                                     \
  void fam##_op(at::TensorList params, at::TensorList grads LISTS(FH_LIST_PARAM) ARGS(FH_ARG_PARAM)              \
                    FH_STEP_ARGS(FH_ARG_PARAM)) {                                                                \
    Impl(params, grads LISTS(FH_LIST_NAME), fam##_args{ARGS(FH_ARG_NAME) FH_STEP_ARGS(FH_ARG_NAME)});          \
  }
FH_FAMILIES(FH_DECLARE_FAMILY)
#undef FH_DECLARE_FAMILY

// Each family's op: params, grads and its state lists, then `*` and its keyword arguments. The family's table op
// takes a TensorTable of the params and state lists instead (csrc/cpu/tensor_table.h), then grads and the same
// keyword arguments, and returns whether it stepped (false: grads was empty and a param has no .grad).
struct Family {
  const char* name;
  const char* lists;  // ", Tensor(b!)[] exp_avgs, ..." after "Tensor(a!)[] params, Tensor[] grads"
  const char* kwargs;  // "float lr, ..., Tensor? found_inf, " (a trailing ", ")
};

#define FH_FAMILY_ENTRY(fam, LISTS, ARGS) \
  {#fam "_", "" LISTS(FH_LIST_SCHEMA), ARGS(FH_ARG_SCHEMA) FH_STEP_ARGS(FH_ARG_SCHEMA)},
inline constexpr Family kFamilies[] = {FH_FAMILIES(FH_FAMILY_ENTRY)};
#undef FH_FAMILY_ENTRY

inline std::string table_name(const char* op) { return std::string(op) + "table_"; }

inline std::string keyword_args(const Family& f) {
  std::string kw(f.kwargs);
  return kw.substr(0, kw.size() - 2);  // the trailing ", "
}

// Defines every family's list op and table op in m's namespace (the TensorTable class must be registered).
inline void define(torch::Library& m) {
  for (const auto& f : kFamilies) {
    const std::string kw = keyword_args(f);
    const std::string lists = std::string(f.name) + "(Tensor(a!)[] params, Tensor[] grads" + f.lists + ", *, " + kw +
                              ") -> ()";
    const std::string table = table_name(f.name) +
                              "(__torch__.torch.classes.fused_hybrid.TensorTable table, Tensor[] grads, *, " + kw +
                              ") -> bool";
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

// The implementations' view of a family's arguments: binds each one by its schema name, as a const reference into
// the args struct, so a kernel's host code reads `lr`, `found_inf`, ... as the schema names them.
#define FH_BIND_ARG(type, name) [[maybe_unused]] const auto& name = args.name;
#define FH_BIND_ARGS(ARGS) ARGS(FH_BIND_ARG) FH_STEP_ARGS(FH_BIND_ARG)

}  // namespace fused_hybrid
