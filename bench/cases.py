"""What the benchmark times: one ``Case`` per (rule, implementation).

Implementations are discovered at run time, never assumed:
- fused_hybrid: every backend that ``fused_hybrid.backends()`` lists as available on the device; a backend
  that lacks the rule raises ``BackendUnavailableError`` on the first step and the case is skipped with its
  reason;
- torch.optim: for-loop (foreach=False), foreach=True and fused=True, each kept only if it steps on the device;
- peer libraries (torch-optimizer, pytorch_optimizer, adabound; for Adam/AdamW the CPU optimizers people pick
  for offloaded training: DeepSpeed's DeepSpeedCPUAdam, torch-optimi, heavyball): imported lazily, skipped with a
  note when missing.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch

# The bench's rules: key -> (fused_hybrid class name, constructor kwargs, bytes-model rule, bytes-model opts,
# torch.optim stock equivalent or None, the stock rule its speedup is measured against).
# SWATS is benchmarked in its Adam phase: with the test disabled (switch_rtol=0, switch_atol=0) it cannot switch
# on the bench's fixed gradients halfway through the timing.
RULES = {
    "adam": ("Adam", {}, "adam", {}, ("Adam", {}), "adam"),
    "amsgrad": ("Adam", {"amsgrad": True}, "adam", {"amsgrad": True}, ("Adam", {"amsgrad": True}), "amsgrad"),
    "adamw": ("AdamW", {}, "adamw", {}, ("AdamW", {}), "adamw"),
    "sgd": ("SGD", {"momentum": 0.9}, "sgd", {"momentum": 0.9}, ("SGD", {"momentum": 0.9}), "sgd"),
    "padam": ("Padam", {"lr": 0.1}, "padam", {"amsgrad": True}, None, "amsgrad"),
    "adamclip": ("AdamClip", {"sgd_lr": 0.1, "lower": 0.1, "upper": 10.0}, "adamclip", {}, None, "adam"),
    "adabound": ("AdaBound", {}, "adabound", {}, None, "adam"),
    "swats": ("SWATS", {"switch_rtol": 0.0, "switch_atol": 0.0}, "swats", {}, None, "adam"),
    "mas": ("MAS", {}, "mas", {}, None, "adam"),
    "ndadam": ("NDAdam", {}, "ndadam", {}, None, "adam"),
    "rmsprop": ("RMSprop", {}, "rmsprop", {}, ("RMSprop", {}), "rmsprop"),
    "adagrad": ("Adagrad", {}, "adagrad", {}, ("Adagrad", {}), "adagrad"),
}
DEFAULT_LR = 1e-3

# Peer implementations: rule -> [(label, module, class, kwargs)]. Their hyperparameters are set to torch's
# defaults where the peer's differ (optimi and heavyball default to betas (0.9, 0.99), optimi to eps 1e-6,
# DeepSpeedCPUAdam to AdamW with no decay), so every implementation of a rule computes the same update.
_TORCH_ADAM = {"betas": (0.9, 0.999), "eps": 1e-8}
PEERS = {
    # DeepSpeedCPUAdam (ZeRO-Offload's CPU step: AVX loops, JIT-compiled with ninja on first use and cached under
    # TORCH_EXTENSIONS_DIR) steps one tensor per C++ call; CPU tensors only (elsewhere its first step raises and
    # the case is skipped). torch-optimi: its foreach path (no Triton on CPU).
    "adam": [("DeepSpeedCPUAdam", "deepspeed.ops.adam", "DeepSpeedCPUAdam", {"adamw_mode": False}),
             ("torch-optimi", "optimi", "Adam", {**_TORCH_ADAM, "foreach": True, "triton": False})],
    "adamw": [("DeepSpeedCPUAdam", "deepspeed.ops.adam", "DeepSpeedCPUAdam", {"adamw_mode": True,
                                                                             "weight_decay": 1e-2}),
              ("torch-optimi", "optimi", "AdamW", {**_TORCH_ADAM, "weight_decay": 1e-2, "foreach": True,
                                                   "triton": False}),
              # heavyball compiles its update functions with torch.compile (inductor's C++ backend on CPU) on the
              # first step of each new set of shapes; the warm-up steps absorb that. By default its step sets
              # every p.grad to None (consume_grad), which would leave the cases after it nothing to step.
              ("heavyball", "heavyball", "AdamW", {**_TORCH_ADAM, "weight_decay": 1e-2, "consume_grad": False})],
    "swats": [("torch-optimizer", "torch_optimizer", "SWATS", {}),
              ("pytorch_optimizer", "pytorch_optimizer", "SWATS", {})],
    "adabound": [("torch-optimizer", "torch_optimizer", "AdaBound", {}),
                 ("pytorch_optimizer", "pytorch_optimizer", "AdaBound", {}),
                 ("adabound", "adabound", "AdaBound", {})],
    "padam": [("pytorch_optimizer", "pytorch_optimizer", "PAdam", {"lr": 0.1})],
    # DeepSpeed's CPU Adagrad (the same JIT-compiled op family as its CPU Adam), with torch's eps.
    "adagrad": [("DeepSpeedCPUAdagrad", "deepspeed.ops.adagrad", "DeepSpeedCPUAdagrad", {"eps": 1e-10})],
}
# Peers whose step moves a different number of bytes than our rule (bytes-model opts) and a note saying why.
PEER_BYTES = {("pytorch_optimizer", "padam"): ({"amsgrad": False}, "no AMSGrad max: 28 B/el")}


@dataclass
class Case:
    rule: str
    impl: str            # "fused_hybrid[reference]", "torch[foreach]", "torch-optimizer", ...
    family: str          # "fused_hybrid", "torch", "peer"
    make: Callable[[list], torch.optim.Optimizer]
    note: str = ""
    bytes_opts: dict | None = None   # overrides the rule's bytes-model opts (a peer with other semantics)
    opt: torch.optim.Optimizer | None = field(default=None, repr=False)


def _serves(status: str, device: torch.device) -> bool:
    """Whether a ``fused_hybrid.backends()`` status line says the backend runs on ``device``'s type.
    Unrecognized wording counts as yes: the first step then raises BackendUnavailableError if it cannot."""
    if not status.startswith("available"):
        return False
    where = status.split(";")[0]
    if "any device" in where or " on " not in where:
        return True
    return device.type in where


def fused_backends(device: torch.device, wanted=None, notes=None) -> list[str]:
    """Backends fused_hybrid reports as available on ``device`` (optionally filtered by ``wanted``)."""
    import fused_hybrid as fh

    out = []
    for name, status in fh.backends().items():
        if wanted is not None and name not in wanted:
            continue
        ok = _serves(status, device)
        if ok and name == "triton" and device.type == "cpu" and wanted is None:
            # Triton on CPU tensors only runs under its interpreter: correct, but orders of magnitude slower.
            if notes is not None:
                notes.append("fused_hybrid[triton] on CPU runs under TRITON_INTERPRET only: not timed "
                             "(name it in --backends to time it anyway)")
            continue
        if ok:
            out.append(name)
        elif notes is not None:
            notes.append(f"fused_hybrid[{name}] not timed: {status}")
    return out


def _fh_maker(cls_name, kwargs, backend):
    def make(params):
        import fused_hybrid as fh

        kw = {"lr": DEFAULT_LR, **kwargs}
        return getattr(fh, cls_name)(params, backend=backend, **kw)
    return make


def _torch_maker(cls_name, kwargs, mode):
    def make(params):
        kw = {"lr": DEFAULT_LR, **kwargs}
        if mode == "forloop":
            kw["foreach"] = False
        elif mode == "foreach":
            kw["foreach"] = True
        elif mode == "fused":
            kw["fused"] = True
        return getattr(torch.optim, cls_name)(params, **kw)
    return make


def _peer_maker(module, cls_name, kwargs):
    def make(params):
        mod = importlib.import_module(module)
        kw = {"lr": DEFAULT_LR, **kwargs}
        return getattr(mod, cls_name)(params, **kw)
    return make


def peer_available(module: str) -> tuple[bool, str]:
    try:
        importlib.import_module(module)
        return True, ""
    except Exception as e:  # ImportError, or a peer that fails to import against this torch
        return False, f"{type(e).__name__}: {e}".splitlines()[0]


def build(rules, backends, device, include_torch=True, include_peers=True, notes=None) -> list[Case]:
    """All cases for ``rules`` on ``device``. ``backends`` is the list of fused_hybrid backends to try."""
    cases = []
    missing_peers = {}
    for rule in list(rules):
        base = RULES[rule][5]
        if include_torch and base not in rules:
            # The hybrid rules' speedup is measured against torch's best stock rule: time that too.
            tcls, tkw = RULES[base][4]
            for mode in ("forloop", "foreach", "fused"):
                cases.append(Case(base, f"torch[{mode}]", "torch", _torch_maker(tcls, tkw, mode),
                                  note="baseline"))
            rules = list(rules) + [base]
    seen = set()
    for rule in rules:
        if rule in seen:
            continue
        seen.add(rule)
        cls_name, kw, _, _, stock, _ = RULES[rule]
        for be in backends:
            cases.append(Case(rule, f"fused_hybrid[{be}]", "fused_hybrid", _fh_maker(cls_name, kw, be)))
        if include_torch and stock is not None and not any(c.rule == rule and c.family == "torch" for c in cases):
            tcls, tkw = stock
            for mode in ("forloop", "foreach", "fused"):
                cases.append(Case(rule, f"torch[{mode}]", "torch", _torch_maker(tcls, tkw, mode)))
        if include_peers:
            for label, module, pcls, pkw in PEERS.get(rule, []):
                ok, why = peer_available(module)
                if not ok:
                    missing_peers[label] = why
                    continue
                bopts, note = PEER_BYTES.get((label, rule), (None, ""))
                cases.append(Case(rule, label, "peer", _peer_maker(module, pcls, pkw), note=note,
                                  bytes_opts=bopts))
    if notes is not None:
        for label, why in missing_peers.items():
            notes.append(f"peer library {label} not installed or not importable ({why}): skipped "
                         f"(pip install --no-deps -r bench/requirements.txt adds it)")
    return cases
