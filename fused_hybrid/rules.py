"""The rules a parameter group can follow, each declared once: its defaults, validation, state, per-step record
and the extra arguments its backend family takes.

Every optimizer class in fused_hybrid is one ``HybridOptimizer`` whose groups carry a ``rule`` key, so any
group can follow any rule (the layer-wise split of seed 003, section IV.A, is just groups with different
rules). The arithmetic lives in the backends (one function per family: ``adaptive``, ``sgd``, ``mas``,
``ndadam``, called by keyword); a ``Rule`` says which family runs it, which state lists that family's function
takes (``State.arg``), and how a group becomes the family's hyperparameter record (``hyper``). The optimizer
reads these specs and knows no rule by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from . import hyper as H

# Keys every group has whatever its rule. foreach/fused/differentiable are accepted for torch.optim keyword
# compatibility; the backend decides how the step runs.
COMMON = dict(backend="auto", capturable=False, foreach=None, fused=None, differentiable=False,
              stochastic_rounding=False, kahan_summation=False, state_dtype=None)
# Keys set by the wrappers or by LR schedulers, allowed in any group.
EXTRA_KEYS = {"rule", "params", "initial_lr", "base_lr", "param_names"}

MAS_VARIANTS = H.MAS_VARIANTS

_ADAM_BETAS = (0.9, 0.999)


# --------------------------------------------------------------------------------------------------------------
# Validation helpers


def _num(group, key) -> float:
    v = group[key]
    return float(v) if isinstance(v, torch.Tensor) else v


# torch.optim's wording for the hyperparameters it shares with us, so code (and torch's own error-input tests)
# that matches torch's messages matches ours.
_WHAT = {"lr": "learning rate", "eps": "epsilon value", "weight_decay": "weight_decay value",
         "momentum": "momentum value", "alpha": "alpha value", "lr_decay": "lr_decay value",
         "initial_accumulator_value": "initial_accumulator_value value"}


def _check_nonneg(group, key):
    v = _num(group, key)
    if not (v >= 0.0):
        raise ValueError(f"Invalid {_WHAT.get(key, key)}: {v} ({key} must be >= 0)")


def _check_betas(group):
    betas = group["betas"]
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas} (need two values)")
    if isinstance(betas[0], torch.Tensor) != isinstance(betas[1], torch.Tensor):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, b in enumerate(betas):
        if isinstance(b, torch.Tensor):
            # The kernels take the betas as host scalars: a CPU tensor is read without a device sync, a device
            # tensor would be read on the host every step.
            if b.numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")
            if b.device.type != "cpu":
                raise ValueError(f"Invalid betas[{i}]: a tensor beta must be a CPU tensor (fused_hybrid reads the "
                                 f"betas on the host each step; a {b.device.type} tensor would sync the device)")
        b = float(b)
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b} (betas must be in [0, 1))")


def _check_momentum(group):
    _check_nonneg(group, "momentum")
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError("Invalid nesterov: Nesterov momentum requires a momentum and zero dampening")


def _check_common(group):
    lr = group["lr"]
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    _check_nonneg(group, "lr")
    if "eps" in group:
        _check_nonneg(group, "eps")
    _check_nonneg(group, "weight_decay")
    if "betas" in group:
        _check_betas(group)
    if group.get("differentiable"):
        raise ValueError("Invalid differentiable: True is not supported by fused_hybrid")
    _check_rounding(group)
    check_state_dtype(group.get("state_dtype"))


# What a group's ``state_dtype`` may be. bfloat16 has float32's exponent range, so the squared gradients of Adam's
# exp_avg_sq (down to ~1e-38 and beyond with subnormals) and Adagrad's growing sums stay representable; float16
# (smallest subnormal 6e-8, largest 65504) would flush g^2 of any |g| < 2.4e-4 to zero and overflow a sum, so it is
# refused rather than offered as a trap.
STATE_DTYPES = (None, torch.float32, torch.bfloat16)


def check_state_dtype(value) -> None:
    if value is not None and not isinstance(value, torch.dtype):
        raise TypeError(f"Invalid state_dtype: {value!r} (a torch.dtype or None: None / torch.float32 keep float32 "
                        f"state, torch.bfloat16 stores every moment buffer in bfloat16)")
    if value not in STATE_DTYPES:
        why = (" (float16's range cannot hold the second moments: g^2 underflows for |g| < 2.4e-4; use "
               "torch.bfloat16)" if value == torch.float16 else "")
        raise ValueError(f"Invalid state_dtype: {value}; choose None, torch.float32 or torch.bfloat16{why}")


def _check_rounding(group):
    for key in ("stochastic_rounding", "kahan_summation"):
        if not isinstance(group.get(key, False), bool):
            raise ValueError(f"Invalid {key}: {group[key]!r} (must be True or False)")
    if group.get("stochastic_rounding") and group.get("kahan_summation"):
        raise ValueError("Invalid stochastic_rounding/kahan_summation: choose one; both remedy the rounding of "
                         "bfloat16/float16 parameter stores (stochastic rounding makes each store unbiased, Kahan "
                         "summation carries its error in a compensation buffer), and a compensated store rounds to "
                         "nearest by construction")


def rounding_code(group: dict) -> int:
    """How the group stores its 16-bit params (hyper.ROUND_*)."""
    if group.get("stochastic_rounding"):
        return H.ROUND_STOCHASTIC
    if group.get("kahan_summation"):
        return H.ROUND_KAHAN
    return H.ROUND_NEAREST


# --------------------------------------------------------------------------------------------------------------
# State


LOW_PRECISION = (torch.bfloat16, torch.float16)


def state_dtype(p: torch.Tensor, group: dict | None = None) -> torch.dtype:
    """The dtype of ``p``'s moment buffers (every floating state entry but the step count and the rounding state):
    float32 for float32/16/bf16 parameters, float64 for float64 ones; complex parameters keep complex state of their
    own dtype, as in torch.optim (the kernels see its real view).

    A group's ``state_dtype=torch.bfloat16`` (issue 16) narrows the float32 state of bfloat16, float16 and float32
    params to bfloat16; the kernels still compute in float32 and round each stored value to nearest even. float64
    params keep float64 state (whoever steps float64 asked for precision; bfloat16 moments would throw it away) and
    complex ones their complex state (torch has no complex bfloat16), as stochastic_rounding leaves float32 params
    alone: the option does not apply to them."""
    if p.dtype in (torch.float64, torch.complex64, torch.complex128):
        return p.dtype
    if group is not None and group.get("state_dtype") == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def ndadam_axes(p: torch.Tensor, group: dict) -> tuple[int, ...]:
    """The dims spanned by one weight vector: all but dim 0 for >= 2-D parameters (rows of a Linear weight,
    output-channel filters of a Conv weight), none for 1-D ones (they get Adam). A group's vec_axes
    overrides for parameters with more than those dims."""
    if p.dim() < 2:
        return ()
    if group["vec_axes"] is not None:
        axes = tuple(group["vec_axes"])
        if max(axes) >= p.dim():
            raise ValueError(f"Invalid vec_axes: {axes} for a parameter of shape {tuple(p.shape)}")
        return axes
    return tuple(range(1, p.dim()))


def _always(group) -> bool:
    return True


@dataclass(frozen=True)
class State:
    """One optimizer-state entry of a rule. ``key`` is its name in ``optimizer.state[p]`` and in checkpoints
    (torch.optim's names); ``arg`` the keyword of the family's backend function that takes the bucket's list of it
    (None: the rule's own step arguments carry it); ``shape`` what it is shaped like: "param" (like the parameter,
    in the state dtype), "step" (a 0-dim float32 count, on the parameter's device: the kernels read it there) or
    "vectors" (ND-Adam: one value per weight vector); ``when`` whether a group has it (momentum != 0, amsgrad);
    ``fresh``: the rule's step is told which of these were just created (torch.optim.SGD's first step takes
    buf = g, where a zero buffer would damp it)."""
    key: str
    arg: str | None
    shape: str = "param"
    when: Callable[[dict], bool] = _always
    fresh: bool = False
    init: str | None = None  # the group hyperparameter a "param"-shaped entry starts at (else zeros)
    # Only for bfloat16 / float16 params (the rounding state: float32 / float64 params are stored exactly as the
    # rule computes them, so they get neither a seed nor a compensation buffer).
    low_precision_only: bool = False
    # ... or for params with bfloat16 state (stochastic rounding's seed and step: with stochastic_rounding=True a
    # group's bfloat16 moment buffers are stored stochastically rounded too, float32 params' included).
    or_bf16_state: bool = False

    def applies(self, p: torch.Tensor, group: dict) -> bool:
        if not self.when(group):
            return False
        return (not self.low_precision_only or p.dtype in LOW_PRECISION
                or (self.or_bf16_state and state_dtype(p, group) == torch.bfloat16))

    def new(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        if self.shape == "step":
            return torch.zeros((), dtype=torch.float32, device=p.device)
        if self.shape == "seed":
            return new_seed()
        if self.shape == "comp":
            # The compensation of a bfloat16 / float16 param is of its own dtype (it holds what a store of that
            # dtype lost), like the param: 2 bytes per element.
            return torch.zeros_like(p, memory_format=torch.contiguous_format)
        dt = state_dtype(p, group)
        if self.shape == "vectors":
            axes = ndadam_axes(p, group)
            return torch.zeros([1 if d in axes else s for d, s in enumerate(p.shape)], dtype=dt, device=p.device)
        # Like p: a DTensor param (FSDP2) gets DTensor state with its placements, as in torch.optim.
        if self.init is not None:
            return torch.full_like(p, float(group[self.init]), dtype=dt, memory_format=torch.contiguous_format)
        return torch.zeros_like(p, dtype=dt, memory_format=torch.contiguous_format)


def new_seed() -> torch.Tensor:
    """A 64-bit stochastic-rounding seed as a 0-dim int64 CPU tensor, drawn from torch's default CPU generator (so
    torch.manual_seed fixes it). Drawn once, when the param's state is created: step() draws nothing (its random
    bits are Philox4x32-10 of (seed, step, element index)), so steps are reproducible, resumable and capturable."""
    return torch.randint(-(2 ** 63), 2 ** 63 - 1, (), dtype=torch.int64)


def _stochastic(group) -> bool:
    return bool(group.get("stochastic_rounding"))


def _kahan(group) -> bool:
    return bool(group.get("kahan_summation"))


# The state of the 16-bit stores, which every rule has (Rule.__post_init__ appends it): a seed (CPU, never read
# on the device) for stochastic rounding, a compensation buffer (the kahan_comps list of every family) for Kahan.
SEED = State("rounding_seed", None, shape="seed", when=_stochastic, low_precision_only=True, or_bf16_state=True)
KAHAN_COMP = State("kahan_comp", "kahan_comps", shape="comp", when=_kahan, low_precision_only=True)
ROUNDING_STATE = (SEED, KAHAN_COMP)

STEP = State("step", "steps", shape="step")
EXP_AVG = State("exp_avg", "exp_avgs")
EXP_AVG_SQ = State("exp_avg_sq", "exp_avg_sqs")
MOMENTUM = State("momentum_buffer", "momentum_buffers", when=lambda g: g["momentum"] != 0)


def _vmax(flag: str) -> State:
    return State("max_exp_avg_sq", "max_exp_avg_sqs", when=lambda g: bool(g[flag]))


# --------------------------------------------------------------------------------------------------------------
# Rules


def _nothing(group) -> None:
    pass


def _no_args(opt, gi: int, group: dict, bucket) -> dict:
    return {}


@dataclass(frozen=True)
class Rule:
    """A rule's home: everything the optimizer needs to know about it.

    ``family`` names the backend function that runs it; ``defaults`` its hyperparameters (torch.optim's for the
    stock rules, ALGORITHMS.md's for the hybrids); ``state`` its state entries in order; ``check`` its own
    validation (the common keys are checked for every rule); ``record`` turns a group into the family's
    hyperparameter record; ``step_args`` gives the family function's other keyword arguments for one bucket and
    ``after`` runs once that call returned (SWATS queues its switch test there). ``sharded_ok``/``complex_ok``:
    whether DTensor shards and complex params (stepped as real views) keep the rule's meaning."""
    name: str
    family: str
    defaults: dict[str, Any]
    state: tuple[State, ...]
    record: Callable[[dict], Any]
    check: Callable[[dict], None] = _nothing
    step_args: Callable[..., dict] = _no_args
    after: Callable[..., None] | None = None
    sharded_ok: bool = True
    complex_ok: bool = True
    fill: Callable[[dict], None] = _nothing  # completes a group after its defaults (AdaBound's base_lr)

    def __post_init__(self):
        object.__setattr__(self, "state", self.state + ROUNDING_STATE)


def _common_record(group: dict) -> dict:
    b1, b2 = (float(b) for b in group["betas"])
    # lr: a float, or the group's 0-dim tensor as is: the fused kernels read it on the device.
    return dict(lr=group["lr"], beta1=b1, beta2=b2, eps=group["eps"], weight_decay=group["weight_decay"],
                maximize=group["maximize"])


def _decoupled(group: dict) -> bool:
    """Every rule but ND-Adam's takes ``decoupled_weight_decay``: w *= 1 - lr*wd (the group's lr) before the
    rule's own step, AdamW's form (Loshchilov & Hutter 2019), instead of L2's g += wd*w. AdaBound with it is
    AdaBoundW (asked for in Luolc/AdaBound PR 14 and jettify/pytorch-optimizer PR 144)."""
    return bool(group["decoupled_weight_decay"])


# Adam / AdamW / AMSGrad (torch.optim.Adam, AdamW: same trajectory).
def _record_adam(group):
    return H.Adaptive(**_common_record(group), decoupled=_decoupled(group), amsgrad=group["amsgrad"])


_ADAPTIVE_STATE = (STEP, EXP_AVG, EXP_AVG_SQ, _vmax("amsgrad"))
ADAM = Rule("adam", "adaptive", dict(lr=1e-3, betas=_ADAM_BETAS, eps=1e-8, weight_decay=0.0, amsgrad=False,
                                     decoupled_weight_decay=False, maximize=False), _ADAPTIVE_STATE, _record_adam)
ADAMW = Rule("adamw", "adaptive", dict(lr=1e-3, betas=_ADAM_BETAS, eps=1e-8, weight_decay=1e-2, amsgrad=False,
                                       decoupled_weight_decay=True, maximize=False), _ADAPTIVE_STATE, _record_adam)


# Padam (Chen et al., Algorithm 1, the official code's form: eps inside the partial power).
def _check_padam(group):
    p = group["partial"]
    if not 0.0 < p <= 0.5:
        raise ValueError(f"Invalid partial: {p} (Padam's partial must be in (0, 0.5])")


PADAM = Rule("padam", "adaptive", dict(lr=0.1, betas=_ADAM_BETAS, partial=0.125, eps=1e-8, weight_decay=0.0,
                                       amsgrad=True, decoupled_weight_decay=False, maximize=False), _ADAPTIVE_STATE,
             lambda g: H.Adaptive(**_common_record(g), decoupled=_decoupled(g), amsgrad=g["amsgrad"],
                                  form=H.FORM_PAPER, partial=g["partial"]),
             check=_check_padam)


# Adam-Clip(lower, upper) (Keskar & Socher 2017, section 2): step sizes clipped to [lower, upper] * sgd_lr.
def _check_adamclip(group):
    if group["sgd_lr"] is None:
        raise ValueError("Invalid sgd_lr: AdamClip needs sgd_lr, the tuned SGD learning rate the bounds scale")
    _check_nonneg(group, "sgd_lr")
    _check_nonneg(group, "lower")
    if group["lower"] > group["upper"]:
        raise ValueError(f"Invalid lower/upper: lower={group['lower']} > upper={group['upper']}")


def _record_adamclip(group):
    s = float(group["sgd_lr"])
    return H.Adaptive(**_common_record(group), decoupled=_decoupled(group), amsgrad=group["amsgrad"],
                      form=H.FORM_PAPER, clip_mode=H.CLIP_CONST, clip_lo=group["lower"] * s, clip_hi=group["upper"] * s)


ADAMCLIP = Rule("adamclip", "adaptive", dict(lr=1e-3, sgd_lr=None, lower=1.0, upper=math.inf, betas=_ADAM_BETAS,
                                             eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled_weight_decay=False,
                                             maximize=False),
                _ADAPTIVE_STATE, _record_adamclip, check=_check_adamclip)


# AdaBound / AMSBound (Luo et al. 2019): bounds converging to final_lr * lr / base_lr.
def _check_adabound(group):
    _check_nonneg(group, "final_lr")
    _check_nonneg(group, "gamma")


def _record_adabound(group):
    base = group["base_lr"]
    return H.Adaptive(**_common_record(group), decoupled=_decoupled(group), amsgrad=group["amsbound"],
    form=H.FORM_PAPER,
                      clip_mode=H.CLIP_ADABOUND, final_lr=group["final_lr"] / base if base > 0 else group["final_lr"],
                      final_lr_relative=base > 0, gamma=group["gamma"])


def _fill_adabound(group):
    # The bounds follow the lr relative to the lr the group started with; saved with the group (the reference
    # package keeps it outside the state_dict).
    group.setdefault("base_lr", _num(group, "lr"))


ADABOUND = Rule("adabound", "adaptive", dict(lr=1e-3, betas=_ADAM_BETAS, final_lr=0.1, gamma=1e-3, eps=1e-8,
                                             weight_decay=0.0, amsbound=False, decoupled_weight_decay=False,
                                             maximize=False),
                (STEP, EXP_AVG, EXP_AVG_SQ, _vmax("amsbound")), _record_adabound, check=_check_adabound,
                fill=_fill_adabound)


# SWATS (Keskar & Socher 2017, Algorithm 1): Adam's step plus the switch test's sums, then SGD. The switch test is
# the optimizer's SWATS controller (swats.Controller); the momentum buffer of the SGD phase travels in its args.
def _check_swats(group):
    _check_nonneg(group, "switch_rtol")
    _check_nonneg(group, "switch_atol")


def _swats_args(opt, gi, group, bucket) -> dict:
    return {"swats": opt._swats_controller().args(opt.param_groups, gi, bucket, group)}


def _swats_after(opt, bucket, kwargs) -> None:
    opt._swats_calls.append((bucket, kwargs["swats"]))


SWATS = Rule("swats", "adaptive", dict(lr=1e-3, betas=_ADAM_BETAS, eps=1e-9, weight_decay=0.0, amsgrad=False,
                                       nesterov=False, switch_rtol=1e-3, switch_atol=0.0, decoupled_weight_decay=False,
                                       maximize=False),
             _ADAPTIVE_STATE + (State("momentum_buffer", None),), _record_adam, check=_check_swats,
             step_args=_swats_args, after=_swats_after)


# SGD (torch.optim.SGD): the first step takes buf = g, so the kernels are told which buffers are fresh.
def _sgd_args(opt, gi, group, bucket) -> dict:
    fresh = opt._fresh_buffers
    return {"firsts": [p in fresh for p in bucket.params] if fresh else [False] * len(bucket.params)}


def _sgd_after(opt, bucket, kwargs) -> None:
    # A buffer is fresh until its first step call (a GradScaler-skipped first step uses it up too: documented).
    if opt._fresh_buffers:
        for p in bucket.params:  # pop per key, not set.difference_update: torch 2.11's dynamo compares tensors by ==
            opt._fresh_buffers.pop(p, None)


SGD = Rule("sgd", "sgd", dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                              decoupled_weight_decay=False, maximize=False),
           # SGD has no step count of its own; stochastic rounding needs one (its random bits' counter).
           (replace(MOMENTUM, fresh=True), replace(STEP, when=_stochastic, low_precision_only=True,
                                                    or_bf16_state=True)),
           lambda g: H.SGD(lr=g["lr"], momentum=g["momentum"], dampening=g["dampening"], nesterov=g["nesterov"],
                           weight_decay=g["weight_decay"], decoupled=_decoupled(g), maximize=g["maximize"]),
           check=_check_momentum, step_args=_sgd_args, after=_sgd_after)


