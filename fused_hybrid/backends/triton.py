"""The Triton backend: multi-tensor Triton kernels (fused_hybrid.triton_kernels) for every rule family.

Serves CUDA tensors, and CPU tensors when TRITON_INTERPRET=1 (Triton's interpreter, how the tests run it
without a GPU). One bucket (tensors of one group sharing device and dtype) is one update launch over a chunk
table, whatever the number of tensors, plus one finalize launch that advances the step counts (and sums the
reduction partials per tensor); MAS's reducing variants add their apply pass, ND-Adam its 1-D tensors' Adam
launch. Nothing here reads a device value: lr (float or 0-dim tensor), steps, grad_scale, found_inf and the
SWATS phase are read by the kernels.

Tables (pointer table, chunk table, per-tensor meta) are cached keyed by the data pointers, numels and flags,
so a step whose tensors have not moved builds nothing. Building that key reads every tensor's pointer in Python
(~2 us per tensor: 4.6 ms of host time per step for 2000 tensors, ``python -m bench.host_overhead``), so the
optimizer's fast path goes through a ``_Snapshot`` instead: one C++ call returns every numel and pointer,
gradients included, and the tables are reused while it is unchanged. The launchers, tables and geometry live in
``triton_launch`` (a leaf module that both this module and ``triton_ops`` import).

torch.compile cannot trace pointer tables (fake tensors have no data), so while compiling, the four family
functions call the custom ops of ``triton_ops`` instead, whose real implementations run the eager launchers of
``triton_launch`` at run time; eager steps call those directly.
"""
from __future__ import annotations

import torch

from .. import _ext
from ..families import FAMILIES
from ..hyper import ROUND_KAHAN, ROUND_STOCHASTIC
from . import triton_launch as _l
from . import triton_ops as _ops

NAME = "triton"
BF16_STATE = True  # bfloat16 moment buffers (a group's state_dtype): loaded widened, stored by store_cast's RNE
RULES = frozenset(FAMILIES)  # every family
# With the C++ extension loaded, the optimizer's fast path passes grads=None (and a bucket cache): a TensorTable of
# the bucket's lists then reads the gradients and every pointer in one call (``_Snapshot``); when a param has no
# gradient the family function launches nothing and returns False.
GRADS_FROM_PARAMS = _ext.loaded()

def available(device: torch.device) -> bool:
    return why_unavailable(device) == ""


def swats_bookkeeping(device: torch.device) -> str:
    """SWATS's switch test: this backend's kernels (triton_kernels/swats.py: ``swats_per_tensor``,
    ``swats_switch``) on a GPU Triton targets (compute capability 8.0+); on CPU tensors (the interpreter) the
    extension's C++ ops when it is built; the torch ops otherwise."""
    if device.type == "cpu":
        return "cpu" if _ext.loaded() else "torch"
    if not available(device) or (device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0)):
        return "torch"
    return "triton"


swats_per_tensor, swats_switch = _l.swats_per_tensor, _l.swats_switch  # (the SWATS bookkeeping's kernels)


def why_unavailable(device: torch.device) -> str:
    if _l._IMPORT_ERROR:
        return _l._IMPORT_ERROR
    device = torch.device(device)
    if device.type == "cuda":
        if _l._interpreting():
            return "TRITON_INTERPRET=1 is set: Triton's interpreter runs CPU tensors only"
        if not torch.cuda.is_available():
            return "no CUDA device is present"
        return ""
    if device.type == "cpu":
        return "" if _l._interpreting() else ("the triton backend serves CUDA tensors; CPU tensors only under "
                                           "Triton's interpreter (set TRITON_INTERPRET=1 before importing triton)")
    return f"the triton backend does not serve {device.type} tensors"


# --------------------------------------------------------------------------------------------------------------
# Rule families (API: backends/reference.py). Eager steps run the launchers of triton_launch.py (_adaptive, _sgd,
# _mas, _ndadam) directly; under torch.compile the same functions run inside custom ops (triton_ops.py), which the
# tracer sees as opaque calls that mutate the lists they name: it cannot follow data_ptr() tables.

def _lowp(hp, kahan_comps, seeds) -> dict:
    """The 16-bit stores' arguments (issue 16) the launchers and ops take: empty unless the record asks."""
    return dict(kahan_comps=kahan_comps if hp.rounding == ROUND_KAHAN else None,
                seeds=seeds if hp.rounding == ROUND_STOCHASTIC else None)


def _run(eager, op, params, grads, *args, snap=None, **kw) -> bool:
    """One family call: the custom op while torch.compile traces, the direct function otherwise. grads None (the
    optimizer's fast path): False, launching nothing, when a param has no gradient."""
    if not params:
        return True
    if grads is None and snap is None:
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            return False
    if snap is not None and not snap.ready():
        return False
    if torch.compiler.is_compiling():
        op(params, grads, *args, **kw)
    else:
        eager(params, grads, *args, snap=snap, **kw)
    return True


