"""MNIST-1D (Greydanus & Kobak 2020, "Scaling Down Deep Learning", arXiv:2011.14439): a benchmark built to
separate models, with a published table (logistic regression 32 %, MLP 68 %, CNN 94 %, GRU 91 % test accuracy).

Two parts:

1. ``repro``: the paper's Adam row with ``torch.optim.Adam`` and ``fused_hybrid.Adam`` side by side, from the
   same initializations (logistic regression, MLP, CNN; the GRU is left out: the paper notes it takes 10x the
   CNN's wall time). The paper's recipe: Adam, lr 1e-2, batch 100, 6000 steps, minibatches taken in order
   through the unshuffled training set (the reference code's ``bix = step*batch % len(x_train)``), 4000 training
   and 1000 test examples.
2. ``sweep``: every rule of fused_hybrid on the CNN and the MLP with its papers' hyperparameters and the same
   tuning budget for every rule (three learning rates, ``SWEEP`` below). The learning rate is chosen on a
   validation split (the last 500 training examples, held out of training), never on the test set; the table
   gives test accuracy, final train loss, the generalization gap (train minus test accuracy) and wall time at
   the chosen learning rate, and SWATS's switch step and Lambda per seed.

    python examples/train_mnist1d.py                    # both parts, 3 seeds: ~25 min on 2 shared cores
    python examples/train_mnist1d.py --part repro       # one part
    python examples/train_mnist1d.py --quick            # CI smoke run: 1 seed, a few hundred steps, well under a minute

The data are generated locally by the ``mnist1d`` package (``make_dataset(get_dataset_args())``: procedural,
seed 42, nothing downloaded). Outputs go to examples/out/: ``mnist1d.json`` (every run's history) and PNG plots.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import OUT, LogReg, evaluate, fh, save_figure, set_threads

# The paper's table (MNIST-1D row of the mnist1d README / Greydanus & Kobak 2020, Table 1), in %.
PAPER = {"logreg": 32.0, "mlp": 68.0, "cnn": 94.0}
RECIPE = {"lr": 1e-2, "batch": 100, "steps": 6000, "eval_every": 250}


# -- data -------------------------------------------------------------------------------------------------------

def load_mnist1d(num_samples: int | None = None):
    """(x_train, y_train, x_test, y_test) as float32 / int64 tensors, from the package's default arguments
    (5000 samples, 80/20 split: 4000 / 1000, seed 42). ``make_dataset`` builds them from the ten templates;
    ``get_dataset`` would download a pickle instead, which we never want."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    if num_samples is not None:
        args.num_samples = num_samples
    d = make_dataset(args)
    t = lambda a, dt: torch.as_tensor(a, dtype=dt)  # noqa: E731
    return t(d["x"], torch.float32), t(d["y"], torch.long), t(d["x_test"], torch.float32), t(d["y_test"], torch.long)


# -- models (the paper's reference models: LinearBase, MLPBase with hidden 100, ConvBase) ------------------------

class MLP(nn.Module):
    """40 -> 100 -> 100 -> 10 with a residual connection around the second layer, as the reference MLP."""

    def __init__(self, hidden: int = 100):
        super().__init__()
        self.linear1, self.linear2, self.linear3 = nn.Linear(40, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 10)

    def forward(self, x):
        h = self.linear1(x).relu()
        h = h + self.linear2(h).relu()
        return self.linear3(h)


class CNN(nn.Module):
    """Three Conv1d of 25 channels (kernels 5/3/3, stride 2, padding 1, ReLU): 40 -> 19 -> 10 -> 5 positions,
    25 x 5 = 125 features into Linear(125, 10)."""

    def __init__(self, channels: int = 25):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.linear = nn.Linear(channels * 5, 10)

    def forward(self, x):
        h = x.view(-1, 1, x.shape[-1])
        h = self.conv3(self.conv2(self.conv1(h).relu()).relu()).relu()
        return self.linear(h.flatten(1))


MODELS = {"logreg": lambda: LogReg(40), "mlp": MLP, "cnn": CNN}


