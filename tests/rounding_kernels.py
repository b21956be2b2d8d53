"""The @triton.jit test kernels of tests/test_rounding.py, in a module of their own so that a child process without
TRITON_INTERPRET can compile them for sm_90 (``compile_ptx``): the GPU build of triton_kernels/rounding.py."""
import triton
import triton.language as tl

from fused_hybrid.triton_kernels import rounding as TR


@triton.jit
def _round_kernel(x_ptr, r_ptr, out_ptr, n, offset, seed_lo, seed_hi, step, tid, MODE: tl.constexpr,
                  HAS_RAND: tl.constexpr, BLOCK: tl.constexpr):
    """The fused_hybrid::_round_test op in Triton (modes as rounding_test_ops.h; HAS_RAND: the random bits from
    r_ptr instead of rand32 of the index)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    idx = offs.to(tl.int64) + offset
    if HAS_RAND:
        r = tl.load(r_ptr + offs, mask=mask, other=0).to(tl.uint32)
    else:
        r = TR.rand32(seed_lo, seed_hi, step, tid, idx)
    if MODE == 0:
        b = TR.bf16_rne(x)
    elif MODE == 1:
        b = TR.bf16_sr(x, r)
    elif MODE == 2:
        b = TR.fp16_rne(x)
    elif MODE == 3:
        b = TR.fp16_sr(x, r)
    else:
        b = r
    tl.store(out_ptr + offs, b.to(tl.int64), mask=mask)


@triton.jit
def _store_cast_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, TR.store_cast(tl.load(x_ptr + offs, mask=mask), out_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _kahan_kernel(x_ptr, w_ptr, c_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    DT: tl.constexpr = w_ptr.dtype.element_ty
    w, c = TR.kahan_store(tl.load(x_ptr + offs, mask=mask), tl.load(c_ptr + offs, mask=mask), DT)
    tl.store(w_ptr + offs, w, mask=mask)
    tl.store(c_ptr + offs, c, mask=mask)


@triton.jit
def _philox_kernel(out_ptr, c0, c1, c2, c3, k0, k1, OURS: tl.constexpr):
    i = tl.arange(0, 4)
    z = tl.zeros([4], tl.uint32)
    # (Arguments of 2^31 and more arrive as int64: narrow them to the 32-bit words they are.)
    c0, c1, c2, c3 = z + c0.to(tl.uint32), z + c1.to(tl.uint32), z + c2.to(tl.uint32), z + c3.to(tl.uint32)
    if OURS:
        x0, x1, x2, x3 = TR.philox4x32_10(c0, c1, c2, c3, z + k0.to(tl.uint32), z + k1.to(tl.uint32))
    else:  # Triton's own, key = the 64-bit seed
        seed = (k1.to(tl.uint32).to(tl.uint64) << 32) | k0.to(tl.uint32).to(tl.uint64)
        x0, x1, x2, x3 = tl.philox(seed, c0, c1, c2, c3)
    out = tl.where(i == 0, x0, tl.where(i == 1, x1, tl.where(i == 2, x2, x3)))
    tl.store(out_ptr + i, out.to(tl.int64))


# Configurations compiled for sm_90 by compile_ptx: (name, kernel, signature, constexprs).
_P = dict(x_ptr="*fp32", r_ptr="*i64", out_ptr="*i64", n="i32", offset="i64", seed_lo="i32", seed_hi="i32",
          step="i32", tid="i32", MODE="constexpr", HAS_RAND="constexpr", BLOCK="constexpr")
CONFIGS = [(f"round_mode{m}", "_round_kernel", _P, dict(MODE=m, HAS_RAND=False, BLOCK=1024)) for m in range(5)]
CONFIGS += [(f"store_cast_{d}", "_store_cast_kernel", dict(x_ptr="*fp32", out_ptr=f"*{d}", n="i32", BLOCK="constexpr"),
             dict(BLOCK=1024)) for d in ("bf16", "fp16")]
CONFIGS += [(f"kahan_{d}", "_kahan_kernel", dict(x_ptr="*fp32", w_ptr=f"*{d}", c_ptr=f"*{d}", n="i32",
                                                BLOCK="constexpr"), dict(BLOCK=1024)) for d in ("bf16", "fp16")]


def compile_ptx() -> dict:
    """{config: PTX} of every CONFIGS entry compiled for sm_90 (no GPU needed; not under the interpreter)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    out = {}
    for name, kernel, sig, cons in CONFIGS:
        src = ASTSource(fn=globals()[kernel], signature=sig, constexprs=cons)
        out[name] = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    return out


if __name__ == "__main__":
    import json
    import sys

    json.dump(compile_ptx(), sys.stdout)
