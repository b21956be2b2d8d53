"""The public optimizers: thin constructors over ``HybridOptimizer`` with torch.optim's keyword names.

Each takes ``backend="auto" | "reference" | "cpu" | "triton" | "cuda" | "cuda_sim"`` and the clipping keywords
``max_grad_norm``, ``norm_type``, ``skip_grad_norm_above`` (``_clip``), and every one but AdamW (always decoupled)
takes ``decoupled_weight_decay``: ``w *= 1 - lr*weight_decay`` with the group's lr before the rule's own step
(AdamW's form) instead of L2's ``g += weight_decay*w`` (ND-Adam refuses True: it renormalizes its weight vectors).
Keyword arguments torch.optim has but that choose an implementation (``foreach``, ``fused``) are accepted and
ignored: the backend decides. Any other unknown keyword is a TypeError, as in torch.optim.

Every class also takes ``stochastic_rounding`` and ``kahan_summation`` (both False by default; at most one True),
how bfloat16 / float16 params are stored after each step (README: "Low-precision parameters"); float32 / float64
params of the same group are unaffected. ``state_dtype`` (None: float32 state, float64 for float64 params;
``torch.bfloat16``: every moment buffer of bfloat16 / float16 / float32 params in bfloat16, math still float32)
says how the optimizer state is stored.
"""
from __future__ import annotations

import math

from .optimizer import HybridOptimizer


def _impl(foreach, fused, capturable, differentiable) -> dict:
    """torch.optim's implementation flags, accepted by every class so that code written for torch runs: the
    backend decides how a step runs (``foreach``/``fused`` change nothing but are kept in the groups; ``capturable``
    holds on every fused backend; ``differentiable=True`` is refused)."""
    return dict(foreach=foreach, fused=fused, capturable=capturable, differentiable=differentiable)


def _clip(max_grad_norm, norm_type, skip_grad_norm_above) -> dict:
    """Gradient clipping fused into the step (every class; see ``fused_hybrid.grad_clip``): ``max_grad_norm``
    clips as ``torch.nn.utils.clip_grad_norm_(params, max_grad_norm, norm_type)`` would before the step, over all of
    the optimizer's parameters, without writing the gradients (``p.grad`` is left unclipped); ``opt.grad_norm`` is
    the last step's total norm (a device tensor); ``skip_grad_norm_above`` skips a step whose norm exceeds it or is
    not finite, as GradScaler skips one. With sharded parameters the norm is all-reduced over ``process_group``
    (every class takes it): ZeRO-style plain shards need it; FSDP2's DTensors default to their device mesh."""
    return dict(max_grad_norm=max_grad_norm, norm_type=norm_type, skip_grad_norm_above=skip_grad_norm_above)


class Adam(HybridOptimizer):
    """torch.optim.Adam, same trajectory (Kingma & Ba 2015; AMSGrad: Reddi et al. 2018)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False, stochastic_rounding=False, kahan_summation=False,
                 state_dtype=None,
                 backend="auto",
                 process_group=None, max_grad_norm=None, norm_type=2.0,
                 skip_grad_norm_above=None, foreach=None, fused=None,
                 capturable=False, differentiable=False):
        super().__init__(params, "adam", backend=backend, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
                         stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation,
                         state_dtype=state_dtype,
                         **_impl(foreach, fused, capturable, differentiable),
                         **_clip(max_grad_norm, norm_type, skip_grad_norm_above), process_group=process_group)


class AdamW(HybridOptimizer):
    """torch.optim.AdamW: decoupled weight decay, w *= 1 - lr*wd before the Adam update (Loshchilov & Hutter)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, stochastic_rounding=False, kahan_summation=False, state_dtype=None, backend="auto",
                 process_group=None, max_grad_norm=None, norm_type=2.0,
                 skip_grad_norm_above=None,
                 foreach=None, fused=None, capturable=False, differentiable=False):
        super().__init__(params, "adamw", backend=backend, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, stochastic_rounding=stochastic_rounding,
                         kahan_summation=kahan_summation, state_dtype=state_dtype,
                         **_impl(foreach, fused, capturable, differentiable),
                         **_clip(max_grad_norm, norm_type, skip_grad_norm_above), process_group=process_group)


class SGD(HybridOptimizer):
    """torch.optim.SGD: momentum, dampening, Nesterov, L2 weight decay, maximize."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, decoupled_weight_decay=False, stochastic_rounding=False, kahan_summation=False,
                 state_dtype=None,
                 backend="auto",
                 process_group=None, max_grad_norm=None, norm_type=2.0,
                 skip_grad_norm_above=None,
                 foreach=None, fused=None, capturable=False, differentiable=False):
        super().__init__(params, "sgd", backend=backend, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay,
                         stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation,
                         state_dtype=state_dtype,
                         **_impl(foreach, fused, capturable, differentiable),
                         **_clip(max_grad_norm, norm_type, skip_grad_norm_above), process_group=process_group)


class RMSprop(HybridOptimizer):
    """torch.optim.RMSprop, same trajectory (the lecture's RMSProp, seed 002): sq = alpha*sq + (1-alpha)*g^2,
    w -= lr * g / (sqrt(sq) + eps); ``centered`` subtracts the squared running mean of g, ``momentum`` accumulates
    the normalized step."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 maximize=False, decoupled_weight_decay=False, stochastic_rounding=False, kahan_summation=False,
                 state_dtype=None,
                 backend="auto",
                 process_group=None, max_grad_norm=None, norm_type=2.0,
                 skip_grad_norm_above=None,
                 foreach=None, fused=None, capturable=False, differentiable=False):
        super().__init__(params, "rmsprop", backend=backend, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay,
                         stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation,
                         state_dtype=state_dtype,
                         **_impl(foreach, fused, capturable, differentiable),
                         **_clip(max_grad_norm, norm_type, skip_grad_norm_above), process_group=process_group)