# MAS (Landro et al. 2020; variants: seed 003, section III.B).
def _check_mas(group):
    _check_momentum(group)
    if group["variant"] not in MAS_VARIANTS:
        raise ValueError(f"Invalid variant: {group['variant']!r}; choose one of {MAS_VARIANTS}")
    _check_nonneg(group, "adam_w")
    _check_nonneg(group, "sgd_w")


MAS = Rule("mas", "mas", dict(lr=1e-3, betas=_ADAM_BETAS, eps=1e-8, weight_decay=0.0, momentum=0.0, dampening=0.0,
                              nesterov=False, adam_w=0.5, sgd_w=0.5, variant="sum", decoupled_weight_decay=False,
                              maximize=False),
           (STEP, EXP_AVG, EXP_AVG_SQ, MOMENTUM),
           lambda g: H.MAS(**_common_record(g), decoupled=_decoupled(g), momentum=g["momentum"],
                           dampening=g["dampening"], nesterov=g["nesterov"], adam_w=float(g["adam_w"]),
                           sgd_w=float(g["sgd_w"]), variant=MAS_VARIANTS.index(g["variant"])),
           check=_check_mas)


# ND-Adam (Zhang 2017, Algorithm 1): one second moment per weight vector.
def _check_ndadam(group):
    if group["decoupled_weight_decay"]:
        raise ValueError("Invalid decoupled_weight_decay: ND-Adam renormalizes every weight vector after each step "
                         "(Zhang 2017, Algorithm 1), which undoes a decoupled shrink of w; its weight_decay is L2 "
                         "(added to the gradient before the projection)")
    if group["vec_axes"] is not None:
        axes = list(group["vec_axes"])
        if not axes or any((not isinstance(a, int)) or a < 0 for a in axes):
            raise ValueError(f"Invalid vec_axes: {group['vec_axes']} (non-negative dims, not empty)")


