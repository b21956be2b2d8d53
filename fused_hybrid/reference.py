"""Reference update rules: plain PyTorch, one tensor at a time, written to read like the papers.

This module is the oracle every fused backend is tested against, and the fallback for devices no fused
backend serves. Each function updates one parameter (and its state tensors) in place for one step, given the
already pre-processed gradient ``g`` (unscaled, sign-flipped for ``maximize``; see ``effective_grad``).
Arithmetic is done in the state's dtype (float32, or float64 for float64 parameters) and the result is
written back to the parameter's own dtype. The exact forms are fixed in ALGORITHMS.md; the equation each
function follows is cited next to it.

Scalars named ``k`` are the step count of the parameter *after* this step's increment (k = 1 on the first
step), as in torch.optim.
"""
from __future__ import annotations

import math

import torch

# --------------------------------------------------------------------------------------------------------------
# Shared pieces


def effective_grad(grad: torch.Tensor, compute_dtype: torch.dtype, maximize: bool,
                   inv_scale: float | None = None) -> torch.Tensor:
    """The gradient the rules see: in the compute dtype, unscaled (GradScaler), negated for ``maximize``."""
    g = grad.to(compute_dtype)
    if inv_scale is not None:
        g = g * inv_scale
    return -g if maximize else g.clone()


def adam_moments(m: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta1: float, beta2: float) -> None:
    """Kingma & Ba, Algorithm 1: m = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g^2 (torch.optim's lerp form)."""
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)


