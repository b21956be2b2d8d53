"""The SGD family in Triton: torch.optim.SGD (momentum, dampening, Nesterov, L2, maximize) and SWATS's SGD
phase. Arithmetic as fused_hybrid/reference.py (sgd_direction, swats_sgd_phase)."""
import triton
import triton.language as tl

from .common import chunk_header, f64, inv_scale, load_lr, load_w_grad, skip_step, table_ptr
from .rounding import rounding_ctx, store_param, store_state

L_P = tl.constexpr(0)
L_G = tl.constexpr(1)
L_BUF = tl.constexpr(2)
L_STEP = tl.constexpr(3)  # only with stochastic rounding (SGD counts steps for its random bits)
L_COMP = tl.constexpr(4)  # Kahan buffers


@triton.jit
def sgd_dir_from_buf(g, buf, mom, NESTEROV: tl.constexpr):
    """The direction once the buffer is current: g + momentum*buf with Nesterov, else buf."""
    if NESTEROV:
        return g + mom * buf
    else:
        return buf


@triton.jit
def sgd_direction(buf, g, mom, omd, first, NESTEROV: tl.constexpr):
    """torch.optim.SGD with momentum: buf = g on a fresh buffer, else momentum*buf + (1-dampening)*g.
    Returns (direction, new buf)."""
    buf = tl.where(first, g, buf * mom + omd * g)
    return sgd_dir_from_buf(g, buf, mom, NESTEROV), buf


@triton.jit
def swats_sgd_phase(w, buf, g, b1, neg_sgd_lr, NESTEROV: tl.constexpr):
    """SWATS SGD phase (Keskar & Socher, Alg. 1 lines 5-6): buf = b1*buf + g ; w -= (1-b1)*Lambda * buf, where
    ``neg_sgd_lr`` = -(1-b1)*Lambda (LR-scheduler scaled). Nesterov (not in the paper) steps along g + b1*buf."""
    buf = buf * b1 + g
    d = sgd_dir_from_buf(g, buf, b1, NESTEROV)
    return w + neg_sgd_lr * d, buf


@triton.jit
def _sgd_block(offs, mask, pp, gp, bp, inv, wd, decay, mom, omd, neg_lr, first, rc, C: tl.constexpr,
               MASKED: tl.constexpr, HAS_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
               DECOUPLED: tl.constexpr, MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, ROUND: tl.constexpr):
    w, g = load_w_grad(pp, gp, offs, mask, inv, wd, C, MASKED, HAS_SCALE, MAXIMIZE, HAS_WD and not DECOUPLED)
    if HAS_WD and DECOUPLED:
        w = w * decay  # decoupled weight decay (AdamW's form): decay first, then the step
    d = g
    if MOMENTUM:
        d, buf = sgd_direction(tl.load(bp + offs, mask=mask).to(C), g, mom, omd, first, NESTEROV)
        store_state(bp, offs, buf, mask, rc, 1, ROUND)  # (streams: hyper.STATE_STREAMS)
    w = w + neg_lr * d
    store_param(pp, offs, w, mask, rc, ROUND)


@triton.jit(do_not_specialize=["T"])  # the tensor count: one compile whatever it is
def sgd_kernel(chunks, meta, ptrs, T: tl.int64, lr_ptr, scale_ptr, found_ptr,
               lr: tl.float64, momentum: tl.float64, dampening: tl.float64, wd: tl.float64,
               P: tl.constexpr, C: tl.constexpr, S: tl.constexpr, LR_TENSOR: tl.constexpr, HAS_SCALE: tl.constexpr,
               HAS_FOUND_INF: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr,
               MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, ALIGNED: tl.constexpr,
               BLOCK: tl.constexpr, CHUNK: tl.constexpr, seed_ptr=None, ROUND: tl.constexpr = 0):
    pid = tl.program_id(0)
    t, start, n = chunk_header(chunks, meta, pid, 4, CHUNK)
    if not skip_step(found_ptr, HAS_FOUND_INF):
        k = tl.zeros((), tl.float64)
        if ROUND % 4 == 1 or ROUND >= 4:  # stochastic rounding (param or state): its bits' counter
            k = tl.load(table_ptr(ptrs, L_STEP, t, T, tl.float32, False)).to(tl.float64) + 1.0
        rc = rounding_ctx(ptrs, seed_ptr, L_COMP, t, T, k, P, ROUND, ALIGNED)
        pp = table_ptr(ptrs, L_P, t, T, P, ALIGNED)
        gp = table_ptr(ptrs, L_G, t, T, P, ALIGNED)
        bp = table_ptr(ptrs, L_BUF, t, T, S, ALIGNED)  # S: the state dtype (C, or bfloat16: state_dtype)
        first = tl.load(meta + t * 4 + 3) != 0  # a fresh momentum buffer (torch: buf = g, no dampening)
        inv = inv_scale(scale_ptr, HAS_SCALE)
        wd_c = f64(wd).to(C)
        mom = f64(momentum).to(C)
        omd = (1.0 - f64(dampening)).to(C)
        lr64 = load_lr(lr, lr_ptr, LR_TENSOR)
        neg_lr = (-lr64).to(C)
        decay = (1.0 - lr64 * f64(wd)).to(C)
        if start + CHUNK <= n:
            for i in range(0, CHUNK, BLOCK):
                offs = start + i + tl.arange(0, BLOCK)
                _sgd_block(offs, None, pp, gp, bp, inv, wd_c, decay, mom, omd, neg_lr, first, rc, C, False,
                           HAS_SCALE, MAXIMIZE, HAS_WD, DECOUPLED, MOMENTUM, NESTEROV, ROUND)
        else:
            for j in range(0, n - start, BLOCK):  # (a different name: loop variables outlive the if)
                offs = start + j + tl.arange(0, BLOCK)
                _sgd_block(offs, offs < n, pp, gp, bp, inv, wd_c, decay, mom, omd, neg_lr, first, rc, C, True,
                           HAS_SCALE, MAXIMIZE, HAS_WD, DECOUPLED, MOMENTUM, NESTEROV, ROUND)
