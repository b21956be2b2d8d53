"""The benchmark: build cases, time them in interleaved rounds, print tables, write JSON.

Method (DESIGN.md, Benchmarks):
- Every case of a shape set steps the same parameters with the same (fixed, random) gradients; each case owns
  its optimizer state. Cases whose state would not fit the memory budget together run in several batches.
- Warm-up steps first (they also create the state and compile/choose kernels); the warm-up time picks how many
  steps one measurement covers (``inner``) so that a measurement lasts at least ``target_ms``.
- Then ``rounds`` rounds; round r runs the cases in an order rotated by r, so no case always runs first (after
  an idle gap) or right after the same neighbour. One measurement = ``inner`` steps; we keep ms per step.
- The reported time is the median over rounds; min and max are in the JSON.
- perf_counter on CPU; CUDA events on a GPU (synchronized per measurement).
- Effective GB/s = bytes model (bench/bytes_model.py) / median time; "% axpy" relates it to an in-place
  a += s*b on a large tensor measured in the same run.
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import bytes_model, cases as C, shapes as S, timing

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Config:
    shapes: list[str] = field(default_factory=lambda: list(S.SHAPE_SETS))
    rules: list[str] = field(default_factory=lambda: list(C.RULES))
    backends: list[str] | None = None        # fused_hybrid backends to try; None: every available one
    threads: int | None = None
    device: str | None = None                # None: cuda when present, else cpu
    scale: float = 1.0                       # divides the shape sets' sizes (--quick: 16)
    warmup: int = 3
    rounds: int = 7
    target_ms: float = 20.0
    max_inner: int = 50
    bandwidth_numel: int = 2 ** 25
    torch_impls: bool = True
    peers: bool = True
    mem_budget_gb: float | None = None       # None: a fraction of the free memory of the device
    out_dir: str | None = None               # None: bench/results; "" : write nothing
    quick: bool = False
    progress: bool = True


def quick_config(**over) -> Config:
    # One thread: on a shared CI runner, an OpenMP parallel region waits for any of its threads that the OS has
    # descheduled, which turns a 0.3 ms step into a 100 ms one; a smoke run must not depend on the load.
    cfg = Config(scale=16.0, warmup=1, rounds=3, target_ms=1.0, max_inner=3, bandwidth_numel=2 ** 22, quick=True,
                 threads=1)
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def _device(cfg: Config) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for dist in ("fused_hybrid", "torch-optimizer", "pytorch_optimizer", "adabound", "deepspeed", "torch-optimi",
                 "heavyball", "triton"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    if "fused_hybrid" not in out:
        try:
            import fused_hybrid

            out["fused_hybrid"] = getattr(fused_hybrid, "__version__", "?")
        except Exception:
            pass
    return out


def _estimate_state_bytes(case: C.Case, shapes) -> int:
    """Upper-ish estimate of a case's state, to batch cases under the memory budget."""
    _, _, brule, bopts, _, _ = C.RULES[case.rule]
    n = S.numel(shapes)
    if brule == "ndadam":
        ops = 2
    else:
        ops = bytes_model.state_operands(brule, bopts)
    if case.rule in ("swats", "mas"):
        ops += 1  # momentum buffers some implementations allocate up front
    return (ops + 1) * 4 * n  # +1: temporaries of for-loop implementations


def _batches(cases, shapes, budget: int):
    batch, used = [], 0
    for c in cases:
        need = _estimate_state_bytes(c, shapes)
        if batch and used + need > budget:
            yield batch
            batch, used = [], 0
        batch.append(c)
        used += need
    if batch:
        yield batch


def _short_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:200]


def _peer_phase(opt) -> str | None:
    """The phase a peer SWATS ended in (they switch by changing group['phase'])."""
    phases = {str(g.get("phase")) for g in opt.param_groups if "phase" in g}
    return ",".join(sorted(phases)) if phases else None


