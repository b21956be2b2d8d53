"""ND-Adam (Zhang 2017, Algorithm 1) in Triton: the row-wise kernel for tensors of weight vectors.

A tensor is viewed as [outer, L, inner] with its weight vectors along L (the vector axes must be consecutive
dims; the default, all dims but 0, gives inner = 1 and contiguous rows). One program takes ROWS vectors of one
tensor and walks their L elements in BLOCK_L columns several times, because each stage needs a full-vector
reduction of the previous one: ||w|| (first step), <g,w>, then m and <g,g>, then the new w and its norm, then
the renormalized store. The parameter is written once, at the end (bf16/fp16 params round once, as in the
reference). Row sums accumulate in float64. A group's 1-D tensors (L = 0: plain Adam, as ND-Adam's reference code
does) are chunks of this kernel too, ROWS blocks of FLAT_BLOCK elements each, stepped by the adaptive family's
block function; so a group is one launch plus the finalize.
Arithmetic as fused_hybrid/reference.py (ndadam_vector_step).
"""
import triton
import triton.language as tl

from .adaptive import CLIP_NONE, FORM_TORCH, _adaptive_block
from .common import (bias_corrections, chunk_header, div_ieee, effective_grad, f64, inv_scale, lerp, load_lr,
                     skip_step, sqrt_ieee, table_ptr)
from .rounding import rounding_ctx, store_param, store_state

L_P = tl.constexpr(0)
L_G = tl.constexpr(1)
L_M = tl.constexpr(2)
L_V = tl.constexpr(3)
L_STEP = tl.constexpr(4)
L_COMP = tl.constexpr(5)  # Kahan buffers
META_W = 6  # numel, chunk begin, chunk end, flag, L (vector length), inner stride


@triton.jit
def nd_project(g, w, gw):
    """Remove the radial part of the gradient: g - <g,w> w (||w|| = 1)."""
    return g - gw * w


@triton.jit
def nd_new_w(w, m, v, eps, step):
    """w - lr*sqrt(bc2)/bc1 * m / (sqrt(v) + eps), v one scalar per vector (broadcast along the row)."""
    return w - div_ieee(m, sqrt_ieee(v) + eps) * step


@triton.jit
def _load_wg(pp, gp, offs, mask, inv, scale_w, wd, C: tl.constexpr, HAS_SCALE: tl.constexpr,
             MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr):
    """w (normalized on the first step: scale_w = 1/||w|| as a division, else 1) and the weight-decayed
    gradient."""
    w = tl.load(pp + offs, mask=mask, other=0.0).to(C)
    w = div_ieee(w, scale_w)
    g = effective_grad(tl.load(gp + offs, mask=mask, other=0.0), inv, C, HAS_SCALE, MAXIMIZE)
    if HAS_WD:
        g = g + wd * w
    return w, g


