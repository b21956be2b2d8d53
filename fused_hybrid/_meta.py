"""Fake (meta) implementations of the extension's ops, so torch.compile can trace through them.

Every op mutates its tensor-list arguments in place and returns nothing, so the fake implementation has
nothing to compute: it only has to exist for the tracer to accept the op.
"""
from __future__ import annotations

import torch

from . import _ext
from .families import FAMILIES

OPS = tuple(f"{name}_" for name in FAMILIES)


def _fake(*args, **kwargs):
    return None


def _swats_args(seg_of, phase, Lambda, lr_ref, lr, one_minus_b1):
    return seg_of.new_empty(seg_of.shape, dtype=phase.dtype), seg_of.new_empty(seg_of.shape, dtype=Lambda.dtype)


def _swats_totals(partials, stepped, seg_of, S):
    return partials.new_empty((S, 3))


def _grad_norm_partial(grads, norm_type, grad_scale):
    return grads[0].new_empty((), dtype=torch.float64)  # (fused_hybrid.grad_clip never passes an empty list)


# The gradient-norm op (issue 17) returns its 0-dim float64 partial on the gradients' device.
NORM_OPS = ("grad_norm_partial",)

FAKES = {**{op: _fake for op in OPS}, "swats_args": _swats_args, "swats_totals": _swats_totals,
         "swats_finalize_": _fake, "grad_norm_partial": _grad_norm_partial}


def register() -> None:
    if not _ext.loaded():
        return
    # The simulated CUDA kernels' namespace has the family ops only (SWATS's bookkeeping ops are fused_hybrid's).
    names = [f"fused_hybrid::{op}" for op in FAKES]
    if _ext.has_sim():
        names += [f"fused_hybrid_sim::{op}" for op in OPS + NORM_OPS]
    for name in names:
        try:
            torch.library.register_fake(name)(FAKES[name.split("::")[1]])
        except RuntimeError as exc:  # registered already (module reloaded)
            if "already" not in str(exc):
                raise
