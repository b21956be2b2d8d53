"""MAS (Landro, Gallo, La Grassa 2020) in Triton: Adam and SGD directions on the same gradient, mixed.

"sum" is one pass (plus the finalize kernel that advances the steps). The per-layer variants ("correction",
"normalized", "vector") need per-tensor reductions of the two directions before the update: pass 0 updates m, v,
buf and writes per-chunk partials (<d_a,d_s>, ||d_a||^2, ||d_s||^2); the last of a tensor's pass-0 programs to
finish (an integer counter per tensor, no float atomics) sums them in chunk order and advances the step; pass 1
recomputes both directions from the updated state (w is still unchanged) and applies the chosen update. Two
launches; a tensor with no elements gets one zero-length chunk, whose program advances its step.
Arithmetic as fused_hybrid/reference.py (mas_steps, mas_update).
"""
import triton
import triton.language as tl

from .adaptive import adam_direction, adam_moments
from .common import (bias_corrections, chunk_header, f64, inv_scale, load_lr, load_w_grad, skip_step, sqrt_ieee,
                     table_ptr)
from .rounding import rounding_ctx, store_param, store_state
from .sgd import sgd_dir_from_buf, sgd_direction

V_SUM = tl.constexpr(0)
V_CORRECTION = tl.constexpr(1)
V_NORMALIZED = tl.constexpr(2)
V_VECTOR = tl.constexpr(3)
NPP = 4  # partials per chunk (3 used), padded to a power of two

L_P = tl.constexpr(0)
L_G = tl.constexpr(1)
L_M = tl.constexpr(2)
L_V = tl.constexpr(3)
L_BUF = tl.constexpr(4)
L_STEP = tl.constexpr(5)
L_COMP = tl.constexpr(6)  # Kahan buffers


@triton.jit
def mas_sum_update(d_a, d_s, adam_w, sgd_w, coef):
    """MAS's "sum": (sgd_w*d_s + adam_w*d_a) * -(sgd_w*lr + adam_w*lr/bc1) (coef, per tensor)."""
    return (d_s * sgd_w + d_a * adam_w) * coef


@triton.jit
def mas_reduced_update(d_a, d_s, dot, neg_eta_a, neg_lr, neg_ratio, a_scale, s_scale, VARIANT: tl.constexpr):
    """The per-layer variants, given the tensor's reductions (reference.mas_update):
    correction: the Adam step when <d_a, d_s> < 0, else the SGD step; normalized: -ratio*d_s;
    vector: -(adam_w*eta_a*d_a + sgd_w*ratio*d_s), with ratio = ||eta_a*d_a|| / ||d_s|| (0 when ||d_s|| = 0)."""
    if VARIANT == V_CORRECTION:
        return tl.where(dot < 0, d_a * neg_eta_a, d_s * neg_lr)
    elif VARIANT == V_NORMALIZED:
        return d_s * neg_ratio
    else:
        return -(d_a * a_scale + d_s * s_scale)


