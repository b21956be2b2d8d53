"""The one table of optimizer cases that every backend's tests consume, with the harness that runs them.

A ``Case`` is an optimizer class and its keyword arguments, plus what a case may need beyond them: a param-groups
builder (``groups``: a 0-dim tensor lr, ND-Adam's ``vec_axes``, Hybrid's rules), a per-step hook (``hook``: the
GradScaler protocol), its own shapes, the backends it must not run on (``skip``, with the reason in a comment) and
the suites it joins (``suites``). ``CASES`` lists them all; ``params(suite, backend)`` expands a suite into pytest
params for one backend (``reference``, ``cpu``, ``triton``, ``cuda``, ``cuda_sim``), optionally crossed with dtypes
or backends, and ``Profile`` runs a case on a backend and compares it with the reference the way that backend's
tests always have (sizes, steps and tolerances per backend, below).

How to add cases:

- One case: one line in ``CASES``, e.g. ``Case(fh.Adam, dict(amsgrad=True, weight_decay=0.1))``. It then runs in
  the float32 backend-vs-reference matrix (``fp32``, the default suite) on every backend. To join other suites,
  name them all: ``Case(fh.Adam, dict(...), (F, D))`` is the float32 and the dtype matrices. A case that serves
  only a structural test names only that test's suite. ``skip=("triton",)`` keeps it out of a backend's matrices
  (say why in a comment at the line). Groups, hooks, shapes: see the ``Case`` fields and the examples below.
- A keyword on many cases: derive them after the table, e.g. for every rule that takes it::

      CASES += [c.but(decoupled_weight_decay=True) for c in select(FP32) if c.cls in (fh.Adam, fh.SGD, ...)]

  ``Case.but(**kw)`` is the case with ``kw`` merged into its keywords, in the same matrix suites (``fp32``,
  ``dtypes``) and none of its structural ones (pass ``suites=`` to choose). ``select(suite, backend)`` lists a
  suite's cases. Ids are ``Class-key=value-...`` (plus ``-name``), the same on every backend, so a derived case
  must differ from the others in some keyword.

The suites (the test that runs each, and on which backends):

- ``fp32``: float32, every backend against the reference (test_cpu_backend, test_triton_backend,
  test_cuda_backend, test_cuda_sim; cuda_sim also bitwise against cpu).
- ``dtypes``: float64, bfloat16, float16 on every backend against the reference.
- ``table``: the cpu and cuda_sim table ops against their list ops, bitwise.
- ``rules``: one case per public rule: the torch.optim contract (test_api) and robustness (test_robustness).
- ``torch``: rules with a torch.optim counterpart, against torch.optim's trajectory (test_stock_parity).
- ``complex``: complex params against torch.optim (test_stock_parity).
- ``compile`` (test_compile, cpu), ``triton_compile`` and ``reads`` (test_triton_compile): torch.compile.
- structural probes, each the cases one test needs: ``many`` / ``big`` / ``threads`` / ``grad_read`` (cpu),
  ``order`` / ``plans`` (cuda_sim), ``repeat`` / ``launches`` / ``spread`` (triton), ``split`` / ``graph`` (cuda),
  ``fast_path`` (test_triton_fast_path), ``noncontig`` (robustness).

Also here: the random problems shared by the trajectory tests (``make_params``, ``feed_grads``,
``quadratic_grads``, ``max_rel_err``, ``roundtrip``), formerly tests/util.py.
"""
from __future__ import annotations

import dataclasses
import io
import math
from typing import Callable, Optional

import pytest
import torch

import fused_hybrid as fh

# ------------------------------------------------------------------------------------------------------------------
# Random problems for the trajectory tests (against torch.optim, the papers' equations, checkpoints)

SHAPES = [(1,), (3,), (17,), (4097,), (33, 65), (8, 3, 3, 3)]


def make_params(shapes=SHAPES, dtype=torch.float32, seed=0, copies=2):
    """``copies`` identical lists of leaf parameters with random values."""
    gen = torch.Generator().manual_seed(seed)
    base = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    return [[b.clone().requires_grad_() for b in base] for _ in range(copies)]


def feed_grads(param_lists, step: int, seed=0, scale=1.0):
    """Give every list the same random gradients (a fresh draw per step, independent of the params)."""
    gen = torch.Generator().manual_seed(seed * 100003 + step)
    grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale for p in param_lists[0]]
    for params in param_lists:
        for p, g in zip(params, grads):
            p.grad = g.to(p.dtype).clone()


