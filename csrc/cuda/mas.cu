// MAS on CUDA (Landro, Gallo, La Grassa 2020; reference.mas_steps / mas_update; csrc/cpu/mas.cpp does the same
// passes on the CPU).
//   "sum": one pass (main kernel) + the post-step kernel (step += 1).
//   "correction", "normalized", "vector": two launches, no host sync, no atomics.
//     Pass 1 updates m, v and the momentum buffer and writes one slot per chunk: the float64 partials of
//     <d_a, d_s>, <d_a, d_a>, <d_s, d_s>, and the step count k it used.
//     Pass 2 block of tensor t sums t's slots itself, in a fixed order (every block of t gets the same sums),
//     takes k from its own chunk's slot, derives the coefficients in double as the reference does, and applies
//     the update; the block of chunk 0 stores k as t's step. No block of pass 2 reads a step tensor, so that
//     store races with nothing, and the stream orders pass 1's slot writes before pass 2's reads.
//     An empty tensor gets one zero-length chunk so that this block advances its step too.
//     With bfloat16 state (state_dtype) pass 1 only reads the state and pass 2 recomputes and stores the moments
//     (see MasFunctor): pass 1's state writes move to pass 2, so the traffic is the float32 one's minus the state
//     bytes saved.
//   Why not a post-step kernel between the passes (a third launch) or the Triton backend's
//   last-program counter: the redundant sums cost each block chunks(t) x 32 bytes of L2 reads (at most 2048
//   slots, 64 KB, against the chunk's >= 65536 elements of DRAM traffic), and need neither a zeroed counter
//   buffer kept between steps nor a memory-order argument.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
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

enum Variant : int { kSum = 0, kCorrection = 1, kNormalized = 2, kVector = 3 };
enum Mode : int { kModeSum = 0, kModeReduce = 1, kModeApply = 2 };

struct MasArgs : StepScalars {
  double beta1, beta2, eps, weight_decay, momentum, dampening, adam_w, sgd_w;
  int variant;
  int rounding;  // kRound* (the kLowp kernels branch on it)
  bool decoupled, nesterov, maximize;
  double* slots;  // reducing variants: [chunks, kSlotWidth], see kSlot*
};

// A reduction slot (one per chunk): the three partial sums and the step count the chunk's pass 1 used.
enum Slot : int { kSlotDot = 0, kSlotAA = 1, kSlotSS = 2, kSlotStep = 3, kSlotWidth = 4 };

// Lists: 0 params, 1 grads, 2 exp_avgs, 3 exp_avg_sqs, 4 momentum buffers; aux: steps; lowp (kLowpStore, the
// passes that write w: sum and apply): seeds or compensation buffers.
// SS: the moment buffers' type (O, or bfloat16: Bf16StateStore, kLowpStore in the passes that write). With bfloat16
// state pass 1 stores nothing, and pass 2 recomputes the moments from the old state (bitwise pass 1's float32
// values), moves w by them unrounded and stores them rounded, as the cpu backend does (csrc/cpu/mas.cpp): storing
// them in pass 1 would make pass 2 step with the rounded moments.
template <typename P, typename SS, int kMode, bool kMom, bool kLowpStore>
struct MasFunctor {
  using O = state_math_t<SS>;
  static constexpr bool kB = kBf16State<SS>;
  static constexpr bool kLowp = kLowpStore;
  static_assert(!kLowp || kMode != kModeReduce, "pass 1 does not write w");
  static_assert(!kB || kLowp || kMode == kModeReduce, "a pass storing bfloat16 state reads the lowp column");
  MasArgs a;