def amsgrad_max(vmax: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reddi et al. (AMSGrad): vmax = max(vmax, v); the denominator uses vmax."""
    torch.maximum(vmax, v, out=vmax)
    return vmax


# --------------------------------------------------------------------------------------------------------------
# The adaptive family: Adam / AdamW / AMSGrad, Padam, Adam-Clip, AdaBound, SWATS's Adam phase.


def adam_step_torch_form(w32: torch.Tensor, m: torch.Tensor, v_used: torch.Tensor, lr: float, eps: float,
                         k: int, beta1: float, beta2: float) -> torch.Tensor:
    """torch.optim.Adam's placement of eps: the step p = -(lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps).

    Returns p (the change applied to w32), which SWATS needs for its projection.
    """
    bc1 = 1 - beta1 ** k
    bc2 = 1 - beta2 ** k
    denom = (v_used.sqrt() / math.sqrt(bc2)).add_(eps)
    p = m / denom * (-(lr / bc1))
    w32.add_(p)
    return p


def adam_step_paper_form(w32: torch.Tensor, m: torch.Tensor, v_used: torch.Tensor, lr: float, eps: float,
                         k: int, beta1: float, beta2: float, partial: float = 0.5,
                         clip: tuple[float, float] | None = None) -> None:
    """The papers' form, shared by Padam, Adam-Clip and AdaBound.

    Padam (Chen et al., Alg. 1, as in the official uclaml/Padam code): denom = (sqrt(v) + eps)^(2p), so eps sits
    inside the power. Adam-Clip (Keskar & Socher, sec. 2) and AdaBound (Luo et al. 2019) clip the per-coordinate
    step size  lr*sqrt(bc2)/bc1 / (sqrt(v)+eps)  to [lo, hi] before multiplying by m.
    """
    bc1 = 1 - beta1 ** k
    bc2 = 1 - beta2 ** k
    denom = v_used.sqrt().add_(eps)
    if partial != 0.5:
        denom = denom.pow(2 * partial)
    step_size = (lr * math.sqrt(bc2) / bc1) / denom
    if clip is not None:
        step_size = step_size.clamp_(clip[0], clip[1])
    w32.sub_(step_size * m)


def adabound_bounds(final: float, gamma: float, k: int) -> tuple[float, float]:
    """AdaBound's dynamic bounds (Luo et al. 2019, Luolc/AdaBound) at step k:
    lower = final*(1 - 1/(gamma*k + 1)), upper = final*(1 + 1/(gamma*k)), where final = final_lr * lr / base_lr
    is computed by the caller from the lr of this step (so LR schedulers move the bounds, as in the reference
    package)."""
    lower = final * (1 - 1 / (gamma * k + 1))
    upper = final * (1 + 1 / (gamma * k)) if gamma * k > 0 else math.inf
    return lower, upper


def sgd_direction(buf: torch.Tensor | None, g: torch.Tensor, momentum: float, dampening: float, nesterov: bool,
                  first: bool) -> torch.Tensor:
    """torch.optim.SGD: buf = g on the first step, else buf = momentum*buf + (1-dampening)*g;
    the direction is g + momentum*buf with Nesterov, else buf (g itself without momentum)."""
    if momentum == 0:
        return g
    if first:
        buf.copy_(g)
    else:
        buf.mul_(momentum).add_(g, alpha=1 - dampening)
    return g.add(buf, alpha=momentum) if nesterov else buf


def swats_projection(p: torch.Tensor, g: torch.Tensor) -> tuple[float, float]:
    """SWATS (Keskar & Socher, Alg. 1 line 13): the partial sums p^T g and p^T p, in float64."""
    p64, g64 = p.double(), g.double()
    return float((p64 * g64).sum()), float((p64 * p64).sum())


def swats_sgd_phase(w32: torch.Tensor, buf: torch.Tensor, g: torch.Tensor, beta1: float, sgd_lr: float,
                    nesterov: bool) -> None:
    """SWATS SGD phase (Alg. 1 lines 5-6): v = b1*v + g ; w = w - (1-b1)*Lambda*v.

    ``sgd_lr`` is (1-b1)*Lambda, scaled by any LR-scheduler change since the switch. The buffer is zero at the
    switch (line 19), so its first SGD step gives v = g. Nesterov (optional, not in the paper) uses g + b1*v.
    """
    buf.mul_(beta1).add_(g)
    d = g.add(buf, alpha=beta1) if nesterov else buf
    w32.add_(d, alpha=-sgd_lr)


# --------------------------------------------------------------------------------------------------------------
# MAS (Landro, Gallo, La Grassa 2020; ALGORITHMS.md section 5)


def mas_steps(m: torch.Tensor, v: torch.Tensor, buf: torch.Tensor | None, d: torch.Tensor, lr: float,
              beta1: float, beta2: float, eps: float, k: int, momentum: float, dampening: float,
              nesterov: bool) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Both branches of MAS on the same gradient d (weight decay already added):
    Adam's normalized direction d_a = m / (sqrt(v)/sqrt(bc2) + eps) with its step size eta_a = lr/bc1, and
    torch.optim.SGD's direction d_s."""
    adam_moments(m, v, d, beta1, beta2)
    bc1 = 1 - beta1 ** k
    bc2 = 1 - beta2 ** k
    d_a = m / (v.sqrt() / math.sqrt(bc2)).add_(eps)
    d_s = sgd_direction(buf, d, momentum, dampening, nesterov, first=(k == 1))
    return d_a, lr / bc1, d_s


def mas_update(d_a: torch.Tensor, eta_a: float, d_s: torch.Tensor, lr: float, adam_w: float, sgd_w: float,
               variant: str) -> torch.Tensor:
    """The change applied to w for each MAS variant; ``d_a``, ``d_s`` belong to one tensor (= one layer).

    sum:        -(sgd_w*lr + adam_w*eta_a) * (sgd_w*d_s + adam_w*d_a)      (MAS, AdamSGDWeighted)
    correction: the Adam step -eta_a*d_a when <d_a, d_s> < 0, else the SGD step -lr*d_s   (seed 003, III.B.2)
    normalized: the SGD direction scaled to the Adam step's norm: -d_s * ||eta_a*d_a|| / ||d_s||  (III.B.4)
    vector:     -(adam_w*s_a + sgd_w*s_s*||s_a||/||s_s||), s_a = eta_a*d_a, s_s = lr*d_s: a convex combination
                of the two directions with the Adam step's length (III.B.3; our exact form)
    Norms and inner products are float64; a zero norm leaves that term zero.
    """
    if variant == "sum":
        return (d_s * sgd_w + d_a * adam_w) * (-(sgd_w * lr + adam_w * eta_a))
    if variant == "correction":
        dot = float((d_a.double() * d_s.double()).sum())
        return d_a * (-eta_a) if dot < 0 else d_s * (-lr)
    norm_a = eta_a * float(d_a.double().norm())
    norm_s = float(d_s.double().norm())
    ratio = norm_a / norm_s if norm_s > 0 else 0.0
    if variant == "normalized":
        return d_s * (-ratio)
    if variant == "vector":
        return (d_a * (adam_w * eta_a) + d_s * (sgd_w * ratio)).neg_()
    raise ValueError(f"unknown MAS variant {variant!r}")


# --------------------------------------------------------------------------------------------------------------
# ND-Adam (Zhang 2017, Algorithm 1; zj10/ND-Adam)


def rms_step(w32: torch.Tensor, sq: torch.Tensor, g_avg: torch.Tensor | None, buf: torch.Tensor | None,
             g: torch.Tensor, lr: float, keep: float, add: float, eps: float, momentum: float, lr_decay: float,
             k: int) -> None:
    """RMSprop (the lecture, seed 002; torch.optim.RMSprop) and Adagrad (torch.optim.Adagrad):

        sq = keep*sq + add*g^2            RMSprop: keep = alpha, add = 1 - alpha; Adagrad: keep = add = 1
        g_avg = lerp(g_avg, g, add)       centered RMSprop only: avg = sqrt(sq - g_avg^2) + eps
        avg = sqrt(sq) + eps
        buf = momentum*buf + g/avg ; w -= lr_k*buf      with momentum, else  w -= lr_k * g/avg
        lr_k = lr / (1 + (k-1)*lr_decay)  Adagrad's decay (0 for RMSprop)
    """
    if keep != 1.0:
        sq.mul_(keep)
    sq.addcmul_(g, g, value=add)
    if g_avg is not None:
        g_avg.lerp_(g, add)
        avg = sq.addcmul(g_avg, g_avg, value=-1).sqrt_()
    else:
        avg = sq.sqrt()
    avg.add_(eps)
    lr_k = lr / (1 + (k - 1) * lr_decay)
    if buf is not None:
        buf.mul_(momentum).addcdiv_(g, avg)
        w32.add_(buf, alpha=-lr_k)
    else:
        w32.addcdiv_(g, avg, value=-lr_k)


def ndadam_vector_step(w32: torch.Tensor, m: torch.Tensor, v: torch.Tensor, g: torch.Tensor, axes: tuple[int, ...],
                       lr: float, beta1: float, beta2: float, eps: float, k: int, weight_decay: float) -> None:
    """One ND-Adam step for a tensor of weight vectors spanning ``axes`` (v has those axes reduced to 1).

    The vectors are normalized on the first step (the paper normalizes at initialization; the reference code
    does not, so its first projection is not orthogonal). Then: g -= <g,w> w ; m = b1 m + (1-b1) g ;
    v = b2 v + (1-b2) <g,g> ; w -= lr*sqrt(bc2)/bc1 * m/(sqrt(v)+eps) ; w /= ||w||.
    """
    if k == 1:
        w32.div_(torch.linalg.vector_norm(w32, dim=axes, keepdim=True))
    if weight_decay != 0:
        g = g.add(w32, alpha=weight_decay)
    g = g - (g * w32).sum(dim=axes, keepdim=True) * w32
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).add_((g * g).sum(dim=axes, keepdim=True), alpha=1 - beta2)
    bc1 = 1 - beta1 ** k
    bc2 = 1 - beta2 ** k
    w32.sub_(m / (v.sqrt() + eps) * (lr * math.sqrt(bc2) / bc1))
    w32.div_(torch.linalg.vector_norm(w32, dim=axes, keepdim=True))