class _Snapshot:
    """The fast path's table source for one bucket: a TensorTable of its lists (params first, then the state lists
    the kernels read; () for an absent one) whose ``snapshot()`` returns every numel and pointer, gradients
    included, in one C++ call. ``tables(build)`` reuses the tables built for an equal snapshot, and rebuilds them
    (``build()``, the general path's construction) when anything moved or resized."""

    __slots__ = ("key", "lists", "keep", "table", "snap", "tab", "cur")

    def __init__(self, key, lists, keep):
        # The lists (and `keep`) too: the ids in the key stay theirs while this lives.
        self.key, self.lists, self.keep = key, lists, keep
        self.table = torch.classes.fused_hybrid.TensorTable(lists)
        self.snap = self.tab = self.cur = None

    def ready(self) -> bool:
        """Take this step's snapshot; False when a param has no gradient (then nothing may be launched)."""
        snap, usable, complete = self.table.snapshot()
        self.cur = (snap, usable)
        return complete

    def tables(self, build):
        snap, usable = self.cur
        if not usable:  # a gradient the kernels cannot read in place: the general path copies it
            return build()
        if self.tab is None or not torch.equal(snap, self.snap):
            self.tab, self.snap = build()[0], snap  # (no copies were made: the gradients are the params' .grad)
        return self.tab, None


def _snapshot(cache, grads, kind: tuple, lists: list, keep=None) -> _Snapshot | None:
    """The bucket's _Snapshot when the optimizer passed no gradients (its fast path), None otherwise. ``kind``
    holds what else shapes the tables (family, variant); a change of it, of any list object or of ``keep`` (an
    object the tables follow from, by identity: ND-Adam's axes) makes a new one."""
    if grads is not None or cache is None:
        return None
    key = kind + tuple(map(id, lists)) + (id(keep),)
    entry = cache.get("triton")
    if entry is None or entry.key != key:
        entry = cache["triton"] = _Snapshot(key, lists, keep)
    return entry


def adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp, grad_scale=None, found_inf=None,
             swats=None, cache=None, kahan_comps=None, seeds=None):
    lowp = _lowp(hp, kahan_comps, seeds)
    snap = _snapshot(cache, grads, ("adaptive",), [params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if hp.amsgrad else (),
                                                   steps, () if swats is None else swats.momentum_buffers,
                                                   lowp["kahan_comps"] or ()])
    return _run(_l._adaptive, _ops.adaptive, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp,
                grad_scale, found_inf, swats, snap=snap, **lowp)


def sgd(params, grads, momentum_buffers, firsts, hp, grad_scale=None, found_inf=None, cache=None, steps=None,
        kahan_comps=None, seeds=None):
    lowp = _lowp(hp, kahan_comps, seeds)
    steps = steps if hp.rounding == ROUND_STOCHASTIC else None  # SGD counts steps only for stochastic rounding
    # A fresh buffer's flag is part of the tables: the first step takes the general path.
    snap = None if any(firsts) else _snapshot(cache, grads, ("sgd",), [params, momentum_buffers
                                                                       if hp.momentum != 0 else (), steps or (),
                                                                       lowp["kahan_comps"] or ()])
    return _run(_l._sgd, _ops.sgd, params, grads, momentum_buffers, firsts, hp, grad_scale, found_inf, snap=snap,
                steps=steps, **lowp)


def mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale=None, found_inf=None,
        cache=None, kahan_comps=None, seeds=None):
    lowp = _lowp(hp, kahan_comps, seeds)
    snap = _snapshot(cache, grads, ("mas", hp.variant == 0),
                     [params, exp_avgs, exp_avg_sqs, momentum_buffers if hp.momentum != 0 else (), steps,
                      lowp["kahan_comps"] or ()])
    return _run(_l._mas, _ops.mas, params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale,
                found_inf, snap=snap, **lowp)


def rms(params, grads, square_avgs, steps, hp, grad_scale=None, found_inf=None, grad_avgs=None, momentum_buffers=None,
        cache=None, kahan_comps=None, seeds=None):
    lowp = _lowp(hp, kahan_comps, seeds)
    snap = _snapshot(cache, grads, ("rms",), [params, square_avgs, grad_avgs if hp.centered else (),
                                              momentum_buffers if hp.momentum != 0 else (), steps,
                                              lowp["kahan_comps"] or ()])
    return _run(_l._rms, _ops.rms, params, grads, square_avgs, steps, hp, grad_scale, found_inf, grad_avgs,
                momentum_buffers, snap=snap, **lowp)


def ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale=None, found_inf=None, cache=None,
           kahan_comps=None, seeds=None):
    lowp = _lowp(hp, kahan_comps, seeds)
    snap = _snapshot(cache, grads, ("ndadam",), [params, exp_avgs, exp_avg_sqs, steps, lowp["kahan_comps"] or ()],
                     keep=axes)
    return _run(_l._ndadam, _ops.ndadam, params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale,
                found_inf, snap=snap, **lowp)
