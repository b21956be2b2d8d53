"""Bit-exact rounding of float32 tensors to bfloat16 / float16, in torch integer arithmetic: the reference
backend's copy of csrc/include/fused_hybrid/rounding.h (whose comments explain each formula) and of
triton_kernels/rounding.py. tests/test_rounding.py checks the three agree bit for bit.

torch has no uint32 arithmetic, so 32-bit unsigned values live in int64 tensors (0 <= v < 2^32) and every sum or
product that could pass 2^32 is masked with ``& M32``; products of two 32-bit values are split into 16-bit
halves so that no intermediate passes 2^63 (int64 overflow wraps on every platform torch runs on, but nothing
here relies on it).

Functions (float32 tensor in; bits as int64, or tensors of the target dtype through ``as_dtype``):

- ``bf16_rne(x)``, ``fp16_rne(x)``: nearest, ties to even; bits in int64.
- ``bf16_sr(x, r)``, ``fp16_sr(x, r)``: stochastic rounding with 32 random bits ``r`` (int64 in [0, 2^32)).
- ``rand32(seed, step, tensor_id, index)``: Philox4x32-10 bits of each element ``index`` (int64 tensor).
- ``kahan_store(x, w, c)``: the compensated store; w and c are bfloat16 or float16 tensors, returns (w, c).
- ``round_to(x, dtype)``, ``stochastic_round_to(x, dtype, seed, step, tensor_id)``: tensors of ``dtype``.
"""
from __future__ import annotations

import torch

M32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85

_FORMATS = (torch.bfloat16, torch.float16)


def float_bits(x: torch.Tensor) -> torch.Tensor:
    """The bits of a float32 tensor as int64 in [0, 2^32)."""
    if x.dtype != torch.float32:
        raise TypeError(f"rounding: expected a float32 tensor, got {x.dtype}")
    return x.contiguous().view(torch.int32).to(torch.int64) & M32


def bits_float(u: torch.Tensor) -> torch.Tensor:
    """float32 tensor with bits u (int64 in [0, 2^32))."""
    return ((u ^ 0x80000000) - 0x80000000).to(torch.int32).view(torch.float32)


