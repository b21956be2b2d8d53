"""Clipped steps (issue 17): fused_hybrid's ``max_grad_norm`` against ``torch.nn.utils.clip_grad_norm_`` followed
by torch.optim's fused (and foreach) step, with the unclipped steps for scale.

    python -m bench.clip                                  # ResNet-18 and 2000 x 1000, AdamW, the device's backends
    python -m bench.clip --shapes resnet18 --rules adamw,sgd --rounds 9 --steps 20

Per implementation: the median over ``--rounds`` rounds (implementations interleaved within a round, so they see
the same machine state) of the time per step, and on a GPU the host time per step (the CPU time of the calls
before the kernels complete: no synchronize inside the timed region; on the CPU every op runs on the host, so the
host time is the step time and is not printed twice). The gradients are set once: clip_grad_norm_ rescales them in
place on its first step and then finds them at the limit (it still reads and multiplies them every step: the same
work), while our step leaves them untouched (``p.grad`` is not clipped). ``max_norm`` is chosen below the
gradients' norm so that the first step clips.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from . import shapes as S

RULES = {"adamw": ("AdamW", dict(lr=1e-3, weight_decay=1e-2)), "adam": ("Adam", dict(lr=1e-3)),
         "sgd": ("SGD", dict(lr=0.1, momentum=0.9))}
MAX_NORM = 1.0


def _impls(rule: str, device: torch.device) -> dict:
    """label -> (make(params) -> optimizer, clip before step?)."""
    import fused_hybrid as fh

    name, kw = RULES[rule]
    out = {}
    for be in ("cpu", "cuda", "triton"):
        if not fh.backends()[be].startswith("available"):
            continue
        if (be == "cpu") != (device.type == "cpu"):
            continue
        cls = getattr(fh, name)
        out[f"fused_hybrid[{be}] max_grad_norm"] = (lambda ps, cls=cls, be=be: cls(
            ps, backend=be, max_grad_norm=MAX_NORM, **kw), False)
        out[f"fused_hybrid[{be}] unclipped"] = (lambda ps, cls=cls, be=be: cls(ps, backend=be, **kw), False)
    tcls = getattr(torch.optim, name)
    for flag in ("fused", "foreach"):
        def make(ps, flag=flag):
            return tcls(ps, **kw, **{flag: True})
        try:
            probe = [torch.zeros(4, device=device, requires_grad=True)]
            probe[0].grad = torch.zeros(4, device=device)
            make(probe).step()
        except (RuntimeError, ValueError) as exc:  # fused=True on a device torch has no fused kernel for
            print(f"  (torch {flag}: {str(exc).splitlines()[0][:80]})")
            continue
        out[f"torch[{flag}] + clip_grad_norm_"] = (make, True)
        out[f"torch[{flag}] unclipped"] = (make, False)
    return out


def measure(shape_name: str, rule: str, device: torch.device, rounds: int, steps: int) -> dict:
    shapes = S.get(shape_name)
    impls = _impls(rule, device)
    g = torch.Generator().manual_seed(0)
    runs = {}
    for label, (make, clip) in impls.items():
        ps = [torch.randn(s, generator=g).to(device).requires_grad_() for s in shapes]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g).to(device) * 1e-2
        opt = make(ps)
        if clip:
            def step(ps=ps, opt=opt):
                torch.nn.utils.clip_grad_norm_(ps, MAX_NORM)
                opt.step()
        else:
            step = opt.step
        for _ in range(3):
            step()
        runs[label] = (step, [], [])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(rounds):
        for label, (step, wall, host) in runs.items():
            sync()
            t0 = time.perf_counter()
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            for _ in range(steps):
                step()
            h = time.perf_counter() - t0
            if device.type == "cuda":
                end.record()
                end.synchronize()
                wall.append(start.elapsed_time(end) / 1e3 / steps)
            else:
                wall.append(h / steps)
            host.append(h / steps)
    return {label: (statistics.median(w), statistics.median(h)) for label, (_, w, h) in runs.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.clip", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="resnet18,many_small")
    ap.add_argument("--rules", default="adamw")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    results = {}
    for shape_name in a.shapes.split(","):
        for rule in a.rules.split(","):
            shapes = S.get(shape_name)
            n = sum(torch.Size(s).numel() for s in shapes)
            print(f"\n== {shape_name} ({len(shapes)} tensors, {n / 1e6:.1f}M params), {rule}, {device}, "
                  f"threads={torch.get_num_threads()}: median ms/step over {a.rounds} rounds of {a.steps} ==")
            res = measure(shape_name, rule, device, a.rounds, a.steps)
            for label, (wall, host) in res.items():
                extra = f"   host {host * 1e3:8.3f}" if device.type == "cuda" else ""
                print(f"  {label:<38} {wall * 1e3:8.3f}{extra}")
            results[(shape_name, rule)] = res
    return results


if __name__ == "__main__":
    main()
