"""Steps of bfloat16 models (issue 16): fused_hybrid with bfloat16 params stored to nearest, with stochastic
rounding, with Kahan summation (and with bfloat16 state, once the build has ``state_dtype``), against torch.optim's
fused and foreach steps on the same bfloat16 params (torch keeps its state in the param's dtype), with the bytes
model's bytes per element beside each time.

    python -m bench.lowp                                   # Adam, one tensor of 2^22 bfloat16 elements
    python -m bench.lowp --rules adam,adamw,sgd --shapes resnet18 --dtype float16 --threads 1

Per implementation: the median over ``--rounds`` rounds (implementations interleaved within a round, so they see
the same machine state) of the time per step, measured over ``--steps`` steps; GB/s is the bytes model's bytes
(the least the step must move) over that time, so it reads as "effective". The gradients are fixed and small
(1e-2 * randn): the weights keep moving under every option. A configuration the build or the backend does not
take is listed with the reason, not timed.
"""
from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch

from . import bytes_model as B, cases as C, shapes as S

# The configurations: (label, fused_hybrid keywords, state dtype for the bytes model or None for float32).
# One more entry adds one: a keyword this build lacks is reported as not available.
FH_CONFIGS = [
    ("nearest", {}, None),
    ("stochastic rounding", {"stochastic_rounding": True}, None),
    ("Kahan", {"kahan_summation": True}, None),
    ("bf16 state", {"state_dtype": torch.bfloat16}, torch.bfloat16),
    ("bf16 state + SR", {"state_dtype": torch.bfloat16, "stochastic_rounding": True}, torch.bfloat16),
    ("bf16 state + Kahan", {"state_dtype": torch.bfloat16, "kahan_summation": True}, torch.bfloat16),
]
TORCH_MODES = ("fused", "foreach")


def _bytes(rule: str, kw: dict, param_dtype: torch.dtype, state_dtype: torch.dtype | None) -> int:
    """Bytes per element for bench rule ``rule`` (cases.RULES) with these keywords."""
    _, _, brule, bopts, _, _ = C.RULES[rule]
    if brule == "ndadam":
        raise ValueError("ndadam's bytes depend on the shapes; not in this bench")
    pb = torch.empty((), dtype=param_dtype).element_size()
    sb = torch.empty((), dtype=state_dtype).element_size() if state_dtype is not None else B.F32
    return B.lowp_bytes_per_element(brule, bopts, pb, sb, bool(kw.get("stochastic_rounding")),
                                    bool(kw.get("kahan_summation")))


def _missing_keywords(cls, kw: dict) -> list[str]:
    params = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []
    return [k for k in kw if k not in params]


def implementations(rule: str, device: torch.device, param_dtype: torch.dtype, backends=None) -> tuple[list, list]:
    """([(label, make(params), bytes per element)], [(label, why not)]) for ``rule`` on ``device``."""
    import fused_hybrid as fh

    cls_name, base_kw, _, _, stock, _ = C.RULES[rule]
    cls = getattr(fh, cls_name)
    if backends is None:
        backends = [b for b in C.fused_backends(device) if b not in ("reference", "cuda_sim")]
    impls, skipped = [], []
    for be in backends:
        for label, kw, sdt in FH_CONFIGS:
            name = f"fused_hybrid[{be}] {label}"
            missing = _missing_keywords(cls, kw)
            if missing:
                skipped.append((name, f"not available in this build ({cls_name} takes no {', '.join(missing)})"))
                continue
            impls.append((name, lambda ps, kw=kw, be=be: cls(ps, backend=be, lr=C.DEFAULT_LR, **base_kw, **kw),
                          _bytes(rule, kw, param_dtype, sdt)))
    # torch.optim's same rule, or for the hybrid rules the stock rule their speedups are measured against (Adam);
    # torch keeps its state in the param's dtype: 16-bit state, rounded to nearest
    base = rule if stock is not None else C.RULES[rule][5]
    tcls, tkw = C.RULES[base][4]
    for mode in TORCH_MODES:
        impls.append((f"torch[{mode}]" + ("" if base == rule else f" {base}"), lambda ps, mode=mode: getattr(
            torch.optim, tcls)(ps, lr=C.DEFAULT_LR, **tkw, **{mode: True}), _bytes(base, {}, param_dtype, param_dtype)))
    return impls, skipped


def measure(rule: str, shapes, device: torch.device, param_dtype: torch.dtype, rounds: int, steps: int,
            backends=None) -> tuple[dict, list]:
    """{label: (median s/step, min s/step, bytes per element)} and the skipped (label, reason) pairs."""
    impls, skipped = implementations(rule, device, param_dtype, backends)
    g = torch.Generator().manual_seed(0)
    runs = {}
    for label, make, nb in impls:
        ps = [torch.randn(s, generator=g).to(device=device, dtype=param_dtype).requires_grad_() for s in shapes]
        for p in ps:
            p.grad = (torch.randn(p.shape, generator=g) * 1e-2).to(device=device, dtype=param_dtype)
        try:
            opt = make(ps)
            for _ in range(2):  # the first step creates the state
                opt.step()
        except Exception as e:  # a backend that refuses the option, fused=True unsupported on the device, ...
            skipped.append((label, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"))
            continue
        runs[label] = (opt.step, [], nb)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(rounds):
        for label, (step, times, _) in runs.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            times.append((time.perf_counter() - t0) / steps)
    return {label: (statistics.median(t), min(t), nb) for label, (_, t, nb) in runs.items()}, skipped


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.lowp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", default="adam", help=f"comma list from {','.join(r for r in C.RULES if r != 'ndadam')}")
    ap.add_argument("--shapes", default=None, help=f"a shape set ({','.join(S.SHAPE_SETS)}); default: one tensor "
                    "of --numel elements")
    ap.add_argument("--numel", type=int, default=2 ** 22)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backends", default=None, help="fused_hybrid backends (default: the device's fused ones)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    a = ap.parse_args(argv)
    threads = torch.get_num_threads()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        device = torch.device(a.device)
        dtype = getattr(torch, a.dtype)
        shapes = S.get(a.shapes) if a.shapes else [(a.numel,)]
        n = S.numel(shapes)
        backends = a.backends.split(",") if a.backends else None
        results = {}
        for rule in a.rules.split(","):
            print(f"\n== {rule}, {a.dtype} params and gradients, {a.shapes or 'one tensor'} ({len(shapes)} tensors, "
                  f"{n:,} elements), {device}, threads={torch.get_num_threads()}: median ms/step over {a.rounds} "
                  f"rounds of {a.steps} ==")
            res, skipped = measure(rule, shapes, device, dtype, a.rounds, a.steps, backends)
            print(f"  {'implementation':<44} {'ms/step':>8} {'min':>8} {'B/el':>5} {'GB/s':>6}")
            for label, (med, lo, nb) in res.items():
                print(f"  {label:<44} {med * 1e3:8.3f} {lo * 1e3:8.3f} {nb:5d} {nb * n / med / 1e9:6.2f}")
            for label, why in skipped:
                print(f"  {label:<44} skipped: {why}")
            results[rule] = {"results": res, "skipped": skipped, "numel": n}
        return results
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
