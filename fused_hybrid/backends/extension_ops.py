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

from ..families import FAMILIES, swats_kwargs
from ..hyper import ROUND_KAHAN, ROUND_STOCHASTIC

# An absent optional state list. One object, so a bucket's table key stays the same from step to step.
_NONE: tuple = ()


def _call(ns: str, family: str, cache, lists: list, grads, kwargs: dict):
    """torch.ops.<ns>.<family>_(lists[0], grads, *lists[1:], **kwargs), through a cached TensorTable of ``lists``
    when the caller keeps a cache for this bucket. The table is rebuilt whenever any list object differs from the
    ones it was built from (the optimizer keeps its lists per bucket, so in steady state it never is). grads None:
    the op reads the params' .grad; then False means a param has none, and nothing was changed."""
    op = family + "_"
    if cache is None or torch.compiler.is_compiling():
        if grads is None:
            grads = [p.grad for p in lists[0]]
            if any(g is None for g in grads):
                return False
        getattr(getattr(torch.ops, ns), op)(lists[0], grads, *lists[1:], **kwargs)
        return True
    key = tuple(map(id, lists))
    entry = cache.get(op)
    if entry is None or entry[0] != key:
        # The entry holds the lists too, so their ids cannot be reused while it is alive.
        entry = cache[op] = (key, torch.classes.fused_hybrid.TensorTable(lists), lists)
    return _table_op(ns, op)(entry[1], _NONE if grads is None else grads, **kwargs)


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


def _rounding(hp, kahan_comps, seeds):
    """The Kahan list and the seeds keyword of every family's op (empty unless the record's rounding uses them)."""
    comps = kahan_comps if hp.rounding == ROUND_KAHAN else _NONE
    return comps, (seeds if hp.rounding == ROUND_STOCHASTIC else _NONE)


def bind(ns: str) -> SimpleNamespace:
    """The rule-family functions (the backend API: sgd, adaptive, mas, ndadam, rms) on the ops of namespace ``ns``.
    Each returns False when the optimizer's fast path (grads=None) finds a param without a gradient (nothing was
    changed)."""
    F = FAMILIES

    def sgd(params, grads, momentum_buffers, firsts, hp, grad_scale=None, found_inf=None, cache=None, steps=None,
            kahan_comps=None, seeds=None):
        bufs = momentum_buffers if hp.momentum != 0 else _NONE
        comps, seeds = _rounding(hp, kahan_comps, seeds)
        # No flags when no buffer is fresh (every step after the first): the op reads none, and 2000 bools cost
        # ~0.1 ms to convert.
        return _call(ns, "sgd", cache, [params, bufs, steps if hp.rounding == ROUND_STOCHASTIC else _NONE, comps],
                     grads, dict(F["sgd"].kwargs(hp), firsts=firsts if any(firsts) else _NONE, seeds=seeds,
                                 grad_scale=grad_scale, found_inf=found_inf))

    def adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp, grad_scale=None, found_inf=None,
                 swats=None, cache=None, kahan_comps=None, seeds=None):
        # phase (int32) and sgd_lr (float64) come from swats.per_tensor_args as the ops check them.
        comps, seeds = _rounding(hp, kahan_comps, seeds)
        lists = [params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if hp.amsgrad else _NONE, steps,
                 _NONE if swats is None else swats.momentum_buffers, comps]
        return _call(ns, "adaptive", cache, lists, grads,
                     dict(F["adaptive"].kwargs(hp), seeds=seeds, **swats_kwargs(swats), grad_scale=grad_scale,
                          found_inf=found_inf))

    def mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale=None, found_inf=None,
            cache=None, kahan_comps=None, seeds=None):
        bufs = momentum_buffers if hp.momentum != 0 else _NONE
        comps, seeds = _rounding(hp, kahan_comps, seeds)
        return _call(ns, "mas", cache, [params, exp_avgs, exp_avg_sqs, bufs, steps, comps], grads,
                     dict(F["mas"].kwargs(hp), seeds=seeds, grad_scale=grad_scale, found_inf=found_inf))

    def rms(params, grads, square_avgs, steps, hp, grad_scale=None, found_inf=None, grad_avgs=None,
            momentum_buffers=None, cache=None, kahan_comps=None, seeds=None):
        comps, seeds = _rounding(hp, kahan_comps, seeds)
        lists = [params, square_avgs, grad_avgs if hp.centered else _NONE,
                 momentum_buffers if hp.momentum != 0 else _NONE, steps, comps]
        return _call(ns, "rms", cache, lists, grads, dict(F["rms"].kwargs(hp), seeds=seeds, grad_scale=grad_scale,
                                                          found_inf=found_inf))

    def ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale=None, found_inf=None, cache=None,
               kahan_comps=None, seeds=None):
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
        comps, seeds = _rounding(hp, kahan_comps, seeds)
        ps, gs, ms, vs, cs = params, grads, exp_avgs, exp_avg_sqs, comps
        if any(perm is not None for _, perm in layouts):
            if grads is None:
                grads = [p.grad for p in params]
                if any(g is None for g in grads):
                    return False
            ps, gs, ms, vs, cs = list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(comps)
            for i, (_, perm) in enumerate(layouts):
                if perm is not None:
                    if hp.rounding == ROUND_STOCHASTIC:
                        # The kernel would number the permuted copy's elements, not the param's: other bits
                        # than the reference backend's (whose index is the flat index of the param itself).
                        raise NotImplementedError(
                            "fused_hybrid: stochastic rounding of ND-Adam params whose vec_axes are not their "
                            "trailing dims is not supported on the cpu/cuda backends; use backend='reference' or "
                            "vec_axes=None")
                    own = (params[i], exp_avgs[i], exp_avg_sqs[i]) + ((comps[i],) if comps else ())
                    views = [t.permute(perm) for t in own]
                    new = [v.contiguous() for v in views]
                    ps[i], ms[i], vs[i] = new[:3]
                    if comps:
                        cs[i] = new[3]
                    gs[i] = grads[i].permute(perm).contiguous()
                    copies.append((views, new))
        # Permuted copies are new tensors every step: they go as lists, not through a cached table.
        stepped = _call(ns, "ndadam", None if copies else cache, [ps, ms, vs, steps, cs], gs,
                        dict(F["ndadam"].kwargs(hp), row_lens=row_lens, seeds=seeds, grad_scale=grad_scale,
                             found_inf=found_inf))
        for views, new_values in copies:
            for view, new in zip(views, new_values):
                if new.data_ptr() != view.data_ptr():
                    view.copy_(new)
        return stepped

    return SimpleNamespace(sgd=sgd, adaptive=adaptive, mas=mas, ndadam=ndadam, rms=rms)


# The extension's own ops (the cpu and cuda backends).
_OWN = bind("fused_hybrid")
sgd, adaptive, mas, ndadam, rms = _OWN.sgd, _OWN.adaptive, _OWN.mas, _OWN.ndadam, _OWN.rms