def _ndadam_args(opt, gi, group, bucket) -> dict:
    # Shapes are fixed per plan, so each param's vector dims are worked out once per bucket and vec_axes.
    if bucket.nd_axes is None or bucket.nd_axes[0] != group["vec_axes"]:
        bucket.nd_axes = (group["vec_axes"], [ndadam_axes(p, group) for p in bucket.params])
    return {"axes": bucket.nd_axes[1]}


NDADAM = Rule("ndadam", "ndadam", dict(lr=1e-3, betas=_ADAM_BETAS, eps=1e-8, weight_decay=0.0, vec_axes=None,
                                       decoupled_weight_decay=False, maximize=False),
              (STEP, EXP_AVG, State("exp_avg_sq", "exp_avg_sqs", shape="vectors")),
              lambda g: H.NDAdam(**_common_record(g)), check=_check_ndadam, step_args=_ndadam_args,
              sharded_ok=False, complex_ok=False)


# RMSprop (the lecture, seed 002; torch.optim.RMSprop) and Adagrad (torch.optim.Adagrad): one family, "rms"
# (hyper.RMS): sq = keep*sq + add*g^2, a step along g / (sqrt(sq) + eps), Adagrad's lr decay.
def _check_rmsprop(group):
    _check_nonneg(group, "momentum")
    _check_nonneg(group, "alpha")


