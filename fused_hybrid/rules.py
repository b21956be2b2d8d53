"""The rules a parameter group can follow: their defaults, validation, state, and per-step records.

Every optimizer class in fused_hybrid is one ``HybridOptimizer`` whose groups carry a ``rule`` key, so any
group can follow any rule (the layer-wise split of seed 003, section IV.A, is just groups with different
rules). The arithmetic lives in the backends; this module only knows names, numbers and state shapes.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from . import hyper as H

_ADAM_BETAS = (0.9, 0.999)

# Defaults per rule (ALGORITHMS.md fixes the hybrid ones; the stock ones are torch.optim's).
DEFAULTS: dict[str, dict[str, Any]] = {
    "adam": dict(lr=1e-3, betas=_ADAM_BETAS, eps=1e-8, weight_decay=0.0, amsgrad=False,
                 decoupled_weight_decay=False, maximize=False),
    "adamw": dict(lr=1e-3, betas=_ADAM_BETAS, eps=1e-8, weight_decay=1e-2, amsgrad=False,
                  decoupled_weight_decay=True, maximize=False),
    "sgd": dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False),
    "padam": dict(lr=0.1, betas=_ADAM_BETAS, partial=0.125, eps=1e-8, weight_decay=0.0, amsgrad=True,
                  maximize=False),
    "adamclip": dict(lr=1e-3, sgd_lr=None, lower=1.0, upper=math.inf, betas=_ADAM_BETAS, eps=1e-8,
                     weight_decay=0.0, amsgrad=False, maximize=False),
    "adabound": dict(lr=1e-3, betas=_ADAM_BETAS, final_lr=0.1, gamma=1e-3, eps=1e-8, weight_decay=0.0,
                     amsbound=False, maximize=False),
    "swats": dict(lr=1e-3, betas=_ADAM_BETAS, eps=1e-9, weight_decay=0.0, amsgrad=False, nesterov=False,
                  switch_rtol=1e-3, switch_atol=0.0, maximize=False),
    "mas": dict(lr=1e-3, betas=_ADAM_BETAS, eps=1e-8, weight_decay=0.0, momentum=0.0, dampening=0.0,
                nesterov=False, adam_w=0.5, sgd_w=0.5, variant="sum", maximize=False),
    "ndadam": dict(lr=1e-3, betas=_ADAM_BETAS, eps=1e-8, weight_decay=0.0, vec_axes=None, maximize=False),
}
# The backend rule family each rule runs on.
FAMILY = {"adam": "adaptive", "adamw": "adaptive", "padam": "adaptive", "adamclip": "adaptive",
          "adabound": "adaptive", "swats": "adaptive", "sgd": "sgd", "mas": "mas", "ndadam": "ndadam"}
# Keys every group has whatever its rule. foreach/fused/differentiable are accepted for torch.optim keyword
# compatibility; the backend decides how the step runs.
COMMON = dict(backend="auto", capturable=False, foreach=None, fused=None, differentiable=False)
# Keys set by the wrappers or by LR schedulers, allowed in any group.
EXTRA_KEYS = {"rule", "params", "initial_lr", "base_lr", "param_names"}

MAS_VARIANTS = ("sum", "correction", "normalized", "vector")
# Variants whose update needs per-tensor reductions of the two directions before it can be applied.
MAS_REDUCING_VARIANTS = ("correction", "normalized", "vector")


def _num(group, key) -> float:
    v = group[key]
    return float(v) if isinstance(v, torch.Tensor) else v


# torch.optim's wording for the hyperparameters it shares with us, so code (and torch's own error-input tests)
# that matches torch's messages matches ours.
_WHAT = {"lr": "learning rate", "eps": "epsilon value", "weight_decay": "weight_decay value",
         "momentum": "momentum value"}


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


def validate(group: dict) -> None:
    """Raise ValueError naming the argument for any invalid hyperparameter of ``group``."""
    rule = group["rule"]
    if rule not in DEFAULTS:
        raise ValueError(f"Invalid rule: {rule!r}; choose one of {sorted(DEFAULTS)}")
    unknown = set(group) - set(DEFAULTS[rule]) - set(COMMON) - EXTRA_KEYS
    if unknown:
        raise TypeError(f"rule {rule!r} got unexpected keyword argument(s) {sorted(unknown)}; its keys are "
                        f"{sorted(DEFAULTS[rule])} and {sorted(COMMON)}")
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
    if rule in ("sgd", "mas"):
        _check_nonneg(group, "momentum")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Invalid nesterov: Nesterov momentum requires a momentum and zero dampening")
    if rule == "padam":
        p = group["partial"]
        if not 0.0 < p <= 0.5:
            raise ValueError(f"Invalid partial: {p} (Padam's partial must be in (0, 0.5])")
    if rule == "adamclip":
        if group["sgd_lr"] is None:
            raise ValueError("Invalid sgd_lr: AdamClip needs sgd_lr, the tuned SGD learning rate the bounds scale")
        _check_nonneg(group, "sgd_lr")
        _check_nonneg(group, "lower")
        if group["lower"] > group["upper"]:
            raise ValueError(f"Invalid lower/upper: lower={group['lower']} > upper={group['upper']}")
    if rule == "adabound":
        _check_nonneg(group, "final_lr")
        _check_nonneg(group, "gamma")
    if rule == "swats":
        _check_nonneg(group, "switch_rtol")
        _check_nonneg(group, "switch_atol")
    if rule == "mas":
        if group["variant"] not in MAS_VARIANTS:
            raise ValueError(f"Invalid variant: {group['variant']!r}; choose one of {MAS_VARIANTS}")
        _check_nonneg(group, "adam_w")
        _check_nonneg(group, "sgd_w")
    if rule == "ndadam" and group["vec_axes"] is not None:
        axes = list(group["vec_axes"])
        if not axes or any((not isinstance(a, int)) or a < 0 for a in axes):
            raise ValueError(f"Invalid vec_axes: {group['vec_axes']} (non-negative dims, not empty)")


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
    own = {**DEFAULTS[rule], **COMMON}
    return {"rule": rule, **own, **{k: v for k, v in kwargs.items() if k in own}}


def fill_defaults(group: dict, rule: str, optimizer_defaults: dict) -> None:
    """Complete ``group`` in place: the group's own values win, then the optimizer's keyword arguments that
    apply to this rule, then the rule's defaults."""
    group.setdefault("rule", rule)
    rule = group["rule"]
    if rule not in DEFAULTS:
        raise ValueError(f"Invalid rule: {rule!r}; choose one of {sorted(DEFAULTS)}")
    for key, value in {**DEFAULTS[rule], **COMMON}.items():
        group.setdefault(key, optimizer_defaults.get(key, value))
    if rule == "adabound":
        # The bounds follow the lr relative to the lr the group started with; saved with the group (the
        # reference package keeps it outside the state_dict).
        group.setdefault("base_lr", _num(group, "lr"))


