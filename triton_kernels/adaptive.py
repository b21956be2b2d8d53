"""The adaptive family in Triton: Adam / AdamW / AMSGrad, Padam's p-power, Adam-Clip and AdaBound clip bounds,
and SWATS (Adam phase with the <p,g>, <p,p> partials; SGD phase). The arithmetic follows
fused_hybrid/reference.py operation by operation (see the comments there for the papers' equations).

One launch of ``adaptive_kernel`` updates every tensor of a bucket: program = one chunk of one tensor. The
step count is read from each tensor's step tensor (k = step + 1) and advanced afterwards by
``common.finalize_kernel`` (which also sums the SWATS partials per tensor).
"""
import triton
import triton.language as tl

from .common import (bias_corrections, chunk_header, div_ieee, f64, inv_scale, lerp, load_lr, load_w_grad, skip_step,
                     sqrt_ieee, table_ptr)
from .rounding import rounding_ctx, store_param, store_state
from .sgd import swats_sgd_phase

FORM_TORCH = tl.constexpr(0)
FORM_PAPER = tl.constexpr(1)
CLIP_NONE = tl.constexpr(0)
CLIP_CONST = tl.constexpr(1)
CLIP_ADABOUND = tl.constexpr(2)

# Operand lists of the pointer table, in this order.
L_P = tl.constexpr(0)
L_G = tl.constexpr(1)
L_M = tl.constexpr(2)
L_V = tl.constexpr(3)
L_VMAX = tl.constexpr(4)
L_BUF = tl.constexpr(5)
L_STEP = tl.constexpr(6)
L_COMP = tl.constexpr(7)  # Kahan buffers


@triton.jit
def adam_moments(m, v, g, omb1, b2, omb2):
    """Kingma & Ba: m = lerp(m, g, 1-b1) (torch's form) ; v = b2*v + (1-b2)*g*g (mul_ then addcmul_)."""
    m = lerp(m, g, omb1)
    v = v * b2 + omb2 * g * g
    return m, v


@triton.jit
def adam_direction(m, v_used, sqrt_bc2, eps):
    """Adam's normalized direction with torch.optim's eps placement: m / (sqrt(v)/sqrt(bc2) + eps). IEEE sqrt
    and division (Triton's default float32 ones are approximate on the GPU) to round as the reference does."""
    return div_ieee(m, div_ieee(sqrt_ieee(v_used), sqrt_bc2) + eps)


@triton.jit
def adam_step_torch_form(m, v_used, sqrt_bc2, eps, neg_step):
    """torch.optim.Adam's step p = -(lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps) (neg_step = -(lr/bc1))."""
    return adam_direction(m, v_used, sqrt_bc2, eps) * neg_step


@triton.jit
def paper_step_size(v_used, eps, step, partial2, lo, hi, C: tl.constexpr, POW: tl.constexpr,
                    CLIP: tl.constexpr):
    """Padam / Adam-Clip / AdaBound: lr*sqrt(bc2)/bc1 / (sqrt(v)+eps)^(2p), clamped to [lo, hi] when CLIP.
    The power (p != 1/2) is taken in float64 as exp2(2p*log2(x)) and rounded once: the correctly rounded
    powf the reference uses, up to rare last-bit ties."""
    denom = sqrt_ieee(v_used) + eps
    if POW:
        denom = tl.exp2(partial2 * tl.log2(denom.to(tl.float64))).to(C)
    s = div_ieee(tl.zeros_like(denom) + step, denom)
    if CLIP:
        s = tl.minimum(tl.maximum(s, lo), hi)
    return s


@triton.jit
def adabound_bounds(final, gamma, k, inf):
    """reference.adabound_bounds in float64: final*(1 - 1/(gamma*k+1)), final*(1 + 1/(gamma*k)) (``inf``, passed
    in by the host, when gamma*k = 0)."""
    gk = gamma * k
    lower = final * (1.0 - 1.0 / (gk + 1.0))
    upper = tl.where(gk > 0, final * (1.0 + 1.0 / tl.where(gk > 0, gk, 1.0)), inf)
    return lower, upper


