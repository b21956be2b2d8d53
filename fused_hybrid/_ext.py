"""Loads the compiled extension ``fused_hybrid._C`` if it was built, and says why not otherwise."""
from __future__ import annotations

import torch

LOAD_ERROR: str | None = None
try:
    from . import _C  # noqa: F401  (registers the torch.ops.fused_hybrid operators)
except ImportError as exc:  # built without the extension, or against another torch
    _C = None
    LOAD_ERROR = f"the C++ extension fused_hybrid._C is not built or does not load ({exc})"


def loaded() -> bool:
    return _C is not None


def has_cuda_kernels() -> bool:
    """True when the extension was compiled with its CUDA kernels (checkable without a GPU)."""
    return _C is not None and bool(torch.ops.fused_hybrid.built_with_cuda())
