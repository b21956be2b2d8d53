"""Bit-exact rounding of float32 values to bfloat16 / float16 as @triton.jit helpers in uint32 arithmetic: the
Triton copy of csrc/include/fused_hybrid/rounding.h (whose comments explain each formula) and of
fused_hybrid/rounding.py; tests/test_rounding.py checks all three agree bit for bit.

Why the kernels store through ``store_cast`` instead of ``.to(dtype)``: Triton 3.8's interpreter casts float32 ->
bfloat16 by truncation (``interpreter.cast_impl`` calls ``_convert_float`` with no rounding mode), while a GPU
build's fptrunc rounds to nearest even. SGD with lr 1e-4 on bfloat16 weights of 1.0 drifted to 0.61 in 100 steps
under the interpreter (every step chopped an ulp off) and stayed at 1.0 on the GPU and the other backends.
``.to(tl.bfloat16, fp_downcast_rounding="rtne")`` is no cure: the interpreter's "rtne" rounds half up and lets a
mantissa carry spill into the exponent by OR. Integer arithmetic on the bits gives the same result under the
interpreter and on the GPU (where it costs a few integer operations per stored element of a memory-bound kernel).
"""
import triton
import triton.language as tl

PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)


@triton.jit
def float_bits(x):
    return x.to(tl.uint32, bitcast=True)


@triton.jit
def _u32(v, like):
    """A uint32 constant broadcast like ``like`` (keeps Python ints from being typed int32/int64)."""
    return tl.full(like.shape, v, tl.uint32)


@triton.jit
def bf16_rne(x):
    """float32 -> bfloat16 bits (uint32 holding 16 bits), nearest, ties to even; NaN -> 0x7FC0."""
    u = float_bits(x)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return tl.where((u & 0x7FFFFFFF) > 0x7F800000, _u32(0x7FC0, u), r)


@triton.jit
def bf16_sr(x, rand):
    """float32 -> bfloat16 bits, stochastic rounding with 32 random bits ``rand`` (uint32)."""
    u = float_bits(x)
    r = (u + (rand & 0xFFFF)) >> 16
    return tl.where((u & 0x7FFFFFFF) > 0x7F800000, _u32(0x7FC0, u), r)


