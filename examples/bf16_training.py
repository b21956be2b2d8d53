"""bfloat16 parameters without float32 master weights (issue 16): does round-to-nearest lose the end of training,
and do stochastic rounding and Kahan summation recover it?

The problem: MNIST-1D (Greydanus & Kobak 2020, generated locally by the ``mnist1d`` package, 4000 train / 1000
test) and its reference MLP (40 -> 100 -> 100 -> 10, a residual connection around the middle layer; the same
model as ``train_mnist1d.py``), batch 100, trained with Adam, SWATS and Padam under a cosine learning-rate
schedule that decays to zero over the run.

Why this setup. A bfloat16 weight w keeps 8 significant bits: a step smaller than half its spacing (2^-9 |w| to
2^-8 |w|) rounds back to w when stored to nearest, every time. This MLP's weights sit at |w| ~ 0.05-0.5
(PyTorch's init, U(+-1/sqrt(fan_in)), and what training makes of it), so a weight of 0.25 ignores any step below
~5e-4. Adam's step is lr * m_hat / sqrt(v_hat): at most about lr, and far less once the model fits the training
set and the minibatch gradients disagree in sign (m averages them towards zero, v does not). Decaying learning
rates are the standard recipe (cosine: Loshchilov & Hutter, SGDR, 2017), and the last, small-step part of the
schedule is where a model's final loss is made, so this is the regime in which round-to-nearest's loss is real.
Measured (the plot's lower row): stored to nearest, the share of weights that still change falls from ~70 % to
~35 % within 200 steps once the fit tightens (step ~1100 of 3000, lr still ~7e-3 for Adam), and the train loss
stops there, while a float32 copy keeps moving every weight to the end. Nothing is tuned to make it fail: the
lr values are the ones ``train_mnist1d.py`` uses (Adam and SWATS: the paper's 1e-2; Padam: its official 0.1
with partial 1/8), and the schedule goes to 0 as cosine schedules do. Test accuracy barely separates the
configurations (this MLP overfits MNIST-1D: ~64 % test accuracy against 100 % train, +-1-2 points between
seeds); the train loss is the measure of how well the optimizer did its job, and the one the verdict uses.

Configurations, per optimizer (``CONFIGS``; one more entry adds one):

- ``fp32``: float32 params, float32 forward and backward: the reference trajectory.
- ``fp32 master``: the classic mixed-precision recipe (Micikevicius et al., ICLR 2018): a bfloat16 model for the
  forward and backward passes, a float32 copy of the weights that the optimizer steps, copied back to the model
  rounded to nearest after every step. The same bfloat16 arithmetic as the configurations below, only the weight
  storage differs: the one the issue asks to match.
- ``bf16 nearest``: bfloat16 params stepped in place (the optimizer's state float32, the update computed in
  float32, the store rounded to nearest: today's default, and what torch.optim does).
- ``bf16 SR``: the same with ``stochastic_rounding=True``.
- ``bf16 Kahan``: the same with ``kahan_summation=True`` (the model uses the stored weight w, not w + c).
- ``bf16 state + SR`` / ``bf16 state + Kahan``: additionally ``state_dtype=torch.bfloat16`` (bfloat16 moment
  buffers), when the build has that keyword; otherwise they are listed as not available.

Every bfloat16 configuration runs the forward and backward passes in bfloat16 (inputs cast to bfloat16, logits
cast to float32 for the loss). A seed fixes the initialization (drawn in float32, then cast), the minibatch order
and the stochastic-rounding seeds; it is the same for every configuration, so each seed's runs are paired.
The reported train loss and test accuracy are computed in float32 arithmetic on the weights each configuration
holds (float32 master: its float32 weights), over the whole training / test set, every ``--eval-every`` steps.

The tolerance. Whether a configuration "reaches" the reference is judged on log10 of the final train loss (the
losses span decades as the model interpolates the training set, so ratios are what is comparable), per seed
against the reference of the same seed: a configuration matches when the mean over seeds of
log10(loss / loss_ref) is within the seed-to-seed spread of the reference itself, the standard deviation of
log10(loss_ref) over the seeds (what changing nothing but the seed does to the result), and it is measurably
worse when it is above the reference on every seed and by more than that spread on average.

    python examples/bf16_training.py              # 3 optimizers x 6 configurations x 3 seeds, 3000 steps (~5 min)
    python examples/bf16_training.py --optimizers Adam --seeds 1
    python examples/bf16_training.py --quick      # smoke run: 1 seed, 300 steps, seconds

Writes ``examples/results/bf16_training.json`` (every run's history and the summary), ``.md`` (the table) and
``examples/bf16_training.png`` (the curves), or all three under ``--out``.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without installing: find fused_hybrid beside us
    sys.path.append(str(HERE.parent))

import fused_hybrid as fh  # noqa: E402

BF16 = torch.bfloat16


# -- data and model: train_mnist1d.py's (the dataset built locally, the reference MLP) ---------------------------

from train_mnist1d import MLP, load_mnist1d  # noqa: E402


# -- the optimizers and the configurations ----------------------------------------------------------------------

# lr: the values train_mnist1d.py uses (the MNIST-1D recipe's 1e-2 for the Adam family, Padam's official 0.1).
OPTIMIZERS = {
    "Adam": (fh.Adam, dict(lr=1e-2)),
    "SWATS": (fh.SWATS, dict(lr=1e-2)),  # fused_hybrid's default switch test
    "Padam": (fh.Padam, dict(lr=0.1, partial=0.125)),
}


@dataclass
class Config:
    name: str
    param_dtype: torch.dtype       # the model's params (and so the forward/backward arithmetic)
    opt_kwargs: dict = field(default_factory=dict)
    master: bool = False           # step a float32 copy, copy it back to the bf16 model after each step
    color: str = "k"
    ls: str = "-"


CONFIGS = [
    Config("fp32", torch.float32, color="black"),
    Config("fp32 master", BF16, master=True, color="tab:gray", ls="--"),
    Config("bf16 nearest", BF16, color="tab:red"),
    Config("bf16 SR", BF16, {"stochastic_rounding": True}, color="tab:blue"),
    Config("bf16 Kahan", BF16, {"kahan_summation": True}, color="tab:green"),
    # bfloat16 moment buffers (issue 16, part 3): run once the build has the keyword.
    Config("bf16 state + SR", BF16, {"state_dtype": BF16, "stochastic_rounding": True}, color="tab:cyan", ls=":"),
    Config("bf16 state + Kahan", BF16, {"state_dtype": BF16, "kahan_summation": True}, color="tab:olive", ls=":"),
]
REFERENCE = "fp32 master"  # what the tolerance compares with (fp32 is shown too)


def unavailable(cfg: Config, opt_name: str, backend: str) -> str | None:
    """Why this build cannot run ``cfg`` with ``opt_name`` (None when it can): a keyword the class does not take
    (``state_dtype`` before it lands) or one the backend refuses, found on a one-element probe."""
    cls, kw = OPTIMIZERS[opt_name]
    params = inspect.signature(cls).parameters
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    missing = [k for k in cfg.opt_kwargs if k not in params and not has_var_kw]
    if missing:
        return f"not available in this build ({cls.__name__} takes no {', '.join(missing)})"
    p = torch.zeros(4, dtype=cfg.param_dtype, requires_grad=True)
    p.grad = torch.ones_like(p)
    try:
        cls([p], backend=backend, **kw, **cfg.opt_kwargs).step()
    except (TypeError, ValueError, NotImplementedError, RuntimeError) as e:
        return f"not available in this build ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return None


# -- training ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(weights: list[torch.Tensor], X, y) -> tuple[float, float]:
    """Loss and accuracy of the MLP with ``weights`` (any dtype), in float32 arithmetic."""
    w1, b1, w2, b2, w3, b3 = (w.float() for w in weights)
    h = F.linear(X, w1, b1).relu()
    h = h + F.linear(h, w2, b2).relu()
    out = F.linear(h, w3, b3)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


def cosine_lr(lr0: float, k: int, total: int) -> float:
    """lr for step k (1-based) of ``total``: lr0 * (1 + cos(pi * (k-1) / total)) / 2, from lr0 towards 0."""
    return 0.5 * lr0 * (1.0 + math.cos(math.pi * (k - 1) / total))


def train(opt_name: str, cfg: Config, seed: int, steps: int, data, batch: int, eval_every: int,
          backend: str) -> dict:
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(seed)
    model = MLP()  # float32 init, then cast: every configuration of a seed starts from the same weights (rounded)
    # the float32 master copy starts from the float32 init itself, not its bf16 rounding (as AMP's master weights
    # come from a float32 model)
    master = [p.detach().clone().requires_grad_() for p in model.parameters()] if cfg.master else None
    model.to(cfg.param_dtype)
    params = list(model.parameters())
    cls, kw = OPTIMIZERS[opt_name]
    stepped = master if cfg.master else params
    torch.manual_seed(seed)  # the rounding seeds are drawn from the default generator when the state is created
    opt = cls(stepped, backend=backend, **kw, **cfg.opt_kwargs)
    lr0 = opt.param_groups[0]["lr"]
    held = master if cfg.master else params
    gen = torch.Generator().manual_seed(seed)
    Xin = Xtr.to(cfg.param_dtype)
    n = Xtr.shape[0]
    hist = {"optimizer": opt_name, "config": cfg.name, "seed": seed, "steps": steps, "eval_steps": [],
            "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": [], "changed": [], "lr": []}
    prev = [w.detach().clone() for w in held]
    perm = torch.randperm(n, generator=gen)
    pos = 0
    t0 = time.perf_counter()
    for k in range(1, steps + 1):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + batch]
        pos += batch
        lr = cosine_lr(lr0, k, steps)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = F.cross_entropy(model(Xin[idx]).float(), ytr[idx])
        model.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.master:
            for m, p in zip(master, params):
                m.grad = p.grad.float()
        opt.step()
        if cfg.master:
            with torch.no_grad():
                for m, p in zip(master, params):
                    p.copy_(m)  # rounded to nearest into the bf16 model
        if k % eval_every == 0 or k == steps:
            tl, ta = evaluate(held, Xtr, ytr)
            vl, va = evaluate(held, Xte, yte)
            # fraction of the stored weights that changed since the last evaluation: round-to-nearest's stall
            # shows as this going to zero while the float32 trajectory still moves
            changed = sum(int((w.detach() != q).sum()) for w, q in zip(held, prev)) / sum(w.numel() for w in held)
            prev = [w.detach().clone() for w in held]
            for key, v in (("eval_steps", k), ("train_loss", tl), ("train_acc", ta), ("test_loss", vl),
                           ("test_acc", va), ("changed", changed), ("lr", lr)):
                hist[key].append(v)
    hist["seconds"] = time.perf_counter() - t0
    return hist


# -- summary ----------------------------------------------------------------------------------------------------

def _sd(v):
    return statistics.stdev(v) if len(v) > 1 else 0.0


def summarize(hists: list[dict], reference: str = REFERENCE) -> list[dict]:
    """One row per (optimizer, configuration): final train loss and test accuracy (mean, sd over seeds), and
    against the reference of the same seeds: mean log10 ratio of the final train losses, the reference's own
    seed spread (sd of log10 loss), and the verdict (see the module docstring)."""
    by: dict[tuple, dict[int, dict]] = {}
    for h in hists:
        by.setdefault((h["optimizer"], h["config"]), {})[h["seed"]] = h
    rows = []
    for (o, c), hs in by.items():
        ref = by.get((o, reference), {})
        seeds = sorted(s for s in hs if s in ref)
        tl = [hs[s]["train_loss"][-1] for s in sorted(hs)]
        ta = [100 * hs[s]["test_acc"][-1] for s in sorted(hs)]
        row = {"optimizer": o, "config": c, "seeds": sorted(hs), "train_loss": tl, "test_acc": ta,
               "train_loss_mean": statistics.mean(tl), "train_loss_sd": _sd(tl),
               "log10_train_loss_mean": statistics.mean(math.log10(x) for x in tl),
               "test_acc_mean": statistics.mean(ta), "test_acc_sd": _sd(ta),
               "changed_last": statistics.mean(hs[s]["changed"][-1] for s in hs),
               "seconds": statistics.mean(hs[s]["seconds"] for s in hs)}
        if seeds:
            d = [math.log10(hs[s]["train_loss"][-1] / ref[s]["train_loss"][-1]) for s in seeds]
            tol = _sd([math.log10(ref[s]["train_loss"][-1]) for s in seeds])
            row["log10_ratio_vs_ref"] = d
            row["log10_ratio_mean"] = statistics.mean(d)
            row["tolerance"] = tol
            if c == reference:
                row["verdict"] = "reference"
            elif len(seeds) < 2:
                row["verdict"] = "n/a (one seed: no spread)"
            elif abs(row["log10_ratio_mean"]) <= tol:
                row["verdict"] = "matches"
            elif row["log10_ratio_mean"] > tol and min(d) > 0:
                row["verdict"] = "worse"
            elif row["log10_ratio_mean"] < -tol and max(d) < 0:
                row["verdict"] = "better"
            else:
                row["verdict"] = "unclear"
        rows.append(row)
    return rows


def table(rows: list[dict], skipped: dict) -> list[str]:
    out = [f"| optimizer | configuration | final train loss (mean +- sd) | log10 ratio vs {REFERENCE} | "
           f"tolerance | verdict | final test acc | weights still moving |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = ("-" if "log10_ratio_mean" not in r else
                 f"{r['log10_ratio_mean']:+.2f} ({', '.join(f'{x:+.2f}' for x in r['log10_ratio_vs_ref'])})")
        tol = "-" if "tolerance" not in r else f"{r['tolerance']:.2f}"
        out.append(f"| {r['optimizer']} | {r['config']} | {r['train_loss_mean']:.3g} +- {r['train_loss_sd']:.2g} | "
                   f"{ratio} | {tol} | {r.get('verdict', '-')} | {r['test_acc_mean']:.1f} % +- "
                   f"{r['test_acc_sd']:.1f} | {100 * r['changed_last']:.1f} % |")
    for (o, c), why in skipped.items():
        out.append(f"| {o} | {c} | {why} | | | | | |")
    return out


def plot(hists: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    opts = list(dict.fromkeys(h["optimizer"] for h in hists))
    fig, axes = plt.subplots(2, len(opts), figsize=(5.2 * len(opts), 7.6), squeeze=False, sharex=True)
    styles = {c.name: c for c in CONFIGS}
    for j, o in enumerate(opts):
        for c in dict.fromkeys(h["config"] for h in hists if h["optimizer"] == o):
            hs = [h for h in hists if h["optimizer"] == o and h["config"] == c]
            x = np.array(hs[0]["eval_steps"])
            st = styles.get(c, Config(c, BF16))
            for i, key in enumerate(("train_loss", "changed")):
                arr = np.array([h[key] for h in hs]) * (100 if key == "changed" else 1)
                ax = axes[i][j]
                if key == "train_loss":
                    arr = np.log10(arr)
                mid = arr.mean(0)
                ax.plot(x, 10 ** mid if key == "train_loss" else mid, color=st.color, ls=st.ls, lw=1.6, label=c)
                if len(hs) > 1:
                    lo, hi = arr.min(0), arr.max(0)
                    if key == "train_loss":
                        lo, hi = 10 ** lo, 10 ** hi
                    ax.fill_between(x, lo, hi, color=st.color, alpha=0.12, lw=0)
        axes[0][j].set_yscale("log")
        axes[0][j].set_title(f"{o} (lr {OPTIMIZERS[o][1]['lr']:g}, cosine to 0)")
        axes[0][j].set_ylabel("train loss (float32 eval of the held weights)")
        axes[1][j].set_ylabel(f"% of weights changed in the last {x[1] - x[0] if len(x) > 1 else x[0]} steps")
        axes[1][j].set_xlabel("step")
        axes[1][j].set_yscale("symlog", linthresh=1.0)
        axes[1][j].set_ylim(0, 130)
        for ax in (axes[0][j], axes[1][j]):
            ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(frameon=False, fontsize=8)
    seeds = sorted({h["seed"] for h in hists})
    fig.suptitle(f"MNIST-1D MLP with bfloat16 weights: geometric mean over seeds {seeds} (band: min..max)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--configs", default=",".join(c.name for c in CONFIGS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--backend", default="cpu", help="fused_hybrid backend (cpu; reference or triton also work)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the JSON, table and plot here (default: examples/results, "
                    "the plot to examples/)")
    ap.add_argument("--quick", action="store_true", help="1 seed, 300 steps (a smoke run)")
    ap.add_argument("--from-json", default=None, help="redraw the plot and table from a saved JSON, no training")
    a = ap.parse_args(argv)
    if a.from_json:
        saved = json.loads(Path(a.from_json).read_text())
        skipped = {tuple(k.split(" / ", 1)): w for k, w in saved["skipped"].items()}
        print("\n".join(table(summarize(saved["histories"]), skipped)))
        plot(saved["histories"], Path(a.out) / "bf16_training.png" if a.out else HERE / "bf16_training.png")
        return None
    if a.quick:
        a.seeds, a.steps, a.eval_every = 1, 300, 50
    torch.set_num_threads(a.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    out = Path(a.out) if a.out else HERE / "results"
    png = (Path(a.out) if a.out else HERE) / "bf16_training.png"
    out.mkdir(parents=True, exist_ok=True)
    names = [x.strip() for x in a.configs.split(",") if x.strip()]
    cfgs = [c for c in CONFIGS if c.name in names]
    if len(cfgs) != len(names):
        ap.error(f"unknown configuration in {names}; choose from {[c.name for c in CONFIGS]}")
    opts = [o.strip() for o in a.optimizers.split(",") if o.strip()]
    for o in opts:
        if o not in OPTIMIZERS:
            ap.error(f"unknown optimizer {o!r}; choose from {list(OPTIMIZERS)}")
    data = load_mnist1d()
    hists, skipped = [], {}
    t0 = time.perf_counter()
    for o in opts:
        for c in cfgs:
            why = unavailable(c, o, a.backend)
            if why:
                print(f"{o} / {c.name}: {why}")
                skipped[(o, c.name)] = why
                continue
            for s in range(a.seeds):
                h = train(o, c, s, a.steps, data, a.batch_size, a.eval_every, a.backend)
                hists.append(h)
                print(f"{o:6} {c.name:18} seed {s}: train loss {h['train_loss'][-1]:.3e}  test acc "
                      f"{100 * h['test_acc'][-1]:.1f} %  weights moving {100 * h['changed'][-1]:.1f} %  "
                      f"({h['seconds']:.1f} s)", flush=True)
    rows = summarize(hists)
    lines = table(rows, skipped)
    print("\n".join(lines))
    meta = {"args": vars(a), "torch": torch.__version__, "seconds": time.perf_counter() - t0,
            "reference": REFERENCE, "backend": a.backend}
    (out / "bf16_training.json").write_text(json.dumps(
        {"meta": meta, "summary": rows, "skipped": {f"{o} / {c}": w for (o, c), w in skipped.items()},
         "histories": hists}))
    (out / "bf16_training.md").write_text(
        f"<!-- python examples/bf16_training.py {' '.join(argv if argv is not None else sys.argv[1:])}; "
        f"torch {torch.__version__}, backend {a.backend}, {len(hists)} runs in {meta['seconds']:.0f} s -->\n"
        + "\n".join(lines) + "\n")
    plot(hists, png)
    print("wrote", out / "bf16_training.json", out / "bf16_training.md", png)
    return rows, hists, skipped


if __name__ == "__main__":
    main()