RMSPROP = Rule("rmsprop", "rms", dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                                      decoupled_weight_decay=False, maximize=False),
               (STEP, State("square_avg", "square_avgs"), MOMENTUM,
                State("grad_avg", "grad_avgs", when=lambda g: bool(g["centered"]))),
               lambda g: H.RMS(lr=g["lr"], keep=float(g["alpha"]), add=1.0 - float(g["alpha"]), eps=g["eps"],
                               weight_decay=g["weight_decay"], decoupled=_decoupled(g), momentum=g["momentum"],
                               centered=bool(g["centered"]), maximize=g["maximize"]),
               check=_check_rmsprop)


def _check_adagrad(group):
    _check_nonneg(group, "lr_decay")
    _check_nonneg(group, "initial_accumulator_value")


ADAGRAD = Rule("adagrad", "rms", dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                                      eps=1e-10, decoupled_weight_decay=False, maximize=False),
               (STEP, State("sum", "square_avgs", init="initial_accumulator_value")),
               lambda g: H.RMS(lr=g["lr"], keep=1.0, add=1.0, eps=g["eps"], weight_decay=g["weight_decay"],
                               decoupled=_decoupled(g), lr_decay=float(g["lr_decay"]), maximize=g["maximize"]),
               check=_check_adagrad)