def quadratic_grads(param_lists, step: int, seed=0, noise=0.1):
    """Gradients of a noisy diagonal quadratic 0.5*sum(a*w^2) evaluated at each list's own params, so the
    trajectories (and any divergence between them) feed back into the gradients."""
    gen = torch.Generator().manual_seed(seed * 100003 + step)
    curv = [torch.rand(p.shape, generator=torch.Generator().manual_seed(seed + i), dtype=torch.float64) * 2 + 0.1
            for i, p in enumerate(param_lists[0])]
    noises = [torch.randn(p.shape, generator=gen, dtype=torch.float64) * noise for p in param_lists[0]]
    for params in param_lists:
        for p, a, n in zip(params, curv, noises):
            p.grad = (a * p.detach().double() + n).to(p.dtype)


def roundtrip(obj, weights_only=False):
    """``obj`` through torch.save / torch.load in memory (a checkpoint file's round trip)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=weights_only)


def max_rel_err(xs, ys):
    """max over tensors of ||x - y||_inf / max(||y||_inf, 1e-12), in float64."""
    err = 0.0
    for x, y in zip(xs, ys):
        x, y = x.detach().double(), y.detach().double()
        if y.numel() == 0:
            continue
        err = max(err, float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)))
    return err


# ------------------------------------------------------------------------------------------------------------------
# Groups builders and per-step hooks a case may carry. A builder is (params, device) -> param groups; a hook is
# a factory, device -> hook(opt, k) for one run (k counts steps from 0), so that it may keep per-run state.


def tensor_lr(ps, device):
    """One group whose lr is a 0-dim tensor on ``device`` (read by the kernels, never the host)."""
    return [{"params": ps, "lr": torch.tensor(1e-2, device=device)}]


def vec_axes_1(ps, device):
    """ND-Adam's vectors along a middle dim (inner stride > 1)."""
    return [{"params": ps, "vec_axes": [1]}]


def hybrid_groups(*groups):
    """Hybrid's groups, each with its rule, over consecutive slices of the params."""
    def build(ps, device):
        n = len(ps)
        cut = [0] + [round(n * (i + 1) / len(groups)) for i in range(len(groups))]
        return [dict(g, params=ps[cut[i]:cut[i + 1]]) for i, g in enumerate(groups)]
    return build


def scaler(scale=4.0, tensor_lr=True):
    """A hook that plays GradScaler: grads scaled by ``scale`` with ``grad_scale = scale`` to unscale them, and
    step 1 marked found_inf, a step that must change nothing, step counts included (checked at step 2 against a
    snapshot taken before it). With ``tensor_lr`` (the case's groups must give a 0-dim tensor lr) the lr changes in
    place every step and found_inf is a 1-element tensor; without, lr is a float and found_inf 0-dim."""
    def factory(device):
        snap = {}

        def hook(opt, k):
            ps = [p for g in opt.param_groups for p in g["params"]]
            if tensor_lr:
                opt.param_groups[0]["lr"].fill_(1e-2 * (k + 1))
            opt.grad_scale = torch.tensor(scale, device=device)
            for p in ps:
                p.grad.mul_(scale)
            inf = 1.0 if k == 1 else 0.0
            opt.found_inf = torch.tensor([inf], device=device) if tensor_lr else torch.tensor(inf, device=device)
            if k == 1:
                snap["params"] = [p.detach().clone() for p in ps]
                snap["steps"] = [opt.state[p]["step"].clone() for p in ps if "step" in opt.state[p]]
            if k == 2:  # the skipped step 1 left everything as it was
                for p, s in zip(ps, snap["params"]):
                    assert torch.equal(p.detach(), s), "a found_inf step changed a parameter"
                steps = [opt.state[p]["step"] for p in ps if "step" in opt.state[p]]
                assert len(steps) == len(snap["steps"])
                for s, t in zip(steps, snap["steps"]):
                    assert torch.equal(s, t), "a found_inf step advanced a step count"
        return hook
    factory.__name__ = f"scaler{'-tensor_lr' if tensor_lr else ''}"
    return factory


SCALER = scaler(4.0, tensor_lr=True)
SCALER_FLOAT_LR = scaler(1024.0, tensor_lr=False)


# ------------------------------------------------------------------------------------------------------------------
# The table

FP32, DTYPES, TABLE, RULES, TORCH = "fp32", "dtypes", "table", "rules", "torch"
MATRIX = (FP32, DTYPES)  # the suites ``Case.skip`` applies to; the others are one backend's own choice of cases


