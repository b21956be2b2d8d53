"""The gradient-norm kernels of the Triton backend (fused_hybrid.grad_clip; csrc/grad_norm.h is the contract).

``grad_norm_kernel``: one program per chunk of the chunk table (``common``'s layout, one operand list: the
gradients) reads its chunk once, unscales each element as the update kernels do (``effective_grad``), and writes one
float64 partial to ``slots[pid]``: the sum of |x| (MODE 0), x^2 (1), |x|^p (2), or the max |x| (3, NaN when any
element is NaN). ``norm_finalize_kernel``: one program combines the slots in slot order (tensor order, then chunk
order). Both reductions are fixed trees over fixed lanes: bitwise reproducible, no atomics.
"""
import triton
import triton.language as tl

from .common import META_W as _META_W, chunk_header, effective_grad, inv_scale, table_ptr

# A constexpr: a jit function may read a module global only as one (the interpreter reads any global, so
# only a GPU compile showed it: bench/triton_ptx.py's clip configurations now compile it for sm_90).
META_W = tl.constexpr(_META_W)


@triton.jit
def _term(x, p, MODE: tl.constexpr):
    a = tl.abs(x)
    if MODE == 0:
        return a
    elif MODE == 1:
        return x * x
    elif MODE == 2:
        # |x|^p as exp2(p*log2|x|) (the interpreter has no pow): within a few float64 ulps of pow.
        return tl.where(a == 0.0, 0.0, tl.exp2(p * tl.log2(tl.where(a == 0.0, 1.0, a))))
    else:
        return a


@triton.jit(do_not_specialize=["T"])
def grad_norm_kernel(chunks, meta, ptrs, T: tl.int64, scale_ptr, slots, p, P: tl.constexpr, C: tl.constexpr,
                     HAS_SCALE: tl.constexpr, MODE: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
                     ALIGNED: tl.constexpr):
    pid = tl.program_id(0)
    t, start, n = chunk_header(chunks, meta, pid, META_W, CHUNK)
    gp = table_ptr(ptrs, 0, t, T, P, ALIGNED)
    inv = inv_scale(scale_ptr, HAS_SCALE)
    acc = tl.zeros([BLOCK], tl.float64)
    nans = tl.zeros([BLOCK], tl.float64)  # MODE 3: NaN where an element was NaN, else 0
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        mask = offs < n
        x = effective_grad(tl.load(gp + offs, mask=mask, other=0.0), inv, C, HAS_SCALE, False).to(tl.float64)
        if MODE == 3:
            acc = tl.maximum(acc, tl.abs(x))
            nans += tl.where(x != x, x, 0.0)
        else:
            acc += _term(x, p, MODE)
    if MODE == 3:
        r = tl.max(acc, axis=0) + tl.sum(nans, axis=0)
    else:
        r = tl.sum(acc, axis=0)
    tl.store(slots + pid, r)


@triton.jit(do_not_specialize=["n"])
def norm_finalize_kernel(slots, n, out, MODE: tl.constexpr, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], tl.float64)
    nans = tl.zeros([BLOCK], tl.float64)
    for off in range(0, n, BLOCK):
        offs = off + tl.arange(0, BLOCK)
        x = tl.load(slots + offs, mask=offs < n, other=0.0)
        if MODE == 3:
            acc = tl.maximum(acc, x)
            nans += tl.where(x != x, x, 0.0)
        else:
            acc += x
    if MODE == 3:
        r = tl.max(acc, axis=0) + tl.sum(nans, axis=0)
    else:
        r = tl.sum(acc, axis=0)
    tl.store(out, r)
