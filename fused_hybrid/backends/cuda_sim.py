"""The cuda_sim backend: the CUDA backend's kernels (csrc/cuda) built by the host compiler against a small SIMT
simulator (csrc/sim/cuda_sim.h) and run on CPU tensors, which stand in for device memory. It exists for the tests:
the CUDA kernels run, here and in CI, on every rule and option, against the reference and bitwise against the cpu
backend. Slow (every CUDA thread is a fiber), so never picked by backend="auto".

It runs the cuda backend's code path exactly: the same ``extension_ops`` functions on the fused_hybrid_sim
namespace (fused_hybrid._C_sim registers the same schemas there, for CPU tensors), the same table ops handing the
lists to the list ops through the dispatcher, and lr, grad_scale, found_inf, the step counts and SWATS's phase are
read inside the kernels through the same device pointers as on a GPU (a CPU tensor's memory is the "device"
memory here). SWATS's switch bookkeeping runs where the cpu backend's does for CPU tensors (swats_bookkeeping).

``settings(...)`` changes the simulator for a block of code: the order threads and blocks run in (reversed or
shuffled results must be bitwise identical), injected faults, and a smaller launch geometry (small tensors then
span several chunks and launches).
"""
from __future__ import annotations

import contextlib

import torch

from .. import _ext
from ..families import FAMILIES
from .extension_ops import bind, ndadam_layout  # noqa: F401  (the backend API)

NAME = "cuda_sim"
RULES = frozenset(FAMILIES)  # every family
BF16_STATE = True  # the cuda backend's kernels, compiled for the host
GRADS_FROM_PARAMS = True  # the optimizer's fast path may pass grads=None (extension_ops)

_OPS = bind("fused_hybrid_sim")
sgd, adaptive, mas, ndadam, rms = _OPS.sgd, _OPS.adaptive, _OPS.mas, _OPS.ndadam, _OPS.rms


def swats_bookkeeping(device: torch.device) -> str:
    """SWATS's switch test on the simulator's CPU tensors: the extension's CPU ops, as the cpu backend's."""
    return "cpu"

ORDERS = {"forward": 0, "reversed": 1, "shuffled": 2}
STATS = ("launches", "blocks", "threads", "block_barriers", "warp_barriers", "vector_accesses")


def available(device: torch.device) -> bool:
    return device.type == "cpu" and _ext.has_sim()


def why_unavailable(device: torch.device) -> str:
    if device.type != "cpu":
        return "the cuda_sim backend simulates the CUDA kernels on CPU tensors only"
    if not _ext.has_sim():
        return _ext.SIM_LOAD_ERROR or "the simulated CUDA kernels (fused_hybrid._C_sim) are not built"
    return ""


@contextlib.contextmanager
def settings(**kw):
    """Simulator settings for the block, restored after it. Keys: thread_order, block_order ("forward",
    "reversed", "shuffled"), seed; the faults fault_no_syncthreads, fault_skip_shuffle (a lane mask),
    fault_assume_aligned; the launch geometry base_chunk, max_chunk, max_blocks, max_tensors (launch_plan.h)."""
    if not _ext.has_sim():
        raise _ext_error()
    old = {}
    try:
        for key, value in kw.items():
            old[key] = torch.ops.fused_hybrid_sim.sim_set(key, int(ORDERS.get(value, value)
                                                                   if isinstance(value, str) else value))
        yield
    finally:
        for key, value in old.items():
            torch.ops.fused_hybrid_sim.sim_set(key, value)


def stats(reset: bool = False) -> dict:
    """The simulator's counters since the last reset: launches, blocks, threads, barriers, vector accesses."""
    return dict(zip(STATS, torch.ops.fused_hybrid_sim.sim_stats(reset)))


def _ext_error():
    from . import BackendUnavailableError
    return BackendUnavailableError(f"backend 'cuda_sim' is unavailable: {why_unavailable(torch.device('cpu'))}")