@dataclasses.dataclass(frozen=True)
class Case:
    cls: type
    kw: dict = dataclasses.field(default_factory=dict)
    suites: tuple = (FP32,)
    groups: Optional[Callable] = None  # (params, device) -> param groups
    hook: Optional[Callable] = None  # device -> hook(opt, k), called before each step
    shapes: Optional[tuple] = None  # this case's own shapes on every backend, instead of the backend's
    skip: tuple = ()  # backends whose fp32/dtypes matrix this case is not in (the reason: a comment at the case)
    name: str = ""  # an id suffix, for cases that differ in groups or hook only

    def but(self, suites=None, **kw):
        """This case with ``kw`` merged into its keywords, in ``suites`` (by default: the matrix suites it is in)."""
        if suites is None:
            suites = tuple(s for s in self.suites if s in MATRIX) or (FP32,)
        return dataclasses.replace(self, kw={**self.kw, **kw}, suites=suites)

    @property
    def id(self):
        parts = [self.cls.__name__] + [f"{k}={_fmt(v)}" for k, v in self.kw.items()]
        return "-".join(parts + ([self.name] if self.name else []))

    def kwargs(self, device):
        """The keywords, a tensor lr (or any tensor) copied onto ``device`` for each run."""
        return {k: v.clone().to(device) if isinstance(v, torch.Tensor) else v for k, v in self.kw.items()}

    def build(self, ps, backend, device):
        return self.cls(self.groups(ps, device) if self.groups else ps, backend=backend, **self.kwargs(device))

    @property
    def family(self):
        """The backend family that runs the case's rule ("adaptive", "sgd", "mas", "ndadam", "rms")."""
        from fused_hybrid import rules
        return rules.RULES[self.rule].family

    @property
    def rule(self):
        """The rule name of the case's class ("adam", "sgd", ...), as its optimizer's defaults name it."""
        return self.cls([torch.zeros(1, requires_grad=True)], **self.kwargs("cpu")).defaults["rule"]


def _fmt(v):
    return f"tensor({float(v):g})" if isinstance(v, torch.Tensor) else str(v)


# torch.optim's class for each rule that has one (the "torch" suite).
TORCH_OF = {fh.Adam: torch.optim.Adam, fh.AdamW: torch.optim.AdamW, fh.SGD: torch.optim.SGD,
            fh.RMSprop: torch.optim.RMSprop, fh.Adagrad: torch.optim.Adagrad}

# Short names for the suites, so that rows stay one line.
F, D, T, R, P = FP32, DTYPES, TABLE, RULES, TORCH
MANY, BIG, THREADS, GRAD_READ = "many", "big", "threads", "grad_read"  # cpu
ORDER, PLANS = "order", "plans"  # cuda_sim
REPEAT, LAUNCHES, SPREAD = "repeat", "launches", "spread"  # triton
SPLIT = "split"  # cuda: more tensors than one launch's argument table
GRAPH, NONCONTIG = "graph", "noncontig"  # cuda graphs; robustness's non-contiguous grads
COMPILE = "compile"  # torch.compile on cpu (test_compile)
TCOMPILE, READS, FAST = "triton_compile", "reads", "fast_path"  # torch.compile on triton; triton's fast path
COMPLEX = "complex"  # complex params against torch.optim (test_stock_parity)
# Cases the cpu backend's fp32 matrix brought to the table that only repeat, on Triton's interpreter (slow on CPU:
# ~0.6 s a case), an option set another case there already covers (named in the comment): not in triton's
# matrices, to keep CI's time.
NT = ("triton",)
# The backends whose float32 matrix compares elementwise (Profile.f32), not relative to each kind's scale.
ELEMENTWISE = ("triton", "cuda", "cuda_sim")

