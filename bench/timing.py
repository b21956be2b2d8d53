"""Timers, the copy/axpy reference bandwidth, op/kernel counting and state-memory measurement."""
from __future__ import annotations

import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import bytes_model


class Timer:
    """Seconds taken by ``fn()`` called ``n`` times: perf_counter on CPU, CUDA events on a GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn, n: int = 1) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - t0


class Bandwidth:
    """The reference kernels: an in-place axpy (a += s*b: 12 B/element) and a copy (8 B/element) over ``numel``
    float32 elements (far bigger than the caches). ``sample()`` times each once; the runner samples them before
    the cases and once in every round between the cases, so the reference sees the same machine state as the
    cases it is compared with. ``result()``: medians (and the best) over all samples."""

    def __init__(self, device: torch.device, numel: int, timer: Timer):
        self.numel = numel
        self.timer = timer
        self.a = torch.randn(numel, device=device)
        self.b = torch.randn(numel, device=device)
        self.c = torch.empty_like(self.a)
        self.ta: list[float] = []
        self.tc: list[float] = []
        self._axpy(), self._copy()  # warm-up (first touch of c)

    def _axpy(self):
        self.a.add_(self.b, alpha=1e-7)

    def _copy(self):
        self.c.copy_(self.b)

    def sample(self, n: int = 1) -> None:
        for _ in range(n):
            self.ta.append(self.timer(self._axpy))
            self.tc.append(self.timer(self._copy))

    def result(self) -> dict:
        ta, tc = statistics.median(self.ta), statistics.median(self.tc)
        return {
            "numel": self.numel,
            "samples": len(self.ta),
            "axpy_GBps": bytes_model.AXPY_BYTES_PER_ELEMENT * self.numel / ta / 1e9,
            "copy_GBps": bytes_model.COPY_BYTES_PER_ELEMENT * self.numel / tc / 1e9,
            "axpy_GBps_best": bytes_model.AXPY_BYTES_PER_ELEMENT * self.numel / min(self.ta) / 1e9,
            "copy_GBps_best": bytes_model.COPY_BYTES_PER_ELEMENT * self.numel / min(self.tc) / 1e9,
            "axpy_ms": ta * 1e3,
            "copy_ms": tc * 1e3,
        }

    def free(self) -> None:
        del self.a, self.b, self.c


def reference_bandwidth(device: torch.device, numel: int, rounds: int, timer: Timer) -> dict:
    """One-shot version of ``Bandwidth``: medians over ``rounds`` samples."""
    bw = Bandwidth(device, numel, timer)
    bw.sample(rounds)
    out = bw.result()
    bw.free()
    return out


class _OpCounter(TorchDispatchMode):
    """Counts the aten / custom ops one step dispatches and the host syncs among them (.item() and friends)."""

    SYNC_OPS = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.equal")

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        name = str(func.overloadpacket)
        if any(name.startswith(s) for s in self.SYNC_OPS):
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def count_ops(step) -> dict:
    """Ops dispatched by one ``step()`` (a fused step over one bucket is one op) and host syncs among them."""
    counter = _OpCounter()
    try:
        with counter:
            step()
    except Exception as e:  # an op that does not run under a Python dispatch mode: report, do not fail
        return {"ops": None, "syncs": None, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
    return {"ops": counter.ops, "syncs": counter.syncs}


def count_cuda_kernels(step) -> int | None:
    """CUDA kernels launched by one ``step()``, from the profiler; None where it cannot tell."""
    try:
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        n = 0
        for evt in prof.events():
            if getattr(evt, "device_type", None) == torch.autograd.DeviceType.CUDA:
                n += 1
        return n
    except Exception:
        return None


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (per-parameter and global entries), each storage once."""
    seen = set()
    total = 0

    def visit(v):
        nonlocal total
        if isinstance(v, torch.Tensor):
            key = (v.device, v.untyped_storage().data_ptr())
            if key in seen:
                return
            seen.add(key)
            total += v.untyped_storage().nbytes()
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)

    for st in opt.state.values():
        visit(st)
    # Some peers keep state in param_groups (e.g. a phase tensor); tensors there other than params count too.
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    for g in opt.param_groups:
        for k, v in g.items():
            if k != "params" and isinstance(v, torch.Tensor) and id(v) not in params:
                visit(v)
    return total
