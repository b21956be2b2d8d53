"""Adam vs SGD-momentum vs SWATS vs Padam vs AdaBound vs MAS on scikit-learn's 8x8 digits (an MLP and a small
CNN), several seeds. Prints a summary table, writes curves and the SWATS trace as PNGs and the raw histories as
JSON under examples/out/.

    python examples/train_digits.py                       # both models, 3 seeds, 30 epochs (a few minutes, 2 cores)
    python examples/train_digits.py --models mlp --seeds 5 --epochs 60
    python examples/train_digits.py --optimizers Adam,SWATS --quick

Plots:
  out/digits_<model>_curves.png   train loss (log) and test accuracy per epoch: mean over seeds, band = min..max;
                                  dotted verticals mark each seed's SWATS switch
  out/digits_<model>_swats.png    SWATS's gamma_k (the per-step projected SGD learning rate) and its bias-corrected
                                  average Lambda_k, per step, every seed; a marker at each switch
"""
from __future__ import annotations

import argparse
import json
import statistics

from common import COLORS, OPTIMIZERS, OUT, load_digits_tensors, save_figure, set_threads, train


def summarize(hists: list[dict]) -> list[str]:
    lines = [f"{'model':6} {'optimizer':13} {'final train loss':>22} {'final test acc':>20} {'best test acc':>14}"
             f"  SWATS switch (step / epoch / Lambda)"]
    by = {}
    for h in hists:
        by.setdefault((h["model"], h["optimizer"]), []).append(h)
    for (m, o), hs in by.items():
        tl = [h["train_loss"][-1] for h in hs]
        ta = [h["test_acc"][-1] for h in hs]
        best = [max(h["test_acc"]) for h in hs]
        sw = ""
        if o == "SWATS":
            parts = []
            for h in hs:
                if h["switch_step"] is None:
                    parts.append(f"s{h['seed']}: none")
                else:
                    parts.append(f"s{h['seed']}: {h['switch_step']} / {h['switch_step'] / h['steps_per_epoch']:.1f}"
                                 f" / {h['switch_Lambda']:.3g}")
            sw = "; ".join(parts)
        sd = lambda v: statistics.pstdev(v) if len(v) > 1 else 0.0  # noqa: E731
        lines.append(f"{m:6} {o:13} {statistics.mean(tl):>12.4f} +- {sd(tl):<6.4f} "
                     f"{100 * statistics.mean(ta):>10.2f}% +- {100 * sd(ta):<4.2f} {100 * statistics.mean(best):>13.2f}%"
                     f"  {sw}")
    return lines


def plot(hists: list[dict], model: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    hs_m = [h for h in hists if h["model"] == model]
    if not hs_m:
        return paths
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    names = list(dict.fromkeys(h["optimizer"] for h in hs_m))
    for name in names:
        hs = [h for h in hs_m if h["optimizer"] == name]
        ep = np.arange(1, len(hs[0]["train_loss"]) + 1)
        for ax, key, scale in ((ax1, "train_loss", 1.0), (ax2, "test_acc", 100.0)):
            arr = np.array([h[key] for h in hs]) * scale
            ax.plot(ep, arr.mean(0), color=COLORS.get(name), label=name, lw=1.8)
            ax.fill_between(ep, arr.min(0), arr.max(0), color=COLORS.get(name), alpha=0.15, lw=0)
        if name == "SWATS":
            for h in hs:
                if h["switch_step"] is not None:
                    x = h["switch_step"] / h["steps_per_epoch"]
                    for ax in (ax1, ax2):
                        ax.axvline(x, color=COLORS["SWATS"], ls=":", lw=1)
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss (cross-entropy, full train set)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test accuracy (%)")
    lo = min(min(h["test_acc"][len(h["test_acc"]) // 5:]) for h in hs_m) * 100
    ax2.set_ylim(max(lo - 1, 80), 100)
    ax1.legend(frameon=False)
    seeds = sorted({h["seed"] for h in hs_m})
    fig.suptitle(f"digits 8x8, {model.upper()}: mean over seeds {seeds} (band: min..max); "
                 f"dotted: SWATS switch per seed")
    ax1.grid(alpha=0.3, which="both")
    ax2.grid(alpha=0.3)
    paths.append(save_figure(fig, f"digits_{model}_curves.png", dpi=110))

    sw = [h for h in hs_m if h["optimizer"] == "SWATS" and h["gamma"]]
    if sw:
        fig, ax = plt.subplots(figsize=(12, 4.6))
        cmap = plt.get_cmap("tab10")
        for i, h in enumerate(sw):
            steps = np.arange(1, len(h["gamma"]) + 1)
            g = np.array(h["gamma"])
            lam = np.array(h["Lambda"])
            end = h["switch_step"] or len(g)
            ax.plot(steps[:end], g[:end], color=cmap(i), alpha=0.25, lw=0.6)
            ax.plot(steps[:end], lam[:end], color=cmap(i), lw=1.8, label=f"seed {h['seed']}: Lambda_k")
            if h["switch_step"] is not None:
                ax.plot([h["switch_step"]], [h["switch_Lambda"]], "o", color=cmap(i), ms=8, mec="k",
                        label=f"seed {h['seed']}: switch at step {h['switch_step']}, Lambda={h['switch_Lambda']:.3g}")
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_xlabel("step (SWATS stops computing gamma after its switch)")
        ax.set_ylabel("projected SGD learning rate")
        ax.set_title(f"SWATS on digits {model.upper()}: gamma_k (thin) and Lambda_k (thick); "
                     f"default test |Lambda-gamma| < 1e-3*|Lambda|")
        ax.legend(frameon=False, fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
        paths.append(save_figure(fig, f"digits_{model}_swats.png", dpi=110))
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 epochs (a smoke run)")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.epochs = 1, 3
    set_threads(a.threads)
    from tqdm import tqdm

    OUT.mkdir(exist_ok=True)
    data = load_digits_tensors()
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    opts = [o.strip() for o in a.optimizers.split(",") if o.strip()]
    for o in opts:
        if o not in OPTIMIZERS:
            ap.error(f"unknown optimizer {o!r}; choose from {list(OPTIMIZERS)}")
    hists = []
    total = len(models) * len(opts) * a.seeds * a.epochs
    with tqdm(total=total, unit="epoch", desc="training", dynamic_ncols=True) as bar:
        for m in models:
            for o in opts:
                for s in range(a.seeds):
                    hists.append(train(m, o, s, a.epochs, data, a.batch_size, progress=bar))
    lines = summarize(hists)
    print("\n".join(lines))
    paths = []
    for m in models:
        paths += plot(hists, m)
    jpath = OUT / "digits_histories.json"
    jpath.write_text(json.dumps({"args": vars(a), "histories": hists}))
    print("wrote", ", ".join(paths + [str(jpath)]))
    return hists


if __name__ == "__main__":
    main()
