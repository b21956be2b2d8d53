"""The Triton backend's gradient-norm op (fused_hybrid.grad_clip): the partial of a bucket's gradients, launched on
the chunk tables of ``triton_launch`` (cached by pointers like the update kernels' tables), and the custom op
``fused_hybrid::triton_grad_norm_partial`` that torch.compile traces in its place (its fake returns the 0-dim
float64 result). Two launches per bucket: the per-chunk partials and the one-program finalize."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import _ext
from . import triton_launch as _l

FINALIZE_BLOCK = 1024


def _mode(p: float) -> int:
    if not p > 0.0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {p}")
    return 3 if math.isinf(p) else (0 if p == 1.0 else (1 if p == 2.0 else 2))


def _table(grads: list):
    """(tables, device, dtype) of ``grads`` (contiguous copies where needed: the caller keeps ``grads`` alive until
    the launches are queued)."""
    if not grads:
        raise ValueError("triton grad_norm_partial: no gradients")
    dev, dtype = grads[0].device, grads[0].dtype
    for g in grads:
        if g.dtype != dtype or g.device != dev:
            raise ValueError("triton grad_norm_partial: the gradients of one call share a device and dtype")
    _, CHUNK, _ = _l._geometry(dev)
    return _l._tables(dev, [grads], [g.numel() for g in grads], [0] * len(grads), CHUNK), dev, dtype


def launch(grads: list, p: float, grad_scale: Optional[Tensor]) -> Tensor:
    """The partial (sum |g|^p, or max |g| for p = inf, of the unscaled gradients) as a 0-dim float64 tensor."""
    grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
    tab, dev, dtype = _table(grads)
    return _launch(tab, dev, dtype, p, grad_scale)


def _launch(tab, dev, dtype, p, grad_scale) -> Tensor:
    from ..triton_kernels import grad_norm as _kg
    BLOCK, CHUNK, opts = _l._geometry(dev)
    P, C = _l._dtypes(dtype)
    slots = torch.empty(max(tab.C, 1), dtype=torch.float64, device=dev)
    out = torch.empty((), dtype=torch.float64, device=dev)
    mode = _mode(p)
    if tab.C == 0:
        return out.zero_()
    _l._launch(_kg.grad_norm_kernel, (tab.C,), tab.chunks, tab.meta, tab.ptrs, tab.T, grad_scale, slots,
               float(p), P=P, C=C, HAS_SCALE=grad_scale is not None, MODE=mode, BLOCK=BLOCK, CHUNK=CHUNK,
               ALIGNED=tab.aligned, **opts)
    _l._launch(_kg.norm_finalize_kernel, (1,), slots, tab.C, out, MODE=mode, BLOCK=FINALIZE_BLOCK, **opts)
    return out


@torch.library.custom_op("fused_hybrid::triton_grad_norm_partial", mutates_args=())
def triton_grad_norm_partial(grads: list[Tensor], norm_type: float, grad_scale: Optional[Tensor]) -> Tensor:
    return launch(grads, norm_type, grad_scale)


@triton_grad_norm_partial.register_fake
def _(grads, norm_type, grad_scale):
    return grads[0].new_empty((), dtype=torch.float64)


class _Snapshot:
    """The optimizer's fast path (grads None): a TensorTable of the bucket's params whose ``snapshot()`` reads every
    numel, shape and pointer, gradients included, in one C++ call; the chunk tables are rebuilt only when it changes
    (as backends/triton.py's _Snapshot does for the update kernels), so no gradient is read in Python."""

    __slots__ = ("params", "table", "snap", "tab")

    def __init__(self, params):
        self.params = params
        self.table = torch.classes.fused_hybrid.TensorTable([params])
        self.snap = self.tab = None


def partial(grads, p: float, grad_scale: Optional[Tensor], params=None, cache=None) -> Tensor:
    """The bucket's partial. grads None: the gradients of ``params``, through the bucket's ``cache`` when the
    extension is loaded (None, launching nothing, when one of them has no gradient)."""
    if torch.compiler.is_compiling():
        return torch.ops.fused_hybrid.triton_grad_norm_partial(
            [q.grad for q in params] if grads is None else grads, float(p), grad_scale)
    if grads is None and cache is not None and _ext.loaded():
        entry = cache.get("triton_norm")
        if entry is None or entry.params is not params:
            entry = cache["triton_norm"] = _Snapshot(params)
        snap, usable, complete = entry.table.snapshot()
        if not complete:
            return None
        if usable:
            if entry.tab is None or not torch.equal(snap, entry.snap):
                entry.tab, entry.snap = _table([q.grad for q in params]), snap
            return _launch(*entry.tab, p, grad_scale)
    return launch([q.grad for q in params] if grads is None else grads, p, grad_scale)