@triton.jit(do_not_specialize=["T"])  # the tensor count: one compile whatever it is
def ndadam_kernel(chunks, meta, ptrs, T: tl.int64, lr_ptr, scale_ptr, found_ptr,
                  lr: tl.float64, beta1: tl.float64, beta2: tl.float64, eps: tl.float64, wd: tl.float64,
                  P: tl.constexpr, C: tl.constexpr, S: tl.constexpr, LR_TENSOR: tl.constexpr, HAS_SCALE: tl.constexpr,
                  HAS_FOUND_INF: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
                  ROWS: tl.constexpr, BLOCK_L: tl.constexpr, FLAT_BLOCK: tl.constexpr = 1024, seed_ptr=None,
                  ROUND: tl.constexpr = 0):
    pid = tl.program_id(0)
    t, r0, n = chunk_header(chunks, meta, pid, 6, ROWS)
    if not skip_step(found_ptr, HAS_FOUND_INF):
        L = tl.load(meta + t * 6 + 4)
        inner = tl.load(meta + t * 6 + 5)
        pp = table_ptr(ptrs, L_P, t, T, P, False)
        gp = table_ptr(ptrs, L_G, t, T, P, False)
        mp = table_ptr(ptrs, L_M, t, T, S, False)  # S: the state dtype (C, or bfloat16: state_dtype)
        vp = table_ptr(ptrs, L_V, t, T, S, False)
        stp = table_ptr(ptrs, L_STEP, t, T, tl.float32, False)
        k = tl.load(stp).to(tl.float64) + 1.0
        rc = rounding_ctx(ptrs, seed_ptr, L_COMP, t, T, k, P, ROUND, False)  # rows: no alignment hint, as above
        lr64 = load_lr(lr, lr_ptr, LR_TENSOR)
        b1, b2, bc1, bc2 = bias_corrections(beta1, beta2, k)
        inv = inv_scale(scale_ptr, HAS_SCALE)
        wd_c = f64(wd).to(C)
        omb1 = (1.0 - b1).to(C)
        b2_c = b2.to(C)
        omb2 = (1.0 - b2).to(C)
        eps_c = f64(eps).to(C)
        step = (lr64 * sqrt_ieee(bc2) / bc1).to(C)

        if L == 0:
            # A 1-D tensor: plain Adam with L2 decay (torch form), units of FLAT_BLOCK elements.
            zero = tl.zeros((), tl.float64).to(C)
            sc = (inv, wd_c, zero, omb1, b1.to(C), b2_c, omb2, eps_c, sqrt_ieee(bc2).to(C), (-(lr64 / bc1)).to(C),
                  zero, f64(1.0), zero, zero, zero)
            for u in range(0, ROWS):
                offs = (r0 + u) * FLAT_BLOCK + tl.arange(0, FLAT_BLOCK)
                _adaptive_block(offs, offs < n, pp, gp, mp, vp, None, None, sc, C, True, HAS_SCALE, MAXIMIZE,
                                HAS_WD, False, False, FORM_TORCH, False, CLIP_NONE, False, False, False, rc, ROUND)
        else:
            _nd_rows(pp, gp, mp, vp, r0, n, L, inner, k, inv, wd_c, omb1, b2_c, omb2, eps_c, step, rc, C, P,
                     HAS_SCALE, MAXIMIZE, HAS_WD, ROWS, BLOCK_L, ROUND)


@triton.jit
def _row_tile(base, rmask, cols, L, inner):
    """Offsets and mask of columns ``cols`` of the program's rows (vector element j of row r sits at
    base[r] + j * inner)."""
    return base[:, None] + cols[None, :] * inner, rmask[:, None] & (cols < L)[None, :]