@triton.jit
def _adaptive_block(offs, mask, pp, gp, mp, vp, vmp, bp, sc, C: tl.constexpr, MASKED: tl.constexpr,
                    HAS_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
                    DECOUPLED: tl.constexpr, AMSGRAD: tl.constexpr, FORM: tl.constexpr, POW: tl.constexpr,
                    CLIP: tl.constexpr, SWATS: tl.constexpr, NESTEROV: tl.constexpr, sgd_phase, rc,
                    ROUND: tl.constexpr):
    """One block of one tensor; returns this block's float64 (<p,g>, <p,p>) (zero unless SWATS' Adam phase).
    ``sc`` holds the per-tensor scalars already rounded to the compute dtype C."""
    inv, wd, decay, omb1, b1, b2, omb2, eps, sqrt_bc2, neg_step, step, partial2, lo, hi, neg_sgd_lr = sc
    w, g = load_w_grad(pp, gp, offs, mask, inv, wd, C, MASKED, HAS_SCALE, MAXIMIZE, HAS_WD and not DECOUPLED)
    if HAS_WD and DECOUPLED:
        w = w * decay  # AdamW: decay first, then the Adam update
    s_pg = tl.zeros((), tl.float64)
    s_pp = tl.zeros((), tl.float64)
    if sgd_phase:  # a constexpr False unless SWATS; else the tensor's phase, read on the device
        buf = tl.load(bp + offs, mask=mask).to(C)
        w, buf = swats_sgd_phase(w, buf, g, b1, neg_sgd_lr, NESTEROV)
        store_state(bp, offs, buf, mask, rc, 4, ROUND)  # (streams: hyper.STATE_STREAMS)
    else:
        m = tl.load(mp + offs, mask=mask).to(C)  # (bfloat16 state: widened exactly; stored by store_state)
        v = tl.load(vp + offs, mask=mask).to(C)
        m, v = adam_moments(m, v, g, omb1, b2, omb2)
        store_state(mp, offs, m, mask, rc, 1, ROUND)
        store_state(vp, offs, v, mask, rc, 2, ROUND)
        v_used = v
        if AMSGRAD:
            # With bfloat16 state the stored max is the rounded max of the rounded old max and the new v:
            # rounding is monotone, so it is never below the stored v, and never decreases from step to step.
            vmax = tl.maximum(tl.load(vmp + offs, mask=mask).to(C), v)
            store_state(vmp, offs, vmax, mask, rc, 3, ROUND)
            v_used = vmax
        if FORM == FORM_TORCH:
            p = adam_step_torch_form(m, v_used, sqrt_bc2, eps, neg_step)
            w = w + p
            if SWATS:
                p64 = p.to(tl.float64)
                g64 = g.to(tl.float64)
                if MASKED:
                    p64 = tl.where(mask, p64, 0.0)
                s_pg = tl.sum(p64 * g64)
                s_pp = tl.sum(p64 * p64)
        else:
            s = paper_step_size(v_used, eps, step, partial2, lo, hi, C, POW, CLIP != CLIP_NONE)
            w = w - s * m
    store_param(pp, offs, w, mask, rc, ROUND)
    return s_pg, s_pp


