"""The CUDA backend: the C++ extension's multi-tensor-apply kernels (csrc/cuda, torch.ops.fused_hybrid.* on the
CUDA dispatch key).

Every op reads lr (when a tensor), grad_scale, found_inf, the step counts and SWATS's phase on the device: a step
never syncs with the host and can be captured in a CUDA graph. Launches per call: the main kernel (one launch
while the call fits one argument table: up to 2048 chunks and a few hundred tensors, see
csrc/cuda/multi_tensor_apply.cuh) plus a tiny post-step kernel (step += 1 unless found_inf, SWATS's fixed-order
sums of its per-chunk partials). MAS's reducing variants run two passes and no post-step (csrc/cuda/mas.cu).
"""
from __future__ import annotations

import math

import torch

from .. import _ext
from ..rules import MAS_VARIANTS

NAME = "cuda"
# MAS: every variant ("sum" in one pass; the reducing ones in two passes with per-chunk partials).
RULES = frozenset({"sgd", "adaptive", "mas", "ndadam"})


def available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and _ext.has_cuda_kernels()


def why_unavailable(device: torch.device) -> str:
    if device.type != "cuda":
        return "the cuda backend serves CUDA tensors only"
    if not _ext.loaded():
        return _ext.LOAD_ERROR or "the C++ extension is not built"
    if not _ext.has_cuda_kernels():
        return ("the C++ extension was built without its CUDA kernels (no CUDA toolkit at build time; rebuild with "
                "CUDA_HOME set, or FUSED_HYBRID_BUILD_CUDA=1)")
    if not torch.cuda.is_available():
        return "no CUDA device is present"
    return ""


def _lr(hp):
    """(float lr, lr tensor or None): a 0-dim tensor lr is read inside the kernels (on the device)."""
    return (0.0, hp.lr) if isinstance(hp.lr, torch.Tensor) else (float(hp.lr), None)


def sgd(params, grads, momentum_buffers, firsts, hp, grad_scale=None, found_inf=None, cache=None):
    lr, lr_t = _lr(hp)
    bufs = momentum_buffers if hp.momentum != 0 else []
    flags = [int(bool(f)) for f in firsts] if any(firsts) else []  # none: no buffer is fresh
    torch.ops.fused_hybrid.sgd_(params, grads, bufs, flags, lr, lr_t, hp.momentum, hp.dampening, hp.nesterov,
                                hp.weight_decay, hp.maximize, grad_scale, found_inf)


def adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp, grad_scale=None, found_inf=None,
             swats=None, cache=None):
    lr, lr_t = _lr(hp)
    maxs = max_exp_avg_sqs if hp.amsgrad else []
    if swats is not None:
        # The kernels read phase as int32 and sgd_lr as float64 (no-ops when they already are).
        bufs, sw = swats.momentum_buffers, (swats.phase.to(torch.int32).contiguous(),
                                            swats.sgd_lr.to(torch.float64).contiguous(), swats.partials,
                                            swats.nesterov)
    else:
        bufs, sw = [], (None, None, None, False)
    torch.ops.fused_hybrid.adaptive_(
        params, grads, exp_avgs, exp_avg_sqs, maxs, steps, bufs, lr, lr_t, hp.beta1, hp.beta2, hp.eps,
        hp.weight_decay, hp.decoupled, hp.amsgrad, hp.maximize, hp.form, hp.partial, hp.clip_mode, hp.clip_lo,
        hp.clip_hi, hp.final_lr, hp.final_lr_relative, hp.gamma, grad_scale, found_inf, *sw)


def mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale=None, found_inf=None,
        cache=None):
    lr, lr_t = _lr(hp)
    bufs = momentum_buffers if hp.momentum != 0 else []
    torch.ops.fused_hybrid.mas_(params, grads, exp_avgs, exp_avg_sqs, bufs, steps, lr, lr_t, hp.beta1, hp.beta2,
                                hp.eps, hp.weight_decay, hp.momentum, hp.dampening, hp.nesterov, hp.adam_w,
                                hp.sgd_w, MAS_VARIANTS.index(hp.variant), hp.maximize, grad_scale, found_inf)


def _trailing(p: torch.Tensor, axes) -> list[int] | None:
    """The permutation that makes ``axes`` the trailing dims, or None when they already are."""
    axes = sorted(axes)
    if axes == list(range(p.dim() - len(axes), p.dim())):
        return None
    return [d for d in range(p.dim()) if d not in axes] + axes


def ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale=None, found_inf=None, cache=None):
    lr, lr_t = _lr(hp)
    ps, gs, ms, vs, row_lens, copies = [], [], [], [], [], []
    for p, g, m, v, ax in zip(params, grads, exp_avgs, exp_avg_sqs, axes):
        if not ax:
            ps.append(p), gs.append(g), ms.append(m), vs.append(v), row_lens.append(0)
            continue
        row_lens.append(math.prod(p.shape[d] for d in ax))
        perm = _trailing(p, ax)
        if perm is None:
            ps.append(p), gs.append(g), ms.append(m), vs.append(v)
        else:  # weight vectors along leading/middle dims: work on contiguous permuted copies, then copy back
            pc, mc, vc = (x.permute(perm).contiguous() for x in (p, m, v))
            ps.append(pc), gs.append(g.permute(perm).contiguous()), ms.append(mc), vs.append(vc)
            copies.append(((p, pc), (m, mc), (v, vc), perm))
    torch.ops.fused_hybrid.ndadam_(ps, gs, ms, vs, steps, row_lens, lr, lr_t, hp.beta1, hp.beta2, hp.eps,
                                   hp.weight_decay, hp.maximize, grad_scale, found_inf)
    for *pairs, perm in copies:
        for orig, c in pairs:
            orig.permute(perm).copy_(c)
