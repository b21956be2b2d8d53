"""The fused CPU backend: the C++ extension's multi-threaded, vectorized kernels (torch.ops.fused_hybrid).

Each call is one op over all tensors of a bucket (one parallel region over fixed-size chunks of all of them;
two for MAS's reducing variants). The ops read found_inf, grad_scale, a tensor lr and the SWATS phase from
CPU memory themselves, advance the steps, and never return to Python per tensor. See csrc/cpu/.
"""
from __future__ import annotations

import math

import torch

from .. import _ext
from ..rules import MAS_VARIANTS

NAME = "cpu"
RULES = frozenset({"adaptive", "sgd", "mas", "ndadam"})


def available(device: torch.device) -> bool:
    return device.type == "cpu" and _ext.loaded()


def why_unavailable(device: torch.device) -> str:
    if device.type != "cpu":
        return "the cpu backend serves CPU tensors only"
    return _ext.LOAD_ERROR or ""


def _lr(hp):
    """(float lr, lr tensor or None): a 0-dim tensor lr is read inside the op."""
    return (0.0, hp.lr) if isinstance(hp.lr, torch.Tensor) else (float(hp.lr), None)


def sgd(params, grads, momentum_buffers, firsts, hp, grad_scale=None, found_inf=None):
    lr, lr_t = _lr(hp)
    bufs = momentum_buffers if hp.momentum != 0 else []
    torch.ops.fused_hybrid.sgd_(params, grads, bufs, firsts, lr, lr_t, hp.momentum, hp.dampening, hp.nesterov,
                                hp.weight_decay, hp.maximize, grad_scale, found_inf)


def adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp, grad_scale=None, found_inf=None,
             swats=None):
    lr, lr_t = _lr(hp)
    if swats is None:
        bufs, phase, sgd_lr, partials, nesterov = [], None, None, None, False
    else:
        bufs, phase, sgd_lr, partials, nesterov = (swats.momentum_buffers, swats.phase, swats.sgd_lr, swats.partials,
                                                   swats.nesterov)
    torch.ops.fused_hybrid.adaptive_(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if hp.amsgrad else [], steps, lr, lr_t, hp.beta1,
        hp.beta2, hp.eps, hp.weight_decay, hp.decoupled, hp.amsgrad, hp.maximize, hp.form, hp.partial, hp.clip_mode,
        hp.clip_lo, hp.clip_hi, hp.final_lr, hp.gamma, grad_scale, found_inf, bufs, phase, sgd_lr, partials, nesterov)


def mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale=None, found_inf=None):
    lr, lr_t = _lr(hp)
    bufs = momentum_buffers if hp.momentum != 0 else []
    torch.ops.fused_hybrid.mas_(params, grads, exp_avgs, exp_avg_sqs, bufs, steps, lr, lr_t, hp.beta1, hp.beta2,
                                hp.eps, hp.weight_decay, hp.momentum, hp.dampening, hp.nesterov, hp.adam_w, hp.sgd_w,
                                MAS_VARIANTS.index(hp.variant), hp.maximize, grad_scale, found_inf)


def ndadam_layout(p: torch.Tensor, axes) -> tuple[int, list[int] | None]:
    """How the ndadam_ op sees ``p``'s weight vectors: (row_len, perm).

    row_len 0 means plain Adam (no vector dims). When the vector dims are the trailing ones (the default, all
    but dim 0), each vector is a contiguous row of row_len elements and perm is None: the op works in place.
    Otherwise perm moves the vector dims last; ``ndadam`` then steps contiguous permuted copies and copies them
    back (correct for any ``vec_axes``, at the cost of those copies)."""
    if not axes:
        return 0, None
    ax = sorted(set(int(a) for a in axes))
    row_len = math.prod([p.shape[a] for a in ax])
    if ax == list(range(p.dim() - len(ax), p.dim())):
        return row_len, None
    return row_len, [d for d in range(p.dim()) if d not in ax] + ax


def ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale=None, found_inf=None):
    lr, lr_t = _lr(hp)
    row_lens, copies = [], []
    ps, gs, ms, vs = list(params), list(grads), list(exp_avgs), list(exp_avg_sqs)
    for i, (p, ax) in enumerate(zip(params, axes)):
        row_len, perm = ndadam_layout(p, ax)
        row_lens.append(row_len)
        if perm is not None:
            views = [t.permute(perm) for t in (params[i], exp_avgs[i], exp_avg_sqs[i])]
            ps[i], ms[i], vs[i] = [v.contiguous() for v in views]
            gs[i] = grads[i].permute(perm).contiguous()
            copies.append((views, (ps[i], ms[i], vs[i])))
    torch.ops.fused_hybrid.ndadam_(ps, gs, ms, vs, steps, row_lens, lr, lr_t, hp.beta1, hp.beta2, hp.eps,
                                   hp.weight_decay, hp.maximize, grad_scale, found_inf)
    for views, stepped in copies:
        for view, new in zip(views, stepped):
            if new.data_ptr() != view.data_ptr():
                view.copy_(new)