  __device__ __forceinline__ void operator()(const TensorListMeta<5, kLowp>& meta) const {
    if (a.found_inf.get() != 0.0) return;
    const int t = meta.block_tensor[blockIdx.x];
    const int64_t start = static_cast<int64_t>(meta.block_chunk[blockIdx.x]) * meta.chunk_size;
    const int64_t n = std::min(meta.chunk_size, meta.numel[t] - start);
    P* w = static_cast<P*>(meta.addresses[0][t]) + start;
    const P* g = static_cast<const P*>(meta.addresses[1][t]) + start;
    SS* m = static_cast<SS*>(meta.addresses[2][t]) + start;
    SS* v = static_cast<SS*>(meta.addresses[3][t]) + start;
    SS* buf = kMom ? static_cast<SS*>(meta.addresses[4][t]) + start : nullptr;
    const O inv = static_cast<O>(1.0 / a.grad_scale.get());
    const double lrd = a.lr.get();
    // This step's count k: read (and incremented) from the step tensor by pass 1 and the sum variant; the apply
    // pass takes the k its chunk's pass 1 used, from the slot.
    const int64_t slot = meta.slot_base + blockIdx.x;
    double k;
    if constexpr (kMode == kModeApply) {
      k = a.slots[kSlotWidth * slot + kSlotStep];
    } else {
      k = static_cast<double>(*static_cast<const float*>(meta.aux[t]) + 1.0f);
    }
    const double bc1 = 1.0 - rules::pow_whole(a.beta1, static_cast<int64_t>(k));
    const double bc2 = 1.0 - rules::pow_whole(a.beta2, static_cast<int64_t>(k));
    const double eta = lrd / bc1;
    const O lr = static_cast<O>(lrd), eta_a = static_cast<O>(eta), bc2_sqrt = static_cast<O>(::sqrt(bc2));
    const O beta2 = static_cast<O>(a.beta2), eps = static_cast<O>(a.eps);
    const O wd = static_cast<O>(a.weight_decay), momentum = static_cast<O>(a.momentum);
    const O adam_w = static_cast<O>(a.adam_w), sgd_w = static_cast<O>(a.sgd_w);
    // The 1 - x scalars and the sum variant's step size in double, rounded once (rules::OneMinus).
    const O om_b1 = static_cast<O>(1.0 - a.beta1), om_b2 = static_cast<O>(1.0 - a.beta2);
    const O om_damp = static_cast<O>(1.0 - a.dampening);
    const O coef = static_cast<O>(a.sgd_w * lrd + a.adam_w * eta);
    const bool nesterov = a.nesterov, maximize = a.maximize, first = k == 1.0;
    // L2 weight decay joins the gradient; decoupled decay shrinks w (by `decay`, 1 when off) where it is written.
    const bool l2 = wd != O(0) && !a.decoupled;
    const O decay = wd != O(0) && a.decoupled ? static_cast<O>(1.0 - lrd * a.weight_decay) : O(1);
    auto direction = [&](O wv, O gv) FH_INLINE_LAMBDA {
      O d = rules::effective_grad(gv, inv, maximize);
      if (l2) d = rules::l2_weight_decay(d, wv, wd);
      return d;
    };
    constexpr int S = kMom ? 3 : 2;
    SS* const st[3] = {m, v, buf};
    // The store of w (and of bfloat16 state: streams 1 + j, hyper.STATE_STREAMS["mas"]), in the passes that write.
    constexpr uint32_t kStreams = state_streams(1, 2, 3);
    if constexpr (kMode == kModeSum || kMode == kModeReduce) {
      double s_as = 0.0, s_aa = 0.0, s_ss = 0.0;
      auto elem = [&](O& wv, O gv, O(&s)[S]) FH_INLINE_LAMBDA {
        const O d = direction(wv, gv);
        const O d_a = rules::mas_adam_direction_exact(s[0], s[1], d, beta2, om_b1, om_b2, bc2_sqrt, eps);
        O d_s = d;
        if constexpr (kMom) d_s = rules::sgd_direction_exact(d, s[kMom ? 2 : 0], momentum, om_damp, nesterov, first);
        if constexpr (kMode == kModeSum) {
          wv = wv * decay;
          rules::mas_sum_update_exact(wv, d_a, d_s, adam_w, sgd_w, coef);
        } else {
          s_as += rules::dot_term(d_a, d_s);
          s_aa += rules::dot_term(d_a, d_a);
          s_ss += rules::dot_term(d_s, d_s);
        }
      };
      if constexpr (kMode == kModeSum) {
        chunk_elementwise<S>(w, g, st, n, elem, store_for<P, SS, kLowp>(meta, t, a.rounding, k, start, kStreams));
      } else {
        chunk_elementwise<S, false, !kB>(w, g, st, n, elem);
        s_as = block_sum(s_as);
        s_aa = block_sum(s_aa);
        s_ss = block_sum(s_ss);
        if (threadIdx.x == 0) {
          double* out = a.slots + kSlotWidth * slot;
          out[kSlotDot] = s_as;
          out[kSlotAA] = s_aa;
          out[kSlotSS] = s_ss;
          out[kSlotStep] = k;
        }
      }
    } else {
      // The tensor's sums over its slots [info[t], info[t] + chunks), in the same order in every block.
      const double* ts = a.slots + kSlotWidth * meta.info[t];
      const int64_t nslots = std::max<int64_t>(1, (meta.numel[t] + meta.chunk_size - 1) / meta.chunk_size);
      double s_dot = 0.0, s_aa = 0.0, s_ss = 0.0;
      for (int64_t j = threadIdx.x; j < nslots; j += blockDim.x) {
        s_dot += ts[kSlotWidth * j + kSlotDot];
        s_aa += ts[kSlotWidth * j + kSlotAA];
        s_ss += ts[kSlotWidth * j + kSlotSS];
      }
      s_dot = block_sum(s_dot);
      s_aa = block_sum(s_aa);
      s_ss = block_sum(s_ss);
      if (meta.block_chunk[blockIdx.x] == 0 && threadIdx.x == 0) {
        *static_cast<float*>(meta.aux[t]) = static_cast<float>(k);
      }
      // The coefficients from the sums, in double (reference.mas_update; zero SGD norm: ratio 0).
      const double dot = s_dot, norm_a = eta * ::sqrt(s_aa);
      const double norm_s = ::sqrt(s_ss);
      const double ratio = norm_s > 0.0 ? norm_a / norm_s : 0.0;
      const auto store = store_for<P, SS, kLowp>(meta, t, a.rounding, k, start, kStreams);
      if constexpr (kB) {  // bfloat16 state: this step's moments again from the old state (see above), every branch
        const int which = a.variant == kCorrection ? (dot < 0.0 ? 0 : 1) : a.variant == kNormalized ? 1 : 2;
        const O c_a = static_cast<O>(a.variant == kCorrection ? eta : a.adam_w * eta);
        const O c_s = static_cast<O>(a.variant == kCorrection ? lrd : a.variant == kNormalized ? ratio : a.sgd_w * ratio);
        chunk_elementwise<S>(w, g, st, n, [&](O& wv, O gv, O(&s)[S]) FH_INLINE_LAMBDA {
          const O d = direction(wv, gv);
          const O d_a = rules::mas_adam_direction_exact(s[0], s[1], d, beta2, om_b1, om_b2, bc2_sqrt, eps);
          O d_s = d;
          if constexpr (kMom) d_s = rules::sgd_direction_exact(d, s[kMom ? 2 : 0], momentum, om_damp, nesterov, first);
          wv = wv * decay;
          if (which == 0) rules::mas_single_update(wv, d_a, c_a);
          else if (which == 1) rules::mas_single_update(wv, d_s, c_s);
          else rules::mas_vector_update(wv, d_a, d_s, c_a, c_s);
        }, store);
      } else if (a.variant == kCorrection && dot < 0.0) {  // the Adam step where the directions disagree
        chunk_elementwise<2, true, false>(w, g, st, n, [&](O& wv, O, O(&s)[2]) FH_INLINE_LAMBDA {
          wv = wv * decay;
          rules::mas_single_update(wv, rules::adam_direction(s[0], s[1], bc2_sqrt, eps), eta_a);
        }, store);
      } else if (a.variant == kCorrection || a.variant == kNormalized) {  // the SGD step, scaled
        const O c_s = a.variant == kCorrection ? lr : static_cast<O>(ratio);
        SS* const sb[1] = {buf};
        auto elem_s = [&](O& wv, O gv, O(&s)[1]) FH_INLINE_LAMBDA {
          const O d = direction(wv, gv);
          O d_s = d;
          if constexpr (kMom) d_s = rules::sgd_direction_from_buffer(d, s[0], momentum, nesterov);
          wv = wv * decay;
          rules::mas_single_update(wv, d_s, c_s);
        };
        chunk_elementwise<kMom ? 1 : 0, true, false>(w, g, sb, n, elem_s, store);
      } else {  // vector
        const O c_a = static_cast<O>(a.adam_w * eta), c_s = static_cast<O>(a.sgd_w * ratio);
        chunk_elementwise<S, true, false>(w, g, st, n, [&](O& wv, O gv, O(&s)[S]) FH_INLINE_LAMBDA {
          const O d = direction(wv, gv);
          O d_s = d;
          if constexpr (kMom) d_s = rules::sgd_direction_from_buffer(d, s[kMom ? 2 : 0], momentum, nesterov);
          wv = wv * decay;
          rules::mas_vector_update(wv, rules::adam_direction(s[0], s[1], bc2_sqrt, eps), d_s, c_a, c_s);
        }, store);
      }
    }
  }
};

