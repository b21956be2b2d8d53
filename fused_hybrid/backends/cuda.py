"""The CUDA backend: the C++ extension's multi-tensor-apply kernels (csrc/cuda, torch.ops.fused_hybrid.* on the
CUDA dispatch key).

Every op reads lr (when a tensor), grad_scale, found_inf, the step counts and SWATS's phase on the device: a step
never syncs with the host and can be captured in a CUDA graph. Launches per call: the main kernel (one launch
while the call fits one argument table: up to 2048 chunks and a few hundred tensors, see
csrc/cuda/multi_tensor_apply.cuh) plus a tiny post-step kernel (step += 1 unless found_inf, SWATS's fixed-order
sums of its per-chunk partials). MAS's reducing variants run two passes and no post-step (csrc/cuda/mas.cu).
Stochastic rounding and Kahan summation of 16-bit params (issue 16) change only each kernel's param store (the
seeds and the compensation buffers' addresses travel in the argument table); SGD then counts steps, so it gets the
post-step kernel too.

The rule families are the extension's ops, called exactly as the cpu backend calls them (``extension_ops``): the
ops pick the CUDA kernels by the tensors' device, and in eager mode the params and state lists travel in a
TensorTable built once per bucket (the table ops hand non-CPU tables to the list ops through the dispatcher), so a
step passes no Python list of 2000 tensors, or reads no gradient in Python at all on the optimizer's fast path.
"""
from __future__ import annotations

import torch

from .. import _ext
from ..families import FAMILIES
from .extension_ops import adaptive, mas, ndadam, rms, sgd  # noqa: F401  (the backend API)

NAME = "cuda"
# MAS: every variant ("sum" in one pass; the reducing ones in two passes with per-chunk partials).
RULES = frozenset(FAMILIES)  # every family
# bfloat16 moment buffers (a group's state_dtype): widened on load, stored rounded (csrc/cuda multi_tensor_apply.cuh:
# Bf16StateStore), every family.
BF16_STATE = True
GRADS_FROM_PARAMS = True  # the optimizer's fast path may pass grads=None (extension_ops)


def available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and _ext.has_cuda_kernels()


def swats_bookkeeping(device: torch.device) -> str:
    """SWATS's switch test: the Triton backend's kernels (2 launches, no host sync), borrowed through the registry;
    the torch ops where Triton cannot run (no triton, or a GPU below compute capability 8.0, which Triton's NVIDIA
    backend does not target)."""
    from . import module
    return module("triton").swats_bookkeeping(device)


def why_unavailable(device: torch.device) -> str:
    if device.type != "cuda":
        return "the cuda backend serves CUDA tensors only"
    if not _ext.loaded():
        return _ext.LOAD_ERROR or "the C++ extension is not built"
    if not _ext.has_cuda_kernels():
        return ("the C++ extension was built without its CUDA kernels (no CUDA toolkit at build time; rebuild with "
                "CUDA_HOME set, or FUSED_HYBRID_BUILD_CUDA=1)")
    if not torch.cuda.is_available():
        return "no CUDA device is present"
    return ""
