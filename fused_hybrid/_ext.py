"""Loads the compiled extension ``fused_hybrid._C`` if it was built, and says why not otherwise; likewise the
simulated CUDA kernels ``fused_hybrid._C_sim`` (backend "cuda_sim"), which need ``_C`` loaded first (its
TensorTable class)."""
from __future__ import annotations

import torch

LOAD_ERROR: str | None = None
try:
    from . import _C  # noqa: F401  (registers the torch.ops.fused_hybrid operators)
except ImportError as exc:  # built without the extension, or against another torch
    _C = None
    LOAD_ERROR = f"the C++ extension fused_hybrid._C is not built or does not load ({exc})"

SIM_LOAD_ERROR: str | None = None
_C_sim = None
if _C is None:
    SIM_LOAD_ERROR = LOAD_ERROR
else:
    try:
        from . import _C_sim  # noqa: F401  (registers the torch.ops.fused_hybrid_sim operators)
    except ImportError as exc:  # not built (FUSED_HYBRID_BUILD_SIM=0, not Linux)
        SIM_LOAD_ERROR = f"the simulated CUDA kernels fused_hybrid._C_sim are not built or do not load ({exc})"


def loaded() -> bool:
    return _C is not None


def has_cuda_kernels() -> bool:
    """True when the extension was compiled with its CUDA kernels (checkable without a GPU)."""
    return _C is not None and bool(torch.ops.fused_hybrid.built_with_cuda())


def has_sim() -> bool:
    """True when the simulated CUDA kernels (backend "cuda_sim") are built and loaded."""
    return _C_sim is not None
