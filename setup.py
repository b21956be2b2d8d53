"""Builds fused_hybrid and its C++ extension fused_hybrid._C against the installed torch.

    pip install --no-build-isolation .

CPU kernels are always built. CUDA kernels are built when torch has CUDA and a CUDA toolkit is found
(FUSED_HYBRID_BUILD_CUDA=0/1 forces either way). The toolkit root is CUDA_HOME if set, else /usr/local/cuda, else
the root above the real nvcc: torch derives it from the nvcc on PATH, which is wrong when that nvcc is a wrapper
script (as on our machines) and then linking fails with -lcudart. The target archs come from TORCH_CUDA_ARCH_LIST;
unset, torch builds for the GPU present, and with no GPU we default to "8.0;9.0".
FUSED_HYBRID_SKIP_EXTENSION=1 installs the pure-Python package only. fused_hybrid._C_sim (the CUDA kernels
built by the host compiler against a SIMT simulator, backend "cuda_sim") is built on Linux unless
FUSED_HYBRID_BUILD_SIM=0.
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_root():
    """The toolkit root that holds bin/nvcc and lib64/libcudart.so, or None."""
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        # Ask nvcc itself: its -v output names its real install directory even when it is a wrapper.
        try:
            out = subprocess.run([nvcc, "-v", "--version"], capture_output=True, text=True, timeout=60)
            for line in (out.stdout + out.stderr).splitlines():
                if line.startswith("#$ TOP="):
                    cands.append(line.split("=", 1)[1].strip())
        except (OSError, subprocess.SubprocessError):
            pass
        cands.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in cands:
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")) and \
                glob.glob(os.path.join(root, "lib64", "libcudart.so*")):
            return os.path.realpath(root)
    return None


# Warnings are errors in our own builds (CI pins torch and the toolchain). FUSED_HYBRID_WERROR=0 builds with another
# torch or compiler, whose headers may warn where ours do not (the GPU machine's image has its own torch and gcc).
WERROR = os.environ.get("FUSED_HYBRID_WERROR", "1") != "0"


def _extensions():
    if os.environ.get("FUSED_HYBRID_SKIP_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    force = os.environ.get("FUSED_HYBRID_BUILD_CUDA")
    cuda_root = _cuda_root()
    if force == "1" and cuda_root is None:
        raise RuntimeError("FUSED_HYBRID_BUILD_CUDA=1 but no CUDA toolkit (bin/nvcc + lib64/libcudart.so) was found; "
                           "set CUDA_HOME")
    with_cuda = torch.version.cuda is not None and cuda_root is not None if force is None else force == "1"
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # -fno-math-errno / -fno-trapping-math change no result; they let GCC vectorize sqrt and the if-converted
    # branches of the rules (a scalar sqrt call per element otherwise, for errno's sake).
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wno-unused-function"]
    if os.environ.get("FUSED_HYBRID_NATIVE") == "1":
        cxx.append("-march=native")
    define_macros = [("TORCH_EXTENSION_NAME", "_C")]
    include = [os.path.join(ROOT, "csrc", "include")]
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_root
        cpp_extension.CUDA_HOME = cuda_root  # torch read CUDA_HOME at import; correct it before building
        if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
            # With a GPU present torch builds for that GPU's arch; without one it would guess, so say what we want.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros.append(("FUSED_HYBRID_WITH_CUDA", "1"))
        # No --use_fast_math: it turns sqrt and division into approximations, and the kernels must agree with
        # torch.optim / the reference to a few ulps. -Werror all-warnings: nvcc's own diagnostics are errors;
        # -Xcompiler -Wall -Werror: so are the host compiler's for our .cu files. -Xptxas -v prints registers and
        # spills of every kernel in the build log (issue 8).
        # -fmad=false: no multiply-add contraction. The kernels are memory-bound (a few flops per 20-36 bytes
        # moved), so FMAs buy no time; without them every operation rounds as written, so the GPU computes the
        # same bits as the cpu backend (built without FMA, csrc/cpu/multi_tensor.h) and as the simulated kernels
        # (_C_sim, -ffp-contract=off), and tests can compare them bitwise instead of to 1-3 ulps.
        nvcc = ["-O3", "-std=c++20", "-lineinfo", "--expt-relaxed-constexpr", "-fmad=false", "-Xcompiler", "-Wall"] + \
            (["-Xcompiler", "-Werror", "-Werror", "all-warnings"] if WERROR else []) + ["-Xptxas", "-v"]
        ext = cpp_extension.CUDAExtension("fused_hybrid._C", sources, include_dirs=include,
                                          define_macros=define_macros,
                                          extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                                          extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension("fused_hybrid._C", sources, include_dirs=include,
                                         define_macros=define_macros, extra_compile_args={"cxx": cxx},
                                         extra_link_args=["-fopenmp"])
    exts = [ext]
    sim = _sim_extension(cpp_extension, include)
    if sim is not None:
        exts.append(sim)
    print(f"fused_hybrid: building the extension with CUDA kernels: {with_cuda} (toolkit: {cuda_root}); "
          f"simulated CUDA kernels (_C_sim): {sim is not None}")
    return exts, {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


def _sim_extension(cpp_extension, include):
    """fused_hybrid._C_sim: csrc/cuda's kernels built by the host compiler against the SIMT simulator (csrc/sim),
    registered as torch.ops.fused_hybrid_sim.* for CPU tensors (backend "cuda_sim"). A separate library, never
    linked into _C. Built where the simulator runs (Linux: ucontext fibers, an ELF section for __shared__);
    FUSED_HYBRID_BUILD_SIM=0/1 forces it off or on."""
    force = os.environ.get("FUSED_HYBRID_BUILD_SIM")
    if force == "0" or (force is None and not sys.platform.startswith("linux")):
        return None
    # -ffp-contract=off: GCC would otherwise fuse multiply-adds where the target has FMA; the GPU build has
    # -fmad=false, so both round every operation as written. -O1: the kernels' speed here is the fibers', not
    # the arithmetic's, and it halves the compile time of -O3. -Wno-unknown-pragmas: the sources' #pragma unroll.
    cxx = ["-O1", "-std=c++20", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function"] + \
        (["-Werror"] if WERROR else [])
    return cpp_extension.CppExtension(
        "fused_hybrid._C_sim", sorted(glob.glob("csrc/sim/*.cpp")),
        # The shim directory first: its c10/cuda headers replace torch's (which need the CUDA toolkit).
        include_dirs=[os.path.join(ROOT, "csrc", "sim", "shim")] + include,
        define_macros=[("TORCH_EXTENSION_NAME", "_C_sim")], extra_compile_args={"cxx": cxx})


ext_modules, cmdclass = _extensions()

setup(
    name="fused_hybrid",
    version="0.1.0",
    description="Fused optimizers for hybrid adaptive/SGD training (SWATS, Padam, AdaBound, MAS, ND-Adam, Adam, SGD)",
    python_requires=">=3.10",
    packages=["fused_hybrid", "fused_hybrid.backends", "fused_hybrid.triton_kernels"],
    package_dir={"fused_hybrid.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=["torch"],
)
