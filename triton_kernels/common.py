"""Shared @triton.jit pieces of the multi-tensor kernels: table reads, per-tensor scalars, the gradient every
rule sees, torch's lerp, and the finalize kernel (step advance + fixed-order sums of per-chunk partials).

Layout every multi-tensor kernel reads (built and cached by ``fused_hybrid.backends.triton``):

- ``chunks``: int64 [C, 2], (tensor index, chunk number within the tensor) of each program; chunks never span
  tensors.
- ``meta``: int64 [T, META_W], per tensor: numel, first chunk, end chunk, flag (SGD: fresh momentum buffer).
- ``ptrs``: int64 [n_lists, T], the data_ptr() of each operand list (params, grads, each state list, steps).

Pointers loaded from a table carry no alignment information, so when the host has checked that every pointer
is 16-byte aligned (ALIGNED), the full-chunk path says so with ``tl.multiple_of``; the last, partial chunk of a
tensor takes a masked path. Hyperparameters arrive as float64 scalars (so float64 parameters get float64
hyperparameters and the per-tensor scalars match the reference's double-precision host arithmetic) and are
rounded once to the compute dtype where they meet tensor elements, as torch rounds a Python scalar.
"""
import triton
import triton.language as tl

META_W = 4  # numel, chunk begin, chunk end, flag


@triton.jit
def f64(x):
    """A float64 scalar from a float64 kernel argument. (Under the interpreter scalar arguments stay Python
    floats; tl.full keeps their double value where tl.cast would round through float32.)"""
    return tl.full((), x, tl.float64)