@triton.jit
def bf16_to_float(b):
    return (b.to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def fp16_rne(x):
    """float32 -> float16 bits, nearest, ties to even, subnormals and overflow as IEEE; NaN -> sign | 0x7E00."""
    u = float_bits(x)
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    rb = a - 0x38000000
    normal = (rb + 0x0FFF + ((rb >> 13) & 1)) >> 13
    e = a >> 23
    m = (a & 0x7FFFFF) | 0x800000
    s0 = 126 - tl.minimum(e, _u32(126, u))
    s = tl.minimum(tl.maximum(s0, _u32(14, u)), _u32(25, u))
    sub = (m + ((_u32(1, u) << (s - 1)) - 1) + ((m >> s) & 1)) >> s
    mag = tl.where(a > 0x7F800000, _u32(0x7E00, u),
                   tl.where(a >= 0x477FF000, _u32(0x7C00, u), tl.where(a >= 0x38800000, normal, sub)))
    return sign | mag


@triton.jit
def fp16_sr(x, rand):
    """float32 -> float16 bits, stochastic rounding with 32 random bits (rounding.h's 32-bit form: subnormal
    results round up when the top 32 bits of the dropped fraction plus rand carry out)."""
    u = float_bits(x)
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    normal = (a - 0x38000000 + (rand & 0x1FFF)) >> 13
    e = a >> 23
    m = tl.where(e != 0, (a & 0x7FFFFF) | 0x800000, a & 0x7FFFFF)
    ee = tl.maximum(e, _u32(1, u))
    s0 = 126 - tl.minimum(ee, _u32(126, u))
    q = m >> tl.minimum(s0, _u32(31, u))
    up_shift = tl.where(s0 < 1, _u32(31, u), tl.where(s0 > 32, _u32(0, u), 32 - s0))
    down_shift = tl.where(s0 > 32, tl.minimum(s0 - 32, _u32(31, u)), _u32(0, u))
    f = tl.where(s0 > 32, m >> down_shift, m << up_shift)
    sub = q + tl.where(f + rand < f, _u32(1, u), _u32(0, u))
    mag = tl.where(a > 0x7F800000, _u32(0x7E00, u),
                   tl.where(a >= 0x47800000, _u32(0x7C00, u), tl.where(a >= 0x38800000, normal, sub)))
    return sign | mag


@triton.jit
def fp16_to_float(h):
    """float16 bits (uint32 holding 16 bits) -> float32, exact."""
    h = h.to(tl.uint32)
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    normal = (sign | ((e + 112) << 23) | (m << 13)).to(tl.float32, bitcast=True)
    special = (sign | 0x7F800000 | (m << 13)).to(tl.float32, bitcast=True)
    sub = m.to(tl.float32) * 5.9604644775390625e-08  # 2^-24
    sub = tl.where(sign != 0, -sub, sub)
    return tl.where(e == 0, sub, tl.where(e == 31, special, normal))


@triton.jit
def rne_bits(x, DT: tl.constexpr):
    """Nearest-even bits of float32 x in DT (bfloat16 or float16)."""
    if DT == tl.bfloat16:
        return bf16_rne(x)
    else:
        tl.static_assert(DT == tl.float16, "rne_bits: DT must be bfloat16 or float16")
        return fp16_rne(x)


@triton.jit
def sr_bits(x, rand, DT: tl.constexpr):
    if DT == tl.bfloat16:
        return bf16_sr(x, rand)
    else:
        tl.static_assert(DT == tl.float16, "sr_bits: DT must be bfloat16 or float16")
        return fp16_sr(x, rand)


@triton.jit
def bits_to(b, DT: tl.constexpr):
    """A DT (16-bit float) value with bits b (uint32 holding 16 bits)."""
    return b.to(tl.uint16).to(DT, bitcast=True)


@triton.jit
def bits_to_float(b, DT: tl.constexpr):
    if DT == tl.bfloat16:
        return bf16_to_float(b)
    else:
        return fp16_to_float(b)


@triton.jit
def store_cast(x, DT: tl.constexpr):
    """x converted to the stored dtype DT: nearest even by integer arithmetic for bfloat16 / float16 float32
    values (the same bits under the interpreter and on the GPU), the plain cast otherwise (float32, float64:
    numpy and the GPU both round those to nearest even)."""
    if (DT == tl.bfloat16 or DT == tl.float16) and x.dtype == tl.float32:
        return bits_to(rne_bits(x, DT), DT)
    else:
        return x.to(DT)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 (Salmon et al., SC 2011) on uint32 counters and key, as rounding.h."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, _u32(PHILOX_M0, c0))
        lo0 = c0 * PHILOX_M0
        hi1 = tl.umulhi(c2, _u32(PHILOX_M1, c2))
        lo1 = c2 * PHILOX_M1
        n0 = hi1 ^ c1 ^ k0
        n2 = hi0 ^ c3 ^ k1
        c0 = n0
        c1 = lo1
        c2 = n2
        c3 = lo0
        k0 = k0 + PHILOX_W0
        k1 = k1 + PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def rand32(seed_lo, seed_hi, step, tensor_id, index):
    """rounding.h's rand32 for an int64 block of element indices (within the tensor): word index % 4 of
    Philox4x32-10 with counter (index // 4 as two words, tensor_id, step) and key (seed_lo, seed_hi). The scalars
    are uint32 (or ints that fit one)."""
    group = index >> 2
    c0 = (group & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((group >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c2 = tl.zeros(c0.shape, tl.uint32) + tl.cast(tensor_id, tl.uint32)
    c3 = tl.zeros(c0.shape, tl.uint32) + tl.cast(step, tl.uint32)
    k0 = tl.zeros(c0.shape, tl.uint32) + tl.cast(seed_lo, tl.uint32)
    k1 = tl.zeros(c0.shape, tl.uint32) + tl.cast(seed_hi, tl.uint32)
    x0, x1, x2, x3 = philox4x32_10(c0, c1, c2, c3, k0, k1)
    j = index & 3
    return tl.where(j == 0, x0, tl.where(j == 1, x1, tl.where(j == 2, x2, x3)))


@triton.jit
def is_finite_bits(b, DT: tl.constexpr):
    if DT == tl.bfloat16:
        return (b & 0x7F80) != 0x7F80
    else:
        return (b & 0x7C00) != 0x7C00


@triton.jit
def kahan_store(x, c, DT: tl.constexpr):
    """rounding.h's kahan_store for float32 x (the rule's result from the stored weight) and the stored
    compensation c (a DT value); returns (w', c') in DT. (The stored weight itself is not an input: x already
    holds it.)"""
    y = x + bits_to_float(c.to(tl.uint16, bitcast=True), DT)
    wn = rne_bits(y, DT)
    cn = rne_bits(y - bits_to_float(wn, DT), DT)
    cn = tl.where(is_finite_bits(wn, DT), cn, _u32(0, cn))
    return bits_to(wn, DT), bits_to(cn, DT)


# ---- the param stores of issue 16 (stochastic rounding, Kahan summation), shared by every rule's kernel -----------
# ROUND (a constexpr of every update kernel) is the record's rounding code, fused_hybrid.hyper.ROUND_*, for the param
# store (ROUND % 4): 0 nearest even (store_cast), 1 stochastic rounding with rand32(seed, step, stream 0, flat
# index), 2 the compensated store through the tensor's Kahan buffer (the launchers pass 0 for float32 / float64
# params); plus STATE_SR (4) when the bfloat16 moment buffers of a group's state_dtype are stochastically rounded
# too (stochastic_rounding=True; store_state, stream 1 + the buffer's place in hyper.STATE_STREAMS). One constexpr
# for both, so no kernel signature grew.
STATE_SR = tl.constexpr(4)

@triton.jit
def rounding_ctx(ptrs, seed_ptr, lst, t, T, k, P: tl.constexpr, ROUND: tl.constexpr, ALIGNED: tl.constexpr):
    """(compensation pointer, seed low word, seed high word, step) of tensor t: the pointer from row ``lst`` of
    the table (read only when ROUND == 2; with the 16-byte hint when the host verified the table's pointers, as
    common.table_ptr: without it the Kahan buffer got 16-bit scalar accesses on sm_90), the seed's two words from
    seed_ptr (int64 [T, 2], read only when ROUND == 1) and k, the step count after this step's increment
    (float64), as an integer."""
    cp = tl.load(ptrs + lst * T + t).to(tl.pointer_type(P))
    if ALIGNED:
        cp = tl.multiple_of(cp, 16)
    lo = tl.zeros((), tl.int64)
    hi = tl.zeros((), tl.int64)
    kk = tl.zeros((), tl.int64)
    if ROUND % 4 == 1 or ROUND >= 4:
        lo = tl.load(seed_ptr + 2 * t)
        hi = tl.load(seed_ptr + 2 * t + 1)
        kk = k.to(tl.int64)
    return cp, lo, hi, kk


@triton.jit
def store_param(pp, offs, w, mask, rc, ROUND: tl.constexpr):
    """Store the rule's float result w at pp + offs (offs: the elements' flat indices within the tensor)."""
    DT: tl.constexpr = pp.dtype.element_ty
    if ROUND % 4 == 1:
        r = rand32(rc[1], rc[2], rc[3], 0, offs)
        tl.store(pp + offs, bits_to(sr_bits(w, r, DT), DT), mask=mask)
    elif ROUND % 4 == 2:
        c = tl.load(rc[0] + offs, mask=mask)
        wn, cn = kahan_store(w, c, DT)
        tl.store(pp + offs, wn, mask=mask)
        tl.store(rc[0] + offs, cn, mask=mask)
    else:
        tl.store(pp + offs, store_cast(w, DT), mask=mask)


@triton.jit
def store_state(sp, offs, x, mask, rc, STREAM: tl.constexpr, ROUND: tl.constexpr):
    """Store a moment buffer's new float values x at sp + offs (offs: flat indices within the buffer): the buffer's
    dtype by store_cast (float32 as is; bfloat16 to nearest even), or stochastically rounded to bfloat16 with
    rand32(seed, step, STREAM, offs) when ROUND has STATE_SR."""
    DT: tl.constexpr = sp.dtype.element_ty
    if ROUND >= 4 and DT == tl.bfloat16:
        r = rand32(rc[1], rc[2], rc[3], STREAM, offs)
        tl.store(sp + offs, bits_to(bf16_sr(x, r), DT), mask=mask)
    else:
        tl.store(sp + offs, store_cast(x, DT), mask=mask)