@triton.jit
def _mas_block(offs, mask, pp, gp, mp, vp, bp, sc, first, C: tl.constexpr, MASKED: tl.constexpr,
               HAS_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr,
               MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, VARIANT: tl.constexpr, PASS: tl.constexpr, rc,
               ROUND: tl.constexpr, UPDATE_STATE: tl.constexpr, STORE_STATE: tl.constexpr):
    inv, wd, omb1, b2, omb2, eps, sqrt_bc2, mom, omd, adam_w, sgd_w, coef, dot, neg_eta_a, neg_lr, neg_ratio, \
        a_scale, s_scale, decay = sc
    w, d = load_w_grad(pp, gp, offs, mask, inv, wd, C, MASKED, HAS_SCALE, MAXIMIZE, HAS_WD and not DECOUPLED)
    if HAS_WD and DECOUPLED:
        w = w * decay  # decoupled weight decay: w shrinks where it is written (the sum pass, or pass 1)
    # UPDATE_STATE: this pass computes the new moments from the stored ones (pass 0; and pass 1 with bfloat16
    # state), STORE_STATE: it stores them (pass 0 with float32 state, pass 1 with bfloat16 state: pass 0 then only
    # sums over the unrounded new moments, and pass 1 recomputes them, bitwise the same, applies the update with
    # them and stores them rounded, as the cpu backend and the reference do).
    m = tl.load(mp + offs, mask=mask).to(C)
    v = tl.load(vp + offs, mask=mask).to(C)
    if UPDATE_STATE:
        m, v = adam_moments(m, v, d, omb1, b2, omb2)
        if STORE_STATE:
            store_state(mp, offs, m, mask, rc, 1, ROUND)  # (streams: hyper.STATE_STREAMS)
            store_state(vp, offs, v, mask, rc, 2, ROUND)
    d_a = adam_direction(m, v, sqrt_bc2, eps)
    d_s = d
    if MOMENTUM:
        buf = tl.load(bp + offs, mask=mask).to(C)
        if UPDATE_STATE:
            d_s, buf = sgd_direction(buf, d, mom, omd, first, NESTEROV)
            if STORE_STATE:
                store_state(bp, offs, buf, mask, rc, 3, ROUND)
        else:
            d_s = sgd_dir_from_buf(d, buf, mom, NESTEROV)
    s_dot = tl.zeros((), tl.float64)
    s_aa = tl.zeros((), tl.float64)
    s_ss = tl.zeros((), tl.float64)
    if VARIANT == V_SUM:
        w = w + mas_sum_update(d_a, d_s, adam_w, sgd_w, coef)
        store_param(pp, offs, w, mask, rc, ROUND)
    elif PASS == 0:
        a64 = d_a.to(tl.float64)
        s64 = d_s.to(tl.float64)
        if MASKED:
            a64 = tl.where(mask, a64, 0.0)
            s64 = tl.where(mask, s64, 0.0)
        s_dot = tl.sum(a64 * s64)
        s_aa = tl.sum(a64 * a64)
        s_ss = tl.sum(s64 * s64)
    else:
        w = w + mas_reduced_update(d_a, d_s, dot, neg_eta_a, neg_lr, neg_ratio, a_scale, s_scale, VARIANT)
        store_param(pp, offs, w, mask, rc, ROUND)
    return s_dot, s_aa, s_ss