RULES: dict[str, Rule] = {r.name: r for r in (ADAM, ADAMW, SGD, PADAM, ADAMCLIP, ADABOUND, SWATS, MAS, NDADAM,
                                              RMSPROP, ADAGRAD)}
# Views of the registry for callers that want one fact of every rule.
PER_ELEMENT_KEYS = {s.key for r in RULES.values() for s in r.state if s.shape in ("param", "comp")}
DEFAULTS = {name: r.defaults for name, r in RULES.items()}
FAMILY = {name: r.family for name, r in RULES.items()}


def get(name: str) -> Rule:
    rule = RULES.get(name)
    if rule is None:
        raise ValueError(f"Invalid rule: {name!r}; choose one of {sorted(RULES)}")
    return rule


# --------------------------------------------------------------------------------------------------------------
# What the optimizer asks of a group's rule


def validate(group: dict) -> None:
    """Raise for any invalid hyperparameter of ``group`` (ValueError naming the argument), or a key its rule does
    not have (TypeError, as torch.optim's constructors raise for an unexpected keyword)."""
    rule = get(group["rule"])
    unknown = set(group) - set(rule.defaults) - set(COMMON) - EXTRA_KEYS
    if unknown:
        raise TypeError(f"rule {rule.name!r} got unexpected keyword argument(s) {sorted(unknown)}; its keys are "
                        f"{sorted(rule.defaults)} and {sorted(COMMON)}")
    _check_common(group)
    rule.check(group)