@triton.jit
def _nd_rows(pp, gp, mp, vp, r0, n, L, inner, k, inv, wd_c, omb1, b2_c, omb2, eps_c, step, rc, C: tl.constexpr,
             P: tl.constexpr, HAS_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
             ROWS: tl.constexpr, BLOCK_L: tl.constexpr, ROUND: tl.constexpr):
    """ROWS weight vectors of one tensor, starting at vector r0."""
    nrows = n // L
    rows = r0 + tl.arange(0, ROWS)
    rmask = rows < nrows
    base = (rows // inner) * (L * inner) + rows % inner
    cols0 = tl.arange(0, BLOCK_L)
    one = tl.full([ROWS], 1.0, C)

    # Stage 1 (first step only): ||w|| per vector; the paper normalizes at initialization.
    scale_w = one
    if k == 1.0:
        ww = tl.zeros([ROWS], tl.float64)
        for j0 in range(0, L, BLOCK_L):
            offs, mask = _row_tile(base, rmask, j0 + cols0, L, inner)
            w0 = tl.load(pp + offs, mask=mask, other=0.0).to(C).to(tl.float64)
            ww += tl.sum(w0 * w0, axis=1)
        scale_w = sqrt_ieee(ww).to(C)
        scale_w = tl.where(rmask, scale_w, 1.0)
    # Stage 2: <g, w>.
    acc = tl.zeros([ROWS], tl.float64)
    for j0 in range(0, L, BLOCK_L):
        offs, mask = _row_tile(base, rmask, j0 + cols0, L, inner)
        w, g = _load_wg(pp, gp, offs, mask, inv, scale_w[:, None], wd_c, C, HAS_SCALE, MAXIMIZE, HAS_WD)
        acc += tl.sum((g * w).to(tl.float64), axis=1)
    gw = acc.to(C)
    # Stage 3: project, first moment, <g, g>; then the per-vector second moment. With bfloat16 state (DEFER) the new
    # m is not stored here: stages 4 and 5 recompute it from the old m (the same arithmetic, the same bits) and
    # stage 5 stores it rounded, so the update uses the unrounded m as the cpu backend and the reference do.
    DEFER: tl.constexpr = mp.dtype.element_ty != C
    acc = tl.zeros([ROWS], tl.float64)
    for j0 in range(0, L, BLOCK_L):
        offs, mask = _row_tile(base, rmask, j0 + cols0, L, inner)
        g = _nd_g(pp, gp, offs, mask, inv, scale_w, wd_c, gw, C, HAS_SCALE, MAXIMIZE, HAS_WD)
        if not DEFER:
            m = lerp(tl.load(mp + offs, mask=mask, other=0.0), g, omb1)
            store_state(mp, offs, m, mask, rc, 1, ROUND)  # (streams: hyper.STATE_STREAMS)
        acc += tl.sum((g * g).to(tl.float64), axis=1)
    v = tl.load(vp + rows, mask=rmask, other=0.0).to(C)
    v = v * b2_c + omb2 * acc.to(C)
    store_state(vp, rows, v, rmask, rc, 2, ROUND)  # (element: the vector's index)
    # Stage 4: the new w's norm; stage 5: the renormalized store.
    acc = tl.zeros([ROWS], tl.float64)
    for j0 in range(0, L, BLOCK_L):
        offs, mask = _row_tile(base, rmask, j0 + cols0, L, inner)
        w = div_ieee(tl.load(pp + offs, mask=mask, other=0.0).to(C), scale_w[:, None])
        if DEFER:
            m = _nd_new_m(pp, gp, mp, offs, mask, inv, scale_w, wd_c, gw, omb1, C, HAS_SCALE, MAXIMIZE, HAS_WD)
        else:
            m = tl.load(mp + offs, mask=mask, other=0.0)
        w = nd_new_w(w, m, v[:, None], eps_c, step)
        w64 = w.to(tl.float64)
        acc += tl.sum(w64 * w64, axis=1)
    norm = tl.where(rmask, sqrt_ieee(acc).to(C), 1.0)
    for j0 in range(0, L, BLOCK_L):
        offs, mask = _row_tile(base, rmask, j0 + cols0, L, inner)
        w = div_ieee(tl.load(pp + offs, mask=mask, other=0.0).to(C), scale_w[:, None])
        if DEFER:
            m = _nd_new_m(pp, gp, mp, offs, mask, inv, scale_w, wd_c, gw, omb1, C, HAS_SCALE, MAXIMIZE, HAS_WD)
        else:
            m = tl.load(mp + offs, mask=mask, other=0.0)
        w = nd_new_w(w, m, v[:, None], eps_c, step)
        store_param(pp, offs, div_ieee(w, norm[:, None]), mask, rc, ROUND)
        if DEFER:  # (after the param store: the m loads above read the old m)
            store_state(mp, offs, m, mask, rc, 1, ROUND)


@triton.jit
def _nd_g(pp, gp, offs, mask, inv, scale_w, wd_c, gw, C: tl.constexpr, HAS_SCALE: tl.constexpr,
          MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr):
    """A tile's projected gradient (stage 3)."""
    w, g = _load_wg(pp, gp, offs, mask, inv, scale_w[:, None], wd_c, C, HAS_SCALE, MAXIMIZE, HAS_WD)
    return nd_project(g, w, gw[:, None])


@triton.jit
def _nd_new_m(pp, gp, mp, offs, mask, inv, scale_w, wd_c, gw, omb1, C: tl.constexpr, HAS_SCALE: tl.constexpr,
              MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr):
    """A tile's new first moment from its stored one and the projected gradient (stage 3)."""
    g = _nd_g(pp, gp, offs, mask, inv, scale_w, wd_c, gw, C, HAS_SCALE, MAXIMIZE, HAS_WD)
    return lerp(tl.load(mp + offs, mask=mask, other=0.0).to(C), g, omb1)
