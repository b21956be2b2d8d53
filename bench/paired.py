"""``python -m bench.paired``: fused_hybrid vs torch's fused stock rule, one step of each back to back.

The main benchmark interleaves whole rounds; on a VM whose memory bandwidth drifts within seconds that is not
enough for a purely bandwidth-bound shape (one 16.8M tensor): the two sides of a ratio may see different machines.
Here every step of ours is timed right next to one step of torch's ``fused=True`` counterpart (Adam's for the
hybrid rules, AMSGrad's for Padam: the same bytes), and the ratio is taken per pair; the median and quartiles of
the pairs' ratios are printed (> 1: ours is faster). CPU only.

``--against LABEL`` pairs ours with a peer library of ``bench.cases.PEERS`` instead (e.g. DeepSpeedCPUAdam,
torch-optimi, heavyball for adam/adamw); ``--dtype bf16`` steps bf16 parameters and gradients (both sides keep
fp32 state: fused_hybrid always does, DeepSpeedCPUAdam with its default fp32_optimizer_states=True).

    python -m bench.paired [--numel 16777216] [--pairs 31] [--threads 2] [--rules adam,sgd,...]
    python -m bench.paired --rules adam,adamw --against DeepSpeedCPUAdam [--dtype bf16]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from .cases import DEFAULT_LR, PEERS, RULES, _peer_maker

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _counterpart(rule: str, params: list, against: str | None):
    """torch's fused step of the same rule (None), else the peer library labelled ``against``."""
    if against is None:
        name, kw = RULES[rule][4] or (("Adam", {"amsgrad": True}) if RULES[rule][5] == "amsgrad" else ("Adam", {}))
        cls = getattr(torch.optim, name)
        try:
            return cls(params, fused=True, lr=DEFAULT_LR, **kw)
        except (TypeError, RuntimeError):  # no fused implementation (RMSprop): torch's fastest, foreach
            return cls(params, foreach=True, lr=DEFAULT_LR, **kw)
    for label, module, cls, kw in PEERS.get(rule, []):
        if label == against:
            return _peer_maker(module, cls, kw)(params)
    raise SystemExit(f"no peer {against!r} for rule {rule!r} in bench.cases.PEERS")


def _ours(rule: str, params: list):
    import fused_hybrid as fh
    cls, kw = RULES[rule][0], RULES[rule][1]
    return getattr(fh, cls)(params, backend="cpu", **{"lr": DEFAULT_LR, **kw})


def _params(numel: int, rule: str, seed: int, dtype=torch.float32) -> list:
    g = torch.Generator().manual_seed(seed)
    shape = (numel // 4096, 4096) if rule == "ndadam" else (numel,)  # ND-Adam: rows of 4096 (a 2-D weight)
    p = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    p.grad = torch.randn(shape, generator=g).to(dtype)
    return [p]


def pair_ratios(rule: str, numel: int, pairs: int, against: str | None = None,
                dtype=torch.float32) -> list[float]:
    ours = _ours(rule, _params(numel, rule, 0, dtype))
    theirs = _counterpart(rule, _params(numel, rule, 1, dtype), against)
    for _ in range(3):
        ours.step()
        theirs.step()
    ratios = []
    for _ in range(pairs):
        t = time.perf_counter()
        ours.step()
        a = time.perf_counter() - t
        t = time.perf_counter()
        theirs.step()
        ratios.append((time.perf_counter() - t) / a)
    return ratios


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=16_777_216)
    ap.add_argument("--pairs", type=int, default=31)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--against", default=None, help="a peer's label in bench.cases.PEERS (default: torch fused)")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="parameter and gradient dtype")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"paired steps, {args.numel:,} {args.dtype} elements, {args.threads} threads, {args.pairs} pairs per rule")
    print(f"rule      {args.against or 'torch fused'} / ours: median (q1, q3)")
    for rule in args.rules.split(","):
        r = pair_ratios(rule, args.numel, args.pairs, args.against, DTYPES[args.dtype])
        q = statistics.quantiles(r)
        print(f"{rule:9s} {statistics.median(r):.2f}x ({q[0]:.2f}, {q[2]:.2f})")


if __name__ == "__main__":
    main()
