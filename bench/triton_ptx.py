"""Compile the Triton kernels ahead of time for an H100 (sm_90) and report what the GPU would execute.

No GPU is needed: the launches are the library's own. A child process (TRITON_INTERPRET=1) runs real optimizer
steps on small CPU tensors through backend="triton" with the GPU launch geometry and records every launch
instead of running it (kernel, argument kinds, constexpr flags, num_warps). This process then compiles each
recorded specialization with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` and reports
per kernel:

- 128-bit global loads / stores (``ld.global.v4`` / ``st.global.v4``) against the bytes model: on the full-
  chunk (aligned) path every element access of every operand should be 128-bit, i.e.
  v4 loads = bytes read per element * elements per thread / 16 (likewise stores);
- scalar (non-vector) global accesses (table reads, the masked tail path);
- local memory (``.local`` in the PTX) and registers / spill bytes from the cubin (cuobjdump -res-usage);
- the same kernel compiled with ALIGNED=False (pointers not known to be 16-byte aligned): the fallback, which
  is expected to lose the wide accesses.

Usage: python bench/triton_ptx.py [--rules adam,sgd,...]      (prints a table; exit status 1 on a violation)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(ROOT)  # (run as a script) after site-packages, so the installed fused_hybrid wins over the source
from bench import bytes_model as B  # noqa: E402

# Optimizer configurations whose launches are compiled: (name, class, kwargs, param dtype).
CONFIGS = {
    "adam": ("Adam", {}, "float32"),
    "adam-bf16": ("Adam", {}, "bfloat16"),
    "adamw-amsgrad": ("AdamW", {"amsgrad": True}, "float32"),
    "sgd": ("SGD", {"momentum": 0.9, "lr": 0.1}, "float32"),
    "sgd-nomom": ("SGD", {"lr": 0.1}, "float32"),
    "padam": ("Padam", {}, "float32"),
    "adabound": ("AdaBound", {}, "float32"),
    "adamclip": ("AdamClip", {"sgd_lr": 0.1, "lower": 0.5, "upper": 2.0}, "float32"),
    "swats": ("SWATS", {}, "float32"),
    "mas": ("MAS", {"momentum": 0.9}, "float32"),
    "mas-vector": ("MAS", {"variant": "vector", "momentum": 0.9}, "float32"),
    "ndadam": ("NDAdam", {}, "float32"),
    "adam-fp64": ("Adam", {}, "float64"),
    "sgd-fp16": ("SGD", {"momentum": 0.9, "nesterov": True, "lr": 0.1}, "float16"),
    "padam-fp64": ("Padam", {}, "float64"),
    "swats-bf16": ("SWATS", {"nesterov": True}, "bfloat16"),
    "mas-fp64": ("MAS", {"variant": "correction"}, "float64"),
    "ndadam-bf16": ("NDAdam", {"weight_decay": 0.1}, "bfloat16"),
    "ndadam-fp64": ("NDAdam", {}, "float64"),
    # issue 16's stores: stochastic rounding computes its bits (no more traffic), Kahan reads and writes its
    # buffer where p is written (bytes_model.kahan_bytes).
    "adam-bf16-sr": ("Adam", {"stochastic_rounding": True}, "bfloat16"),
    "adam-bf16-kahan": ("Adam", {"kahan_summation": True}, "bfloat16"),
    # Fused clipping (issue 17): the norm kernels, which the interpreter ran but no GPU compile had (an H200 run
    # found grad_norm_kernel reading a non-constexpr global that only the interpreter allows).
    "adam-clip": ("Adam", {"max_grad_norm": 1.0}, "float32"),
    "adam-bf16-state-sr": ("Adam", {"state_dtype": "bfloat16", "stochastic_rounding": True}, "bfloat16"),
    "sgd-clip-inf-bf16": ("SGD", {"momentum": 0.9, "lr": 0.1, "max_grad_norm": 1.0, "norm_type": float("inf")},
                          "bfloat16"),
    "sgd-fp16-kahan": ("SGD", {"momentum": 0.9, "lr": 0.1, "kahan_summation": True}, "float16"),
    "mas-bf16-kahan": ("MAS", {"variant": "vector", "momentum": 0.9, "kahan_summation": True}, "bfloat16"),
}

_ELEM = {"fp32": 4, "fp64": 8, "bf16": 2, "fp16": 2}


# --------------------------------------------------------------------------------------------------------------
# Recording (child process, under the interpreter)

def _record(names: list[str]) -> list[dict]:
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import triton.language as tl

    import fused_hybrid as fh
    from fused_hybrid.backends import triton_launch as tb

    tb._geometry = lambda device: (tb.GPU_BLOCK, tb.GPU_CHUNK, {"num_warps": tb.GPU_WARPS})
    out: list[dict] = []
    current = {}

    def kind(v):
        if v is None:
            return ["constexpr", None]
        if isinstance(v, torch.Tensor):
            return ["*" + {torch.float32: "fp32", torch.float64: "fp64", torch.int64: "i64", torch.int32: "i32",
                           torch.bfloat16: "bf16", torch.float16: "fp16"}[v.dtype], None]
        if isinstance(v, bool):
            return ["constexpr", v]
        if isinstance(v, float):
            return ["fp64", None]
        if isinstance(v, int):
            return ["i64", None]
        raise TypeError(type(v))

    def recorder(kernel, grid, *args, **kwargs):
        import inspect
        fn = getattr(kernel, "fn", kernel)
        names_ = list(inspect.signature(fn).parameters)
        sig, cons, opts = {}, {}, dict(tb.COMPILE_OPTIONS)
        for n, a in zip(names_, args):
            k, v = kind(a)
            sig[n] = k
            if k == "constexpr":
                cons[n] = v
        for n, v in kwargs.items():
            if n in ("num_warps", "num_stages", "enable_fp_fusion"):  # compile options, not kernel arguments
                opts[n] = v
                continue
            if isinstance(v, torch.Tensor) or v is None:  # a pointer passed by keyword (seed_ptr) or its absence
                k, c = kind(v)
                sig[n] = k
                if k == "constexpr":
                    cons[n] = c
                continue
            sig[n] = "constexpr"
            cons[n] = ("dtype", v.name) if isinstance(v, tl.dtype) else v
        sig = {n: sig[n] for n in names_ if n in sig}  # the kernel's parameter order, as ASTSource expects
        out.append({"config": current["name"], "module": fn.__module__, "kernel": fn.__name__, "signature": sig,
                    "constexprs": cons, "options": opts})

    tb._launch = recorder
    from fused_hybrid import swats as sw
    sw.bookkeeping = lambda groups, device: "triton"  # SWATS's bookkeeping as on a GPU: the Triton kernels
    for name in names:
        cls_name, kw, dtype = CONFIGS[name]
        current["name"] = name
        dt = getattr(torch, dtype)
        shapes = [(4097,), (33, 17), (5,)]
        ps = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64).to(dt)) for s in shapes]
        kw = {k: getattr(torch, v) if k == "state_dtype" else v for k, v in kw.items()}  # dtypes named as strings
        opt = getattr(fh, cls_name)(ps, backend="triton", **kw)
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    return out


# --------------------------------------------------------------------------------------------------------------
# Compiling and counting (this process, no interpreter)

def _bytes_model(kernel: str, c: dict) -> tuple[int, int] | None:
    """Bytes read and written per element on a kernel's full-chunk path (None: not an elementwise kernel)."""
    if kernel not in ("adaptive_kernel", "sgd_kernel", "mas_kernel"):
        return None
    P = _ELEM[c["P"][1]]
    C = _ELEM[c["S"][1]] if "S" in c else _ELEM[c["C"][1]]  # the stored state's dtype (S: state_dtype) is what moves
    # ROUND (fused_hybrid.hyper.ROUND_*): 2 = Kahan, whose buffer is read and written where p is stored.
    k = B.kahan_bytes(P, c.get("ROUND", 0) == 2) // 2
    if kernel == "adaptive_kernel":
        if c["SWATS"]:
            return None  # two branches (Adam / SGD phase) in one kernel: checked for >= the Adam branch only
        extra = C if c["AMSGRAD"] else 0
        return 2 * P + 2 * C + extra + k, P + 2 * C + extra + k
    if kernel == "sgd_kernel":
        b = C if c["MOMENTUM"] else 0
        return 2 * P + b + k, P + b + k
    if kernel == "mas_kernel":
        b = C if c["MOMENTUM"] else 0
        if c["VARIANT"] == 0:
            return 2 * P + 2 * C + b + k, P + 2 * C + b + k
        return B.mas_pass_bytes(c["PASS"], P, C, bool(c["MOMENTUM"]), bool(c["NESTEROV"]), bool(c["HAS_WD"]),
                                kahan=k > 0)
    return None