class Adagrad(HybridOptimizer):
    """torch.optim.Adagrad, same trajectory (Duchi et al. 2011): sum += g^2,
    w -= lr/(1 + (k-1)*lr_decay) * g / (sqrt(sum) + eps); ``sum`` starts at initial_accumulator_value."""

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, *,
                 maximize=False, decoupled_weight_decay=False, stochastic_rounding=False, kahan_summation=False,
                 state_dtype=None,
                 backend="auto",
                 process_group=None, max_grad_norm=None, norm_type=2.0,
                 skip_grad_norm_above=None,
                 foreach=None, fused=None, capturable=False, differentiable=False):
        super().__init__(params, "adagrad", backend=backend, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay,
                         stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation,
                         state_dtype=state_dtype,
                         **_impl(foreach, fused, capturable, differentiable),
                         **_clip(max_grad_norm, norm_type, skip_grad_norm_above), process_group=process_group)


class Padam(HybridOptimizer):
    """Padam (Chen et al., Algorithm 1, in the form of the official uclaml/Padam code):
    w -= lr*sqrt(bc2)/bc1 * m / (sqrt(vmax) + eps)^(2*partial). eps sits inside the power, so the effective
    floor of the denominator is eps^(2*partial) (1e-2 at partial=1/8). partial=0.5 is AMSGrad with eps outside
    the square root; partial -> 0 approaches SGD with momentum (up to the 1-b1 factor)."""

    def __init__(self, params, lr=0.1, betas=(0.9, 0.999), partial=0.125, eps=1e-8, weight_decay=0.0,
                 amsgrad=True, *, maximize=False, decoupled_weight_decay=False, stochastic_rounding=False,
                 kahan_summation=False, state_dtype=None, backend="auto",
                 process_group=None, max_grad_norm=None, norm_type=2.0,
                 skip_grad_norm_above=None,
                 foreach=None, fused=None, capturable=False, differentiable=False):
        super().__init__(params, "padam", backend=backend, lr=lr, betas=betas, partial=partial, eps=eps,
                         weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay,
                         stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation,
                         state_dtype=state_dtype,
                         **_impl(foreach, fused, capturable, differentiable),
                         **_clip(max_grad_norm, norm_type, skip_grad_norm_above), process_group=process_group)


class AdamClip(HybridOptimizer):
    """Adam-Clip(lower, upper) (Keskar & Socher 2017, section 2): Adam's per-coordinate step size
    lr*sqrt(bc2)/bc1/(sqrt(v)+eps) clipped to [lower*sgd_lr, upper*sgd_lr]. Adam-Clip(1, 1) is SGD with
    averaged momentum; the paper's variants are (1, inf) and (0, 1)."""

    def __init__(self, params, lr=1e-3, sgd_lr=None, lower=1.0, upper=math.inf, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, amsgrad=False, *, maximize=False, decoupled_weight_decay=False,
                 stochastic_rounding=False, kahan_summation=False, state_dtype=None, backend="auto",
                 process_group=None, max_grad_norm=None, norm_type=2.0,
                 skip_grad_norm_above=None,
                 foreach=None, fused=None, capturable=False, differentiable=False):
        super().__init__(params, "adamclip", backend=backend, lr=lr, sgd_lr=sgd_lr, lower=lower, upper=upper,
                         betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay,
                         stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation,
                         state_dtype=state_dtype,
                         **_impl(foreach, fused, capturable, differentiable),
                         **_clip(max_grad_norm, norm_type, skip_grad_norm_above), process_group=process_group)