def run_shape_set(name: str, cfg: Config, device: torch.device, bandwidth: timing.Bandwidth, backends: list[str],
                  notes: list[str], log=print) -> dict:
    shapes = S.get(name, cfg.scale)
    numel = S.numel(shapes)
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=gen).to(device))
        p.grad = torch.randn(s, generator=gen).to(device)
        params.append(p)
    timer = timing.Timer(device)
    budget = int(cfg.mem_budget_gb * 2 ** 30) if cfg.mem_budget_gb else int(0.5 * _free_bytes(device))
    all_cases = C.build(cfg.rules, backends, device, cfg.torch_impls, cfg.peers)
    results = []
    skipped = []
    for batch in _batches(all_cases, shapes, budget):
        live = []
        for case in batch:
            try:
                opt = case.make(params)
                step_t = timer(opt.step, 1)  # first step: creates state
            except Exception as e:  # BackendUnavailableError, unsupported fused=True, a peer's failure
                skipped.append({"rule": case.rule, "impl": case.impl, "reason": _short_error(e)})
                continue
            mem = timing.state_bytes(opt)
            rec = {"rule": case.rule, "impl": case.impl, "family": case.family,
                   "state_bytes": mem, "state_bytes_per_param": mem / numel}
            ops = timing.count_ops(opt.step)
            rec.update({"ops_per_step": ops.get("ops"), "syncs_per_step": ops.get("syncs")})
            if device.type == "cuda":
                rec["kernels_per_step"] = timing.count_cuda_kernels(opt.step)
            wt = []
            for _ in range(max(cfg.warmup, 1)):
                wt.append(timer(opt.step, 1))
            est = min(wt + [step_t])
            inner = max(1, min(cfg.max_inner, math.ceil(cfg.target_ms / 1e3 / max(est, 1e-7))))
            case.opt = opt
            live.append((case, rec, inner, []))
        for r in range(cfg.rounds):
            bandwidth.sample()
            k = r % len(live) if live else 0
            for case, rec, inner, times in live[k:] + live[:k]:
                times.append(timer(case.opt.step, inner) / inner)
        for case, rec, inner, times in live:
            med = statistics.median(times)
            rec.update({"inner": inner, "rounds": len(times), "ms": med * 1e3, "ms_min": min(times) * 1e3,
                        "ms_max": max(times) * 1e3})
            if case.family == "peer" and case.rule == "swats":
                ph = _peer_phase(case.opt)
                rec["note"] = f"phase at end: {ph}" if ph else ""
            if case.note:
                rec["note"] = "; ".join(x for x in (rec.get("note"), case.note) if x)
            if case.bytes_opts is not None:
                rec["bytes_opts"] = case.bytes_opts
            results.append(rec)
            case.opt = None
        del live
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    del params
    gc.collect()
    return {"name": name, "description": S.DESCRIPTIONS[name], "scale": cfg.scale, "num_tensors": len(shapes),
            "numel": numel, "results": results, "skipped": skipped}


def derive(block: dict, bandwidth: dict) -> None:
    """Bytes model, GB/s, % of the axpy reference and speedup vs torch's best, for every case of ``block``."""
    shapes = S.get(block["name"], block["scale"])
    numel = block["numel"]
    results = block["results"]
    order = {r: i for i, r in enumerate(C.RULES)}
    fam = {"fused_hybrid": 0, "torch": 1, "peer": 2}
    results.sort(key=lambda r: (order[r["rule"]], fam.get(r["family"], 3)))  # stable within a family
    best_torch = {}
    for rec in results:
        if rec["family"] == "torch":
            cur = best_torch.get(rec["rule"])
            if cur is None or rec["ms"] < cur["ms"]:
                best_torch[rec["rule"]] = rec
    for rec in results:
        _, _, brule, bopts, _, base_rule = C.RULES[rec["rule"]]
        nbytes = bytes_model.step_bytes(brule, shapes, bopts)
        if rec.get("bytes_opts") is not None:  # kept (not popped): derive runs again on the final bandwidth
            nbytes = bytes_model.step_bytes(brule, shapes, rec["bytes_opts"])
        rec["bytes_per_step"] = nbytes
        rec["bytes_per_element"] = nbytes / numel
        rec["GBps"] = nbytes / (rec["ms"] / 1e3) / 1e9
        rec["pct_axpy"] = 100.0 * rec["GBps"] / bandwidth["axpy_GBps"]
        base = best_torch.get(base_rule)
        if base is not None:
            rec["baseline"] = f"{base_rule}:{base['impl']}"
            rec["speedup_vs_torch_best"] = base["ms"] / rec["ms"]
        else:
            rec["baseline"] = None
            rec["speedup_vs_torch_best"] = None


