"""Parameter lists of real models, as lists of shapes (no torchvision or transformers needed).

Every set is a function of a ``scale`` so that ``--quick`` runs the same structure (same tensor count) on tiny
tensors. ``scale=1`` is the real model.
"""
from __future__ import annotations

import math


def resnet18(scale: float = 1.0) -> list[tuple[int, ...]]:
    """torchvision's resnet18 (BasicBlock, [2, 2, 2, 2], 1000 classes): 62 tensors, 11,689,512 parameters at
    scale 1. ``scale`` divides the channel widths (62 tensors at any scale)."""
    c = lambda n: max(1, int(round(n / scale)))  # noqa: E731
    shapes: list[tuple[int, ...]] = [(c(64), 3, 7, 7), (c(64),), (c(64),)]  # conv1, bn1 weight/bias
    inplanes = c(64)
    for planes, stride in ((c(64), 1), (c(128), 2), (c(256), 2), (c(512), 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            shapes += [(planes, inplanes, 3, 3), (planes,), (planes,), (planes, planes, 3, 3), (planes,), (planes,)]
            if block == 0 and (s != 1 or inplanes != planes):
                shapes += [(planes, inplanes, 1, 1), (planes,), (planes,)]  # downsample conv + bn
            inplanes = planes
    classes = 1000 if scale == 1 else max(10, int(1000 / scale))
    shapes += [(classes, inplanes), (classes,)]  # fc
    return shapes


def gpt2(scale: float = 1.0) -> list[tuple[int, ...]]:
    """GPT-2 small (HF layout: Conv1D weights are [in, out]): token and position embeddings, 12 blocks of
    ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj (weights and biases), ln_f: 148 tensors,
    124,439,808 parameters at scale 1 (the LM head is tied to wte). ``scale`` divides d_model and vocab."""
    d = max(8, int(768 / scale))
    vocab = 50257 if scale == 1 else max(64, int(50257 / scale))
    ctx = 1024 if scale == 1 else max(16, int(1024 / scale))
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    shapes += [(d,), (d,)]
    return shapes


def many_small(scale: float = 1.0) -> list[tuple[int, ...]]:
    """2000 tensors of 1000 elements (2M parameters): launch / per-tensor overhead dominates."""
    n = 2000 if scale == 1 else max(20, int(2000 / scale))
    e = 1000 if scale == 1 else max(10, int(1000 / scale))
    return [(e,)] * n


def one_big(scale: float = 1.0) -> list[tuple[int, ...]]:
    """One tensor of 2^24 = 16,777,216 elements: pure bandwidth."""
    return [(max(1024, int(2 ** 24 / scale)),)]


SHAPE_SETS = {"resnet18": resnet18, "gpt2": gpt2, "many_small": many_small, "one_big": one_big}
DESCRIPTIONS = {
    "resnet18": "ResNet-18 (62 tensors)",
    "gpt2": "GPT-2 small (148 tensors)",
    "many_small": "2000 x 1000 elements",
    "one_big": "one 16.8M tensor",
}


def get(name: str, scale: float = 1.0) -> list[tuple[int, ...]]:
    if name not in SHAPE_SETS:
        raise ValueError(f"unknown shape set {name!r}; choose from {sorted(SHAPE_SETS)}")
    return SHAPE_SETS[name](scale)


def numel(shapes) -> int:
    return sum(math.prod(s) for s in shapes)
