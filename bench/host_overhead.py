"""Host time of a GPU backend's step: what the CPU spends per ``opt.step()`` before the kernels run.

    python -m bench.host_overhead                    # Triton backend, ResNet-18 and 2000 x 1000 shapes
    python -m bench.host_overhead --shapes many_small --rules adam,swats --steps 50

A fused step is a handful of launches, so on a GPU the host side (Python, building and checking the launch tables)
can cost more than the kernels: ResNet-18's Adam step must move 327 MB, 0.11 ms at an H100's ~3 TB/s. This times
the host side alone, so it runs on any machine: on CPU tensors under Triton's interpreter with every launch
replaced by a no-op (``backends.triton_launch._launch``), or on a GPU with the real launches (then the number includes
the launch calls, and ``torch.cuda.synchronize`` is kept out of the timed region).

Side by side in one run, per rule: the optimizer's fast path (grads read by a C++ TensorTable snapshot, tables
reused while nothing moved) and its general path (``GRADS_FROM_PARAMS`` off: every gradient and pointer read in
Python each step), and for scale torch's ``Adam(fused=True)`` on as many one-element tensors. Median of ``--steps``
steps after 3 warm-up steps, on float32 tensors of the shape set's real sizes. The interpreter's numbers are this
machine's CPU, not a GPU host's: compare the columns of one run, not runs.
"""
from __future__ import annotations

import argparse
import os
import time


def _setup_interpreter() -> bool:
    """Triton's interpreter for CPU tensors when there is no GPU (must be set before triton is imported)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
        return True
    return False


RULES = {  # bench key: (optimizer class name, kwargs)
    "adam": ("Adam", {}),
    "adam_clip": ("Adam", {"max_grad_norm": 1.0}),  # issue 17: + the norm's launches and the 0-dim combination
    "sgd": ("SGD", {"lr": 0.1, "momentum": 0.9}),
    "swats": ("SWATS", {"lr": 1e-3}),
    "mas": ("MAS", {"variant": "vector"}),
    "ndadam": ("NDAdam", {}),
}


def measure(shapes, rule: str, fast: bool, steps: int, device: str) -> float:
    """Median host ms per step of ``rule`` over tensors of ``shapes`` on the Triton backend."""
    import torch

    import fused_hybrid as fh
    from fused_hybrid.backends import triton as tb

    cls_name, kw = RULES[rule]
    ps = [torch.nn.Parameter(torch.zeros(s, device=device)) for s in shapes]
    for p in ps:
        p.grad = torch.zeros_like(p)
    saved = tb.GRADS_FROM_PARAMS
    tb.GRADS_FROM_PARAMS = fast and saved
    try:
        opt = getattr(fh, cls_name)(ps, backend="triton", **kw)
        return _median_step_ms(opt, steps, device)
    finally:
        tb.GRADS_FROM_PARAMS = saved


def _median_step_ms(opt, steps: int, device: str) -> float:
    """Median wall time of ``opt.step()`` in ms over ``steps`` calls after 3 warm-up steps; on CUDA the device is
    synchronized before each call (not after: the host's time to issue the step is what is measured)."""
    import torch

    for _ in range(3):
        opt.step()
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    times.sort()
    return 1e3 * times[len(times) // 2]


def measure_torch_fused(n: int, steps: int, device: str) -> float:
    """Median ms per step of torch's ``Adam(fused=True)`` over ``n`` one-element tensors: its host work, for scale
    (on the CPU its kernels run too, on one element each)."""
    import torch

    ps = [torch.nn.Parameter(torch.zeros(1, device=device)) for _ in range(n)]
    for p in ps:
        p.grad = torch.zeros_like(p)
    return _median_step_ms(torch.optim.Adam(ps, fused=True), steps, device)


def main(argv=None) -> list[dict]:
    interp = _setup_interpreter()
    import torch

    from fused_hybrid.backends import triton as tb

    ap = argparse.ArgumentParser(prog="python -m bench.host_overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="resnet18,many_small")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args(argv)
    device = "cpu" if interp else "cuda"
    if not tb.available(torch.device(device)):
        print(f"triton backend unavailable: {tb.why_unavailable(torch.device(device))}")
        return []
    from fused_hybrid.backends import triton_launch as tl_
    real_launch, threads = tl_._launch, torch.get_num_threads()
    if interp:
        tl_._launch = lambda kernel, grid, *args, **kw: None  # time the host side only
    torch.set_num_threads(1)
    try:
        return _table(a, device, interp)
    finally:
        tl_._launch = real_launch
        torch.set_num_threads(threads)


def _table(a, device: str, interp: bool) -> list[dict]:
    from fused_hybrid.backends import triton as tb

    from . import shapes as S

    print(f"Triton backend host time per step ({'launches stubbed, CPU tensors' if interp else 'real launches'}; "
          f"fast path {'available' if tb.GRADS_FROM_PARAMS else 'UNAVAILABLE (no C++ extension)'})")
    rows = []
    for name in a.shapes.split(","):
        shapes = S.SHAPE_SETS[name]()
        torch_ms = measure_torch_fused(len(shapes), a.steps, device)
        print(f"\n== {name}: {len(shapes)} tensors (for scale, torch Adam(fused=True) on as many one-element "
              f"tensors: {torch_ms:.3f} ms) ==")
        print(f"{'rule':<8} {'fast ms':>9} {'general ms':>11} {'general/fast':>13}")
        for rule in a.rules.split(","):
            fast = measure(shapes, rule, True, a.steps, device)
            general = measure(shapes, rule, False, a.steps, device)
            print(f"{rule:<8} {fast:>9.3f} {general:>11.3f} {general / fast:>12.1f}x")
            rows.append({"shapes": name, "rule": rule, "fast_ms": fast, "general_ms": general,
                         "torch_fused_adam_ms": torch_ms})
    return rows


if __name__ == "__main__":
    main()