# --------------------------------------------------------------------------------------------------------------
# State


def state_dtype(p: torch.Tensor) -> torch.dtype:
    """Optimizer state is float32 for float32/16/bf16 parameters, float64 for float64 ones; complex parameters keep
    complex state of their own dtype, as in torch.optim (the kernels see its real view)."""
    if p.dtype in (torch.float64, torch.complex64, torch.complex128):
        return p.dtype
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


def ensure_state(p: torch.Tensor, state: dict, group: dict) -> bool:
    """Create whatever state ``group``'s rule needs and ``state`` lacks (on the first step, or after loading a
    checkpoint of another rule, e.g. torch.optim.Adam's into SWATS). Returns True when a momentum buffer was
    created now (SGD's first step takes buf = g)."""
    rule = group["rule"]
    dt = state_dtype(p)
    def zeros(shape=None):
        if shape is None:  # like p: a DTensor param (FSDP2) gets DTensor state with its placements, as in torch.optim
            return torch.zeros_like(p, dtype=dt, memory_format=torch.contiguous_format)
        return torch.zeros(shape, dtype=dt, device=p.device)

    created_buffer = False
    if rule != "sgd":
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        state.setdefault("exp_avg", zeros())
        if rule == "ndadam":
            axes = ndadam_axes(p, group)
            shape = [1 if d in axes else s for d, s in enumerate(p.shape)]
            state.setdefault("exp_avg_sq", zeros(shape))
        else:
            state.setdefault("exp_avg_sq", zeros())
        if group.get("amsgrad") or group.get("amsbound"):
            state.setdefault("max_exp_avg_sq", zeros())
    if rule == "swats" or (rule in ("sgd", "mas") and group["momentum"] != 0):
        if state.get("momentum_buffer") is None:
            state["momentum_buffer"] = zeros()
            created_buffer = True
    return created_buffer


def record(group: dict):
    """The per-step hyperparameter record of ``group`` (see ``hyper``)."""
    rule = group["rule"]
    lr = group["lr"]  # a float, or the group's 0-dim tensor as is: the fused kernels read it on the device
    if rule == "sgd":
        return H.SGD(lr=lr, momentum=group["momentum"], dampening=group["dampening"], nesterov=group["nesterov"],
                     weight_decay=group["weight_decay"], maximize=group["maximize"])
    b1, b2 = (float(b) for b in group["betas"])
    common = dict(lr=lr, beta1=b1, beta2=b2, eps=group["eps"], weight_decay=group["weight_decay"],
                  maximize=group["maximize"])
    if rule == "mas":
        return H.MAS(**common, momentum=group["momentum"], dampening=group["dampening"],
                     nesterov=group["nesterov"], adam_w=float(group["adam_w"]), sgd_w=float(group["sgd_w"]),
                     variant=group["variant"])
    if rule == "ndadam":
        return H.NDAdam(**common)
    if rule in ("adam", "adamw", "swats"):
        return H.Adaptive(**common, decoupled=bool(group.get("decoupled_weight_decay", False)),
                          amsgrad=group["amsgrad"])
    if rule == "padam":
        return H.Adaptive(**common, amsgrad=group["amsgrad"], form=H.FORM_PAPER, partial=group["partial"])
    if rule == "adamclip":
        s = float(group["sgd_lr"])
        return H.Adaptive(**common, amsgrad=group["amsgrad"], form=H.FORM_PAPER, clip_mode=H.CLIP_CONST,
                          clip_lo=group["lower"] * s, clip_hi=group["upper"] * s)
    if rule == "adabound":
        base = group["base_lr"]
        return H.Adaptive(**common, amsgrad=group["amsbound"], form=H.FORM_PAPER, clip_mode=H.CLIP_ADABOUND,
                          final_lr=group["final_lr"] / base if base > 0 else group["final_lr"],
                          final_lr_relative=base > 0, gamma=group["gamma"])
    raise ValueError(f"Invalid rule: {rule!r}")
