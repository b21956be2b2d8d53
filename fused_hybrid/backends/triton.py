"""The Triton backend (issue 4). Not implemented yet: this module only reports that."""
from __future__ import annotations

import torch

NAME = "triton"
RULES: frozenset = frozenset()


def available(device: torch.device) -> bool:
    return False


def why_unavailable(device: torch.device) -> str:
    return "the Triton kernels are not implemented yet"
