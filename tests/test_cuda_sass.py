"""GPU performance evidence without a GPU (issue 8, CUDA half): disassemble the built extension's CUDA kernels
with cuobjdump and check that the float32 multi-tensor kernels keep 128-bit global loads/stores on their aligned
path (LDG.E.128 / STG.E.128: one per operand list), use no local memory (no spills), and fit their argument
tables in the kernel parameter space. Runs wherever the installed extension was built with its CUDA kernels and
a cuobjdump is found (the toolkit's, or the one in Triton's wheel); skipped otherwise.
"""
import os
import re
import shutil
import subprocess

import pytest

from fused_hybrid import _ext


def _cuobjdump():
    cands = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"),
             "/usr/local/cuda/bin/cuobjdump", shutil.which("cuobjdump")]
    try:
        import triton
        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


CUOBJDUMP = _cuobjdump()
pytestmark = [
    pytest.mark.skipif(not _ext.has_cuda_kernels(), reason="the extension was built without its CUDA kernels"),
    pytest.mark.skipif(CUOBJDUMP is None, reason="no cuobjdump (CUDA toolkit or Triton wheel) found"),
]


def _demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@pytest.fixture(scope="module")
def kernels():
    """{short name: dict(reg, stack, local, const, ops={opcode: count})} for every kernel of every arch."""
    so = _ext._C.__file__
    res = subprocess.run([CUOBJDUMP, "-res-usage", so], capture_output=True, text=True, check=True).stdout
    sass = subprocess.run([CUOBJDUMP, "-sass", so], capture_output=True, text=True, check=True).stdout
    usage = {m.group(1): dict(reg=int(m.group(2)), stack=int(m.group(3)), local=int(m.group(4)),
                              const=int(m.group(5)))
             # (a kernel that keeps float64 constants in bank 2 lists CONSTANT[2] before CONSTANT[0])
             for m in re.finditer(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+) "
                                  r"(?:CONSTANT\[[1-9]\]:\d+ )*CONSTANT\[0\]:(\d+)", res)}
    arch = None
    out = {}
    for part in re.split(r"\n(?=\s*(?:arch = |\s*Function : ))", sass):
        m = re.match(r"\s*arch = (\w+)", part)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function : (\S+)", part)
        if not m:
            continue
        name = m.group(1)
        ops = {}
        for op in re.findall(r"\b((?:LDG|STG|LDL|STL)(?:\.[A-Z0-9]+)*)\b", part):
            ops[op] = ops.get(op, 0) + 1
        out[(arch, name)] = dict(usage.get(name, {}), ops=ops)
    names = sorted({n for _, n in out})
    short = {}
    for n, d in zip(names, _demangle(names)):
        m = re.search(r"(\w+Functor)<([^>]*)>", d)
        short[n] = (m.group(1) + "<" + re.sub(r"c10::|\(anonymous namespace\)::|\s", "", m.group(2)) + ">") if m \
            else re.search(r"(\w+)\(", d).group(1)
    return {(arch, short[n]): v for (arch, n), v in out.items()}


def _count(ops, prefix, wide):
    return sum(v for k, v in ops.items() if k.startswith(prefix) and (".128" in k) == wide)


