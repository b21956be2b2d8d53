"""Predicted GPU step times, from the bytes model and the launch counts (issue 8): what a step must cost on an
H100 or H200 if it runs at the device's copy bandwidth, for the shapes users train.

    python -m bench.gpu_model                # ResNet-18 and a 1.1B-parameter transformer, every rule
    python -m bench.gpu_model --shapes gpt2

predicted ms = bytes the step must move / copy bandwidth + launches * per-launch cost. The bandwidths are the
devices' copy bandwidths the issues quote (H100 ~3.0 TB/s, H200 ~4.3 TB/s); the per-launch cost (launch plus the
tail of a memory-bound kernel, 4 us) is an assumption, stated so it can be checked against a measurement. These
are predictions, not measurements: no GPU has run these kernels yet.

Launch counts per bucket (one device, one dtype, one param group) and step, per backend:
- triton: one update launch over a chunk table of every tensor, plus one finalize launch that advances the step
  counts and sums per-chunk partials (SGD has neither, so 1); MAS's reducing variants make their first pass's last
  program per tensor do the finalizing (an empty tensor gets a zero-length chunk for it), then run the apply
  pass (2); ND-Adam runs its row kernel, whose 1-D tensors are plain-Adam chunks, and the finalize (2).
  ``tests/test_triton_backend.py``
  counts the real launches against ``triton_launches``.
- cuda: multi-tensor apply splits the tensors into launches by its argument-table limits
  (``torch.ops.fused_hybrid.plan_launches`` / ``plan_ndadam``, the kernels' own planners) per pass, plus one
  post-step launch (step counts, partial sums) for every family but SGD; MAS's reducing variants make two passes
  and no post-step (each second-pass block sums its tensor's slots and the chunk-0 block advances the step; an
  empty tensor gets one zero-length chunk for it).
- SWATS adds 2 launches per optimizer step (``STEP_EXTRA``, printed as "+2"): its switch bookkeeping, in Triton
  kernels on a GPU whichever backend steps the tensors.
"""
from __future__ import annotations

import argparse
import math

from . import bytes_model as B
from . import shapes as S

DEVICES = {"H100": 3.0e12, "H200": 4.3e12}  # copy bandwidth, bytes/s
LAUNCH_S = 4e-6
# Launches per optimizer step on top of the per-bucket ones: SWATS's switch bookkeeping on a GPU, whichever backend
# steps the tensors (triton_kernels/swats.py: the per-tensor arguments, then segment totals + the switch test).
STEP_EXTRA = {"swats": 2}

RULES = {  # bench key: (bytes-model rule, options, CUDA tensor lists per element pass)
    "adam": ("adam", {}, 4),
    "amsgrad": ("adam", {"amsgrad": True}, 5),
    "adamw": ("adamw", {}, 4),
    "sgd": ("sgd", {"momentum": 0.9}, 3),
    "padam": ("padam", {}, 5),
    "adamclip": ("adamclip", {}, 4),
    "adabound": ("adabound", {}, 4),
    "swats": ("swats", {}, 5),  # p, g, m, v and the (untouched in the Adam phase) momentum buffer
    "mas": ("mas", {}, 4),
    "mas_vector": ("mas", {"variant": "vector"}, 4),
    "ndadam": ("ndadam", {}, 3),
    "rmsprop": ("rmsprop", {}, 3),
    "adagrad": ("adagrad", {}, 3),
}


def _mas_reducing(rule: str, opts: dict | None) -> bool:
    """MAS's "correction", "normalized" and "vector": two passes around per-tensor sums."""
    return rule == "mas" and (opts or {}).get("variant", "sum") != "sum"


def triton_launches(rule: str, opts: dict | None = None, shapes=()) -> int:
    """Launches of one Triton step over one bucket (see the module docstring). Neither the options nor the shapes
    change it any more (taken for symmetry with ``cuda_launches``, whose table limits depend on them)."""
    if rule == "sgd":
        return 1
    # MAS's reducing variants: pass 0 (whose last program per tensor finalizes) and pass 1; ND-Adam: the row kernel
    # (1-D tensors are plain-Adam chunks of it) and the finalize; the rest: the update and the finalize.
    return 2


def cuda_launches(rule: str, opts: dict | None, shapes, depth: int) -> int | None:
    """Launches of one CUDA step over one bucket, from the kernels' own launch planner (None when the extension
    is not built here)."""
    try:
        import torch

        import fused_hybrid  # noqa: F401  (loads the extension, which registers plan_launches)
        plan = torch.ops.fused_hybrid.plan_launches
    except (ImportError, AttributeError, RuntimeError):
        return None
    numels = [math.prod(s) for s in shapes]
    if rule == "ndadam":  # default vectors: a dim >= 2 param's rows along dim 0; 1-D params get Adam (row_len 0)
        row_lens = [math.prod(s[1:]) if len(s) >= 2 else 0 for s in shapes]
        return list(torch.ops.fused_hybrid.plan_ndadam(numels, row_lens))[2] + 1  # [row_scale, chunk, launches..]
    reducing = _mas_reducing(rule, opts)
    flat = list(plan(numels, 0, depth, 0, 0, 1 if reducing else 0))
    main = flat[1]  # plan::encode: [chunk_size, number of launches, ...]
    if rule == "sgd":
        return main
    if reducing:
        return 2 * main  # the reduce pass and the apply pass
    return main + 1  # the main pass and the post-step


