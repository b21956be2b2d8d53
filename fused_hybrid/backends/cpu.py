"""The fused CPU backend: the C++ extension's multi-threaded, vectorized kernels (torch.ops.fused_hybrid).

Each call is one op over all tensors of a bucket (one parallel region over fixed-size chunks of all of them;
two for MAS's reducing variants). The ops read found_inf, grad_scale, a tensor lr and the SWATS phase from
CPU memory themselves, advance the steps, and never return to Python per tensor. See csrc/cpu/.

The rule families are the extension's ops, called as in ``extension_ops`` (shared with the cuda backend): in eager
mode through a TensorTable of each bucket's lists, built once.
"""
from __future__ import annotations

import torch

from .. import _ext
from ..families import FAMILIES
from .extension_ops import adaptive, mas, ndadam, ndadam_layout, rms, sgd  # noqa: F401  (backend API)

NAME = "cpu"
BF16_STATE = True  # bfloat16 moment buffers (a group's state_dtype): staged through float32 (csrc/cpu/lowp_store.h)
RULES = frozenset(FAMILIES)  # every family
GRADS_FROM_PARAMS = True  # the optimizer's fast path may pass grads=None (extension_ops)


def swats_bookkeeping(device: torch.device) -> str:
    """SWATS's switch test: the extension's ops (csrc/cpu/swats.cpp)."""
    return "cpu"


def available(device: torch.device) -> bool:
    return device.type == "cpu" and _ext.loaded()


def why_unavailable(device: torch.device) -> str:
    if device.type != "cpu":
        return "the cpu backend serves CPU tensors only"
    return _ext.LOAD_ERROR or ""