@triton.jit(do_not_specialize=["T"])  # the tensor count: one compile whatever it is
def mas_kernel(chunks, meta, ptrs, T: tl.int64, lr_ptr, scale_ptr, found_ptr, partials, totals, counters,
               lr: tl.float64, beta1: tl.float64, beta2: tl.float64, eps: tl.float64, wd: tl.float64,
               momentum: tl.float64, dampening: tl.float64, adam_w: tl.float64, sgd_w: tl.float64,
               P: tl.constexpr, C: tl.constexpr, S: tl.constexpr, LR_TENSOR: tl.constexpr, HAS_SCALE: tl.constexpr,
               HAS_FOUND_INF: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr,
               MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, VARIANT: tl.constexpr, PASS: tl.constexpr,
               ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr, seed_ptr=None,
               ROUND: tl.constexpr = 0, UPDATE_STATE: tl.constexpr = True, STORE_STATE: tl.constexpr = True):
    pid = tl.program_id(0)
    t, start, n = chunk_header(chunks, meta, pid, 4, CHUNK)
    s_dot = tl.zeros((), tl.float64)
    s_aa = tl.zeros((), tl.float64)
    s_ss = tl.zeros((), tl.float64)
    if not skip_step(found_ptr, HAS_FOUND_INF):
        pp = table_ptr(ptrs, L_P, t, T, P, ALIGNED)
        gp = table_ptr(ptrs, L_G, t, T, P, ALIGNED)
        mp = table_ptr(ptrs, L_M, t, T, S, ALIGNED)  # S: the state dtype (C, or bfloat16: state_dtype)
        vp = table_ptr(ptrs, L_V, t, T, S, ALIGNED)
        bp = table_ptr(ptrs, L_BUF, t, T, S, ALIGNED)
        stp = table_ptr(ptrs, L_STEP, t, T, tl.float32, False)
        # Pass 1 runs after the finalize advanced the step, so the step tensor already holds k there.
        k = tl.load(stp).to(tl.float64) + (1.0 if PASS == 0 else 0.0)
        rc = rounding_ctx(ptrs, seed_ptr, L_COMP, t, T, k, P, ROUND, ALIGNED)
        lr64 = load_lr(lr, lr_ptr, LR_TENSOR)
        b1, b2, bc1, bc2 = bias_corrections(beta1, beta2, k)
        eta_a = lr64 / bc1
        aw = f64(adam_w)
        sw = f64(sgd_w)
        dot = tl.zeros((), tl.float64)
        ratio = tl.zeros((), tl.float64)
        if PASS == 1:
            dot = tl.load(totals + t * 3)
            norm_a = eta_a * tl.sqrt(tl.load(totals + t * 3 + 1))
            norm_s = tl.sqrt(tl.load(totals + t * 3 + 2))
            ratio = tl.where(norm_s > 0, norm_a / tl.where(norm_s > 0, norm_s, 1.0), 0.0)
        sc = (inv_scale(scale_ptr, HAS_SCALE), f64(wd).to(C), (1.0 - b1).to(C), b2.to(C), (1.0 - b2).to(C),
              f64(eps).to(C), sqrt_ieee(bc2).to(C), f64(momentum).to(C), (1.0 - f64(dampening)).to(C),
              aw.to(C), sw.to(C), (-(sw * lr64 + aw * eta_a)).to(C), dot, (-eta_a).to(C), (-lr64).to(C),
              (-ratio).to(C), (aw * eta_a).to(C), (sw * ratio).to(C), (1.0 - lr64 * f64(wd)).to(C))
        first = k == 1.0
        if start + CHUNK <= n:
            for i in range(0, CHUNK, BLOCK):
                offs = start + i + tl.arange(0, BLOCK)
                a, b, c = _mas_block(offs, None, pp, gp, mp, vp, bp, sc, first, C, False, HAS_SCALE, MAXIMIZE,
                                     HAS_WD, DECOUPLED, MOMENTUM, NESTEROV, VARIANT, PASS, rc, ROUND,
                                     UPDATE_STATE, STORE_STATE)
                s_dot += a
                s_aa += b
                s_ss += c
        else:
            for j in range(0, n - start, BLOCK):  # (a different name: loop variables outlive the if)
                offs = start + j + tl.arange(0, BLOCK)
                a, b, c = _mas_block(offs, offs < n, pp, gp, mp, vp, bp, sc, first, C, True, HAS_SCALE, MAXIMIZE,
                                     HAS_WD, DECOUPLED, MOMENTUM, NESTEROV, VARIANT, PASS, rc, ROUND,
                                     UPDATE_STATE, STORE_STATE)
                s_dot += a
                s_aa += b
                s_ss += c
    if VARIANT != V_SUM and PASS == 0:
        tl.store(partials + pid * 4, s_dot)
        tl.store(partials + pid * 4 + 1, s_aa)
        tl.store(partials + pid * 4 + 2, s_ss)
        tl.store(partials + pid * 4 + 3, tl.zeros((), tl.float64))
        _last_program_sums(meta, ptrs, T, t, found_ptr, partials, totals, counters, HAS_FOUND_INF)


@triton.jit
def _last_program_sums(meta, ptrs, T, t, found_ptr, partials, totals, counters, HAS_FOUND_INF: tl.constexpr):
    """Pass 0's tail: the tensor's last program to get here (the counter's release/acquire makes every other
    program's partials visible to it) sums the tensor's chunk partials in chunk order into totals[t], advances
    its step unless found_inf, and resets the counter for the next step (and CUDA-graph replays)."""
    tl.debug_barrier()  # every thread of this program has stored its part before the release
    c0 = tl.load(meta + t * 4 + 1)
    c1 = tl.load(meta + t * 4 + 2)
    done = tl.atomic_add(counters + t, 1, sem="acq_rel")
    if done == c1 - c0 - 1:
        acc_dot = tl.zeros((), tl.float64)
        acc_aa = tl.zeros((), tl.float64)
        acc_ss = tl.zeros((), tl.float64)
        for c in range(c0, c1):
            acc_dot += tl.load(partials + c * 4)
            acc_aa += tl.load(partials + c * 4 + 1)
            acc_ss += tl.load(partials + c * 4 + 2)
        tl.store(totals + t * 3, acc_dot)
        tl.store(totals + t * 3 + 1, acc_aa)
        tl.store(totals + t * 3 + 2, acc_ss)
        if not skip_step(found_ptr, HAS_FOUND_INF):
            stp = table_ptr(ptrs, L_STEP, t, T, tl.float32, False)
            tl.store(stp, tl.load(stp) + 1.0)
        tl.atomic_xchg(counters + t, 0)