# float32 kernels: 128-bit loads / stores of the aligned loop (one per operand list read / written). The rule
# functors' last template argument is their param store (kLowp, multi_tensor_apply.cuh): false, round to nearest.
ALIGNED_FP32 = {
    "SgdFunctor<float,float,false,false>": (2, 1),        # w, g -> w
    "SgdFunctor<float,float,true,false>": (3, 2),         # w, g, buf -> w, buf
    "AdaptiveFunctor<float,float,false,false,false>": (4, 3),  # w, g, m, v -> w, m, v
    "AdaptiveFunctor<float,float,true,false,false>": (5, 4),   # + vmax
    "AdaptiveFunctor<float,float,false,true,false>": (4 + 3, 3 + 2),  # SWATS: Adam phase + SGD phase (w, g, buf)
    "AdaptiveFunctor<float,float,true,true,false>": (5 + 3, 4 + 2),
    "MasFunctor<float,float,0,false,false>": (4, 3),
    "MasFunctor<float,float,0,true,false>": (5, 4),
    "RmsFunctor<float,float,false,false,false>": (3, 2),  # w, g, sq -> w, sq
    "RmsFunctor<float,float,true,false,false>": (4, 3),   # + grad_avg (centered)
    "RmsFunctor<float,float,false,true,false>": (4, 3),   # + momentum buffer
    "RmsFunctor<float,float,true,true,false>": (5, 4),
    # the gradient norm (issue 17): g only, read once (modes 0-3: |x|, x^2, |x|^p, max)
    **{f"NormFunctor<float,float,{m}>": (1, 0) for m in range(4)},
}
# Known exceptions to "no local memory", measured on sm_90 with CUDA 13.0: 4-16 bytes saved and restored around
# the out-of-line slow paths of IEEE float division / sqrt (div.rn / sqrt.rn call a subroutine for denormals and
# special values; torch's own fused Adam has the same calls) in five 16-bit / float64 instantiations. No float32
# kernel spills. The bound keeps any growth visible. (MAS's fp16 apply pass joined the list in session 3, when that
# pass began summing its tensor's slots itself: 12 bytes kept across the unrolled loop's slow-path calls.)
# Since the build uses -fmad=false (issue 14: the GPU rounds as the cpu backend and the simulator do), measured
# again: MAS's bf16 apply pass keeps 24 bytes (8 more: the uncontracted multiply-adds hold more values across the
# slow-path calls), the fp16 one 16, the float64 one 8; the SWATS 16-bit kernels none (their limit stays).
# Issue 15's decoupled weight decay (one more value, the decay, live in MAS's apply pass): the bf16 apply pass
# without momentum keeps 8 bytes and the float64 one 24 (was 16) (measured session 5, sm_90, CUDA 13.0); no kernel
# gained local loads or stores.
# Issue 16's stochastic rounding / Kahan stores (the kLowp instantiations, measured session 6, sm_90, CUDA 13.0):
# none keeps a stack frame; the round-to-nearest kernels were unchanged by them (registers, stack, accesses).
# Issue 16's bfloat16 state in MAS and ND-Adam (measured session 7, sm_90, CUDA 13.0): two of their 21 kernels keep
# a frame. ND-Adam's for float16 params recomputes m (the projected gradient's moment) in its last two row passes
# instead of reading it back, next to the software float16 conversions, and ptxas holds it at 64 registers with 40
# bytes of spills (storing m before the divisions, or building the store per element, made it 64 and moved 8 bytes
# into the bfloat16 kernel); MAS's pass 1 for float32 params without momentum keeps 8 bytes (a float64 sum).
SPILL_ALLOWED = {"NdAdamFunctor<Half,BFloat16,true>": 40, "MasFunctor<float,BFloat16,1,false,false>": 8,
                 "AdaptiveFunctor<BFloat16,float,false,true,false>": 16,
                 "AdaptiveFunctor<Half,float,false,true,false>": 16,
                 "MasFunctor<BFloat16,float,2,true,false>": 24, "MasFunctor<Half,float,2,true,false>": 16,
                 "MasFunctor<double,double,2,false,false>": 24, "MasFunctor<BFloat16,float,2,false,false>": 8}


# Spill loads + stores allowed per (arch, kernel) outside SPILL_ALLOWED. sm_80 (built by a default install, not by
# CI, which builds sm_90 only): ptxas keeps one 4-byte spill store/load pair in the fp32 SWATS kernel under
# -fmad=false, with no stack frame (measured 2026-11-29 with CUDA 13.0).
LDST_ALLOWED = {("sm_80", "AdaptiveFunctor<float,float,false,true,false>"): 2}


def test_every_rule_has_kernels(kernels):
    names = {n for _, n in kernels}
    for fam in ("SgdFunctor", "AdaptiveFunctor", "MasFunctor", "NdAdamFunctor", "RmsFunctor"):
        for dt in ("float,float", "double,double", "Half,float", "BFloat16,float"):
            assert any(n.startswith(f"{fam}<{dt}") for n in names), (fam, dt)
    assert "post_step_kernel" in names
    for dt in ("float,float", "double,double", "Half,float", "BFloat16,float"):
        assert all(f"NormFunctor<{dt},{m}>" in names for m in range(4)), dt
    assert "norm_finalize_kernel" in names


def test_lowp_stores_keep_the_vector_accesses(kernels):
    """The stochastic-rounding / Kahan kernels of 16-bit params (kLowp = true) keep their round-to-nearest twin's
    vector accesses: the same 128-bit loads and stores of the float32 state, and 64-bit ones for the params and
    gradients plus at least one more 64-bit load and store (the compensation buffer, read and written 4 elements at
    a time on the aligned path). Except ND-Adam's: its lowp kernels have no vector loop at all (its 1-D tensors take
    the scalar path, csrc/cuda/ndadam.cu: ScalarLowpStore; its rows always do)."""
    fams = ("SgdFunctor", "AdaptiveFunctor", "MasFunctor", "NdAdamFunctor", "RmsFunctor")
    lowp = [(arch, n) for arch, n in kernels if n.startswith(fams) and n.endswith(",true>") and not _bf16_state(n)]
    names = {n for _, n in lowp}
    for fam in fams:
        for dt in ("BFloat16", "Half"):
            assert any(n.startswith(f"{fam}<{dt},float") for n in names), (fam, dt)
    # 16-bit params only: float32 / float64 params never take these stores (the ops refuse a rounding mode for them)
    assert not any("<float,float" in n or "<double,double" in n for n in names), names
    for arch, n in lowp:
        if n.startswith("NdAdamFunctor"):
            assert _count(kernels[(arch, n)]["ops"], "LDG", True) == 0, (arch, n)
            continue
        twin = kernels[(arch, n[:-len("true>")] + "false>")]
        k = kernels[(arch, n)]
        for prefix in ("LDG", "STG"):
            assert _count(k["ops"], prefix, True) == _count(twin["ops"], prefix, True), (arch, n, prefix)
            wide64 = lambda ops: sum(v for op, v in ops.items() if op.startswith(prefix) and ".64" in op)  # noqa
            assert wide64(k["ops"]) >= wide64(twin["ops"]) + 1, (arch, n, prefix, k["ops"], twin["ops"])


