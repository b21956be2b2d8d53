"""The reference backend: the multi-tensor backend API served by looping over ``fused_hybrid.reference``.

Every backend module exposes the same four functions with the same arguments:

    adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp, grad_scale, found_inf, swats)
    sgd(params, grads, momentum_buffers, firsts, hp, grad_scale, found_inf)
    mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale, found_inf)
    ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale, found_inf)

All lists share one device and parameter dtype. ``steps`` are 0-dim float32 tensors advanced by one unless
``found_inf`` is set, in which case nothing changes at all. This backend may sync with the host (it reads
``found_inf`` and the SWATS phase); the fused ones must not.
"""
from __future__ import annotations

import torch

from .. import reference as R
from ..hyper import CLIP_ADABOUND, CLIP_CONST, FORM_TORCH, PHASE_SGD

NAME = "reference"


def available(device: torch.device) -> bool:
    return True


def _skip(found_inf) -> bool:
    return found_inf is not None and bool(found_inf.item())


def _inv_scale(grad_scale):
    return None if grad_scale is None else 1.0 / float(grad_scale.item())


def _compute(p: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
    dt = torch.float64 if p.dtype == torch.float64 else torch.float32
    return (p if p.dtype == dt else p.to(dt)), dt


def _write_back(p: torch.Tensor, w: torch.Tensor) -> None:
    if w is not p:
        p.copy_(w)


def adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp, grad_scale=None, found_inf=None,
             swats=None):
    if _skip(found_inf):
        return
    inv = _inv_scale(grad_scale)
    lr = float(hp.lr)
    for i, (p, grad, m, v, step) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, steps)):
        step += 1
        k = int(step.item())
        w, dt = _compute(p)
        g = R.effective_grad(grad, dt, hp.maximize, inv)
        if hp.weight_decay != 0:
            if hp.decoupled:
                w.mul_(1 - lr * hp.weight_decay)
            else:
                g.add_(w, alpha=hp.weight_decay)
        if swats is not None and int(swats.phase[i].item()) == PHASE_SGD:
            R.swats_sgd_phase(w, swats.momentum_buffers[i], g, hp.beta1, float(swats.sgd_lr[i]), swats.nesterov)
            swats.partials[i].zero_()
            _write_back(p, w)
            continue
        R.adam_moments(m, v, g, hp.beta1, hp.beta2)
        v_used = R.amsgrad_max(max_exp_avg_sqs[i], v) if hp.amsgrad else v
        if hp.form == FORM_TORCH:
            step_p = R.adam_step_torch_form(w, m, v_used, lr, hp.eps, k, hp.beta1, hp.beta2)
            if swats is not None:
                s_pg, s_pp = R.swats_projection(step_p, g)
                swats.partials[i, 0] = s_pg
                swats.partials[i, 1] = s_pp
        else:
            clip = None
            if hp.clip_mode == CLIP_CONST:
                clip = (hp.clip_lo, hp.clip_hi)
            elif hp.clip_mode == CLIP_ADABOUND:
                clip = R.adabound_bounds(hp.final_lr, hp.gamma, k)
            R.adam_step_paper_form(w, m, v_used, lr, hp.eps, k, hp.beta1, hp.beta2, hp.partial, clip)
        _write_back(p, w)


def sgd(params, grads, momentum_buffers, firsts, hp, grad_scale=None, found_inf=None):
    if _skip(found_inf):
        return
    inv = _inv_scale(grad_scale)
    lr = float(hp.lr)
    for p, grad, buf, first in zip(params, grads, momentum_buffers, firsts):
        w, dt = _compute(p)
        g = R.effective_grad(grad, dt, hp.maximize, inv)
        if hp.weight_decay != 0:
            g.add_(w, alpha=hp.weight_decay)
        d = R.sgd_direction(buf, g, hp.momentum, hp.dampening, hp.nesterov, first)
        w.add_(d, alpha=-lr)
        _write_back(p, w)


def mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale=None, found_inf=None):
    if _skip(found_inf):
        return
    inv = _inv_scale(grad_scale)
    lr = float(hp.lr)
    for p, grad, m, v, buf, step in zip(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps):
        step += 1
        k = int(step.item())
        w, dt = _compute(p)
        d = R.effective_grad(grad, dt, hp.maximize, inv)
        if hp.weight_decay != 0:
            d.add_(w, alpha=hp.weight_decay)
        d_a, eta_a, d_s = R.mas_steps(m, v, buf, d, lr, hp.beta1, hp.beta2, hp.eps, k, hp.momentum,
                                      hp.dampening, hp.nesterov)
        w.add_(R.mas_update(d_a, eta_a, d_s, lr, hp.adam_w, hp.sgd_w, hp.variant))
        _write_back(p, w)


def ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale=None, found_inf=None):
    if _skip(found_inf):
        return
    inv = _inv_scale(grad_scale)
    lr = float(hp.lr)
    for p, grad, m, v, step, ax in zip(params, grads, exp_avgs, exp_avg_sqs, steps, axes):
        step += 1
        k = int(step.item())
        w, dt = _compute(p)
        g = R.effective_grad(grad, dt, hp.maximize, inv)
        if ax:
            R.ndadam_vector_step(w, m, v, g, tuple(ax), lr, hp.beta1, hp.beta2, hp.eps, k, hp.weight_decay)
        else:  # biases and other 1-D parameters: plain Adam (ND-Adam's reference code does the same)
            if hp.weight_decay != 0:
                g.add_(w, alpha=hp.weight_decay)
            R.adam_moments(m, v, g, hp.beta1, hp.beta2)
            R.adam_step_torch_form(w, m, v, lr, hp.eps, k, hp.beta1, hp.beta2)
        _write_back(p, w)

RULES = frozenset({"adaptive", "sgd", "mas", "ndadam"})


def why_unavailable(device: torch.device) -> str:
    return ""