def check_keywords(rule: str, kwargs: dict, rules_used: set) -> None:
    """The optimizer's keyword arguments: each must be a hyperparameter of some rule its groups follow (a typo such
    as ``momentun`` would otherwise train without momentum), as torch.optim's constructors raise TypeError for an
    unexpected keyword."""
    for key in kwargs:
        if key in COMMON or any(key in DEFAULTS[r] for r in rules_used):
            continue
        takes = "; ".join(f"{r} takes {sorted(DEFAULTS[r])}" for r in sorted(rules_used))
        raise TypeError(f"got an unexpected keyword argument {key!r}: {takes} (and {sorted(COMMON)})")


def optimizer_defaults(rule: str, kwargs: dict) -> dict:
    """What ``optimizer.defaults`` holds: the rule's effective hyperparameters (its defaults overridden by the
    keyword arguments), as torch.optim's ``defaults`` holds its rule's; LR schedulers read it (OneCycleLR and
    CyclicLR look for ``momentum`` or ``betas`` there)."""
    own = {**get(rule).defaults, **COMMON}
    return {"rule": rule, **own, **{k: v for k, v in kwargs.items() if k in own}}


def fill_defaults(group: dict, rule: str, optimizer_defaults: dict) -> None:
    """Complete ``group`` in place: the group's own values win, then the optimizer's keyword arguments that
    apply to this rule, then the rule's defaults."""
    group.setdefault("rule", rule)
    spec = get(group["rule"])
    for key, value in {**spec.defaults, **COMMON}.items():
        group.setdefault(key, optimizer_defaults.get(key, value))
    spec.fill(group)