def head_and_body(model: nn.Module):
    """The last Linear layer (the classifier head) and everything else, for the Adam-body / SGD-head split."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    hid = {id(p) for p in head.parameters()}
    return [p for p in model.parameters() if id(p) not in hid], list(head.parameters())


# -- the rules under comparison ---------------------------------------------------------------------------------

# Learning-rate grids: the same budget for every rule, three values half a decade apart around the rule's
# published default. Adam-type step sizes span Adam's default (1e-3, Kingma & Ba) to the MNIST-1D recipe (1e-2);
# SGD with momentum 0.9 spans 0.01-0.1 (0.1: the usual SGD baseline on CIFAR/ImageNet); Padam's official lr is
# 0.1 (Chen et al.); MAS weights both directions by 0.5 (w -= (sgd_w*lr + adam_w*lr/bc1)*(sgd_w*d_sgd +
# adam_w*d_adam)), so its grid sits a half decade higher than Adam's; ND-Adam's steps act on unit-norm weight
# vectors, like SGD's on a normalized scale, so it gets SGD's grid.
ADAM_LRS = (1e-3, 3e-3, 1e-2)
SWEEP = {
    # name: (lr grid, make(model, lr))
    "Adam": (ADAM_LRS, lambda m, lr: fh.Adam(m.parameters(), lr=lr)),
    # torch's default decoupled decay, 1e-2.
    "AdamW": (ADAM_LRS, lambda m, lr: fh.AdamW(m.parameters(), lr=lr, weight_decay=1e-2)),
    "SGD-momentum": ((0.01, 0.03, 0.1), lambda m, lr: fh.SGD(m.parameters(), lr=lr, momentum=0.9)),
    # Keskar & Socher's SWATS, fused_hybrid's default (relative) switch test; it starts as Adam.
    "SWATS": (ADAM_LRS, lambda m, lr: fh.SWATS(m.parameters(), lr=lr)),
    "Padam": ((0.03, 0.1, 0.3), lambda m, lr: fh.Padam(m.parameters(), lr=lr, partial=0.125)),
    "AdaBound": (ADAM_LRS, lambda m, lr: fh.AdaBound(m.parameters(), lr=lr, final_lr=0.1)),
    # Adam-Clip(1, inf) (Keskar & Socher, section 2): Adam's step size never below sgd_lr; sgd_lr 0.3 is the
    # averaged-momentum form of SGD lr 0.03 with momentum 0.9 (step sgd_lr*m with m an EMA = lr*buf/(1-b1)).
    "AdamClip": (ADAM_LRS, lambda m, lr: fh.AdamClip(m.parameters(), lr=lr, sgd_lr=0.3, lower=1.0)),
    "MAS": ((3e-3, 1e-2, 3e-2), lambda m, lr: fh.MAS(m.parameters(), lr=lr, adam_w=0.5, sgd_w=0.5, variant="sum")),
    "MAS-correction": ((3e-3, 1e-2, 3e-2), lambda m, lr: fh.MAS(m.parameters(), lr=lr, variant="correction")),
    "MAS-normalized": ((3e-3, 1e-2, 3e-2), lambda m, lr: fh.MAS(m.parameters(), lr=lr, variant="normalized")),
    "MAS-vector": ((3e-3, 1e-2, 3e-2), lambda m, lr: fh.MAS(m.parameters(), lr=lr, variant="vector")),
    "ND-Adam": ((0.01, 0.03, 0.1), lambda m, lr: fh.NDAdam(m.parameters(), lr=lr)),
    # The lecture's RMSProp (seed 002) and Adagrad, each around torch.optim's default lr of 1e-2.
    "RMSprop": (ADAM_LRS, lambda m, lr: fh.RMSprop(m.parameters(), lr=lr)),
    "Adagrad": ((3e-3, 1e-2, 3e-2), lambda m, lr: fh.Adagrad(m.parameters(), lr=lr)),
    # Kone, Zhu & Chan's layer-wise split: Adam on the body, SGD with momentum on the classifier head, the head's
    # lr ten times the body's (the SGD grid above, point for point).
    "Adam-body/SGD-head": (ADAM_LRS, lambda m, lr: fh.Hybrid(
        [{"params": head_and_body(m)[0], "rule": "adam"},
         {"params": head_and_body(m)[1], "rule": "sgd", "lr": 10 * lr, "momentum": 0.9}], lr=lr)),
}
COLORS = {"Adam": "tab:blue", "SGD-momentum": "tab:orange", "SWATS": "tab:red", "Padam": "tab:green",
          "AdaBound": "tab:purple", "Adam-body/SGD-head": "tab:brown", "torch.optim.Adam": "black",
          "fh.Adam": "tab:blue"}


# -- training ---------------------------------------------------------------------------------------------------

def train(model_name: str, make_opt, seed: int, data, steps: int, batch: int = RECIPE["batch"],
          eval_every: int = RECIPE["eval_every"], val=None) -> dict:
    """The reference loop: minibatch ``step`` is rows ``step*batch % n`` onwards of the unshuffled training set.
    ``seed`` sets the initialization (the data are fixed). Evaluates every ``eval_every`` steps and at the end."""
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    opt = make_opt(model)
    n = xtr.shape[0]
    h = {"seed": seed, "steps": [], "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": [],
         "val_acc": [], "batch_loss": []}

    def record(k):
        tl, ta = evaluate(model, xtr, ytr)
        vl, va = evaluate(model, xte, yte)
        h["steps"].append(k)
        h["train_loss"].append(tl)
        h["train_acc"].append(100 * ta)
        h["test_loss"].append(vl)
        h["test_acc"].append(100 * va)
        if val is not None:
            h["val_acc"].append(100 * evaluate(model, *val)[1])

    t0 = time.perf_counter()
    for k in range(steps):
        if k % eval_every == 0:
            record(k)
        i = (k * batch) % n
        loss = F.cross_entropy(model(xtr[i:i + batch]), ytr[i:i + batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k < 100:  # the first steps' minibatch losses: where two implementations of one rule must agree
            h["batch_loss"].append(loss.item())
    record(steps)
    h["seconds"] = time.perf_counter() - t0
    info = opt.switch_info() if hasattr(opt, "switch_info") else []
    if info:
        h["switch_step"] = info[0]["switch_step"]
        h["switch_Lambda"] = info[0]["sgd_lr"]
    return h


def _stats(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def run_repro(data, seeds, steps, models, bar) -> dict:
    impls = {"torch.optim.Adam": lambda m: torch.optim.Adam(m.parameters(), lr=RECIPE["lr"]),
             "fh.Adam": lambda m: fh.Adam(m.parameters(), lr=RECIPE["lr"])}
    out = {}
    for model_name in models:
        for impl, make in impls.items():
            runs = []
            for s in seeds:
                runs.append(train(model_name, make, s, data, steps))
                bar.update(1)
                bar.set_postfix_str(f"{model_name} {impl} s{s} test {runs[-1]['test_acc'][-1]:.1f}%")
            out.setdefault(model_name, {})[impl] = runs
    return out


def run_sweep(data, seeds, steps, models, rules, lr_points, bar, lr_factor=1.0) -> dict:
    """Train on the first n - 500 training examples, validate on the last 500, test on the test set."""
    xtr, ytr, xte, yte = data
    nval = 500
    fit = (xtr[:-nval], ytr[:-nval], xte, yte)
    val = (xtr[-nval:], ytr[-nval:])
    out = {}
    for model_name in models:
        for rule in rules:
            grid, make = SWEEP[rule]
            grid = grid if lr_points is None else grid[lr_points]
            grid = tuple(float(f"{lr * lr_factor:.6g}") for lr in grid)
            per_lr = {}
            for lr in grid:
                runs = []
                for s in seeds:
                    runs.append(train(model_name, lambda m: make(m, lr), s, fit, steps, val=val))
                    bar.update(1)
                    bar.set_postfix_str(f"{model_name} {rule} lr {lr:g} s{s} test {runs[-1]['test_acc'][-1]:.1f}%")
                per_lr[lr] = runs
            # The choice: best mean final validation accuracy over seeds (the test set plays no part in it).
            best = max(per_lr, key=lambda lr: _stats([r["val_acc"][-1] for r in per_lr[lr]])[0])
            out.setdefault(model_name, {})[rule] = {"lrs": {str(k): v for k, v in per_lr.items()},
                                                   "chosen_lr": best}
    return out


# -- summaries --------------------------------------------------------------------------------------------------

def repro_rows(rep: dict) -> list[dict]:
    rows = []
    for model_name, impls in rep.items():
        for impl, runs in impls.items():
            acc = _stats([r["test_acc"][-1] for r in runs])
            rows.append({"model": model_name, "impl": impl, "paper": PAPER[model_name], "test_acc": acc[0],
                         "test_sd": acc[1], "best_test_acc": _stats([max(r["test_acc"]) for r in runs])[0],
                         "train_acc": _stats([r["train_acc"][-1] for r in runs])[0],
                         "train_loss": _stats([r["train_loss"][-1] for r in runs])[0],
                         "seconds": _stats([r["seconds"] for r in runs])[0], "seeds": len(runs)})
    return rows


def sweep_rows(sw: dict) -> list[dict]:
    rows = []
    for model_name, rules in sw.items():
        for rule, res in rules.items():
            runs = res["lrs"][str(res["chosen_lr"])]
            te = _stats([r["test_acc"][-1] for r in runs])
            rows.append({
                "model": model_name, "rule": rule, "lr": res["chosen_lr"], "test_acc": te[0], "test_sd": te[1],
                "test_min": min(r["test_acc"][-1] for r in runs), "test_max": max(r["test_acc"][-1] for r in runs),
                "val_acc": _stats([r["val_acc"][-1] for r in runs])[0],
                "train_loss": _stats([r["train_loss"][-1] for r in runs])[0],
                "gap": _stats([r["train_acc"][-1] - r["test_acc"][-1] for r in runs])[0],
                "seconds": _stats([r["seconds"] for r in runs])[0],
                "switch": [(r.get("switch_step"), r.get("switch_Lambda")) for r in runs] if "switch_step" in runs[0]
                else None,
                "all_lrs": {lr: _stats([r["test_acc"][-1] for r in rr])[0] for lr, rr in res["lrs"].items()}})
    return rows


def print_tables(rep_rows, sw_rows) -> None:
    if rep_rows:
        print("\n| model | paper | optimizer | final test acc (mean +- sd) | best test acc seen | final train acc | "
              "final train loss | s / run |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rep_rows:
            print(f"| {r['model']} | {r['paper']:.0f} % | {r['impl']} | {r['test_acc']:.1f} % +- {r['test_sd']:.1f} "
                  f"| {r['best_test_acc']:.1f} % | {r['train_acc']:.1f} % | {r['train_loss']:.3g} | "
                  f"{r['seconds']:.1f} |")
    if sw_rows:
        print("\n| model | rule | chosen lr | test acc (mean +- sd; min..max) | val acc | final train loss | "
              "gap (train - test acc) | s / run | SWATS switch step / Lambda per seed | test acc at each lr |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in sw_rows:
            sw = "" if r["switch"] is None else "; ".join(
                "none" if st is None else f"{st} / {lam:.3g}" for st, lam in r["switch"])
            lrs = ", ".join(f"{float(lr):g}: {a:.1f}" for lr, a in r["all_lrs"].items())
            print(f"| {r['model']} | {r['rule']} | {r['lr']:g} | {r['test_acc']:.1f} % +- {r['test_sd']:.1f}; "
                  f"{r['test_min']:.1f}..{r['test_max']:.1f} | {r['val_acc']:.1f} % | {r['train_loss']:.3g} | "
                  f"{r['gap']:.1f} | {r['seconds']:.1f} | {sw} | {lrs} |")


# -- plots ------------------------------------------------------------------------------------------------------

def _band(ax, runs, key, label, color, ls="-"):
    steps = runs[0]["steps"]
    ys = [[r[key][i] for r in runs] for i in range(len(steps))]
    ax.plot(steps, [statistics.fmean(y) for y in ys], ls, color=color, label=label, lw=1.4)
    ax.fill_between(steps, [min(y) for y in ys], [max(y) for y in ys], color=color, alpha=0.15, lw=0)


def plot_repro(rep: dict, dpi: int, out_dir: Path) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rep), figsize=(4.2 * len(rep), 3.4), squeeze=False)
    for ax, (model_name, impls) in zip(axes[0], rep.items()):
        for impl, runs in impls.items():
            _band(ax, runs, "test_acc", f"{impl} test", COLORS[impl], "-" if impl == "fh.Adam" else "--")
            _band(ax, runs, "train_acc", f"{impl} train", COLORS[impl], ":")
        ax.axhline(PAPER[model_name], color="grey", lw=0.8)
        ax.text(next(iter(impls.values()))[0]["steps"][-1], PAPER[model_name] - 1,
                f"paper {PAPER[model_name]:.0f} %", color="grey", fontsize=8, ha="right", va="top")
        ax.set_title(f"{model_name}: Adam lr 1e-2, batch 100")
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, "mnist1d_repro.png", dpi, out_dir)


def plot_sweep(sw: dict, sw_rows: list[dict], dpi: int, out_dir: Path) -> list[str]:
    import matplotlib.pyplot as plt

    paths = []
    models = list(sw)
    # 1. test accuracy per rule at its chosen lr (each seed a dot), and the final train loss.
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 0.35 * len(SWEEP) * len(models) + 1.5), squeeze=False)
    for row, model_name in zip(axes, models):
        rows = [r for r in sw_rows if r["model"] == model_name]
        names = [r["rule"] for r in rows]
        for i, r in enumerate(rows):
            runs = sw[model_name][r["rule"]]["lrs"][str(r["lr"])]
            row[0].plot([x["test_acc"][-1] for x in runs], [i] * len(runs), "o", ms=3, color="tab:blue", alpha=0.6)
            row[0].plot([r["test_acc"]], [i], "|", ms=12, color="black")
            row[1].plot([x["train_loss"][-1] for x in runs], [i] * len(runs), "o", ms=3, color="tab:red", alpha=0.6)
        for ax in row:
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels([f"{n} (lr {r['lr']:g})" for n, r in zip(names, rows)], fontsize=7)
            ax.invert_yaxis()
            ax.grid(axis="x", alpha=0.3)
        row[0].set_xlabel(f"{model_name}: final test accuracy (%), each seed; bar = mean")
        row[1].set_xlabel(f"{model_name}: final train loss")
        row[1].set_xscale("log")
    paths.append(save_figure(fig, "mnist1d_sweep.png", dpi, out_dir))
    # 2. test and train accuracy over training for a few rules (the Adam-SGD question), at their chosen lr.
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.6), squeeze=False)
    for ax, model_name in zip(axes[0], models):
        for rule in ("Adam", "SGD-momentum", "SWATS", "Padam", "AdaBound", "Adam-body/SGD-head"):
            if rule not in sw[model_name]:
                continue
            res = sw[model_name][rule]
            runs = res["lrs"][str(res["chosen_lr"])]
            _band(ax, runs, "test_acc", f"{rule} (lr {res['chosen_lr']:g})", COLORS[rule])
            ax.plot(runs[0]["steps"], [statistics.fmean(r["train_acc"][i] for r in runs)
                                       for i in range(len(runs[0]["steps"]))], ":", color=COLORS[rule], lw=1)
        ax.set_title(f"{model_name}: test (solid; band min..max), train (dotted)", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=7, loc="lower right")
    paths.append(save_figure(fig, "mnist1d_sweep_curves.png", dpi, out_dir))
    return paths


# -- main -------------------------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("repro", "sweep", "both"), default="both")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=RECIPE["steps"], help="steps of the reproduction runs")
    # Half the recipe's steps for the sweep's 234 runs keeps the study near 25 min on 2 cores (3000 steps: 86
    # epochs of the 3500 examples it trains on). Not every rule has converged by then: examples/README.md says
    # which, and --sweep-steps 6000 runs the recipe's length.
    ap.add_argument("--sweep-steps", type=int, default=3000, help="steps of each sweep run")
    ap.add_argument("--rules", default=",".join(SWEEP), help="rules of the sweep, comma-separated")
    ap.add_argument("--lr-factor", type=float, default=1.0,
                    help="multiplies every rule's lr grid (e.g. 10: does the choice at a grid's top edge hold?)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 seed, 500 repro steps, 250 sweep steps at each rule's middle lr")
    ap.add_argument("--out", default=str(OUT), help="folder for mnist1d.json and the plots")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--from-json", default=None, help="no training: tables and plots from a saved mnist1d.json")
    ap.add_argument("--dpi", type=int, default=110)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    from tqdm import tqdm

    lr_points = None
    if args.quick:
        args.seeds, args.steps, args.sweep_steps = 1, 500, 250
        lr_points = slice(1, 2)
    seeds = list(range(args.seeds))
    rules = [r for r in args.rules.split(",") if r]
    for r in rules:
        if r not in SWEEP:
            raise SystemExit(f"unknown rule {r!r}; choose from {', '.join(SWEEP)}")
    if args.from_json:
        return replot(Path(args.from_json), Path(args.out), args)
    t_start = time.perf_counter()
    data = load_mnist1d()
    print(f"MNIST-1D generated locally: {data[0].shape[0]} train / {data[2].shape[0]} test examples of length "
          f"{data[0].shape[1]} ({time.perf_counter() - t_start:.1f} s); torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); fused_hybrid backends: "
          + ", ".join(k for k, v in fh.backends().items() if v.startswith("available")))
    result = {"args": vars(args), "recipe": RECIPE, "paper": PAPER}
    do_repro, do_sweep = args.part in ("repro", "both"), args.part in ("sweep", "both")
    n_lrs = 1 if lr_points is not None else 3
    total = (do_repro * 3 * 2 * len(seeds)) + (do_sweep * 2 * len(rules) * n_lrs * len(seeds))
    rep_rows, sw_rows = [], []
    with tqdm(total=total, unit="run", dynamic_ncols=True) as bar:
        if do_repro:
            result["repro"] = run_repro(data, seeds, args.steps, list(PAPER), bar)
            rep_rows = repro_rows(result["repro"])
        if do_sweep:
            result["sweep"] = run_sweep(data, seeds, args.sweep_steps, ["mlp", "cnn"], rules, lr_points, bar,
                                        args.lr_factor)
            sw_rows = sweep_rows(result["sweep"])
    result["repro_rows"], result["sweep_rows"] = rep_rows, sw_rows
    result["seconds"] = time.perf_counter() - t_start
    out = Path(args.out)
    report(result, out, args)
    (out / "mnist1d.json").write_text(json.dumps(result, default=str))
    print(f"histories: {out / 'mnist1d.json'}")
    return result


def report(result: dict, out: Path, args) -> None:
    """Print the tables and draw the plots of a finished (or saved) study."""
    print_tables(result["repro_rows"], result["sweep_rows"])
    print(f"\ntotal wall time {result['seconds'] / 60:.1f} min")
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        paths = []
        if result.get("repro"):
            paths.append(plot_repro(result["repro"], args.dpi, out))
        if result.get("sweep"):
            paths += plot_sweep(result["sweep"], result["sweep_rows"], args.dpi, out)
        print("plots: " + ", ".join(paths))


def replot(path: Path, out: Path, args) -> dict:
    result = json.loads(path.read_text())
    result["repro_rows"] = repro_rows(result["repro"]) if result.get("repro") else []
    result["sweep_rows"] = sweep_rows(result["sweep"]) if result.get("sweep") else []
    report(result, out, args)
    return result


if __name__ == "__main__":
    main()