void mas_(at::TensorList params, at::TensorList grads_in, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
          at::TensorList momentum_buffers, at::TensorList steps, at::TensorList kahan_comps,
          const families::mas_args& args) {
  FH_BIND_ARGS(FH_MAS_ARGS)
  const ContiguousGrads contiguous(grads_in);
  const at::TensorList grads = contiguous.list();
  const char* op = "fused_hybrid::mas_";
  const bool mom = momentum != 0.0;
  const bool bf16 = !params.empty() && bf16_state(op, params[0].scalar_type(), {exp_avgs, exp_avg_sqs});
  check_lists(op, params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}}, true, bf16);
  if (mom) check_lists(op, params, grads, {{"momentum_buffers", momentum_buffers}}, true, bf16);
  TORCH_CHECK(steps.size() == params.size(), op, ": steps needs one tensor per param");
  TORCH_CHECK(variant >= kSum && variant <= kVector, op, ": unknown variant ", variant);
  const std::vector<uint64_t> lowp = lowp_column(op, params, rounding, seeds, kahan_comps, bf16);
  if (params.empty()) return;
  const auto dev = params[0].device();
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<at::Tensor> keep;
  MasArgs a;
  static_cast<StepScalars&>(a) = step_scalars(lr_tensor, lr, grad_scale, found_inf, dev, keep);
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.weight_decay = weight_decay;
  a.momentum = momentum;
  a.dampening = dampening;
  a.adam_w = adam_w;
  a.sgd_w = sgd_w;
  a.variant = static_cast<int>(variant);
  a.nesterov = nesterov;
  a.decoupled = decoupled;
  a.maximize = maximize;
  a.rounding = static_cast<int>(rounding);
  a.slots = nullptr;

  Operands ops = gather_operands(op, params, grads,
                                 {exp_avgs, exp_avg_sqs, mom ? momentum_buffers : at::TensorList()}, steps);
  std::vector<int64_t> numels;
  for (const auto& p : params) numels.push_back(p.numel());
  const bool reducing = variant != kSum;
  const plan::ChunkGrid grid = plan::chunk_grid(numels, geometry(), /*min_chunks=*/reducing ? 1 : 0);
  const auto dtype = params[0].scalar_type();
  auto run = [&](auto mode_tag) {
    constexpr int kMode = decltype(mode_tag)::value;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_hybrid_mas_cuda", [&] {
      with_kernel_types<scalar_t>(bf16, rounding, [&](auto k) {
        using K = decltype(k);
        using P = typename K::P;
        using S = typename K::S;
        // Pass 1 of the reducing variants writes neither w nor (bfloat16) state: a kernel without the lowp column.
        // (Its tables may then hold more tensors than the apply pass's: the slots are numbered over the whole call,
        // not per launch.)
        constexpr bool kL = K::kLowp && kMode != kModeReduce;
        auto launch = [&](auto f) {
          f.a = a;
          // info[t]: the tensor's first slot (the apply pass sums its slots from there).
          multi_tensor_apply<5>(ops.lists, grid.chunks, grid.chunk_size, ops.step_ptrs, grid.slot_begin, f, nullptr,
                                &lowp);
        };
        if (mom) launch(MasFunctor<P, S, kMode, true, kL>{});
        else launch(MasFunctor<P, S, kMode, false, kL>{});
      });
    });
  };
  if (!reducing) {
    run(std::integral_constant<int, kModeSum>{});
    launch_post_step(ops.steps, a.found_inf, at::Tensor(), {}, {}, nullptr, nullptr);
    return;
  }
  const at::Tensor slots = at::empty({grid.slots, kSlotWidth}, params[0].options().dtype(at::kDouble));
  a.slots = slots.data_ptr<double>();
  run(std::integral_constant<int, kModeReduce>{});
  run(std::integral_constant<int, kModeApply>{});
}

}  // namespace

TORCH_LIBRARY_IMPL(FH_CUDA_NAMESPACE, FH_CUDA_KEY, m) { m.impl("mas_", &families::mas_op<&mas_>); }

}  // namespace cuda
}  // namespace fused_hybrid
