"""The Triton backend's rule families as PyTorch custom ops, so ``torch.compile(opt.step, fullgraph=True)`` can
trace a step on backend="triton".

The kernels take pointer tables built in Python from ``data_ptr()`` and a table cache keyed by those pointers:
nothing the tracer can follow (fake tensors have no data). Under ``torch.compiler.is_compiling()`` the family
functions of ``backends/triton.py`` call these ops instead: each op's schema names the tensor lists it writes
(params, state lists, steps, SWATS's partials) so the compiler knows what the opaque call mutates, its fake
implementation does nothing (the ops return nothing), and its real implementation rebuilds the hyperparameter
record from the keyword arguments (``Family.record_of``) and runs the backend's eager launcher
(``triton_launch._adaptive`` etc.), so no launch code is duplicated. Eager steps never come here: a custom op costs
Python dispatch overhead per call.

Each op ``fused_hybrid::triton_<family>_`` has the schema of the extension's ``<family>_`` op
(``fused_hybrid.families``: the same lists and keyword arguments, by the same names), except ND-Adam's, which takes
each tensor's vector axes (``axes_flat``, ``axes_len``) where the C++ op takes row lengths. They live in a fragment
of the ``fused_hybrid`` namespace next to the C++ extension's TORCH_LIBRARY, which need not be loaded: one
device-generic (CompositeExplicitAutograd) kernel serves CUDA tensors, and CPU tensors under TRITON_INTERPRET=1;
the backend function itself refuses what it cannot serve. Absent optional lists travel as empty lists.
"""
from __future__ import annotations

import torch

from .. import hyper as H
from ..families import FAMILIES, swats_kwargs
from . import triton_launch as _l

NS = "fused_hybrid"
_LIB = torch.library.Library(NS, "FRAGMENT")  # noqa: TOR901  (kept alive with the module: it owns the defs)
_ND_AXES = (("int[]", "axes_flat"), ("int[]", "axes_len"))


def _nop(*args, **kwargs) -> None:
    """Fake implementation of every op here: they only mutate their arguments in place and return nothing."""
    return None


# The real implementations: the op's lists and keyword arguments back to the eager launcher's arguments.
# (kahan_comps and seeds: the 16-bit stores of issue 16; empty lists unless the record's rounding uses them.)
def _lowp(kahan_comps, kw) -> dict:
    return dict(kahan_comps=list(kahan_comps) or None, seeds=list(kw["seeds"]) or None)


def _adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, swats_momentum_buffers, kahan_comps,
              **kw):
    swats = None
    if kw["swats_phase"] is not None:
        swats = H.SwatsArgs(momentum_buffers=swats_momentum_buffers, phase=kw["swats_phase"],
                            sgd_lr=kw["swats_sgd_lr"], partials=kw["swats_partials"], nesterov=kw["swats_nesterov"])
    _l._adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, FAMILIES["adaptive"].record_of(kw),
                 kw["grad_scale"], kw["found_inf"], swats, **_lowp(kahan_comps, kw))


def _sgd(params, grads, momentum_buffers, steps, kahan_comps, **kw):
    _l._sgd(params, grads, momentum_buffers, [bool(f) for f in kw["firsts"]], FAMILIES["sgd"].record_of(kw),
            kw["grad_scale"], kw["found_inf"], steps=list(steps) or None, **_lowp(kahan_comps, kw))


def _mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, kahan_comps, **kw):
    _l._mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, FAMILIES["mas"].record_of(kw),
            kw["grad_scale"], kw["found_inf"], **_lowp(kahan_comps, kw))


def _rms(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, kahan_comps, **kw):
    _l._rms(params, grads, square_avgs, steps, FAMILIES["rms"].record_of(kw), kw["grad_scale"], kw["found_inf"],
            grad_avgs, momentum_buffers, **_lowp(kahan_comps, kw))


def _ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, kahan_comps, **kw):
    axes, i = [], 0
    for n in kw["axes_len"]:
        axes.append(tuple(kw["axes_flat"][i:i + n]))
        i += n
    _l._ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, FAMILIES["ndadam"].record_of(kw),
               kw["grad_scale"], kw["found_inf"], **_lowp(kahan_comps, kw))


_REAL = {"adaptive": _adaptive, "sgd": _sgd, "mas": _mas, "rms": _rms, "ndadam": _ndadam}
for _name, _family in FAMILIES.items():
    _op = f"triton_{_name}_"
    _LIB.define(_family.schema(_op, leading=_ND_AXES if _name == "ndadam" else None))
    _LIB.impl(_op, _REAL[_name], "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NS}::{_op}", _nop, lib=_LIB)


def _call(name: str, lists: list, kwargs: dict) -> None:
    getattr(torch.ops.fused_hybrid, f"triton_{name}_")(*lists, **kwargs)


# The backend functions under torch.compile (backends/triton.py calls them while tracing).
def adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp, grad_scale=None, found_inf=None,
             swats=None, kahan_comps=None, seeds=None) -> None:
    _call("adaptive", [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if hp.amsgrad else [], steps,
                       [] if swats is None else swats.momentum_buffers, kahan_comps or []],
          dict(FAMILIES["adaptive"].kwargs(hp), seeds=seeds or [], **swats_kwargs(swats), grad_scale=grad_scale,
               found_inf=found_inf))


def sgd(params, grads, momentum_buffers, firsts, hp, grad_scale=None, found_inf=None, steps=None, kahan_comps=None,
        seeds=None) -> None:
    use_mom = hp.momentum != 0
    _call("sgd", [params, grads, momentum_buffers if use_mom else [], steps or [], kahan_comps or []],
          dict(FAMILIES["sgd"].kwargs(hp), firsts=[int(f) for f in firsts] if use_mom else [], seeds=seeds or [],
               grad_scale=grad_scale, found_inf=found_inf))


def rms(params, grads, square_avgs, steps, hp, grad_scale=None, found_inf=None, grad_avgs=None,
        momentum_buffers=None, kahan_comps=None, seeds=None) -> None:
    _call("rms", [params, grads, square_avgs, grad_avgs if hp.centered else [],
                  momentum_buffers if hp.momentum != 0 else [], steps, kahan_comps or []],
          dict(FAMILIES["rms"].kwargs(hp), seeds=seeds or [], grad_scale=grad_scale, found_inf=found_inf))


def mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale=None, found_inf=None,
        kahan_comps=None, seeds=None) -> None:
    _call("mas", [params, grads, exp_avgs, exp_avg_sqs, momentum_buffers if hp.momentum != 0 else [], steps,
                  kahan_comps or []],
          dict(FAMILIES["mas"].kwargs(hp), seeds=seeds or [], grad_scale=grad_scale, found_inf=found_inf))


def ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale=None, found_inf=None,
           kahan_comps=None, seeds=None) -> None:
    _call("ndadam", [params, grads, exp_avgs, exp_avg_sqs, steps, kahan_comps or []],
          dict(FAMILIES["ndadam"].kwargs(hp), seeds=seeds or [], axes_flat=[int(a) for ax in axes for a in ax],
               axes_len=[len(ax) for ax in axes], grad_scale=grad_scale, found_inf=found_inf))
