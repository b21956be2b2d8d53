"""Per-step hyperparameter records handed from the optimizer wrappers to every backend.

The wrappers turn a parameter group into one of these once per step; backends never read group dicts, so a
backend is a set of plain functions over tensor lists plus one of these records. A record's fields, in order, are
its family's op arguments (``fused_hybrid.families`` builds the op schemas from them; csrc/op_families.h declares
the same lists in C++, and tests/test_shared_constants.py checks that they agree), so a field's type is what
the ops take: float, bool, or an int code (the codes below).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Adaptive-family step forms (ALGORITHMS.md sections 1-4).
FORM_TORCH = 0  # torch.optim.Adam: p = -(lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
FORM_PAPER = 1  # Padam / Adam-Clip / AdaBound: step size lr*sqrt(bc2)/bc1 / (sqrt(v)+eps)^(2p), optionally clipped

CLIP_NONE = 0
CLIP_CONST = 1  # Adam-Clip: [clip_lo, clip_hi]
CLIP_ADABOUND = 2  # AdaBound: bounds from final_lr (scaled by lr/base_lr, see Adaptive) and gamma, per step k

PHASE_ADAM = 0
PHASE_SGD = 1

# How a step stores bfloat16 / float16 parameters (every record's ``rounding`` field; the group keywords
# ``stochastic_rounding`` and ``kahan_summation``). float32 / float64 parameters are always stored as computed.
ROUND_NEAREST = 0  # round to nearest even (what a plain cast does)
ROUND_STOCHASTIC = 1  # stochastic rounding with counter-based bits (fused_hybrid.rounding.rand32)
ROUND_KAHAN = 2  # nearest even plus a compensation buffer per element (the kahan_comps state list)

# The random-bit streams of stochastic rounding (rounding.rand32's third counter word): 0 is the param store; a
# family's bfloat16 moment buffers (a group's state_dtype) are streams 1, 2, ... in this order, on every backend
# (with stochastic_rounding=True every bfloat16 store of a step is stochastically rounded, param or moment). A
# buffer's element is its flat index in the buffer (ND-Adam's exp_avg_sq: the weight vector's index).
STATE_STREAMS = {
    "adaptive": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"),  # (SWATS's SGD-phase buffer)
    "sgd": ("momentum_buffer",),
    "mas": ("exp_avg", "exp_avg_sq", "momentum_buffer"),
    "ndadam": ("exp_avg", "exp_avg_sq"),
    "rms": ("square_avg", "grad_avg", "momentum_buffer"),
}

# MAS's variants (seed 003, section III.B), by code.
MAS_VARIANTS = ("sum", "correction", "normalized", "vector")


@dataclass(frozen=True)
class Adaptive:
    lr: float | torch.Tensor
    beta1: float
    beta2: float
    eps: float
    weight_decay: float = 0.0
    decoupled: bool = False  # AdamW: w *= 1 - lr*wd before the update; else L2 (g += wd*w)
    amsgrad: bool = False
    maximize: bool = False
    form: int = FORM_TORCH
    partial: float = 0.5
    clip_mode: int = CLIP_NONE
    clip_lo: float = 0.0
    clip_hi: float = float("inf")
    # AdaBound's final lr is final_lr * lr / base_lr. With final_lr_relative the record holds final_lr / base_lr and
    # the backends multiply by the lr they read (where they read it: a tensor lr on the GPU is never read on the
    # host); without it (base_lr == 0), final_lr is used as is.
    final_lr: float = 0.0
    final_lr_relative: bool = False
    gamma: float = 0.0
    rounding: int = ROUND_NEAREST  # how 16-bit params are stored (ROUND_*)


@dataclass(frozen=True)
class SGD:
    lr: float | torch.Tensor
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    decoupled: bool = False  # w *= 1 - lr*wd before the step (AdamW's form); else L2 (g += wd*w)
    maximize: bool = False
    rounding: int = ROUND_NEAREST  # how 16-bit params are stored (ROUND_*)


@dataclass(frozen=True)
class MAS:
    lr: float | torch.Tensor
    beta1: float
    beta2: float
    eps: float
    weight_decay: float = 0.0
    decoupled: bool = False
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    adam_w: float = 0.5
    sgd_w: float = 0.5
    variant: int = 0  # MAS_VARIANTS.index(name)
    maximize: bool = False
    rounding: int = ROUND_NEAREST  # how 16-bit params are stored (ROUND_*)


@dataclass(frozen=True)
class NDAdam:
    lr: float | torch.Tensor
    beta1: float
    beta2: float
    eps: float
    weight_decay: float = 0.0
    maximize: bool = False
    rounding: int = ROUND_NEAREST  # how 16-bit params are stored (ROUND_*)


@dataclass(frozen=True)
class RMS:
    """The rms family: RMSprop (seed 002; torch.optim.RMSprop) and Adagrad (torch.optim.Adagrad) in one update,
    sq = keep*sq + add*g^2 (RMSprop: keep = alpha, add = 1 - alpha; Adagrad: keep = add = 1), a step of
    lr / (1 + (k-1)*lr_decay) (Adagrad's decay; 0 for RMSprop) along g / (sqrt(sq [- g_avg^2]) + eps)."""
    lr: float | torch.Tensor
    keep: float
    add: float
    eps: float
    weight_decay: float = 0.0
    decoupled: bool = False  # decay with the group's lr (not Adagrad's decayed one)
    momentum: float = 0.0
    centered: bool = False
    lr_decay: float = 0.0
    maximize: bool = False
    rounding: int = ROUND_NEAREST  # how 16-bit params are stored (ROUND_*)


@dataclass
class SwatsArgs:
    """What the adaptive kernels need for SWATS, one entry per tensor of the call.

    phase[t] (int32) selects the branch on the device; sgd_lr[t] (float64) is (1-b1)*Lambda scaled by the LR
    change since the switch; partials[t] (float64, shape [T, 2]) receives <p, g> and <p, p> of the Adam step.
    """
    momentum_buffers: list[torch.Tensor]
    phase: torch.Tensor
    sgd_lr: torch.Tensor
    partials: torch.Tensor
    nesterov: bool = False
