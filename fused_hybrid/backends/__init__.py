"""Backend registry: which backends exist, which are usable here, and which one serves a rule on a device.

A backend is a module with ``NAME``, ``RULES`` (the rule families it implements: "adaptive", "sgd", "mas",
"ndadam", "rms"), ``available(device) -> bool``, ``why_unavailable(device) -> str``, one function per rule family
(see ``backends/reference.py`` for the API) and ``swats_bookkeeping(device)``: how SWATS's switch test runs next to
its steps ("torch": plain-PyTorch ops; "cpu": the C++ extension's ops; "triton": the Triton backend's kernels,
through this registry). ``backend="auto"`` picks the first usable fused backend for the
device that implements the rule, else the reference; a backend named explicitly is used or a
``BackendUnavailableError`` says why not: never a silent fallback.
"""
from __future__ import annotations

import importlib

import torch

NAMES = ("reference", "cpu", "triton", "cuda", "cuda_sim")
# The order "auto" tries them in, per device type. Never "cuda_sim": the CUDA kernels under a simulator, for tests.
_AUTO_ORDER = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name and cannot serve this device, dtype or rule."""


_LOADED: dict = {}


def _module(name: str):
    """The backend module, imported on first use (the triton one imports triton) and then looked up in a dict,
    which torch.compile can trace where it cannot trace an import."""
    mod = _LOADED.get(name)
    if mod is None:
        if name not in NAMES:
            raise ValueError(f"unknown backend {name!r}; choose one of {('auto',) + NAMES}")
        if name == "triton":
            # An import statement, not importlib: torch.compile runs import statements while tracing (a compiled
            # first step may be the one that asks for the backend), where it refuses to trace importlib.
            from . import triton as mod
        else:
            mod = importlib.import_module(f"{__name__}.{name}")
        _LOADED[name] = mod
    return mod


for _name in ("reference", "cpu", "cuda", "cuda_sim"):  # cheap to import; triton waits until it is asked for
    _module(_name)


def module(name: str):
    """The backend module ``name`` (for a capability one backend borrows from another: the cuda backend's SWATS
    bookkeeping is the Triton backend's)."""
    return _module(name)


def check_name(name: str) -> None:
    if name != "auto" and name not in NAMES:
        raise ValueError(f"Invalid backend: {name!r}; choose one of {('auto',) + NAMES}")


def _bf16_state(mod) -> bool:
    """Whether ``mod``'s kernels take bfloat16 moment buffers (its ``BF16_STATE``; every backend's do today, the
    flag keeps "auto" and the error right for a backend added without them)."""
    return bool(getattr(mod, "BF16_STATE", False))


def resolve(name: str, device: torch.device, family: str, bf16_state: bool = False):
    """The backend module that runs ``family`` for tensors on ``device``; with ``bf16_state`` (a group's
    state_dtype=torch.bfloat16 applies to these tensors) one whose kernels take bfloat16 moment buffers
    (``BF16_STATE``): "auto" skips the others, a backend named explicitly that lacks it is refused."""
    if name == "auto":
        for cand in _AUTO_ORDER.get(device.type, ()):
            mod = _module(cand)
            if family in mod.RULES and mod.available(device) and (not bf16_state or _bf16_state(mod)):
                return mod
        return _module("reference")
    mod = _module(name)
    if not mod.available(device):
        raise BackendUnavailableError(f"backend {name!r} cannot run on {device}: {mod.why_unavailable(device)}")
    if family not in mod.RULES:
        raise BackendUnavailableError(
            f"backend {name!r} does not implement the {family!r} rule family yet "
            f"(it implements {sorted(mod.RULES)}); use backend='auto' or 'reference'")
    if bf16_state and not _bf16_state(mod):
        raise BackendUnavailableError(
            f"backend {name!r}: state_dtype=torch.bfloat16 is not implemented by its kernels "
            f"(bfloat16 moment buffers run on {sorted(n for n in NAMES if _bf16_state(_module(n)))}); use one of "
            "those, backend='auto', or state_dtype=None")
    return mod


def backends() -> dict[str, str]:
    """Each backend's status here: 'available (...)' or 'unavailable: <reason>'."""
    out = {}
    for name in NAMES:
        mod = _module(name)
        devs = [d for d in ("cpu", "cuda") if mod.available(torch.device(d))]
        if name == "reference":
            out[name] = f"available on any device; rules: {', '.join(sorted(mod.RULES))}"
        elif devs:
            out[name] = f"available on {', '.join(devs)}; rules: {', '.join(sorted(mod.RULES))}"
        else:
            out[name] = f"unavailable: {mod.why_unavailable(torch.device('cuda' if name in ('cuda', 'triton') else 'cpu'))}"
    return out