class AdaBound(HybridOptimizer):
    """AdaBound / AMSBound (Luo et al. 2019): Adam's step size clipped to bounds that converge to
    final_lr * lr / base_lr (base_lr: the group's lr at construction, saved in the state_dict)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), final_lr=0.1, gamma=1e-3, eps=1e-8, weight_decay=0.0,
                 amsbound=False, *, maximize=False, decoupled_weight_decay=False, stochastic_rounding=False,
                 kahan_summation=False, state_dtype=None, backend="auto",
                 process_group=None, max_grad_norm=None, norm_type=2.0,
                 skip_grad_norm_above=None,
                 foreach=None, fused=None, capturable=False, differentiable=False):
        super().__init__(params, "adabound", backend=backend, lr=lr, betas=betas, final_lr=final_lr, gamma=gamma,
                         eps=eps, weight_decay=weight_decay, amsbound=amsbound, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay,
                         stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation,
                         state_dtype=state_dtype,
                         **_impl(foreach, fused, capturable, differentiable),
                         **_clip(max_grad_norm, norm_type, skip_grad_norm_above), process_group=process_group)


class SWATS(HybridOptimizer):
    """SWATS (Keskar & Socher 2017, Algorithm 1): Adam until the projected SGD learning rate settles, then SGD
    with momentum b1 and learning rate (1-b1)*Lambda. See ``fused_hybrid.swats`` for the switch test, and the
    README for why the default test is relative (switch_rtol=1e-3) rather than the paper's |.| < 1e-9.

    granularity: "global" (the paper: one test over all parameters), "group" or "tensor".
    process_group: with sharded parameters (FSDP2, ZeRO: each rank holds part of the model), the switch test's
    sums are all-reduced over it so all ranks switch together; leave None under DDP (replicas agree already).
    ``switch_info()`` reports each segment's switch step and Lambda.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-9, weight_decay=0.0, amsgrad=False,
                 nesterov=False, *, granularity="global", switch_rtol=1e-3, switch_atol=0.0, maximize=False,
                 decoupled_weight_decay=False, stochastic_rounding=False, kahan_summation=False, state_dtype=None,
                 backend="auto", process_group=None, max_grad_norm=None, norm_type=2.0, skip_grad_norm_above=None,
                 foreach=None, fused=None, capturable=False, differentiable=False):
        super().__init__(params, "swats", backend=backend, granularity=granularity, process_group=process_group,
                         lr=lr, betas=betas, eps=eps,
                         weight_decay=weight_decay, amsgrad=amsgrad, nesterov=nesterov, switch_rtol=switch_rtol,
                         switch_atol=switch_atol, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
                         stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation,
                         state_dtype=state_dtype,
                         **_impl(foreach, fused, capturable, differentiable),
                         **_clip(max_grad_norm, norm_type, skip_grad_norm_above))


class MAS(HybridOptimizer):
    """MAS, mixing Adam and SGD (Landro, Gallo, La Grassa 2020; seed 003):
    w -= (sgd_w*lr + adam_w*lr/bc1) * (sgd_w*d_sgd + adam_w*d_adam), and the per-layer variants "correction",
    "normalized", "vector" (see ``reference.mas_update``). adam_w / sgd_w are group hyperparameters: change
    them between steps to schedule the mix."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum=0.0,
                 dampening=0.0, nesterov=False, adam_w=0.5, sgd_w=0.5, variant="sum", *, maximize=False,
                 decoupled_weight_decay=False, stochastic_rounding=False, kahan_summation=False, state_dtype=None,
                 backend="auto",
                 process_group=None, max_grad_norm=None, norm_type=2.0,
                 skip_grad_norm_above=None,
                 foreach=None, fused=None, capturable=False, differentiable=False):
        super().__init__(params, "mas", backend=backend, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, dampening=dampening, nesterov=nesterov, adam_w=adam_w, sgd_w=sgd_w,
                         variant=variant, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
                         stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation,
                         state_dtype=state_dtype,
                         **_impl(foreach, fused, capturable, differentiable),
                         **_clip(max_grad_norm, norm_type, skip_grad_norm_above), process_group=process_group)


class NDAdam(HybridOptimizer):
    """ND-Adam (Zhang 2017, Algorithm 1): per weight vector, the radial part of the gradient is projected out,
    the second moment is one scalar per vector, and the vector is renormalized after each step. By default every
    parameter with dim >= 2 is a set of weight vectors along dim 0; 1-D parameters get Adam. ``vec_axes`` (per
    group) names the dims one vector spans."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, vec_axes=None, *,
                 maximize=False, decoupled_weight_decay=False, stochastic_rounding=False, kahan_summation=False,
                 state_dtype=None,
                 backend="auto",
                 process_group=None, max_grad_norm=None, norm_type=2.0,
                 skip_grad_norm_above=None,
                 foreach=None, fused=None, capturable=False, differentiable=False):
        super().__init__(params, "ndadam", backend=backend, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         vec_axes=vec_axes, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay,
                         stochastic_rounding=stochastic_rounding, kahan_summation=kahan_summation,
                         state_dtype=state_dtype,
                         **_impl(foreach, fused, capturable, differentiable),
                         **_clip(max_grad_norm, norm_type, skip_grad_norm_above), process_group=process_group)


class Hybrid(HybridOptimizer):
    """One optimizer whose param groups each name their ``rule`` (the layer-wise split of seed 003, IV.A):
    ``Hybrid([{"params": body, "rule": "adam"}, {"params": head, "rule": "sgd", "lr": 0.1, "momentum": 0.9}])``.
    ``rule`` is the default for groups that name none."""

    def __init__(self, params, rule="adam", *, backend="auto", granularity="global", process_group=None,
                 max_grad_norm=None, norm_type=2.0, skip_grad_norm_above=None, **defaults):
        super().__init__(params, rule, backend=backend, granularity=granularity, process_group=process_group,
                         **_clip(max_grad_norm, norm_type, skip_grad_norm_above), **defaults)
