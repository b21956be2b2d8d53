"""The fused CPU backend: the C++ extension's multi-threaded, vectorized kernels (torch.ops.fused_hybrid)."""
from __future__ import annotations

import torch

from .. import _ext

NAME = "cpu"
RULES = frozenset({"sgd"})


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