@triton.jit(do_not_specialize=["T"])  # the tensor count: one compile whatever it is
def adaptive_kernel(chunks, meta, ptrs, T: tl.int64, lr_ptr, scale_ptr, found_ptr, phase_ptr, sgd_lr_ptr,
                    partials,
                    lr: tl.float64, beta1: tl.float64, beta2: tl.float64, eps: tl.float64, wd: tl.float64,
                    partial2: tl.float64, clip_lo: tl.float64, clip_hi: tl.float64, final_lr: tl.float64,
                    gamma: tl.float64,
                    P: tl.constexpr, C: tl.constexpr, S: tl.constexpr, LR_TENSOR: tl.constexpr, HAS_SCALE: tl.constexpr,
                    HAS_FOUND_INF: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
                    DECOUPLED: tl.constexpr, AMSGRAD: tl.constexpr, FORM: tl.constexpr, POW: tl.constexpr,
                    CLIP: tl.constexpr, SWATS: tl.constexpr, NESTEROV: tl.constexpr, ALIGNED: tl.constexpr,
                    BLOCK: tl.constexpr, CHUNK: tl.constexpr, FINAL_LR_RELATIVE: tl.constexpr = False,
                    seed_ptr=None, ROUND: tl.constexpr = 0):
    pid = tl.program_id(0)
    t, start, n = chunk_header(chunks, meta, pid, 4, CHUNK)
    s_pg = tl.zeros((), tl.float64)
    s_pp = tl.zeros((), tl.float64)
    if not skip_step(found_ptr, HAS_FOUND_INF):
        pp = table_ptr(ptrs, L_P, t, T, P, ALIGNED)
        gp = table_ptr(ptrs, L_G, t, T, P, ALIGNED)
        mp = table_ptr(ptrs, L_M, t, T, S, ALIGNED)  # S: the state dtype (C, or bfloat16: state_dtype)
        vp = table_ptr(ptrs, L_V, t, T, S, ALIGNED)
        vmp = table_ptr(ptrs, L_VMAX, t, T, S, ALIGNED)
        bp = table_ptr(ptrs, L_BUF, t, T, S, ALIGNED)
        stp = table_ptr(ptrs, L_STEP, t, T, tl.float32, False)
        k = tl.load(stp).to(tl.float64) + 1.0
        rc = rounding_ctx(ptrs, seed_ptr, L_COMP, t, T, k, P, ROUND, ALIGNED)
        # Per-tensor scalars in float64, exactly as the reference computes them on the host.
        lr64 = load_lr(lr, lr_ptr, LR_TENSOR)
        b1, b2, bc1, bc2 = bias_corrections(beta1, beta2, k)
        wd64 = f64(wd)
        lo = f64(clip_lo)
        hi = f64(clip_hi)
        if CLIP == CLIP_ADABOUND:
            final = f64(final_lr) * lr64 if FINAL_LR_RELATIVE else f64(final_lr)  # hyper.Adaptive.final_lr
            lo, hi = adabound_bounds(final, f64(gamma), k, hi)
        sgd_phase = False
        neg_sgd_lr = tl.zeros((), tl.float64)
        if SWATS:
            sgd_phase = tl.load(phase_ptr + t) == 1
            neg_sgd_lr = -tl.load(sgd_lr_ptr + t)
        sc = (inv_scale(scale_ptr, HAS_SCALE), wd64.to(C), (1.0 - lr64 * wd64).to(C), (1.0 - b1).to(C),
              b1.to(C), b2.to(C), (1.0 - b2).to(C), f64(eps).to(C), sqrt_ieee(bc2).to(C), (-(lr64 / bc1)).to(C),
              (lr64 * sqrt_ieee(bc2) / bc1).to(C), f64(partial2), lo.to(C), hi.to(C), neg_sgd_lr.to(C))
        if start + CHUNK <= n:
            # Full chunk: no masks, so aligned pointers give 128-bit accesses.
            for i in range(0, CHUNK, BLOCK):
                offs = start + i + tl.arange(0, BLOCK)
                a, b = _adaptive_block(offs, None, pp, gp, mp, vp, vmp, bp, sc, C, False, HAS_SCALE, MAXIMIZE,
                                       HAS_WD, DECOUPLED, AMSGRAD, FORM, POW, CLIP, SWATS, NESTEROV, sgd_phase,
                                       rc, ROUND)
                s_pg += a
                s_pp += b
        else:
            for j in range(0, n - start, BLOCK):  # (a different name: loop variables outlive the if)
                offs = start + j + tl.arange(0, BLOCK)
                a, b = _adaptive_block(offs, offs < n, pp, gp, mp, vp, vmp, bp, sc, C, True, HAS_SCALE, MAXIMIZE,
                                       HAS_WD, DECOUPLED, AMSGRAD, FORM, POW, CLIP, SWATS, NESTEROV, sgd_phase,
                                       rc, ROUND)
                s_pg += a
                s_pp += b
    if SWATS:
        # Written even when the step is skipped: the finalize sums every chunk's slot.
        tl.store(partials + pid * 2, s_pg)
        tl.store(partials + pid * 2 + 1, s_pp)