def state_flags(group: dict) -> tuple:
    """Which of its rule's state entries ``group`` has: with the rule and backend, what decides a group's state
    lists and plan besides which params have gradients."""
    return ((group["rule"], group["backend"], group.get("state_dtype"))
            + tuple(s.when(group) for s in RULES[group["rule"]].state))


def ensure_state(p: torch.Tensor, state: dict, group: dict) -> bool:
    """Create whatever state ``group``'s rule needs and ``state`` lacks (on the first step, or after loading a
    checkpoint of another rule, e.g. torch.optim.Adam's into SWATS). Returns True when it created a ``fresh``
    entry (the step must be told)."""
    fresh = False
    dt = None
    for s in RULES[group["rule"]].state:
        if not s.applies(p, group):
            continue
        cur = state.get(s.key)
        if cur is None:
            state[s.key] = s.new(p, group)
            fresh |= s.fresh
        elif s.shape in ("param", "vectors") and isinstance(cur, torch.Tensor) and cur.is_floating_point():
            # A moment buffer of another dtype: the group's state_dtype changed since it was made (the plan key
            # holds state_dtype, so this runs once per change). Converted, values kept (rounded to nearest even
            # when narrowed, exactly as the kernels' own stores round them).
            dt = dt or state_dtype(p, group)
            if cur.dtype != dt:
                state[s.key] = convert_state(cur, dt)
    return fresh


