"""Shared test helpers: random problems that feed identical gradients to several optimizers."""
from __future__ import annotations

import io

import torch

SHAPES = [(1,), (3,), (17,), (4097,), (33, 65), (8, 3, 3, 3)]


def make_params(shapes=SHAPES, dtype=torch.float32, seed=0, copies=2):
    """``copies`` identical lists of leaf parameters with random values."""
    gen = torch.Generator().manual_seed(seed)
    base = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    return [[b.clone().requires_grad_() for b in base] for _ in range(copies)]


def feed_grads(param_lists, step: int, seed=0, scale=1.0):
    """Give every list the same random gradients (a fresh draw per step, independent of the params)."""
    gen = torch.Generator().manual_seed(seed * 100003 + step)
    grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale for p in param_lists[0]]
    for params in param_lists:
        for p, g in zip(params, grads):
            p.grad = g.to(p.dtype).clone()


def quadratic_grads(param_lists, step: int, seed=0, noise=0.1):
    """Gradients of a noisy diagonal quadratic 0.5*sum(a*w^2) evaluated at each list's own params, so the
    trajectories (and any divergence between them) feed back into the gradients."""
    gen = torch.Generator().manual_seed(seed * 100003 + step)
    curv = [torch.rand(p.shape, generator=torch.Generator().manual_seed(seed + i), dtype=torch.float64) * 2 + 0.1
            for i, p in enumerate(param_lists[0])]
    noises = [torch.randn(p.shape, generator=gen, dtype=torch.float64) * noise for p in param_lists[0]]
    for params in param_lists:
        for p, a, n in zip(params, curv, noises):
            p.grad = (a * p.detach().double() + n).to(p.dtype)


def roundtrip(obj, weights_only=False):
    """``obj`` through torch.save / torch.load in memory (a checkpoint file's round trip)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=weights_only)


def max_rel_err(xs, ys):
    """max over tensors of ||x - y||_inf / max(||y||_inf, 1e-12), in float64."""
    err = 0.0
    for x, y in zip(xs, ys):
        x, y = x.detach().double(), y.detach().double()
        if y.numel() == 0:
            continue
        err = max(err, float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)))
    return err