def _bits(instr: str) -> int:
    """Width in bits of a PTX global access such as ld.global.v4.b32 or st.global.v2.b64."""
    m = re.search(r"\.v(\d)", instr)
    n = int(m.group(1)) if m else 1
    w = re.search(r"\.[bfsu](8|16|32|64)\b", instr)
    return n * (int(w.group(1)) if w else 32)


def _res_usage(cubin: bytes, cuobjdump: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        txt = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+).*?LOCAL:(\d+)", txt, re.S)
    return {"regs": int(m.group(1)), "stack": int(m.group(2)), "cubin_local": int(m.group(3))} if m else {}


def compile_launch(rec: dict, aligned: bool | None = None) -> dict:
    import importlib

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mod = importlib.import_module(rec["module"])
    fn = getattr(mod, rec["kernel"])
    cons = {}
    for k, v in rec["constexprs"].items():
        cons[k] = getattr(tl, {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16"}[v[1]]) \
            if isinstance(v, (list, tuple)) and len(v) == 2 and v[0] == "dtype" else v
    if aligned is not None and "ALIGNED" in cons:
        cons["ALIGNED"] = aligned
    sig = dict(rec["signature"])
    names = list(sig)
    # Tensors the library passes come from torch's allocator: 16-byte aligned, as Triton specializes them.
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items() if t.startswith("*")}
    src = ASTSource(fn=fn, signature=sig, constexprs=cons, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(rec["options"]))
    ptx = k.asm["ptx"]
    ld = [_bits(x) for x in re.findall(r"\bld\.global[\w.]*", ptx)]
    st = [_bits(x) for x in re.findall(r"\bst\.global[\w.]*", ptx)]
    res = {"ld_v4": ld.count(128), "st_v4": st.count(128),  # 128-bit: v4 of 32-bit or v2 of 64-bit elements
           "ld_scalar": sum(b < 128 for b in ld), "st_scalar": sum(b < 128 for b in st),
           "local": len(re.findall(r"\.local\b", ptx))}
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if os.path.exists(cuobjdump) and "cubin" in k.asm:
        res.update(_res_usage(k.asm["cubin"], cuobjdump))
    return res


def expected_v4(rec: dict) -> tuple[int, int] | None:
    """(v4 loads, v4 stores) the bytes model predicts for the full-chunk path."""
    model = _bytes_model(rec["kernel"], rec["constexprs"])
    if model is None:
        return None
    per_thread = rec["constexprs"]["BLOCK"] // (32 * rec["options"].get("num_warps", 4))
    return model[0] * per_thread // 16, model[1] * per_thread // 16


def record(names: list[str]) -> list[dict]:
    """Record the launches of ``names`` in a child process under the interpreter (this one stays compiled)."""
    code = ("import importlib.util, json; spec = importlib.util.spec_from_file_location('triton_ptx', %r); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print('@@' + json.dumps(m._record(%r)))" % (os.path.abspath(__file__), names))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    # Not cwd=ROOT: `python -c` puts the cwd first on sys.path, and the source tree's fused_hybrid (no extension,
    # no triton_kernels subpackage) would shadow the installed one.
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=tempfile.gettempdir())
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-4000:])
    line = next(x for x in r.stdout.splitlines() if x.startswith("@@"))
    return json.loads(line[2:])