def convert_state(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A moment buffer in ``dtype``, a new contiguous tensor (never the checkpoint's own). torch's cast rounds to
    nearest even, the bits the kernels' integer stores give for every finite value (only NaN payloads may differ),
    and works on DTensor state too."""
    return value.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)


def record(group: dict):
    """The per-step hyperparameter record of ``group`` (see ``hyper``)."""
    rec = RULES[group["rule"]].record(group)
    code = rounding_code(group)
    return replace(rec, rounding=code) if code != H.ROUND_NEAREST else rec


def _has_bf16_state(kwargs: dict) -> bool:
    """Whether a family call's state lists hold bfloat16 moment buffers (SGD without momentum has none)."""
    return any(isinstance(v, list) and v and isinstance(v[0], torch.Tensor) and v[0].dtype == torch.bfloat16
               for v in kwargs.values())


def bucket_rounding(hp, bucket, kwargs: dict):
    """The record and rounding arguments of one bucket of a group that asked for stochastic rounding or Kahan
    summation: float32 / float64 buckets store exactly as computed (the options do not apply to them: record
    rounding 0, no seeds, no compensation buffers); 16-bit buckets get ``seeds`` (each param's seed, an int) or
    their ``kahan_comps``. A float32 bucket with bfloat16 state keeps stochastic rounding, for its state stores
    (with its seeds; the params themselves are stored exactly): hyper.ROUND_STOCHASTIC says how every bfloat16
    value of the step is stored, param or moment. Kahan summation is for params only (moments are stored to
    nearest even)."""
    if bucket.params[0].dtype not in LOW_PRECISION and not (hp.rounding == H.ROUND_STOCHASTIC and bucket.bf16_state
                                                            and _has_bf16_state(kwargs)):
        kwargs["kahan_comps"] = None
        return replace(hp, rounding=H.ROUND_NEAREST)
    if hp.rounding == H.ROUND_STOCHASTIC:
        if bucket.seeds is None:
            # Once per plan: the seeds are CPU int64 scalars read without a device sync, and a checkpoint load
            # (the only thing that replaces them) drops the plans.
            if torch.compiler.is_compiling():
                # Traced, int() of a tensor is a data-dependent value the ops' int[] cannot take.
                raise NotImplementedError(
                    "fused_hybrid: stochastic rounding under torch.compile needs its per-param seeds read once "
                    "eagerly: run the first step (and the first after loading a checkpoint or changing which "
                    "params have gradients) without torch.compile")
            bucket.seeds = [int(s[SEED.key]) for s in bucket.states]
        kwargs["seeds"] = bucket.seeds
    return hp
