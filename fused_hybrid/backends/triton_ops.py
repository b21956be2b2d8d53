"""The Triton backend's rule families as PyTorch custom ops, so ``torch.compile(opt.step, fullgraph=True)`` can
trace a step on backend="triton".

The kernels take pointer tables built in Python from ``data_ptr()`` and a table cache keyed by those pointers:
nothing the tracer can follow (fake tensors have no data). Under ``torch.compiler.is_compiling()`` the family
functions of ``backends/triton.py`` call these ops instead: each op's schema names the tensor lists it writes
(params, state lists, steps, SWATS's partials) so the compiler knows what the opaque call mutates, its fake
implementation does nothing (the ops return nothing), and its real implementation rebuilds the
hyperparameter record (``fused_hybrid.hyper``) from the flat float/int/bool arguments and runs the backend's
eager launcher (``triton_launch._adaptive`` etc.), so no launch code is duplicated. Eager steps never come here: a
custom op costs Python dispatch overhead per call.

The ops are plain Python custom ops in the ``fused_hybrid`` namespace (a fragment next to the C++ extension's
TORCH_LIBRARY, which need not be loaded): one device-generic (CompositeExplicitAutograd) kernel serves CUDA
tensors, and CPU tensors under TRITON_INTERPRET=1; the backend function itself refuses what it cannot serve.

Absent optional lists (no amsgrad max, no momentum buffers) travel as empty lists; a tensor lr travels as
``lr_t`` (with ``lr`` unused), so it is read by the kernel on the device, as in eager mode.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import hyper as H
from . import triton_launch as _l

NS = "fused_hybrid"


def _lr(hp) -> tuple[float, Optional[Tensor]]:
    return (0.0, hp.lr) if isinstance(hp.lr, torch.Tensor) else (float(hp.lr), None)


def _nop(*args, **kwargs) -> None:
    """Fake implementation of every op here: they only mutate their arguments in place and return nothing."""
    return None


# --------------------------------------------------------------------------------------------------------------
# adaptive: Adam / AdamW / AMSGrad / Padam / Adam-Clip / AdaBound, and SWATS's Adam phase + SGD phase


@torch.library.custom_op(f"{NS}::triton_adaptive_",
                         mutates_args=("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "steps",
                                       "momentum_buffers", "partials"))
def triton_adaptive_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                     max_exp_avg_sqs: list[Tensor], steps: list[Tensor], momentum_buffers: list[Tensor],
                     lr_t: Optional[Tensor], grad_scale: Optional[Tensor], found_inf: Optional[Tensor],
                     phase: Optional[Tensor], sgd_lr: Optional[Tensor], partials: Optional[Tensor], nesterov: bool,
                     lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
                     amsgrad: bool, maximize: bool, form: int, partial: float, clip_mode: int, clip_lo: float,
                     clip_hi: float, final_lr: float, final_lr_relative: bool, gamma: float) -> None:
    hp = H.Adaptive(lr=lr if lr_t is None else lr_t, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                    decoupled=decoupled, amsgrad=amsgrad, maximize=maximize, form=form, partial=partial,
                    clip_mode=clip_mode, clip_lo=clip_lo, clip_hi=clip_hi, final_lr=final_lr,
                    final_lr_relative=final_lr_relative, gamma=gamma)
    swats = None
    if phase is not None:
        swats = H.SwatsArgs(momentum_buffers=momentum_buffers, phase=phase, sgd_lr=sgd_lr, partials=partials,
                            nesterov=nesterov)
    _l._adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp, grad_scale, found_inf, swats)


def adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp, grad_scale=None, found_inf=None,
             swats=None) -> None:
    lr, lr_t = _lr(hp)
    if swats is None:
        bufs, phase, sgd_lr, partials, nesterov = [], None, None, None, False
    else:
        bufs, phase, sgd_lr, partials, nesterov = (swats.momentum_buffers, swats.phase, swats.sgd_lr, swats.partials,
                                                   bool(swats.nesterov))
    torch.ops.fused_hybrid.triton_adaptive_(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if hp.amsgrad else [], steps, bufs, lr_t, grad_scale,
        found_inf, phase, sgd_lr, partials, nesterov, lr, float(hp.beta1), float(hp.beta2), float(hp.eps),
        float(hp.weight_decay), bool(hp.decoupled), bool(hp.amsgrad), bool(hp.maximize), int(hp.form),
        float(hp.partial), int(hp.clip_mode), float(hp.clip_lo), float(hp.clip_hi), float(hp.final_lr),
        bool(hp.final_lr_relative), float(hp.gamma))


# --------------------------------------------------------------------------------------------------------------
# sgd


@torch.library.custom_op(f"{NS}::triton_sgd_", mutates_args=("params", "momentum_buffers"))
def triton_sgd_(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor], firsts: list[bool],
                lr_t: Optional[Tensor], grad_scale: Optional[Tensor], found_inf: Optional[Tensor], lr: float,
                momentum: float, dampening: float, nesterov: bool, weight_decay: float, maximize: bool) -> None:
    hp = H.SGD(lr=lr if lr_t is None else lr_t, momentum=momentum, dampening=dampening, nesterov=nesterov,
               weight_decay=weight_decay, maximize=maximize)
    _l._sgd(params, grads, momentum_buffers, firsts, hp, grad_scale, found_inf)


def sgd(params, grads, momentum_buffers, firsts, hp, grad_scale=None, found_inf=None) -> None:
    lr, lr_t = _lr(hp)
    use_mom = hp.momentum != 0
    torch.ops.fused_hybrid.triton_sgd_(
        params, grads, momentum_buffers if use_mom else [], [bool(f) for f in firsts] if use_mom else [], lr_t,
        grad_scale, found_inf, lr, float(hp.momentum), float(hp.dampening), bool(hp.nesterov), float(hp.weight_decay),
        bool(hp.maximize))


# --------------------------------------------------------------------------------------------------------------
# rms: RMSprop and Adagrad


@torch.library.custom_op(f"{NS}::triton_rms_",
                         mutates_args=("params", "square_avgs", "grad_avgs", "momentum_buffers", "steps"))
def triton_rms_(params: list[Tensor], grads: list[Tensor], square_avgs: list[Tensor], grad_avgs: list[Tensor],
                momentum_buffers: list[Tensor], steps: list[Tensor], lr_t: Optional[Tensor],
                grad_scale: Optional[Tensor], found_inf: Optional[Tensor], lr: float, keep: float, add: float,
                eps: float, weight_decay: float, momentum: float, centered: bool, lr_decay: float,
                maximize: bool) -> None:
    hp = H.RMS(lr=lr if lr_t is None else lr_t, keep=keep, add=add, eps=eps, weight_decay=weight_decay,
               momentum=momentum, centered=centered, lr_decay=lr_decay, maximize=maximize)
    _l._rms(params, grads, square_avgs, steps, hp, grad_scale, found_inf, grad_avgs, momentum_buffers)


def rms(params, grads, square_avgs, steps, hp, grad_scale=None, found_inf=None, grad_avgs=None,
        momentum_buffers=None) -> None:
    lr, lr_t = _lr(hp)
    torch.ops.fused_hybrid.triton_rms_(
        params, grads, square_avgs, grad_avgs if hp.centered else [], momentum_buffers if hp.momentum != 0 else [],
        steps, lr_t, grad_scale, found_inf, lr, float(hp.keep), float(hp.add), float(hp.eps), float(hp.weight_decay),
        float(hp.momentum), bool(hp.centered), float(hp.lr_decay), bool(hp.maximize))


# --------------------------------------------------------------------------------------------------------------
# mas


@torch.library.custom_op(f"{NS}::triton_mas_",
                         mutates_args=("params", "exp_avgs", "exp_avg_sqs", "momentum_buffers", "steps"))
def triton_mas_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                momentum_buffers: list[Tensor], steps: list[Tensor], lr_t: Optional[Tensor],
                grad_scale: Optional[Tensor], found_inf: Optional[Tensor], lr: float, beta1: float, beta2: float,
                eps: float, weight_decay: float, momentum: float, dampening: float, nesterov: bool, adam_w: float,
                sgd_w: float, variant: str, maximize: bool) -> None:
    hp = H.MAS(lr=lr if lr_t is None else lr_t, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
               momentum=momentum, dampening=dampening, nesterov=nesterov, adam_w=adam_w, sgd_w=sgd_w, variant=variant,
               maximize=maximize)
    _l._mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale, found_inf)


def mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale=None, found_inf=None) -> None:
    lr, lr_t = _lr(hp)
    torch.ops.fused_hybrid.triton_mas_(
        params, grads, exp_avgs, exp_avg_sqs, momentum_buffers if hp.momentum != 0 else [], steps, lr_t, grad_scale,
        found_inf, lr, float(hp.beta1), float(hp.beta2), float(hp.eps), float(hp.weight_decay), float(hp.momentum),
        float(hp.dampening), bool(hp.nesterov), float(hp.adam_w), float(hp.sgd_w), str(hp.variant), bool(hp.maximize))


# --------------------------------------------------------------------------------------------------------------
# ndadam: each tensor's vector axes travel flattened (axes_flat) with their counts per tensor (axes_len)


@torch.library.custom_op(f"{NS}::triton_ndadam_", mutates_args=("params", "exp_avgs", "exp_avg_sqs", "steps"))
def triton_ndadam_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                   steps: list[Tensor], axes_flat: list[int], axes_len: list[int], lr_t: Optional[Tensor],
                   grad_scale: Optional[Tensor], found_inf: Optional[Tensor], lr: float, beta1: float, beta2: float,
                   eps: float, weight_decay: float, maximize: bool) -> None:
    hp = H.NDAdam(lr=lr if lr_t is None else lr_t, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                  maximize=maximize)
    axes, i = [], 0
    for n in axes_len:
        axes.append(tuple(axes_flat[i:i + n]))
        i += n
    _l._ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale, found_inf)


def ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale=None, found_inf=None) -> None:
    lr, lr_t = _lr(hp)
    axes_flat = [int(a) for ax in axes for a in ax]
    axes_len = [len(ax) for ax in axes]
    torch.ops.fused_hybrid.triton_ndadam_(
        params, grads, exp_avgs, exp_avg_sqs, steps, axes_flat, axes_len, lr_t, grad_scale, found_inf, lr,
        float(hp.beta1), float(hp.beta2), float(hp.eps), float(hp.weight_decay), bool(hp.maximize))


OPS = (triton_adaptive_, triton_sgd_, triton_mas_, triton_ndadam_, triton_rms_)
for _op in OPS:
    _op.register_fake(_nop)