def predict(key: str, shapes, device: str) -> dict:
    rule, opts, depth = RULES[key]
    if _mas_reducing(rule, opts):  # two passes: what they really move
        nbytes = B.mas_two_pass_step_bytes(shapes, bool(opts.get("momentum", 0)))
    else:
        nbytes = B.step_bytes(rule, shapes, opts)
    out = {"rule": key, "bytes": nbytes, "triton_launches": triton_launches(rule, opts, shapes),
           "cuda_launches": cuda_launches(rule, opts, shapes, depth)}
    out["step_extra_launches"] = STEP_EXTRA.get(rule, 0)
    bw = DEVICES[device]
    for be in ("triton", "cuda"):
        n = out[f"{be}_launches"]
        out[f"{be}_ms"] = None if n is None else 1e3 * (nbytes / bw + (n + out["step_extra_launches"]) * LAUNCH_S)
    return out


# Gradient clipping fused into the step (issue 17, fused_hybrid/grad_clip.py): per bucket, the norm op reads every
# gradient once (4 bytes per fp32 element) in one multi-tensor launch (more only when the argument table overflows,
# as for the update) plus a one-block finalize; per step, the combination of the partials is a few 0-dim torch ops
# (CLIP_STEP_OPS, counted by tests/test_grad_clip.py on the ops grad_clip.combine dispatches). The update kernels
# run unchanged, taking the clip coefficient through grad_scale, so they move the same bytes.
# The reference it replaces, torch.nn.utils.clip_grad_norm_ before torch's fused step: _foreach_norm reads every
# gradient (4 B/el), _foreach_mul_ reads and writes it (8 B/el), with their own launches (torch's multi-tensor
# apply: a 4 KB argument table, ~110 tensors or 320 blocks per launch, aten/src/ATen/native/cuda/MultiTensorApply.cuh)
# plus _foreach_norm's cleanup kernel, stack, vector_norm, add, div, clamp (6 launches).
CLIP_STEP_OPS = {"clip": 9, "clip_and_skip": 13}  # with GradScaler's grad_scale / found_inf (8 / 11 without)
TORCH_CLIP_BYTES_PER_EL = 12
TORCH_CLIP_OPS = 6