CASES = [
    # Adam, AdamW: the adaptive family
    Case(fh.Adam, {}, (F, D, P, R, MANY, LAUNCHES, SPREAD, SPLIT)),
    Case(fh.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=0.1, maximize=True)),
    Case(fh.Adam, dict(amsgrad=True, weight_decay=0.1), (F, FAST), skip=NT),  # triton: the case above
    Case(fh.Adam, dict(maximize=True, weight_decay=0.05, lr=torch.tensor(3e-3)), (F, MANY), skip=NT),  # + scaler
    Case(fh.Adam, dict(betas=(0.3, 0.9), eps=1e-3)),  # 1-b1 >= 0.5: torch's other lerp branch
    Case(fh.Adam, dict(amsgrad=True), (D, T, BIG, THREADS, GRAD_READ, ORDER, PLANS, REPEAT, GRAPH, NONCONTIG, P)),
    Case(fh.Adam, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6), (P,)),
    Case(fh.Adam, dict(weight_decay=0.1), (P,)),
    Case(fh.Adam, dict(amsgrad=True, weight_decay=0.05, maximize=True), (P,)),
    Case(fh.Adam, dict(maximize=True), (P,)),
    Case(fh.Adam, dict(lr=torch.tensor(3e-3)), (P,)),
    Case(fh.Adam, dict(weight_decay=0.01), (D,)),
    Case(fh.Adam, dict(amsgrad=True, lr=1e-2), (COMPILE, TCOMPILE, READS)),
    Case(fh.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=0.1), (COMPLEX,)),
    Case(fh.AdamW, dict(lr=1e-2, weight_decay=0.1), (F, P)),
    Case(fh.AdamW, dict(amsgrad=True, maximize=True)),
    Case(fh.AdamW, {}, (P, R)),
    Case(fh.AdamW, dict(weight_decay=0.3, amsgrad=True), (P,)),
    Case(fh.AdamW, dict(lr=1e-2, maximize=True), (P,)),
    Case(fh.AdamW, dict(amsgrad=True), (D,)),
    Case(fh.AdamW, dict(lr=1e-2), (COMPLEX, COMPILE)),
    Case(fh.AdamW, dict(lr=1e-2, weight_decay=0.1, maximize=True), (TCOMPILE,)),
    # SGD
    Case(fh.SGD, dict(lr=0.1), (F, T, TCOMPILE)),
    Case(fh.SGD, dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)),
    Case(fh.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01), skip=NT),  # triton: the case above
    Case(fh.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    Case(fh.SGD, dict(lr=0.1, momentum=0.8, dampening=0.3), skip=NT),  # triton: the case two above
    Case(fh.SGD, dict(lr=0.1, momentum=0.9),
         (D, T, GRAD_READ, PLANS, LAUNCHES, SPREAD, SPLIT, GRAPH, NONCONTIG, COMPILE, READS, FAST)),
    Case(fh.SGD, dict(momentum=0.9), (R,)),
    Case(fh.SGD, dict(lr=0.1, momentum=0.9, nesterov=True), (THREADS,)),
    Case(fh.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), (COMPILE, TCOMPILE)),
    Case(fh.SGD, dict(lr=0.05), (P,)),
    Case(fh.SGD, dict(lr=0.05, momentum=0.9), (P,)),
    Case(fh.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3), (P,)),
    Case(fh.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), (P, COMPLEX)),
    Case(fh.SGD, dict(lr=0.05, momentum=0.5, maximize=True, weight_decay=0.02), (P,)),
    Case(fh.SGD, dict(lr=torch.tensor(0.02), momentum=0.9), (P,)),
    # RMSprop and Adagrad: the rms family. RMSprop's normalized steps g/(sqrt(sq) + eps) are ~10 at the first
    # steps, so a momentum buffer near a sign change holds the last-bit rounding of values ~10-30 (1.9e-6) in an
    # element of magnitude < 1: above the elementwise atol of the triton/cuda/cuda_sim matrix. The momentum cases
    # on those backends are ones where no buffer element of the random data cancels so; torch's configs in
    # test_conformance cover the rest (rtol 1e-5). The cpu backend's errors are relative to each kind's scale
    # (Profile.compare), which such an element does not move.
    Case(fh.RMSprop, {}, (F, P, R, COMPLEX)),
    Case(fh.RMSprop, dict(lr=1e-3, centered=True, maximize=True), (F, P)),
    Case(fh.RMSprop, dict(lr=1e-3, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.1), (F, P)),
    Case(fh.RMSprop, dict(momentum=0.9, weight_decay=0.01), (F, P), skip=ELEMENTWISE),  # cancels, above
    Case(fh.RMSprop, dict(centered=True, maximize=True, alpha=0.9), (F, MANY), skip=NT),  # triton: 2 above
    Case(fh.RMSprop, dict(centered=True, momentum=0.5, lr=torch.tensor(3e-3)), skip=ELEMENTWISE),  # cancels
    Case(fh.RMSprop, dict(centered=True, momentum=0.9), (D, T, COMPILE, TCOMPILE)),
    Case(fh.Adagrad, dict(lr_decay=0.1, initial_accumulator_value=0.2, weight_decay=0.01), (F, P)),
    Case(fh.Adagrad, {}, (F, D, P, R, COMPLEX)),
    Case(fh.Adagrad, dict(lr_decay=0.1, initial_accumulator_value=0.3, weight_decay=0.01, maximize=True), (F, P)),
    Case(fh.Adagrad, dict(lr_decay=0.01), (T, COMPILE, TCOMPILE)),
    # Padam
    Case(fh.Padam, {}, (F, D, R, MANY, THREADS, LAUNCHES, FAST)),
    Case(fh.Padam, dict(lr=1e-2), (COMPILE, TCOMPILE)),
    Case(fh.Padam, dict(partial=0.5, amsgrad=False, weight_decay=0.1)),
    Case(fh.Padam, dict(partial=0.25, amsgrad=False, weight_decay=0.01)),  # a square root (0.125: two)
    Case(fh.Padam, dict(partial=0.3, maximize=True)),  # the general exp2/log2 power
    Case(fh.Padam, dict(partial=0.5, maximize=True), (F, MANY), skip=NT),  # triton: the 0.5 and 0.3 cases above
    Case(fh.Padam, dict(partial=0.3), skip=NT),  # triton: the case two above
    # Adam-Clip, AdaBound
    Case(fh.AdamClip, dict(sgd_lr=0.1, lower=0.5, upper=2.0)),
    Case(fh.AdamClip, dict(sgd_lr=0.1, lower=1.0, upper=math.inf, amsgrad=True)),
    Case(fh.AdamClip, dict(sgd_lr=0.01, lower=0.0, upper=1.0, amsgrad=True, weight_decay=0.01)),
    Case(fh.AdamClip, dict(sgd_lr=0.01, lower=1.0, upper=math.inf), skip=NT),  # triton: the case two above
    Case(fh.AdamClip, dict(sgd_lr=0.1), (R,)),
    Case(fh.AdamClip, dict(lr=1e-2, sgd_lr=0.1), (COMPILE,)),
    Case(fh.AdaBound, {}, (F, D, R)),
    Case(fh.AdaBound, dict(lr=1e-2), (COMPILE, TCOMPILE)),
    Case(fh.AdaBound, dict(amsbound=True, gamma=0.0, weight_decay=0.01)),  # gamma*k = 0: upper bound inf
    Case(fh.AdaBound, dict(amsbound=True, weight_decay=0.01, gamma=0.1, final_lr=0.01)),
    Case(fh.AdaBound, dict(gamma=0.0), skip=NT),  # triton: the case two above
    # SWATS
    Case(fh.SWATS, dict(lr=1e-2),
         (F, D, MANY, BIG, THREADS, GRAD_READ, T, ORDER, PLANS, REPEAT, SPLIT, GRAPH, FAST)),
    Case(fh.SWATS, dict(lr=1e-2, amsgrad=True, weight_decay=0.1, nesterov=True, maximize=True)),
    Case(fh.SWATS, dict(weight_decay=0.01, nesterov=True, amsgrad=True), skip=NT),  # triton: the case above
    Case(fh.SWATS, dict(granularity="tensor", maximize=True), (F, MANY)),
    Case(fh.SWATS, {}, (LAUNCHES, NONCONTIG)),
    Case(fh.SWATS, dict(switch_rtol=0.05), (R,)),
    Case(fh.SWATS, dict(lr=1e-2, switch_rtol=0.05), (COMPILE,)),
    # MAS
    Case(fh.MAS, {}, (F, D, GRAD_READ, PLANS, LAUNCHES, FAST)),
    Case(fh.MAS, dict(momentum=0.9, nesterov=True, weight_decay=0.1, adam_w=0.7, sgd_w=0.3)),
    Case(fh.MAS, dict(momentum=0.9, weight_decay=0.01, adam_w=0.7, sgd_w=0.3), (F, MANY), skip=NT),  # above
    Case(fh.MAS, dict(momentum=0.9, nesterov=True, variant="correction")),
    Case(fh.MAS, dict(variant="correction", momentum=0.5)),
    Case(fh.MAS, dict(variant="correction", maximize=True), (F, MANY)),
    Case(fh.MAS, dict(variant="correction"), (THREADS, ORDER, LAUNCHES)),
    Case(fh.MAS, dict(variant="normalized", maximize=True)),
    Case(fh.MAS, dict(variant="normalized", momentum=0.5, dampening=0.2)),
    Case(fh.MAS, dict(variant="normalized", momentum=0.9), (D,)),
    Case(fh.MAS, dict(variant="vector", momentum=0.9, dampening=0.1, weight_decay=0.01)),
    Case(fh.MAS, dict(variant="vector", weight_decay=0.01), (F, MANY), skip=NT),  # triton: the case above
    Case(fh.MAS, dict(variant="vector", momentum=0.9, nesterov=True, maximize=True)),
    Case(fh.MAS, dict(variant="vector", momentum=0.9), (T, THREADS, ORDER, REPEAT, R, FAST)),
    Case(fh.MAS, dict(variant="vector"), (BIG, PLANS, SPLIT, GRAPH, NONCONTIG)),
    Case(fh.MAS, dict(momentum=0.9), (R,)),
    Case(fh.MAS, dict(lr=1e-2, momentum=0.9), (COMPILE, TCOMPILE)),
    Case(fh.MAS, dict(lr=1e-2, variant="vector"), (COMPILE,)),
    Case(fh.MAS, dict(lr=1e-2, variant="vector", momentum=0.9), (TCOMPILE, READS)),
    # ND-Adam (on each backend's N-d shapes; its 1-D tensors are plain Adam)
    Case(fh.NDAdam, {},
         (F, D, MANY, BIG, THREADS, GRAD_READ, T, ORDER, PLANS, REPEAT, LAUNCHES, GRAPH, NONCONTIG, R, FAST)),
    Case(fh.NDAdam, dict(lr=1e-2), (COMPILE, TCOMPILE, READS)),
    Case(fh.NDAdam, dict(weight_decay=0.1, maximize=True, lr=1e-2)),
    Case(fh.NDAdam, dict(vec_axes=[0, 1]), (F, MANY, T)),  # not trailing for 3-D/4-D params: a permuted copy
    Case(fh.NDAdam, {}, groups=vec_axes_1, shapes=((3, 4, 5), (2, 6, 7)), name="vec_axes=[1]"),
    # Hybrid: groups of four rules in one optimizer
    Case(fh.Hybrid, {}, groups=hybrid_groups(dict(rule="adam"), dict(rule="sgd", lr=0.1, momentum=0.9),
                                            dict(rule="padam", lr=0.01), dict(rule="ndadam")), name="groups"),
    # GradScaler's protocol, for one rule of each family (SCALER): a 0-dim tensor lr changed in place, grad_scale,
    # and a found_inf step that changes nothing, steps included; SCALER_FLOAT_LR: a float lr, grad_scale 1024, a
    # 0-dim found_inf.
    Case(fh.Adam, dict(amsgrad=True), groups=tensor_lr, hook=SCALER, name="scaler"),
    Case(fh.SGD, dict(momentum=0.9), groups=tensor_lr, hook=SCALER, name="scaler"),
    Case(fh.SWATS, {}, groups=tensor_lr, hook=SCALER, name="scaler"),
    Case(fh.MAS, dict(variant="vector", momentum=0.9), groups=tensor_lr, hook=SCALER, name="scaler"),
    Case(fh.NDAdam, {}, groups=tensor_lr, hook=SCALER, name="scaler"),
    Case(fh.RMSprop, dict(alpha=0.9, centered=True, momentum=0.5), groups=tensor_lr, hook=SCALER, name="scaler"),
    Case(fh.Adagrad, {}, groups=tensor_lr, hook=SCALER, name="scaler"),
    # The float-lr ones, the cpu backend's, not on triton: the cases above cover grad_scale and found_inf there.
    Case(fh.Adam, {}, hook=SCALER_FLOAT_LR, name="scaler", skip=NT),
    Case(fh.SGD, dict(lr=0.01, momentum=0.9), hook=SCALER_FLOAT_LR, name="scaler", skip=NT),
    Case(fh.SWATS, {}, hook=SCALER_FLOAT_LR, name="scaler-float_lr", skip=NT),
    Case(fh.MAS, dict(variant="correction"), hook=SCALER_FLOAT_LR, name="scaler", skip=NT),
    Case(fh.NDAdam, {}, hook=SCALER_FLOAT_LR, name="scaler-float_lr", skip=NT),
    Case(fh.AdaBound, {}, hook=SCALER_FLOAT_LR, name="scaler", skip=NT),
]