def as_dtype(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bfloat16 / float16 tensor with the given 16-bit patterns (int64 in [0, 2^16))."""
    if dtype not in _FORMATS:
        raise TypeError(f"rounding: {dtype} is not a 16-bit float format (bfloat16, float16)")
    return ((bits ^ 0x8000) - 0x8000).to(torch.int16).view(dtype)


def dtype_bits(t: torch.Tensor) -> torch.Tensor:
    """The 16-bit patterns of a bfloat16 / float16 tensor as int64 in [0, 2^16)."""
    if t.dtype not in _FORMATS:
        raise TypeError(f"rounding: {t.dtype} is not a 16-bit float format (bfloat16, float16)")
    return t.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF


def _is_nan(u):
    return (u & 0x7FFFFFFF) > 0x7F800000


# ---- bfloat16 -------------------------------------------------------------------------------------------------------

def bf16_rne(x: torch.Tensor) -> torch.Tensor:
    u = float_bits(x)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return torch.where(_is_nan(u), 0x7FC0, r)


def bf16_sr(x: torch.Tensor, rand: torch.Tensor) -> torch.Tensor:
    u = float_bits(x)
    r = (u + (rand & 0xFFFF)) >> 16
    return torch.where(_is_nan(u), 0x7FC0, r)


def bf16_to_float(b: torch.Tensor) -> torch.Tensor:
    return bits_float(b << 16)


# ---- float16 --------------------------------------------------------------------------------------------------------

def fp16_rne(x: torch.Tensor) -> torch.Tensor:
    u = float_bits(x)
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    rb = a - 0x38000000  # (negative outside the normal range: unused there)
    normal = (rb + 0x0FFF + ((rb >> 13) & 1)) >> 13
    e = a >> 23
    m = (a & 0x7FFFFF) | 0x800000
    s = (126 - e.clamp(max=126)).clamp(14, 25)
    sub = (m + ((1 << (s - 1)) - 1) + ((m >> s) & 1)) >> s
    mag = torch.where(a > 0x7F800000, 0x7E00,
                      torch.where(a >= 0x477FF000, 0x7C00, torch.where(a >= 0x38800000, normal, sub)))
    return sign | mag


def fp16_sr(x: torch.Tensor, rand: torch.Tensor) -> torch.Tensor:
    """Subnormal results in the 64-bit form floor(((m * 2^32 >> s) + r) / 2^32); rounding.h and the Triton copy
    split it into 32-bit halves (the same bits, which the tests check)."""
    u = float_bits(x)
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    normal = (a - 0x38000000 + (rand & 0x1FFF)) >> 13
    e = a >> 23
    m = torch.where(e != 0, (a & 0x7FFFFF) | 0x800000, a & 0x7FFFFF)
    ee = e.clamp(min=1)
    s = (126 - ee.clamp(max=126)).clamp(max=63)
    sub = (((m << 32) >> s) + rand) >> 32  # m << 32 < 2^56: no overflow
    mag = torch.where(a > 0x7F800000, 0x7E00,
                      torch.where(a >= 0x47800000, 0x7C00, torch.where(a >= 0x38800000, normal, sub)))
    return sign | mag


def fp16_to_float(h: torch.Tensor) -> torch.Tensor:
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    normal = bits_float(sign | ((e + 112) << 23) | (m << 13))
    special = bits_float(sign | 0x7F800000 | (m << 13))
    sub = m.to(torch.float32) * 2.0 ** -24
    sub = torch.where(sign != 0, -sub, sub)
    return torch.where(e == 0, sub, torch.where(e == 31, special, normal))


def rne(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bits of x rounded to nearest (even) in ``dtype``."""
    return bf16_rne(x) if dtype == torch.bfloat16 else fp16_rne(x)


def sr(x: torch.Tensor, rand: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return bf16_sr(x, rand) if dtype == torch.bfloat16 else fp16_sr(x, rand)


def to_float(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return bf16_to_float(bits) if dtype == torch.bfloat16 else fp16_to_float(bits)


def is_finite_bits(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    e = 0x7F80 if dtype == torch.bfloat16 else 0x7C00
    return (bits & e) != e


# ---- counter-based random bits: Philox4x32-10 (Salmon et al., SC 2011) -----------------------------------------------

def _mulhilo(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit words of the 64-bit product of the constant a and b (int64 in [0, 2^32))."""
    p1 = b * (a & 0xFFFF)  # < 2^48
    p2 = b * (a >> 16)  # < 2^48
    hi = (p2 + (p1 >> 16)) >> 16
    lo = (p1 + ((p2 & 0xFFFF) << 16)) & M32
    return hi, lo


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 on int64 tensors of 32-bit words (broadcasting) and a key of two Python ints."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & M32
        k1 = (k1 + PHILOX_W1) & M32
    return c0, c1, c2, c3


def rand32(seed: int, step: int, tensor_id: int, index: torch.Tensor) -> torch.Tensor:
    """rounding.h's rand32: word index % 4 of Philox4x32-10 with counter (index // 4 as two words, tensor_id,
    step) and key seed (two words); ``index`` an int64 tensor of element indices within the tensor."""
    seed &= (1 << 64) - 1
    group = index >> 2
    c0 = group & M32
    c1 = (group >> 32) & M32
    c2 = torch.full_like(index, tensor_id & M32)
    c3 = torch.full_like(index, step & M32)
    x = philox4x32_10(c0, c1, c2, c3, seed & M32, seed >> 32)
    j = index & 3
    return torch.where(j == 0, x[0], torch.where(j == 1, x[1], torch.where(j == 2, x[2], x[3])))


# ---- tensors --------------------------------------------------------------------------------------------------------

def round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x (float32) rounded to nearest even in ``dtype``: the bits every backend stores."""
    return as_dtype(rne(x, dtype), dtype)


def stochastic_round_to(x: torch.Tensor, dtype: torch.dtype, seed: int, step: int, tensor_id: int) -> torch.Tensor:
    """x (float32) stochastically rounded to ``dtype`` with the counter-based bits of each element's flat index."""
    idx = torch.arange(x.numel(), dtype=torch.int64, device=x.device).view(x.shape)
    return as_dtype(sr(x, rand32(seed, step, tensor_id, idx), dtype), dtype)


def kahan_store(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor):
    """rounding.h's kahan_store: y = x + float(c); w' = rne(y); c' = rne(y - float(w')) (0 where w' is not
    finite). x is float32, w and c of the parameter's 16-bit dtype; returns (w', c')."""
    dtype = w.dtype
    if c.dtype != dtype:
        raise TypeError(f"kahan_store: the compensation buffer is {c.dtype}, the parameter {dtype}")
    y = x + to_float(dtype_bits(c), dtype)
    wn = rne(y, dtype)
    cn = rne(y - to_float(wn, dtype), dtype)
    cn = torch.where(is_finite_bits(wn, dtype), cn, 0)
    return as_dtype(wn, dtype), as_dtype(cn, dtype)
