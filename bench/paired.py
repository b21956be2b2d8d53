"""``python -m bench.paired``: fused_hybrid vs torch's fused stock rule, one step of each back to back.

The main benchmark interleaves whole rounds; on a VM whose memory bandwidth drifts within seconds that is not
enough for a purely bandwidth-bound shape (one 16.8M tensor): the two sides of a ratio may see different machines.
Here every step of ours is timed right next to one step of torch's ``fused=True`` counterpart (Adam's for the
hybrid rules, AMSGrad's for Padam: the same bytes), and the ratio is taken per pair; the median and quartiles of
the pairs' ratios are printed (> 1: ours is faster). CPU only.

    python -m bench.paired [--numel 16777216] [--pairs 31] [--threads 2] [--rules adam,sgd,...]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from .cases import RULES


def _torch_counterpart(rule: str, params: list):
    name, kw = RULES[rule][4] or (("Adam", {"amsgrad": True}) if RULES[rule][5] == "amsgrad" else ("Adam", {}))
    return getattr(torch.optim, name)(params, fused=True, **kw)


def _ours(rule: str, params: list):
    import fused_hybrid as fh
    cls, kw = RULES[rule][0], RULES[rule][1]
    return getattr(fh, cls)(params, backend="cpu", **kw)


def _params(numel: int, rule: str, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    shape = (numel // 4096, 4096) if rule == "ndadam" else (numel,)  # ND-Adam: rows of 4096 (a 2-D weight)
    p = torch.randn(shape, generator=g).requires_grad_()
    p.grad = torch.randn(shape, generator=g)
    return [p]


def pair_ratios(rule: str, numel: int, pairs: int) -> list[float]:
    ours, theirs = _ours(rule, _params(numel, rule, 0)), _torch_counterpart(rule, _params(numel, rule, 1))
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
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"paired steps, {args.numel:,} fp32 elements, {args.threads} threads, {args.pairs} pairs per rule")
    print("rule      torch fused / ours: median (q1, q3)")
    for rule in args.rules.split(","):
        r = pair_ratios(rule, args.numel, args.pairs)
        q = statistics.quantiles(r)
        print(f"{rule:9s} {statistics.median(r):.2f}x ({q[0]:.2f}, {q[2]:.2f})")


if __name__ == "__main__":
    main()
