"""The rule families' op signatures, built from their hyperparameter records (``fused_hybrid.hyper``).

A family's op takes ``params, grads``, its state lists, then keyword-only arguments: its record's fields in order
(the lr split into ``float lr`` and ``Tensor? lr_tensor``, see ``kwargs``), the family's extras, and the three every
family ends with (``lr_tensor``, ``grad_scale``, ``found_inf``). csrc/op_families.h declares the same arguments in
C++ (one X-macro list per family, from which the C++ schemas and signatures expand); tests/test_shared_constants.py
checks that the schema the C++ library registers is the one ``Family.schema`` builds here. The Triton backend's
custom ops are defined from ``Family.schema`` too, so every backend's op takes the same arguments by the same names.
Backends call the ops by keyword with ``Family.kwargs(hp)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from . import hyper as H

# Record field annotation -> schema type (``from __future__ import annotations`` makes them strings).
_SCHEMA_TYPES = {"float": "float", "bool": "bool", "int": "int", "float | torch.Tensor": "float"}
STEP_ARGS = (("Tensor?", "lr_tensor"), ("Tensor?", "grad_scale"), ("Tensor?", "found_inf"))


@dataclass(frozen=True)
class Family:
    """``lists``: the state lists after params and grads, in the kernels' order; ``leading`` / ``trailing``:
    keyword arguments (schema type, name) before / after the record's fields (SGD's fresh-buffer flags, ND-Adam's
    row lengths; SWATS's per-tensor phase and sums)."""
    name: str
    record: type
    lists: tuple[str, ...]
    leading: tuple[tuple[str, str], ...] = ()
    trailing: tuple[tuple[str, str], ...] = ()
    fields: tuple[tuple[str, str], ...] = field(init=False)

    def __post_init__(self):
        typed = tuple((_SCHEMA_TYPES[f.type], f.name) for f in dataclasses.fields(self.record))
        object.__setattr__(self, "fields", typed)

    def keyword_args(self, leading=None) -> tuple[tuple[str, str], ...]:
        """Every keyword argument, in schema order (``leading`` replaces the family's own: the Triton ops take
        ND-Adam's vector axes where the C++ op takes row lengths)."""
        return (self.leading if leading is None else leading) + self.fields + self.trailing + STEP_ARGS

    def schema(self, op: str | None = None, leading=None) -> str:
        """The op schema, as torch prints it: ``<op>(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] ..., *,
        float lr, ...) -> ()``. The alias letters mark the lists the op writes."""
        lists = ", ".join(f"Tensor({chr(ord('b') + i)}!)[] {n}" for i, n in enumerate(self.lists))
        kw = ", ".join(f"{'Tensor(z!)?' if n == 'swats_partials' else t} {n}" for t, n in self.keyword_args(leading))
        return f"{op or self.name + '_'}(Tensor(a!)[] params, Tensor[] grads, {lists}, *, {kw}) -> ()"

    def kwargs(self, hp) -> dict:
        """The record's fields as the op's keyword arguments. A 0-dim tensor lr travels as ``lr_tensor`` (read
        where the kernels run, never on the host), with ``lr`` unused."""
        kw = {n: getattr(hp, n) for _, n in self.fields}
        lr = kw["lr"]
        if isinstance(lr, torch.Tensor):
            kw["lr"], kw["lr_tensor"] = 0.0, lr
        else:
            kw["lr"], kw["lr_tensor"] = float(lr), None
        return kw

    def record_of(self, kw: dict):
        """The record back from the op's keyword arguments (the Triton ops' real implementation)."""
        lr = kw["lr_tensor"] if kw["lr_tensor"] is not None else kw["lr"]
        return self.record(**{n: (lr if n == "lr" else kw[n]) for _, n in self.fields})


# Every family's trailing lists and first trailing keyword: the Kahan compensation buffers of 16-bit params
# (empty unless the record's rounding is hyper.ROUND_KAHAN) and each tensor's stochastic-rounding seed (empty
# unless it is hyper.ROUND_STOCHASTIC; int64, the seed's 64 bits). SGD also takes step counts (empty unless
# stochastic rounding needs the step as a counter of its random bits).
_KAHAN = ("kahan_comps",)
_SEEDS = (("int[]", "seeds"),)

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sgd", H.SGD, ("momentum_buffers", "steps") + _KAHAN, leading=(("int[]", "firsts"),), trailing=_SEEDS),
    Family("adaptive", H.Adaptive,
           ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "steps", "swats_momentum_buffers") + _KAHAN,
           trailing=_SEEDS + (("Tensor?", "swats_phase"), ("Tensor?", "swats_sgd_lr"), ("Tensor?", "swats_partials"),
                              ("bool", "swats_nesterov"))),
    Family("mas", H.MAS, ("exp_avgs", "exp_avg_sqs", "momentum_buffers", "steps") + _KAHAN, trailing=_SEEDS),
    Family("ndadam", H.NDAdam, ("exp_avgs", "exp_avg_sqs", "steps") + _KAHAN, leading=(("int[]", "row_lens"),),
           trailing=_SEEDS),
    Family("rms", H.RMS, ("square_avgs", "grad_avgs", "momentum_buffers", "steps") + _KAHAN, trailing=_SEEDS),
)}


def swats_kwargs(swats) -> dict:
    """The adaptive family's SWATS arguments from a ``hyper.SwatsArgs`` (None: SWATS is off)."""
    if swats is None:
        return dict(swats_phase=None, swats_sgd_lr=None, swats_partials=None, swats_nesterov=False)
    return dict(swats_phase=swats.phase, swats_sgd_lr=swats.sgd_lr, swats_partials=swats.partials,
                swats_nesterov=bool(swats.nesterov))
