"""The rms family in Triton: torch.optim.RMSprop (alpha, centered, momentum; the lecture's RMSProp, seed 002) and
torch.optim.Adagrad (lr_decay, initial accumulator) in one kernel, sq = keep*sq + add*g^2. The arithmetic follows
fused_hybrid/reference.py's rms_step operation by operation (and rules.h's rms_denominator / rms_step).

One launch updates every tensor of a bucket (program = one chunk of one tensor); the step count is read from each
tensor's step tensor (k = step + 1, for Adagrad's lr decay) and advanced afterwards by ``common.finalize_kernel``.
"""
import triton
import triton.language as tl

from .common import chunk_header, div_ieee, f64, inv_scale, lerp, load_lr, load_w_grad, skip_step, sqrt_ieee, table_ptr
from .rounding import rounding_ctx, store_param, store_state

# Operand lists of the pointer table, in this order.
L_P = tl.constexpr(0)
L_G = tl.constexpr(1)
L_SQ = tl.constexpr(2)
L_GAVG = tl.constexpr(3)
L_BUF = tl.constexpr(4)
L_STEP = tl.constexpr(5)
L_COMP = tl.constexpr(6)  # Kahan buffers


@triton.jit
def _rms_block(offs, mask, pp, gp, sqp, gap, bp, inv, wd, decay, keep, add, eps, mom, neg_lr, rc, C: tl.constexpr,
               MASKED: tl.constexpr, HAS_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
               DECOUPLED: tl.constexpr, CENTERED: tl.constexpr, MOMENTUM: tl.constexpr, ROUND: tl.constexpr):
    w, g = load_w_grad(pp, gp, offs, mask, inv, wd, C, MASKED, HAS_SCALE, MAXIMIZE, HAS_WD and not DECOUPLED)
    if HAS_WD and DECOUPLED:
        w = w * decay  # decoupled weight decay with the group's lr (not Adagrad's decayed one)
    sq = tl.load(sqp + offs, mask=mask).to(C)  # (bfloat16 state: widened exactly; stored by store_state)
    sq = keep * sq + add * g * g  # torch: sq.mul_(keep).addcmul_(g, g, value=add)
    store_state(sqp, offs, sq, mask, rc, 1, ROUND)  # (streams: hyper.STATE_STREAMS)
    if CENTERED:
        ga = lerp(tl.load(gap + offs, mask=mask).to(C), g, add)
        store_state(gap, offs, ga, mask, rc, 2, ROUND)
        avg = sqrt_ieee(sq - ga * ga) + eps
    else:
        avg = sqrt_ieee(sq) + eps
    if MOMENTUM:
        buf = tl.load(bp + offs, mask=mask).to(C) * mom + div_ieee(g, avg)
        store_state(bp, offs, buf, mask, rc, 3, ROUND)
        w = w + neg_lr * buf
    else:
        w = w + neg_lr * div_ieee(g, avg)
    store_param(pp, offs, w, mask, rc, ROUND)


@triton.jit(do_not_specialize=["T"])  # the tensor count: one compile whatever it is
def rms_kernel(chunks, meta, ptrs, T: tl.int64, lr_ptr, scale_ptr, found_ptr,
               lr: tl.float64, keep: tl.float64, add: tl.float64, eps: tl.float64, wd: tl.float64,
               momentum: tl.float64, lr_decay: tl.float64,
               P: tl.constexpr, C: tl.constexpr, S: tl.constexpr, LR_TENSOR: tl.constexpr, HAS_SCALE: tl.constexpr,
               HAS_FOUND_INF: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr,
               CENTERED: tl.constexpr, MOMENTUM: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
               CHUNK: tl.constexpr, seed_ptr=None, ROUND: tl.constexpr = 0):
    pid = tl.program_id(0)
    t, start, n = chunk_header(chunks, meta, pid, 4, CHUNK)
    if not skip_step(found_ptr, HAS_FOUND_INF):
        pp = table_ptr(ptrs, L_P, t, T, P, ALIGNED)
        gp = table_ptr(ptrs, L_G, t, T, P, ALIGNED)
        sqp = table_ptr(ptrs, L_SQ, t, T, S, ALIGNED)  # S: the state dtype (C, or bfloat16: state_dtype)
        gap = table_ptr(ptrs, L_GAVG, t, T, S, ALIGNED)
        bp = table_ptr(ptrs, L_BUF, t, T, S, ALIGNED)
        stp = table_ptr(ptrs, L_STEP, t, T, tl.float32, False)
        k = tl.load(stp).to(tl.float64) + 1.0
        rc = rounding_ctx(ptrs, seed_ptr, L_COMP, t, T, k, P, ROUND, ALIGNED)
        # torch.optim.Adagrad's clr = lr / (1 + (k-1)*lr_decay), in float64 as on its host.
        lr64 = load_lr(lr, lr_ptr, LR_TENSOR)
        neg_lr = (-(lr64 / (1.0 + (k - 1.0) * f64(lr_decay)))).to(C)
        decay = (1.0 - lr64 * f64(wd)).to(C)
        inv = inv_scale(scale_ptr, HAS_SCALE)
        sc = (f64(wd).to(C), f64(keep).to(C), f64(add).to(C), f64(eps).to(C), f64(momentum).to(C))
        if start + CHUNK <= n:
            for i in range(0, CHUNK, BLOCK):
                offs = start + i + tl.arange(0, BLOCK)
                _rms_block(offs, None, pp, gp, sqp, gap, bp, inv, sc[0], decay, sc[1], sc[2], sc[3], sc[4], neg_lr,
                           rc, C, False, HAS_SCALE, MAXIMIZE, HAS_WD, DECOUPLED, CENTERED, MOMENTUM, ROUND)
        else:
            for j in range(0, n - start, BLOCK):  # (a different name: loop variables outlive the if)
                offs = start + j + tl.arange(0, BLOCK)
                _rms_block(offs, offs < n, pp, gp, sqp, gap, bp, inv, sc[0], decay, sc[1], sc[2], sc[3], sc[4], neg_lr,
                           rc, C, True, HAS_SCALE, MAXIMIZE, HAS_WD, DECOUPLED, CENTERED, MOMENTUM, ROUND)