# Decoupled weight decay (issue 15), on every rule that takes it: the first float32 case of each class that has a
# weight decay, with decoupled_weight_decay=True (in that case's matrix suites, on every backend it runs on).
_DECOUPLED_OF = (fh.Adam, fh.SGD, fh.RMSprop, fh.Adagrad, fh.Padam, fh.AdamClip, fh.AdaBound, fh.SWATS, fh.MAS)
CASES += [next(c for c in CASES if c.cls is cls and FP32 in c.suites and c.kw.get("weight_decay"))
          .but(decoupled_weight_decay=True) for cls in _DECOUPLED_OF]


def select(suite, backend=None):
    """The cases of ``suite`` (that run on ``backend``, when given), in table order."""
    return [c for c in CASES if suite in c.suites and (suite not in MATRIX or backend not in c.skip)]


def params(suite, backend=None, dtypes=None, backends=None):
    """pytest params for ``suite`` on ``backend``: ``case``, or ``(case, dtype)`` with ``dtypes``, or
    ``(case, backend)`` with ``backends`` (each backend's params carry its ``marks``: see ``BACKEND_MARKS``)."""
    out = []
    for backend_ in backends or [backend]:
        for c in select(suite, backend_):
            if backends:
                out.append(pytest.param(c, backend_, id=f"{c.id}-{backend_}", marks=BACKEND_MARKS.get(backend_, ())))
            elif dtypes:
                out += [pytest.param(c, dt, id=f"{c.id}-{str(dt).split('.')[-1]}") for dt in dtypes]
            else:
                out.append(pytest.param(c, id=c.id))
    return out


