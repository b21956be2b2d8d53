"""Builds fused_hybrid and its C++ extension fused_hybrid._C against the installed torch.

    pip install --no-build-isolation .

CPU kernels are always built. CUDA kernels are built when torch has CUDA and a CUDA toolkit is found
(FUSED_HYBRID_BUILD_CUDA=0/1 forces either way). The toolkit root is CUDA_HOME if set, else /usr/local/cuda, else
the root above the real nvcc: torch derives it from the nvcc on PATH, which is wrong when that nvcc is a wrapper
script (as on our machines) and then linking fails with -lcudart. The target archs come from TORCH_CUDA_ARCH_LIST;
unset, torch builds for the GPU present, and with no GPU we default to "8.0;9.0".
FUSED_HYBRID_SKIP_EXTENSION=1 installs the pure-Python package only.
"""
import glob
import os
import shutil
import subprocess

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
        nvcc = ["-O3", "-std=c++20", "-lineinfo", "--expt-relaxed-constexpr", "-Xcompiler", "-Wall",
                "-Xcompiler", "-Werror", "-Werror", "all-warnings", "-Xptxas", "-v"]
        ext = cpp_extension.CUDAExtension("fused_hybrid._C", sources, include_dirs=include,
                                          define_macros=define_macros,
                                          extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                                          extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension("fused_hybrid._C", sources, include_dirs=include,
                                         define_macros=define_macros, extra_compile_args={"cxx": cxx},
                                         extra_link_args=["-fopenmp"])
    print(f"fused_hybrid: building the extension with CUDA kernels: {with_cuda} (toolkit: {cuda_root})")
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


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
