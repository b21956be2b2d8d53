"""The C++ extension's ops (torch.ops.fused_hybrid.<family>_) as rule families, shared by the cpu and cuda backends:
the ops pick their kernel by the tensors' device, so the two backends differ only in what they serve. The
cuda_sim backend runs the same code on the simulated CUDA kernels' namespace (``bind("fused_hybrid_sim")``).

In eager mode the params and state lists travel in a TensorTable built once per bucket and kept in the bucket's
``cache`` (csrc/cpu/tensor_table.h says why); only the gradients are passed as a list each step, or none at all on
the optimizer's fast path (grads=None: the table op reads the params' .grad in C++). Under torch.compile the list
ops run, so the tracer sees every mutated tensor.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from ..rules import MAS_VARIANTS

# With a bucket cache, grads=None makes the table op read the params' .grad itself (no Python list of 2000 .grad
# reads); a missing gradient then raises a RuntimeError containing NO_GRADIENT before anything changes
# (csrc/cpu/tensor_table.h: kNoGradient).
NO_GRADIENT = "fused_hybrid: a parameter of the table has no gradient"

# An absent optional state list. One object, so a bucket's table key stays the same from step to step.
_NONE: tuple = ()


def _call(ns: str, op: str, cache, lists: list, grads, *rest) -> None:
    """torch.ops.<ns>.<op>(lists[0], grads, *lists[1:], *rest), through a cached TensorTable of ``lists`` when the
    caller keeps a cache for this bucket. The table is rebuilt whenever any list object differs from the ones it
    was built from (the optimizer keeps its lists per bucket, so in steady state it never is)."""
    if cache is None or torch.compiler.is_compiling():
        if grads is None:
            grads = [p.grad for p in lists[0]]
        getattr(getattr(torch.ops, ns), op)(lists[0], grads, *lists[1:], *rest)
        return
    key = tuple(map(id, lists))
    entry = cache.get(op)
    if entry is None or entry[0] != key:
        # The entry holds the lists too, so their ids cannot be reused while it is alive.
        entry = cache[op] = (key, torch.classes.fused_hybrid.TensorTable(lists), lists)
    _table_op(ns, op)(entry[1], _NONE if grads is None else grads, *rest)


_TABLE_OPS: dict = {}


def _table_op(ns: str, op: str):
    """The C++ callable of ``<op>table_``. torch.ops wraps ops that take a TorchBind object in Python that walks
    every argument, list elements included, looking for fake script objects (torch/_ops.py,
    _must_dispatch_in_python): ~0.3 ms per call for a list of 2000 gradients. Eager calls never carry one, so they
    go straight to the C++ operator the OpOverload wraps."""
    fn = _TABLE_OPS.get((ns, op))
    if fn is None:
        overload = getattr(getattr(torch.ops, ns), op + "table_").default
        fn = _TABLE_OPS[ns, op] = getattr(overload, "_op", overload)
    return fn


def _lr(hp):
    """(float lr, lr tensor or None): a 0-dim tensor lr is read inside the op."""
    return (0.0, hp.lr) if isinstance(hp.lr, torch.Tensor) else (float(hp.lr), None)


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


def bind(ns: str) -> SimpleNamespace:
    """The rule-family functions (the backend API: sgd, adaptive, mas, ndadam) on the ops of namespace ``ns``."""

    def sgd(params, grads, momentum_buffers, firsts, hp, grad_scale=None, found_inf=None, cache=None):
        lr, lr_t = _lr(hp)
        bufs = momentum_buffers if hp.momentum != 0 else _NONE
        # No flags when no buffer is fresh (every step after the first): the op reads none, and 2000 bools cost
        # ~0.1 ms to convert.
        _call(ns, "sgd_", cache, [params, bufs], grads, firsts if any(firsts) else _NONE, lr, lr_t, hp.momentum,
              hp.dampening, hp.nesterov, hp.weight_decay, hp.maximize, grad_scale, found_inf)

    def adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp, grad_scale=None, found_inf=None,
                 swats=None, cache=None):
        lr, lr_t = _lr(hp)
        if swats is None:
            bufs, phase, sgd_lr, partials, nesterov = _NONE, None, None, None, False
        else:
            # phase (int32) and sgd_lr (float64) come from swats.per_tensor_args as the ops check them.
            bufs, phase, sgd_lr, partials, nesterov = (swats.momentum_buffers, swats.phase, swats.sgd_lr,
                                                       swats.partials, swats.nesterov)
        lists = [params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if hp.amsgrad else _NONE, steps, bufs]
        _call(ns, "adaptive_", cache, lists, grads, lr, lr_t, hp.beta1, hp.beta2, hp.eps, hp.weight_decay,
              hp.decoupled, hp.amsgrad, hp.maximize, hp.form, hp.partial, hp.clip_mode, hp.clip_lo, hp.clip_hi,
              hp.final_lr, hp.final_lr_relative, hp.gamma, grad_scale, found_inf, phase, sgd_lr, partials, nesterov)

    def mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale=None, found_inf=None,
            cache=None):
        lr, lr_t = _lr(hp)
        bufs = momentum_buffers if hp.momentum != 0 else _NONE
        _call(ns, "mas_", cache, [params, exp_avgs, exp_avg_sqs, bufs, steps], grads, lr, lr_t, hp.beta1, hp.beta2,
              hp.eps, hp.weight_decay, hp.momentum, hp.dampening, hp.nesterov, hp.adam_w, hp.sgd_w,
              MAS_VARIANTS.index(hp.variant), hp.maximize, grad_scale, found_inf)

    def rms(params, grads, square_avgs, steps, hp, grad_scale=None, found_inf=None, grad_avgs=None,
            momentum_buffers=None, cache=None):
        lr, lr_t = _lr(hp)
        lists = [params, square_avgs, grad_avgs if hp.centered else _NONE,
                 momentum_buffers if hp.momentum != 0 else _NONE, steps]
        _call(ns, "rms_", cache, lists, grads, lr, lr_t, hp.keep, hp.add, hp.eps, hp.weight_decay, hp.momentum,
              hp.centered, hp.lr_decay, hp.maximize, grad_scale, found_inf)

    def ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale=None, found_inf=None, cache=None):
        lr, lr_t = _lr(hp)
        # The layouts follow from the shapes and axes alone: kept per bucket while the caller passes the same axes
        # list.
        entry = None if cache is None else cache.get("ndadam_layouts")
        if entry is None or entry[0] is not axes:
            layouts = [ndadam_layout(p, ax) for p, ax in zip(params, axes)]
            entry = (axes, layouts, [row_len for row_len, _ in layouts])
            if cache is not None:
                cache["ndadam_layouts"] = entry
        _, layouts, row_lens = entry
        copies = []
        ps, gs, ms, vs = params, grads, exp_avgs, exp_avg_sqs
        if any(perm is not None for _, perm in layouts):
            if grads is None:
                grads = [p.grad for p in params]
            ps, gs, ms, vs = list(params), list(grads), list(exp_avgs), list(exp_avg_sqs)
            for i, (_, perm) in enumerate(layouts):
                if perm is not None:
                    views = [t.permute(perm) for t in (params[i], exp_avgs[i], exp_avg_sqs[i])]
                    ps[i], ms[i], vs[i] = [v.contiguous() for v in views]
                    gs[i] = grads[i].permute(perm).contiguous()
                    copies.append((views, (ps[i], ms[i], vs[i])))
        # Permuted copies are new tensors every step: they go as lists, not through a cached table.
        _call(ns, "ndadam_", None if copies else cache, [ps, ms, vs, steps], gs, row_lens, lr, lr_t, hp.beta1,
              hp.beta2, hp.eps, hp.weight_decay, hp.maximize, grad_scale, found_inf)
        for views, stepped in copies:
            for view, new in zip(views, stepped):
                if new.data_ptr() != view.data_ptr():
                    view.copy_(new)

    return SimpleNamespace(sgd=sgd, adaptive=adaptive, mas=mas, ndadam=ndadam, rms=rms)


# The extension's own ops (the cpu and cuda backends).
_OWN = bind("fused_hybrid")
sgd, adaptive, mas, ndadam, rms = _OWN.sgd, _OWN.adaptive, _OWN.mas, _OWN.ndadam, _OWN.rms