def clip_launches(shapes) -> dict:
    """Launches a fused clipped step adds per bucket on each backend (norm + finalize), the per-step combination,
    and torch's clip_grad_norm_ launches for the same tensors (its multi-tensor apply's table: at most 110 tensors
    and 320 chunks of 65536 elements per launch, for each of _foreach_norm and _foreach_mul_)."""
    numels = [math.prod(s) for s in shapes]
    cuda = None
    try:
        import torch

        import fused_hybrid  # noqa: F401
        cuda = list(torch.ops.fused_hybrid.plan_launches(numels, 0, 1, 0, 0, 0))[1] + 1
    except (ImportError, AttributeError, RuntimeError):
        pass
    # torch's table (depth 1): a launch per 110 tensors or 320 chunks, whichever fills first (a lower bound)
    torch_mta = max(-(-len(numels) // 110), -(-sum(-(-n // 65536) for n in numels) // 320), 1)
    return {"triton": 2, "cuda": cuda, "step": CLIP_STEP_OPS["clip"],
            "torch_clip": 2 * torch_mta + TORCH_CLIP_OPS}


def predict_clip(key: str, shapes, device: str) -> dict:
    """A clipped step of rule ``key``: the unclipped prediction plus one read of the gradients and the norm's
    launches; against clip_grad_norm_ (12 B/el and its launches) before the same fused step."""
    base = predict(key, shapes, device)
    n = sum(math.prod(s) for s in shapes)
    cl = clip_launches(shapes)
    bw = DEVICES[device]
    out = dict(base, clip_bytes=4 * n, clip_launches=cl)
    for be in ("triton", "cuda"):
        if base[f"{be}_ms"] is None or cl[be] is None:
            out[f"{be}_clip_ms"] = None
            continue
        out[f"{be}_clip_ms"] = base[f"{be}_ms"] + 1e3 * (4 * n / bw + (cl[be] + cl["step"]) * LAUNCH_S)
    out["torch_clip_ms"] = 1e3 * (TORCH_CLIP_BYTES_PER_EL * n / bw + cl["torch_clip"] * LAUNCH_S)
    return out


# bfloat16 params (issue 16): bytes per element of each option against torch's fused step, whose state takes the
# param's dtype. SR computes its bits (0 B); Kahan reads and writes its 16-bit buffer (+4 B); bfloat16 state
# (``state_dtype``, when the build has it) halves the state's traffic. The launches are unchanged (the options are
# constexprs of the same kernels). Only the Triton kernels implement the options on a GPU today (the CUDA ones refuse
# them), and their Kahan buffer accesses are not 128-bit yet (bench/triton_ptx.py), so the Kahan rows are a floor.
LOWP = [  # (label, param bytes, state bytes, kahan)
    ("fp32 params", 4, 4, False),
    ("bf16 nearest / SR", 2, 4, False),
    ("bf16 Kahan", 2, 4, True),
    ("bf16 + bf16 state", 2, 2, False),
    ("bf16 + bf16 state + Kahan", 2, 2, True),
]


def predict_lowp(key: str, shapes, device: str, param_bytes: int, state_bytes: int, kahan: bool) -> dict:
    """The Triton step of rule ``key`` with 16-bit params and these options."""
    rule, opts, _ = RULES[key]
    if _mas_reducing(rule, opts):
        nbytes = B.mas_two_pass_step_bytes(shapes, bool(opts.get("momentum", 0)), param_bytes, state_bytes, kahan)
    else:
        nbytes = B.step_bytes(rule, shapes, opts, param_bytes, state_bytes, kahan)
    n = triton_launches(rule, opts, shapes) + STEP_EXTRA.get(rule, 0)
    return {"rule": key, "bytes": nbytes, "ms": 1e3 * (nbytes / DEVICES[device] + n * LAUNCH_S)}


def gpt_1b():
    """A 1.1B-parameter GPT-style transformer: d=2048, 20 layers, vocabulary 50257, context 2048 (tied head)."""
    d, layers, vocab, ctx = 2048, 20, 50257, 2048
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return shapes + [(d,), (d,)]


SHAPES = {"resnet18": S.SHAPE_SETS["resnet18"], "gpt2": S.SHAPE_SETS["gpt2"], "gpt_1b": gpt_1b}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_model", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="resnet18,gpt_1b")
    a = ap.parse_args(argv)
    rows = []
    for name in a.shapes.split(","):
        shapes = SHAPES[name]()
        n = sum(math.prod(s) for s in shapes)
        print(f"\n== {name}: {len(shapes)} tensors, {n / 1e6:,.1f}M params, fp32; PREDICTED ms/step "
              f"(bytes / copy bandwidth + launches x {LAUNCH_S * 1e6:.0f} us) ==")
        print(f"{'rule':<11} {'B/el':>5} {'launches triton/cuda':>21} " +
              " ".join(f"{d + ' triton':>12} {d + ' cuda':>10}" for d in DEVICES))
        for key in RULES:
            per = {d: predict(key, shapes, d) for d in DEVICES}
            p0 = per["H100"]
            cl = "?" if p0["cuda_launches"] is None else str(p0["cuda_launches"])
            if p0["step_extra_launches"]:
                cl += f" (+{p0['step_extra_launches']})"
            cells = " ".join(f"{per[d]['triton_ms']:>12.3f} " +
                             (f"{per[d]['cuda_ms']:>10.3f}" if per[d]["cuda_ms"] is not None else f"{'?':>10}")
                             for d in DEVICES)
            print(f"{key:<11} {p0['bytes'] / n:>5.1f} {str(p0['triton_launches']) + ' / ' + cl:>21} {cells}")
            rows.append({"shapes": name, **{d: per[d] for d in DEVICES}})
        cl = clip_launches(shapes)
        print(f"-- clipped step: ours (max_grad_norm: +4 B/el, +{cl['triton']} launches per bucket, "
              f"+{CLIP_STEP_OPS['clip']} 0-dim ops per step) | the same step after clip_grad_norm_ "
              f"({TORCH_CLIP_BYTES_PER_EL} B/el, {cl['torch_clip']} launches) --")
        print(f"{'rule':<11} " + " ".join(f"{d + ' ours':>12} {d + ' step+clip':>14}" for d in DEVICES))
        for key in ("adam", "adamw", "sgd"):
            per = {d: predict_clip(key, shapes, d) for d in DEVICES}
            be = "cuda" if per["H100"]["cuda_clip_ms"] is not None else "triton"
            print(f"{key:<11} " + " ".join(f"{per[d][be + '_clip_ms']:>12.3f} "
                                           f"{per[d][be + '_ms'] + per[d]['torch_clip_ms']:>14.3f}" for d in DEVICES))
            rows.append({"shapes": name, "clip": True, **{d: per[d] for d in DEVICES}})
        print("-- 16-bit params (issue 16), triton: B/el and H200 ms; torch's fused step keeps its state in the "
              "param dtype (= the bf16-state row) --")
        print(f"{'rule':<11} " + " ".join(f"{lab:>26}" for lab, *_ in LOWP))
        for key in ("adam", "adamw", "sgd", "swats", "padam", "mas_vector"):
            cells = []
            for lab, pb, sb, k in LOWP:
                p = predict_lowp(key, shapes, "H200", pb, sb, k)
                cells.append(f"{p['bytes'] / n:>5.0f} B {p['ms']:>8.3f} ms")
                rows.append({"shapes": name, "lowp": lab, "H200": p})
            print(f"{key:<11} " + " ".join(f"{c:>26}" for c in cells))
    return rows


if __name__ == "__main__":
    main()
