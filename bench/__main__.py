"""``python -m bench``: time opt.step() of fused_hybrid vs torch.optim and peer libraries.

    python -m bench                      # every rule, backend and shape set on the device present
    python -m bench --quick              # CI smoke: tiny shapes, few rounds (< 1 minute on 2 cores)
    python -m bench --shapes resnet18,one_big --rules adam,sgd,swats --backends reference,cpu --threads 2
"""
from __future__ import annotations

import argparse
import sys

from . import cases as C, runner, shapes as S


def _warn_if_source_tree() -> None:
    """`python -m bench` from the repository root imports the source tree's fused_hybrid first; after a regular
    (non-editable) install that copy has no compiled extension, and the table would show the reference backend
    only. Say so instead of printing misleading numbers."""
    import fused_hybrid
    from fused_hybrid import _ext
    if not _ext.loaded():
        print(f"WARNING: fused_hybrid was imported from {fused_hybrid.__file__} without its C++ extension "
              f"({_ext.LOAD_ERROR}). Run `bash scripts/bench.sh`, or install with `pip install --no-build-isolation "
              f"-e .`, so the fused backends are measured.", file=sys.stderr)


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (sizes / 16), 1 warm-up, 3 rounds, 1 thread")
    ap.add_argument("--shapes", type=_csv, default=None, help=f"comma list from {','.join(S.SHAPE_SETS)}")
    ap.add_argument("--rules", type=_csv, default=None, help=f"comma list from {','.join(C.RULES)}")
    ap.add_argument("--backends", type=_csv, default=None,
                    help="fused_hybrid backends to try (default: every one available on the device)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU; default: torch's, 1 with --quick)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--scale", type=float, default=None, help="divide the shape sets' sizes by this")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch.optim baselines")
    ap.add_argument("--no-peers", action="store_true", help="skip the peer libraries")
    ap.add_argument("--mem-budget-gb", type=float, default=None,
                    help="optimizer state held at once (default: half the free memory); more cases run in batches")
    ap.add_argument("--out", default=None, help="results folder (default bench/results); '' writes nothing")
    return ap.parse_args(argv)


def config_from_args(a: argparse.Namespace) -> runner.Config:
    cfg = runner.quick_config() if a.quick else runner.Config()
    if a.shapes:
        cfg.shapes = a.shapes
    if a.rules:
        cfg.rules = a.rules
    cfg.backends = a.backends
    if a.threads is not None:
        cfg.threads = a.threads
    cfg.device = a.device
    for k in ("rounds", "warmup", "scale"):
        if getattr(a, k) is not None:
            setattr(cfg, k, getattr(a, k))
    cfg.torch_impls = not a.no_torch
    cfg.peers = not a.no_peers
    cfg.mem_budget_gb = a.mem_budget_gb
    cfg.out_dir = a.out
    return cfg


def main(argv=None) -> dict:
    args = parse_args(argv)
    res = runner.run(config_from_args(args))
    if not args.quick:
        # What the same rules must cost on an H100 / H200 (bytes model + launch counts): predictions, labelled so.
        from . import gpu_model
        gpu_model.main(["--shapes", "resnet18,gpt_1b"])
        # Clipped steps (issue 17): max_grad_norm against clip_grad_norm_ + torch's fused / foreach step.
        from . import clip
        clip.main(["--device", str(res.get("meta", {}).get("device", "cpu"))] +
                  (["--threads", str(args.threads)] if args.threads else []))
        # bfloat16 params (issue 16): nearest / stochastic rounding / Kahan against torch's fused and foreach Adam.
        from . import lowp
        lowp.main(["--device", str(res.get("meta", {}).get("device", "cpu"))] +
                  (["--threads", str(args.threads)] if args.threads else []))
        import torch
        if torch.cuda.is_available() and str(res.get("meta", {}).get("device", "cuda")).startswith("cuda"):
            # On a GPU: the host side of a Triton step with its real launches, fast path next to general path.
            from . import host_overhead
            host_overhead.main([])
    return res


if __name__ == "__main__":
    _warn_if_source_tree()
    main(sys.argv[1:])