@triton.jit
def table_ptr(ptrs, lst, t, T, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Operand list ``lst``'s pointer for tensor ``t``, typed, with the 16-byte alignment hint when the host
    verified it (without the hint a table-loaded pointer gets scalar accesses)."""
    p = tl.load(ptrs + lst * T + t).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        p = tl.multiple_of(p, 16)
    return p


@triton.jit
def pow_int(b, k):
    """b**k for float64 b >= 0 and integral k >= 1, as exp2(k*log2(b)) (no pow in the interpreter; the error,
    ~k*1e-16 relative, vanishes when the bias corrections are rounded to float32)."""
    return tl.where(b == 0.0, 0.0, tl.exp2(k * tl.log2(tl.where(b == 0.0, 1.0, b))))


@triton.jit
def pow_whole(b, k):
    """b**k for float64 b and an integer k >= 0 by binary exponentiation: the same roundings as rules.h pow_whole
    (C++ host and device), so SWATS's switch test decides bit for bit as the cpu and cuda_sim backends'."""
    r = tl.full((), 1.0, tl.float64)
    e = k.to(tl.int64)
    while e != 0:
        if (e & 1) != 0:
            r = r * b
        b = b * b
        e = e >> 1
    return r


@triton.jit
def bias_corrections(beta1, beta2, k):
    """(b1, b2, 1 - b1**k, 1 - b2**k) in float64 for step count k, as the reference computes them on the host."""
    b1 = f64(beta1)
    b2 = f64(beta2)
    return b1, b2, 1.0 - pow_int(b1, k), 1.0 - pow_int(b2, k)


@triton.jit
def load_lr(lr, lr_ptr, LR_TENSOR: tl.constexpr):
    """The learning rate as float64: the float argument, or the 0-dim lr tensor read on the device."""
    if LR_TENSOR:
        return tl.load(lr_ptr).to(tl.float64)
    else:
        return f64(lr)


@triton.jit
def skip_step(found_ptr, HAS_FOUND_INF: tl.constexpr):
    """GradScaler's found_inf, read on the device: when set, nothing changes at all (steps included)."""
    if HAS_FOUND_INF:
        return tl.load(found_ptr) != 0
    else:
        return False


@triton.jit
def inv_scale(scale_ptr, HAS_SCALE: tl.constexpr):
    """1/grad_scale in float64 (the reference divides in double on the host), 1 without a scaler."""
    if HAS_SCALE:
        return 1.0 / tl.load(scale_ptr).to(tl.float64)
    else:
        return tl.full((), 1.0, tl.float64)


@triton.jit
def effective_grad(grad, inv, C: tl.constexpr, HAS_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr):
    """reference.effective_grad: the gradient in the compute dtype, unscaled, negated for maximize."""
    g = grad.to(C)
    if HAS_SCALE:
        g = g * inv.to(C)
    if MAXIMIZE:
        g = -g
    return g


@triton.jit
def lerp(a, b, w):
    """torch.lerp(a, b, w) for a scalar weight, in torch's two-sided form (exact at both ends)."""
    return tl.where(tl.abs(w) < 0.5, a + w * (b - a), b - (b - a) * (1.0 - w))


@triton.jit
def chunk_header(chunks, meta, pid, W: tl.constexpr, CHUNK: tl.constexpr):
    """(tensor index, chunk start, numel) of program ``pid`` (meta rows are W wide). The table holds the chunk's
    number within its tensor; start = number * CHUNK lets the compiler prove start is a multiple of CHUNK (a
    tl.multiple_of on a value returned from a helper is lost when the helper is inlined)."""
    t = tl.load(chunks + 2 * pid)
    start = tl.load(chunks + 2 * pid + 1) * CHUNK
    n = tl.load(meta + t * W)
    return t, start, n


@triton.jit(do_not_specialize=["T"])  # the tensor count: one compile whatever it is
def finalize_kernel(meta, ptrs, T: tl.int64, chunk_partials, out, found_ptr,
                    STEP_LIST: tl.constexpr, HAS_FOUND_INF: tl.constexpr, NP: tl.constexpr, NPP: tl.constexpr,
                    W: tl.constexpr):
    """One program per tensor: advance its step (unless found_inf) and, with NP > 0, sum its chunks' NP
    float64 partials (rows of width NPP) in chunk order into out[t, :NP]: deterministic, no atomics.

    The step is advanced here and not in the update kernel because several programs of one launch read a
    tensor's step; any of them writing it would race with the others."""
    t = tl.program_id(0)
    c0 = tl.load(meta + t * W + 1)
    c1 = tl.load(meta + t * W + 2)
    if not skip_step(found_ptr, HAS_FOUND_INF):
        sp = tl.load(ptrs + STEP_LIST * T + t).to(tl.pointer_type(tl.float32))
        tl.store(sp, tl.load(sp) + 1.0)
    if NP > 0:
        j = tl.arange(0, NPP)
        acc = tl.zeros([NPP], tl.float64)
        for c in range(c0, c1):
            acc += tl.load(chunk_partials + c * NPP + j)
        tl.store(out + t * NP + j, acc, mask=j < NP)


@triton.jit
def sqrt_ieee(x):
    """Correctly rounded sqrt (tl.sqrt is approximate for float32 on the GPU; sqrt_rn takes float32 only)."""
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def div_ieee(x, y):
    """Correctly rounded division (float32 '/' is approximate on the GPU; div_rn takes float32 only)."""
    if x.dtype == tl.float32:
        return tl.div_rn(x, y)
    else:
        return x / y


@triton.jit
def load_w_grad(pp, gp, offs, mask, inv, wd, C: tl.constexpr, MASKED: tl.constexpr, HAS_SCALE: tl.constexpr,
                MAXIMIZE: tl.constexpr, L2: tl.constexpr):
    """A block's parameter (in the compute dtype) and the gradient the rule sees, with L2 weight decay
    (g + wd*w, torch's add_(w, alpha=wd)) when L2. The full-chunk path loads without a mask: a mask would cost
    the 128-bit accesses unless the compiler can prove it uniform."""
    if MASKED:
        w = tl.load(pp + offs, mask=mask, other=0.0).to(C)
        grad = tl.load(gp + offs, mask=mask, other=0.0)
    else:
        w = tl.load(pp + offs).to(C)
        grad = tl.load(gp + offs)
    g = effective_grad(grad, inv, C, HAS_SCALE, MAXIMIZE)
    if L2:
        g = g + wd * w
    return w, g
