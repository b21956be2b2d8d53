"""The CUDA backend: the C++ extension's multi-tensor-apply kernels (issue 5). Not implemented yet: this module
only reports that, so backend="cuda" fails with a clear reason instead of falling back."""
from __future__ import annotations

import torch

from .. import _ext

NAME = "cuda"
RULES: frozenset = frozenset()


def available(device: torch.device) -> bool:
    return False


def why_unavailable(device: torch.device) -> str:
    if device.type != "cuda":
        return "the cuda backend serves CUDA tensors only"
    if not torch.cuda.is_available():
        return "no CUDA device is present"
    if not _ext.loaded():
        return _ext.LOAD_ERROR
    return "the CUDA kernels are not implemented yet"
