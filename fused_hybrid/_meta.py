"""Fake (meta) implementations of the extension's ops, so torch.compile can trace through them.

Every op mutates its tensor-list arguments in place and returns nothing, so the fake implementation has
nothing to compute: it only has to exist for the tracer to accept the op.
"""
from __future__ import annotations

import torch

from . import _ext

OPS = ("sgd_", "adaptive_", "mas_", "ndadam_")


def _fake(*args, **kwargs):
    return None


def register() -> None:
    if not _ext.loaded():
        return
    for op in OPS:
        try:
            torch.library.register_fake(f"fused_hybrid::{op}")(_fake)
        except RuntimeError as exc:  # registered already (module reloaded)
            if "already" not in str(exc):
                raise