def check(rec: dict, res: dict) -> list[str]:
    """Violations of the aligned-path targets: every element access 128-bit, no local memory / spills."""
    bad = []
    exp = expected_v4(rec)
    if exp is not None:
        if res["ld_v4"] != exp[0] or res["st_v4"] != exp[1]:
            bad.append(f"128-bit loads/stores {res['ld_v4']}/{res['st_v4']}, bytes model says {exp[0]}/{exp[1]}")
    elif rec["kernel"] == "adaptive_kernel":  # SWATS: at least the Adam branch's accesses are wide
        model = _bytes_model(rec["kernel"], {**rec["constexprs"], "SWATS": False})
        per_thread = rec["constexprs"]["BLOCK"] // (32 * rec["options"].get("num_warps", 4))
        if res["ld_v4"] < model[0] * per_thread // 16 or res["st_v4"] < model[1] * per_thread // 16:
            bad.append(f"128-bit loads/stores {res['ld_v4']}/{res['st_v4']} below the Adam branch's model")
    if res["local"] or res.get("cubin_local", 0):
        bad.append(f"local memory (spills): {res['local']} .local in the PTX, {res.get('cubin_local', 0)} bytes "
                   "in the cubin")
    if res.get("stack", 0):
        bad.append(f"stack frame {res['stack']} bytes")
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--json", help="also write the per-kernel results (and launches per step) to this file")
    args = ap.parse_args(argv)
    # This process compiles: the interpreter (set by the tests' conftest) would turn the kernels into Python.
    os.environ.pop("TRITON_INTERPRET", None)
    names = [n for n in args.rules.split(",") if n]
    recs = record(names)
    launches = {n: sum(r["config"] == n for r in recs) for n in names}
    results = []
    seen = set()
    failures = 0
    hdr = f"{'config':14} {'kernel':16} {'flags':34} {'ld.v4':>5} {'st.v4':>5} {'model':>7} {'ld.s':>4} {'st.s':>4} " \
          f"{'regs':>4} {'local':>5} {'unaligned ld.v4/st.v4':>22}"
    print(hdr)
    for rec in recs:
        key = (rec["kernel"], json.dumps(rec["constexprs"], sort_keys=True), json.dumps(rec["signature"]))
        if key in seen:
            continue
        seen.add(key)
        res = compile_launch(rec)
        c = rec["constexprs"]
        flags = ",".join(k for k, v in c.items() if v is True and k != "ALIGNED")
        for k in ("FORM", "CLIP", "VARIANT", "PASS"):
            if c.get(k):
                flags += f",{k}={c[k]}"
        exp = expected_v4(rec)
        una = ""
        if "ALIGNED" in c:
            r2 = compile_launch(rec, aligned=False)
            una = f"{r2['ld_v4']}/{r2['st_v4']}"
        bad = check(rec, res)
        failures += bool(bad)
        results.append({"config": rec["config"], "kernel": rec["kernel"], "constexprs": rec["constexprs"],
                        "result": res, "expected_v4": exp, "unaligned": una, "violations": bad})
        print(f"{rec['config']:14} {rec['kernel']:16} {flags[:34]:34} {res['ld_v4']:5} {res['st_v4']:5} "
              f"{(f'{exp[0]}/{exp[1]}' if exp else '-'):>7} {res['ld_scalar']:4} {res['st_scalar']:4} "
              f"{res.get('regs', '?'):>4} {res['local']:5} {una:>22}" + ("   <-- " + "; ".join(bad) if bad else ""))
    print("\nlaunches per step (one bucket): " + ", ".join(f"{n} {k}" for n, k in launches.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"kernels": results, "launches": launches}, f, indent=1)
    print("\nmodel: v4 accesses the bytes model predicts on the full-chunk path (bytes/element * elements per "
          "thread / 16).\nld.s/st.s: scalar global accesses (table reads and the masked tail path).")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