def format_shape_table(block: dict, device: torch.device) -> str:
    cuda = device.type == "cuda"
    scaled = "" if block["scale"] == 1 else " scaled 1/%g" % block["scale"]
    title = (f"== {block['name']}: {block['description']}{scaled}: {block['num_tensors']} tensors, "
             f"{block['numel']:,} params, fp32 ==")
    head = ["rule", "impl", "ms/step", "min", "vs torch best", "GB/s", "% axpy", "B/el",
            "kernels/step" if cuda else "ops/step", "syncs", "note"]
    rows = []
    for r in block["results"]:
        sp = r.get("speedup_vs_torch_best")
        base = r.get("baseline") or ""
        base_impl = base.split(":", 1)[1] if ":" in base else ""
        base_rule = base.split(":", 1)[0] if ":" in base else ""
        vs = "-" if sp is None else f"{sp:.2f}x"
        if sp is not None and base_rule != r["rule"]:
            vs += f" ({base_rule} {base_impl})"
        elif sp is not None:
            vs += f" ({base_impl})"
        cnt = r.get("kernels_per_step") if cuda else r.get("ops_per_step")
        rows.append([r["rule"], r["impl"], f"{r['ms']:.3f}", f"{r['ms_min']:.3f}", vs, f"{r['GBps']:.1f}", f"{r['pct_axpy']:.0f}%",
                     f"{r['bytes_per_element']:.0f}", "-" if cnt is None else str(cnt),
                     "-" if r.get("syncs_per_step") is None else str(r["syncs_per_step"]), r.get("note") or ""])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    prev = None
    for row in rows:
        if prev is not None and row[0] != prev:
            lines.append("")
        prev = row[0]
        lines.append("  ".join(c.rjust(w) if i in (2, 3, 5, 6, 7, 8, 9) else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    lines += peer_ratio_lines(block)
    grouped: dict[tuple, list] = {}
    for s in block["skipped"]:
        grouped.setdefault((s["impl"], s["reason"]), []).append(s["rule"])
    for (impl, reason), rules in grouped.items():
        lines.append(f"  skipped {impl} for {', '.join(rules)}: {reason}")
    return "\n".join(lines)


def peer_ratio_lines(block: dict) -> list[str]:
    """Per rule, each peer library's time over the fastest fused_hybrid case's (> 1: fused_hybrid is faster)."""
    out = []
    for rule in dict.fromkeys(r["rule"] for r in block["results"]):
        rows = [r for r in block["results"] if r["rule"] == rule]
        ours = min((r for r in rows if r["family"] == "fused_hybrid"), key=lambda r: r["ms"], default=None)
        peers = [r for r in rows if r["family"] == "peer"]
        if ours is not None and peers:
            out.append(f"  {rule}: peer ms / {ours['impl']} ms: "
                       + ", ".join(f"{r['impl']} {r['ms'] / ours['ms']:.2f}x" for r in peers))
    return out


def format_memory_table(blocks: list[dict]) -> str:
    """Optimizer state bytes per parameter, per rule and implementation, for each shape set."""
    names = [b["name"] for b in blocks]
    table: dict[tuple, dict] = {}
    for b in blocks:
        for r in b["results"]:
            table.setdefault((r["rule"], r["impl"]), {})[b["name"]] = r["state_bytes_per_param"]
    head = ["rule", "impl"] + [f"B/param {n}" for n in names]
    rows = [[rule, impl] + [f"{v[n]:.2f}" if n in v else "-" for n in names] for (rule, impl), v in table.items()]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["== optimizer state after one step (bytes per parameter element; fp32 params) ==",
             "  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    for row in rows:
        lines.append("  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def run(cfg: Config, log=print) -> dict:
    """Run the whole benchmark; print as it goes (``log``); return the results dict (also written as JSON).
    The thread count and warning filters are restored afterwards (the smoke test runs this in-process)."""
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            return _run(cfg, log)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: Config, log) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg)
    for r in cfg.rules:
        if r not in C.RULES:
            raise ValueError(f"unknown rule {r!r}; choose from {list(C.RULES)}")
    for s in cfg.shapes:
        S.get(s)  # validates the name
    import fused_hybrid as fh

    # The adabound package calls a deprecated add_ overload on every step; one warning per case says nothing.
    warnings.filterwarnings("ignore", message="This overload of add_ is deprecated")
    notes: list[str] = []
    backends = C.fused_backends(device, cfg.backends, notes)
    if cfg.backends is not None:
        for b in cfg.backends:
            if b not in fh.backends():
                raise ValueError(f"unknown backend {b!r}; choose from {list(fh.backends())}")
    if cfg.peers:
        C.build(cfg.rules, [], device, include_torch=False, include_peers=True, notes=notes)
    timer = timing.Timer(device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    log(f"fused_hybrid bench on {device} ({dev_name}), {torch.get_num_threads()} threads, torch {torch.__version__}"
        + (f"; load average {load[0]:.1f} on {os.cpu_count()} CPUs" if load else ""))
    if load and device.type == "cpu" and load[0] > 0.75 * (os.cpu_count() or 1):
        log("  note: the machine is busy (load average above the CPU count): CPU timings will be noisy"
            + ("; with more than one thread an OpenMP region stalls whenever one of its threads is descheduled: "
               "--threads 1 gives steadier numbers" if torch.get_num_threads() > 1 else ""))
    log(f"  fused_hybrid backends timed: {', '.join(backends) or 'none'}")
    for n in notes:
        log(f"  note: {n}")
    bwm = timing.Bandwidth(device, cfg.bandwidth_numel, timer)
    bwm.sample(max(cfg.rounds, 5))
    log(f"  timing: {cfg.warmup} warm-up steps, median of {cfg.rounds} interleaved rounds, >= {cfg.target_ms:g} ms "
        f"per measurement, {'CUDA events' if device.type == 'cuda' else 'perf_counter'}; the axpy/copy reference "
        f"is sampled once per round between the cases")
    blocks = []
    for name in cfg.shapes:
        t0 = time.perf_counter()
        log(f"  timing {name} ...")
        blocks.append(run_shape_set(name, cfg, device, bwm, backends, notes, log))
        log(f"  timing {name}: done in {time.perf_counter() - t0:.0f} s")
        # Each shape set's table as soon as it is timed (a run cut short still shows what it measured), against
        # the bandwidth sampled so far; the JSON's figures use the final samples.
        derive(blocks[-1], bwm.result())
        log("")
        log(format_shape_table(blocks[-1], device))
        log("")
    bw = bwm.result()
    bwm.free()
    log(f"  reference bandwidth ({bw['numel']:,} fp32 elements, median of {bw['samples']} samples): axpy a += s*b "
        f"{bw['axpy_GBps']:.1f} GB/s (best {bw['axpy_GBps_best']:.1f}), copy {bw['copy_GBps']:.1f} GB/s "
        f"(best {bw['copy_GBps_best']:.1f})")
    for block in blocks:
        derive(block, bw)
    log("")
    log(format_memory_table(blocks))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = {
        "meta": {"timestamp": stamp, "device": str(device), "device_name": dev_name,
                 "threads": torch.get_num_threads(), "versions": _versions(), "platform": platform.platform(),
                 "backends": fh.backends(), "fused_backends_timed": backends, "notes": notes,
                 "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
                 "bytes_model": "bench/bytes_model.py", "cpu_count": os.cpu_count(),
                 "load_average_at_start": load, "load_average_at_end": os.getloadavg() if load else None},
        "bandwidth": bw,
        "shape_sets": blocks,
    }
    if cfg.out_dir != "":
        d = Path(cfg.out_dir) if cfg.out_dir else RESULTS_DIR
        d.mkdir(parents=True, exist_ok=True)
        tag = device.type if device.type == "cpu" else "cuda-" + "".join(
            ch if ch.isalnum() else "_" for ch in dev_name).strip("_")
        path = d / f"{tag}-{stamp}{'-quick' if cfg.quick else ''}.json"
        path.write_text(json.dumps(out, indent=1, default=str))
        out["path"] = str(path)
        log(f"\nresults written to {path}")
    return out