def _bf16_state(name):
    """A kernel of bfloat16 moment buffers: the functor's second template argument (its state type) is BFloat16."""
    return name.split("<", 1)[1].split(",")[1] == "BFloat16"


def test_bf16_state_kernels(kernels):
    """bfloat16 moment buffers (state_dtype, multi_tensor_apply.cuh: Bf16StateStore): one kernel per family variant for
    float32 / bfloat16 / float16 params (none for float64, whose state stays float64), with the lowp column (kLowp
    true: every rounding mode in one kernel) in every kernel that stores, i.e. all but MAS's pass 1 (mode 1), which
    only reads the state (csrc/cuda/mas.cu). On the aligned path each state list is read 4 elements at a time (64-bit
    loads), and stored so where the kernel stores it, and float32 params keep their 128-bit loads of w and g (and
    store of w where it is written). ND-Adam's kernels have no vector loop (scalar row passes, ScalarOnly for its 1-D
    tensors). No local memory, and no stack but SPILL_ALLOWED's (test_no_spills covers them too)."""
    # variants with a state list: SGD with momentum; Adam x AMSGrad x SWATS; RMSprop centered x momentum; MAS
    # mode (sum, pass 1, pass 2) x momentum; ND-Adam
    fams = {"SgdFunctor": 1, "AdaptiveFunctor": 4, "RmsFunctor": 4, "MasFunctor": 6, "NdAdamFunctor": 1}
    bf = [(arch, n) for arch, n in kernels if n.startswith(tuple(fams)) and _bf16_state(n)]
    names = {n for _, n in bf}
    for fam, variants in fams.items():
        for dt in ("float", "BFloat16", "Half"):
            assert len([n for n in names if n.startswith(f"{fam}<{dt},BFloat16,")]) == variants, (fam, dt, names)
    assert not any(n.split("<", 1)[1].startswith("double,") for n in names), names
    for arch, n in bf:
        k = kernels[(arch, n)]
        args = n[:-1].split("<", 1)[1].split(",")  # P, BFloat16, the functor's flags..., kLowp
        flags = [f == "true" for f in args[2:-1]]
        mas_pass1 = n.startswith("Mas") and args[2] == "1"
        assert (args[-1] == "true") != mas_pass1, n
        assert k.get("local", 0) == 0 and k.get("stack", 0) <= SPILL_ALLOWED.get(n, 0) and "reg" in k, (arch, n, k)
        if n.startswith("NdAdam"):
            assert _count(k["ops"], "LDG", True) == 0, (arch, n, k["ops"])
            continue
        if n.startswith("Sgd"):
            nstates = 1
        elif n.startswith("Adaptive"):
            nstates = 2 + flags[0]
        elif n.startswith("Mas"):
            nstates = 2 + (args[3] == "true")
        else:
            nstates = 1 + sum(flags)
        stored = 0 if mas_pass1 else nstates
        wide64 = lambda prefix: sum(v for op, v in k["ops"].items() if op.startswith(prefix) and ".64" in op)  # noqa
        assert wide64("LDG") >= nstates and wide64("STG") >= stored, (arch, n, k["ops"])
        if args[0] == "float":
            assert _count(k["ops"], "LDG", True) >= 2, (arch, n, k["ops"])
            assert _count(k["ops"], "STG", True) >= (0 if mas_pass1 else 1), (arch, n, k["ops"])


def test_fp32_aligned_paths_use_128_bit_accesses(kernels):
    for (arch, name), k in kernels.items():
        if name in ALIGNED_FP32:
            want_ld, want_st = ALIGNED_FP32[name]
            assert _count(k["ops"], "LDG", True) == want_ld, (arch, name, k["ops"])
            assert _count(k["ops"], "STG", True) == want_st, (arch, name, k["ops"])
    # every listed kernel exists (a renamed template would otherwise make this test pass vacuously)
    assert set(ALIGNED_FP32) <= {n for _, n in kernels}, set(ALIGNED_FP32) - {n for _, n in kernels}


def test_no_spills(kernels):
    for (arch, name), k in kernels.items():
        assert k.get("local", 0) == 0, (arch, name, k)
        if name in SPILL_ALLOWED:
            assert k.get("stack", 0) <= SPILL_ALLOWED[name], (arch, name, k)
            continue
        assert k.get("stack", 0) == 0, (arch, name, k)
        spills = _count(k["ops"], "LDL", False) + _count(k["ops"], "STL", False)
        assert spills <= LDST_ALLOWED.get((arch, name), 0), (arch, name, spills)
        if "<float,float" in name:
            assert k.get("stack", 0) == 0


def test_argument_tables_fit(kernels):
    for (arch, name), k in kernels.items():
        # CONSTANT[0] holds the parameters after the driver's reserved bank prefix (0x210 bytes on sm_70+).
        assert k.get("const", 0) <= 32764 + 0x210, (arch, name, k.get("const"))