def _backend_marks():
    from fused_hybrid import _ext
    cpu = fh.backends()["cpu"]
    return {"cpu": [pytest.mark.skipif(not cpu.startswith("available"), reason=f"cpu backend {cpu}")],
            "cuda_sim": [pytest.mark.skipif(not _ext.has_sim(), reason=f"cuda_sim unavailable: {_ext.SIM_LOAD_ERROR}")]}


BACKEND_MARKS = _backend_marks()


# ------------------------------------------------------------------------------------------------------------------
# Running a case on a backend, comparing with the reference

def random_params(shapes, dtype, device, seed=0):
    """Leaf params of the given shapes (ints are 1-D sizes), drawn in float64 from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*((n,) if isinstance(n, int) else n), generator=g, dtype=torch.float64)
            .to(device=device, dtype=dtype).requires_grad_() for n in shapes]


@dataclasses.dataclass(frozen=True)
class Profile:
    """How one backend's tests run the table: on which device and shapes, how many steps, and the tolerances.

    ``f32`` is the float32 elementwise tolerance, the one thing that differs between the GPU backends (FMA
    contraction); ``scaled`` is the cpu backend's comparison: errors relative to the largest |value| of each kind
    (params, or one state key), 1e-6 per step in float32. Per-element relative errors would flag rounding where
    a value is a cancellation (g + wd*w near zero: torch's add with alpha uses an FMA, the rules do not)."""
    backend: str
    device: str
    sizes: tuple  # every case but ND-Adam's (and a case's own shapes)
    nd_shapes: tuple  # ND-Adam's
    steps: int
    f32: dict = dataclasses.field(default_factory=lambda: dict(rtol=1e-6, atol=1e-6))
    dtype_sizes: tuple = ()  # the "dtypes" suite's (ND-Adam: nd_shapes)
    dtype_steps: int = 2
    scaled: bool = False

    def shapes(self, case, dtype=torch.float32):
        if case.shapes is not None:
            return case.shapes
        if case.cls is fh.NDAdam:
            return self.nd_shapes
        return self.sizes if dtype == torch.float32 else self.dtype_sizes

    def params(self, shapes, dtype=torch.float32, seed=0):
        return random_params(shapes, dtype, self.device, seed)

    def run(self, case, backend=None, dtype=torch.float32, sizes=None, steps=None, groups=None, **kw):
        """``steps`` steps of ``case`` on fresh params, with seeded random gradients (never zeros); returns
        (params, optimizer). ``kw`` overrides the case's keywords, ``groups`` its groups builder."""
        if kw or groups:
            case = dataclasses.replace(case, kw={**case.kw, **kw}, groups=groups or case.groups)
        if steps is None:
            steps = self.steps if dtype == torch.float32 else self.dtype_steps
        ps = self.params(self.shapes(case, dtype) if sizes is None else sizes, dtype)
        opt = case.build(ps, backend or self.backend, self.device)
        hook = case.hook(self.device) if case.hook else None
        g = torch.Generator().manual_seed(1234)
        for k in range(steps):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(device=self.device, dtype=dtype)
            if hook:
                hook(opt, k)
            opt.step()
        return ps, opt

    def tol(self, dtype):
        return {torch.float32: self.f32, torch.float64: dict(rtol=1e-12, atol=1e-12),
                torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}[dtype]

    def check(self, case, dtype=torch.float32, **kw):
        """Run ``case`` on the reference and on this backend, compare; returns the backend's run."""
        ref = self.run(case, "reference", dtype, **kw)
        out = self.run(case, None, dtype, **kw)
        self.compare(ref, out, dtype, steps=kw.get("steps"))
        return out

    def compare(self, a, b, dtype, steps=None):
        """``b`` against the reference run ``a``: params within the dtype's tolerance; state: the same keys, the
        same values, steps exactly."""
        if self.scaled:
            if steps is None:
                steps = self.steps if dtype == torch.float32 else self.dtype_steps
            rtol = {torch.float32: 1e-6 * steps, torch.float64: 1e-12, torch.bfloat16: 2e-2,
                    torch.float16: 5e-3}[dtype]
            return compare_scaled(b, a, rtol)
        pa, oa = a
        pb, ob = b
        for x, y in zip(pa, pb):
            torch.testing.assert_close(y.detach().float().cpu(), x.detach().float().cpu(), **self.tol(dtype))
        for x, y in zip(pa, pb):
            sa, sb = oa.state[x], ob.state[y]
            assert set(sa) == set(sb)
            for key in sa:
                if key == "step":
                    assert float(sa[key]) == float(sb[key])
                elif isinstance(sa[key], torch.Tensor):
                    tol = self.tol(dtype if dtype == torch.float64 else torch.float32)
                    if dtype in (torch.bfloat16, torch.float16):
                        tol = dict(rtol=2e-2, atol=2e-2)
                    torch.testing.assert_close(sb[key].cpu(), sa[key].cpu(), **tol)


def _scale(ts):
    """The magnitude errors are measured against: the largest |value| over all tensors of one kind."""
    return max((float(t.detach().double().abs().max()) for t in ts if t.numel()), default=0.0) or 1.0


def _err(x, y, scale):
    x, y = x.detach().double(), y.detach().double()
    if y.numel() == 0:
        return 0.0
    assert not y.isnan().any()
    return float((x - y).abs().max()) / scale


def compare_scaled(run, ref, rtol):
    """The cpu backend's comparison (Profile.scaled): ``run`` = (params, opt) against the reference's ``ref``."""
    (pc, opt_c), (pr, opt_r) = run, ref
    assert len(pc) == len(pr)
    scale = _scale(pr)
    for i, (a, b) in enumerate(zip(pc, pr)):
        assert a.dtype == b.dtype and a.shape == b.shape
        err = _err(a, b, scale)
        assert err <= rtol, f"param {i} {tuple(a.shape)}: relative error {err:.3g} > {rtol:.3g}"
    keys = {k for b in pr for k, v in opt_r.state[b].items() if isinstance(v, torch.Tensor)}
    for k in keys:
        scale = _scale([opt_r.state[b][k] for b in pr if k in opt_r.state[b]])
        for i, (a, b) in enumerate(zip(pc, pr)):
            sa, sb = opt_c.state[a], opt_r.state[b]
            assert sa.keys() == sb.keys(), (sa.keys(), sb.keys())
            if k in sb:
                assert sa[k].dtype == sb[k].dtype, k
                err = _err(sa[k], sb[k], scale)
                assert err <= rtol, f"state {k!r} of param {i} {tuple(a.shape)}: relative error {err:.3g} > {rtol:.3g}"


# The backends' profiles. cpu: mixed shapes, empty ones included; 4 steps. triton: small tensors (its tests shrink
# the chunks under the interpreter: small_triton_chunks) -- 1, 3, 17: tails only; 4097: two full chunks and a
# 1-element tail; 0: an empty tensor (no chunk, but its step advances); 9001: the "larger" one (its partial chunk
# is not the first). cuda: 4097: one vector part and a 1-element tail; 70001: two chunks of 65536. cuda_sim: 9001:
# with the base chunk of 2048 its tests set, 5 chunks (the last one short); ND shapes (6, 2048): long rows, a block
# each (block_sum), the others warp rows (warp_sum); (5, 0): 5 empty vectors (the CUDA op refused their 5-element
# v until cuda_sim ran it).
MIXED = ((1,), (3,), (17,), (4097,), (0,), (33, 65), (8, 3, 3, 3), (5, 0), (2, 1))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the triton backend runs its tests

PROFILES = {
    "cpu": Profile("cpu", "cpu", MIXED, MIXED, steps=4, dtype_sizes=MIXED, dtype_steps=3, scaled=True),
    "triton": Profile("triton", DEVICE, (1, 3, 17, 4097, 0, 9001),
                      ((5,), (7, 3), (4, 3, 2, 2), (3, 1500), (0, 4), (1,), (2, 5, 3)), steps=3,
                      dtype_sizes=(1, 17, 4097, 0)),
    "cuda": Profile("cuda", "cuda", (1, 3, 17, 4097, 0, 70001),
                    ((5,), (7, 3), (4, 3, 2, 2), (3, 1500), (2, 5000), (0, 4), (5, 0), (1,), (2, 5, 3)), steps=3,
                    f32=dict(rtol=1e-5, atol=1e-6), dtype_sizes=(1, 17, 4097, 0, 70001)),
    "cuda_sim": Profile("cuda_sim", "cpu", (1, 3, 17, 4097, 0, 9001),
                        ((5,), (7, 3), (4, 3, 2, 2), (3, 1500), (6, 2048), (0, 4), (5, 0), (1,)), steps=3,
                        dtype_sizes=(1, 17, 4097, 0)),
}


def small_triton_chunks(monkeypatch, block, chunk):
    """Under the interpreter, shrink the Triton backend's block and chunk so small tensors span several chunks
    (on a GPU the real geometry is kept)."""
    from fused_hybrid.backends import triton_launch as tl_
    if not torch.cuda.is_available():
        monkeypatch.setattr(tl_, "INTERP_BLOCK", block)
        monkeypatch.setattr(tl_, "INTERP_CHUNK", chunk)
