"""When does SWATS switch from Adam to SGD? The same training run judged by different switch tests.

SWATS (Keskar & Socher 2017, Algorithm 1) switches when the bias-corrected average Lambda_k of the projected SGD
learning rate gamma_k = p^T p / -p^T g has settled: the paper writes |Lambda_k - gamma_k| < eps (1e-9). Until it
switches SWATS *is* Adam, whatever its test, so one run that never switches (switch_rtol=0, switch_atol=0)
gives the trajectory every test sees up to its switch. This script records gamma_k and Lambda_k at every step
(globally, as the paper's w is the whole model, and per tensor, as the peer libraries test) and asks, for each
test, at which step it would first fire and on how many steps it holds:

  literal   |Lambda - gamma| < 1e-9, global, float64             (the paper; fused_hybrid switch_rtol=0, switch_atol=1e-9)
  peers     float32 allclose(Lambda, gamma, rtol=1e-6, atol=1e-8) per tensor; the first tensor that passes switches
            its whole param group (torch-optimizer's SWATS hard-codes rtol=1e-6; pytorch_optimizer's uses
            rtol=eps, default 1e-6; both compare in float32 per parameter tensor)
  allclose  the same with torch.allclose's default tolerances rtol=1e-5, atol=1e-8, float32, per tensor
  ours      |Lambda - gamma| < 1e-3*|Lambda|, global, float64    (fused_hybrid's default, switch_rtol=1e-3)
  ours/t    the same per tensor (granularity="tensor")
  rtol1e-2  |Lambda - gamma| < 1e-2*|Lambda|, global

All tests also need k > 1 and Lambda > 0, as in Algorithm 1 and fused_hybrid.

    python examples/switch_study.py                          # mlp, cnn, logreg; 3 seeds; 40 epochs (a few minutes)
    python examples/switch_study.py --seeds 5 --epochs 60    # the study quoted in shared/ALGORITHMS.md

Writes out/switch_study.png (gamma/Lambda traces with each test's first firing, and the relative gap
|Lambda-gamma|/Lambda against each test's threshold) and out/switch_study.json. Then it checks the
counterfactual: a real fused_hybrid.SWATS with the default test, trained on the same seed, switches at the step
the study predicts (--verify, on by default for the MLP).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics

import numpy as np
import torch

from common import OUT, load_digits_tensors, save_figure, set_threads, train

import fused_hybrid as fh

B1, B2, LR, EPS = 0.9, 0.999, 1e-3, 1e-9   # SWATS's defaults in fused_hybrid

CRITERIA = {
    # name: (scope, dtype, rtol, atol, relative-to)  relative-to: "Lambda" (ours) or "gamma" (allclose's b)
    "literal": ("global", "f64", 0.0, 1e-9, "Lambda"),
    "peers": ("tensor", "f32", 1e-6, 1e-8, "gamma"),
    "allclose": ("tensor", "f32", 1e-5, 1e-8, "gamma"),
    "ours": ("global", "f64", 1e-3, 0.0, "Lambda"),
    "ours/t": ("tensor", "f64", 1e-3, 0.0, "Lambda"),
    "rtol1e-2": ("global", "f64", 1e-2, 0.0, "Lambda"),
}


class Recorder:
    """After each step of a never-switching SWATS: per-tensor <p,g> and <p,p> of the Adam step p, recomputed
    from the optimizer's state with the reference backend's float32 arithmetic (so the sums are the ones the
    optimizer itself used), and the optimizer's own global gamma/lam from switch_info() as a cross-check."""

    def __init__(self):
        self.pg, self.pp, self.info_gamma, self.info_lam = [], [], [], []

    def __call__(self, opt, k):
        pgs, pps = [], []
        group = opt.param_groups[0]
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        for p in group["params"]:
            st = opt.state[p]
            kk = int(st["step"].item())
            bc1, bc2 = 1 - b1 ** kk, 1 - b2 ** kk
            step = st["exp_avg"] / (st["exp_avg_sq"].sqrt() / math.sqrt(bc2)).add_(eps) * (-(lr / bc1))
            s64, g64 = step.double(), p.grad.double()
            pgs.append(float((s64 * g64).sum()))
            pps.append(float((s64 * s64).sum()))
        self.pg.append(pgs)
        self.pp.append(pps)
        info = opt.switch_info()[0]
        self.info_gamma.append(info["gamma"])
        self.info_lam.append(info["lam"])


def traces(pg: np.ndarray, pp: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gamma_k, Lambda_k and "valid" (p^T g != 0) per step for one segment's sums, computed in ``dtype`` the way
    Algorithm 1 does (lam keeps its value on steps where p^T g == 0)."""
    n = len(pg)
    gamma = np.zeros(n, dtype)
    Lam = np.zeros(n, dtype)
    valid = pg != 0
    lam = dtype(0)
    b2 = dtype(B2)
    g_prev = dtype(0)
    for i in range(n):
        k = i + 1
        if valid[i]:
            g_prev = dtype(pp[i]) / dtype(-pg[i]) if dtype is np.float64 else dtype(dtype(pp[i]) / dtype(-pg[i]))
            lam = dtype(b2 * lam + (dtype(1) - b2) * g_prev)
        gamma[i] = g_prev
        Lam[i] = dtype(lam / dtype(1 - B2 ** k))
    return gamma, Lam, valid


def passes(gamma, Lam, valid, rtol, atol, rel_to):
    k = np.arange(1, len(gamma) + 1)
    diff = np.abs(Lam - gamma)
    ref = np.abs(Lam) if rel_to == "Lambda" else np.abs(gamma)
    thr = atol + rtol * ref
    ok = (diff < thr) if rel_to == "Lambda" else (diff <= thr)  # ours: strict <, allclose: <=
    return ok & valid & (k > 1) & (Lam > 0)


def evaluate(pg, pp):
    """For every criterion: first step it fires (1-based, None if never), and the number of steps it holds."""
    pg, pp = np.asarray(pg), np.asarray(pp)
    out = {}
    gl = {}
    for dt_name, dt in (("f64", np.float64), ("f32", np.float32)):
        gl[dt_name] = traces(pg.sum(1), pp.sum(1), dt)
    per_t = {dt_name: [traces(pg[:, t], pp[:, t], dt) for t in range(pg.shape[1])]
             for dt_name, dt in (("f64", np.float64), ("f32", np.float32))}
    for name, (scope, dt, rtol, atol, rel) in CRITERIA.items():
        if scope == "global":
            ok = passes(*gl[dt], rtol, atol, rel)
        else:
            ok = np.zeros(len(pg), bool)
            for tr in per_t[dt]:
                ok |= passes(*tr, rtol, atol, rel)
        idx = np.flatnonzero(ok)
        out[name] = {"first_step": int(idx[0]) + 1 if len(idx) else None, "steps_passing": int(ok.sum())}
    g, L, valid = gl["f64"]
    rel_gap = np.abs(L - g) / np.abs(L)
    # Per step, the smallest per-tensor gap in float32 relative to gamma (what the peers' allclose looks at).
    with np.errstate(divide="ignore", invalid="ignore"):
        t_gap = np.nanmin(np.stack([np.abs(Lt - gt) / np.abs(gt) for gt, Lt, _ in per_t["f32"]]), axis=0)
    sign = np.sign(L - g)
    cross = np.flatnonzero((sign[1:] != sign[:-1]) & valid[1:] & valid[:-1])
    gaps_at_cross = np.concatenate([rel_gap[cross], rel_gap[cross + 1]]) if len(cross) else np.array([])
    stats = {
        "steps": len(pg),
        "gamma_step_to_step_rel_change_median": float(np.median(np.abs(np.diff(g[valid])) / np.abs(g[valid][:-1]))),
        "gamma_negative_fraction": float(np.mean(g[valid] < 0)),
        "rel_gap_min": float(np.nanmin(rel_gap[1:])),
        "rel_gap_median": float(np.nanmedian(rel_gap[1:])),
        "sign_changes": int(len(cross)),
        "steps_per_sign_change": float(len(pg) / max(len(cross), 1)),
        "rel_gap_at_crossings_median": float(np.median(gaps_at_cross)) if len(gaps_at_cross) else None,
        "Lambda_final": float(L[-1]),
    }
    stats["tensor_rel_gap_min"] = float(np.nanmin(t_gap[1:]))
    return out, stats, (g, L, rel_gap, t_gap)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", default="mlp,cnn,logreg")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--verify", default="mlp", help="problems on which to run a real default SWATS and compare "
                                                    "its switch step with the prediction ('' for none)")
    ap.add_argument("--quick", action="store_true", help="1 seed, 5 epochs (smoke run)")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.epochs = 1, 5
    set_threads(a.threads)
    from tqdm import tqdm

    OUT.mkdir(exist_ok=True)
    data = load_digits_tensors()
    problems = [p.strip() for p in a.problems.split(",") if p.strip()]
    verify = {p.strip() for p in a.verify.split(",") if p.strip()}
    never = lambda ps: fh.SWATS(ps, lr=LR, betas=(B1, B2), eps=EPS, switch_rtol=0.0, switch_atol=0.0)  # noqa: E731
    runs = []
    plots = {}
    nver = sum(a.seeds for p in problems if p in verify)
    with tqdm(total=(len(problems) * a.seeds + nver) * a.epochs, unit="epoch", desc="switch study",
              dynamic_ncols=True) as bar:
        for prob in problems:
            for seed in range(a.seeds):
                rec = Recorder()
                h = train(prob, "SWATS(never)", seed, a.epochs, data, a.batch_size, make_opt=never, on_step=rec,
                          progress=bar)
                res, stats, tr = evaluate(rec.pg, rec.pp)
                # Cross-check: our recomputed global gamma equals the optimizer's own (switch_info) value.
                g_info = np.array(rec.info_gamma)
                stats["max_rel_diff_vs_switch_info"] = float(np.max(np.abs(tr[0] - g_info) / np.abs(g_info)))
                run = {"problem": prob, "seed": seed, "steps_per_epoch": h["steps_per_epoch"],
                       "final_test_acc": h["test_acc"][-1], "criteria": res, "stats": stats}
                if prob in verify:
                    h2 = train(prob, "SWATS", seed, a.epochs, data, a.batch_size, progress=bar)
                    run["verify_default_switch_step"] = h2["switch_step"]
                    run["verify_default_Lambda"] = h2["switch_Lambda"]
                    run["verify_default_test_acc"] = h2["test_acc"][-1]
                runs.append(run)
                if seed == 0:
                    plots[prob] = (tr, res, h["steps_per_epoch"])
    # -- report ---------------------------------------------------------------------------------------------------
    lines = []
    hdr = f"{'problem':7} {'test':9} {'switched':>8}  first firing per seed: step (epoch)"
    lines.append(hdr)
    for prob in problems:
        rs = [r for r in runs if r["problem"] == prob]
        for name in CRITERIA:
            firsts = [r["criteria"][name]["first_step"] for r in rs]
            n_sw = sum(f is not None for f in firsts)
            spe = rs[0]["steps_per_epoch"]
            per = ", ".join("never" if f is None else f"{f} ({f / spe:.1f})" for f in firsts)
            held = sum(r["criteria"][name]["steps_passing"] for r in rs)
            lines.append(f"{prob:7} {name:9} {n_sw:>3}/{len(rs):<4}  {per}   [holds on {held} of "
                         f"{sum(r['stats']['steps'] for r in rs)} steps]")
        lines.append("")
    lines.append("trace statistics (global gamma/Lambda, medians over seeds):")
    for prob in problems:
        rs = [r for r in runs if r["problem"] == prob]
        med = lambda key: statistics.median(r["stats"][key] for r in rs if r["stats"][key] is not None)  # noqa: E731
        lines.append(
            f"  {prob:7} gamma changes {100 * med('gamma_step_to_step_rel_change_median'):.0f}% step to step; "
            f"gamma<0 on {100 * med('gamma_negative_fraction'):.1f}% of steps; Lambda-gamma changes sign every "
            f"{med('steps_per_sign_change'):.1f} steps; |Lambda-gamma|/Lambda: median {med('rel_gap_median'):.2g}, "
            f"at the samples around a sign change {med('rel_gap_at_crossings_median'):.2g}, smallest seen "
            f"{min(r['stats']['rel_gap_min'] for r in rs):.2g} (per tensor, float32: "
            f"{min(r['stats']['tensor_rel_gap_min'] for r in rs):.2g}); final Lambda {med('Lambda_final'):.3g}")
    ver = [r for r in runs if "verify_default_switch_step" in r]
    if ver:
        ok = all(r["verify_default_switch_step"] == r["criteria"]["ours"]["first_step"] for r in ver)
        lines.append("verify: real fused_hybrid.SWATS (default test) switch step vs predicted 'ours': " +
                     ", ".join(f"{r['problem']} s{r['seed']}: {r['verify_default_switch_step']} vs "
                               f"{r['criteria']['ours']['first_step']}" for r in ver) +
                     ("  -> all equal" if ok else "  -> MISMATCH"))
    xc = max(r["stats"]["max_rel_diff_vs_switch_info"] for r in runs)
    lines.append(f"cross-check: recomputed global gamma vs switch_info(): max relative difference {xc:.1e}")
    print("\n".join(lines))
    png = plot(plots, a)
    jpath = OUT / "switch_study.json"
    jpath.write_text(json.dumps({"args": vars(a), "criteria": CRITERIA, "runs": runs}, indent=1))
    print("wrote", png, jpath)
    return runs


def plot(plots, a):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"literal": "k", "peers": "tab:olive", "allclose": "tab:cyan", "ours": "tab:red",
              "ours/t": "tab:pink", "rtol1e-2": "tab:purple"}
    fig, axes = plt.subplots(len(plots), 2, figsize=(13, 3.6 * len(plots)), squeeze=False)
    for row, (prob, ((g, L, rel_gap, t_gap), res, spe)) in enumerate(plots.items()):
        ax, ax2 = axes[row]
        ep = np.arange(1, len(g) + 1) / spe
        ax.plot(ep, g, color="0.6", lw=0.5, label="gamma_k")
        ax.plot(ep, L, color="tab:blue", lw=1.8, label="Lambda_k")
        for name, r in res.items():
            if r["first_step"] is not None and CRITERIA[name][0] == "global":
                k = r["first_step"]
                ax.plot([k / spe], [L[k - 1]], "o", ms=8, mec="k", color=colors[name],
                        label=f"{name} fires at epoch {k / spe:.1f}")
            elif r["first_step"] is not None:
                ax.axvline(r["first_step"] / spe, color=colors[name], ls=":", lw=1.5,
                           label=f"{name} (per tensor) fires at epoch {r['first_step'] / spe:.1f}")
        never = [n for n, r in res.items() if r["first_step"] is None]
        if (g > 0).all() and (L > 0).all():
            ax.set_yscale("log")
        else:
            ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylabel("learning rate")
        ax.set_title(f"{prob.upper()} seed 0: global gamma and Lambda" +
                     (f"; never fire: {', '.join(never)}" if never else ""), fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(frameon=False, fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
        ax2.semilogy(ep[1:], rel_gap[1:], color="tab:blue", lw=0.4, alpha=0.8, label="|Lambda-gamma| / Lambda (global)")
        ax2.semilogy(ep[1:], t_gap[1:], color="tab:green", lw=0.4, alpha=0.6,
                     label="min over tensors |Lambda_t-gamma_t| / gamma_t (f32)")
        lit = 1e-9 / np.abs(L[1:])
        ax2.plot(ep[1:], lit, color=colors["literal"], lw=1.2, label="literal: 1e-9 / Lambda")
        for name, y in (("peers", 1e-6), ("allclose", 1e-5), ("ours", 1e-3), ("rtol1e-2", 1e-2)):
            ax2.axhline(y, color=colors[name], lw=1.2, ls="--", label=f"{name}: rtol {y:g}")
        ax2.set_ylim(1e-11, 1e3)
        ax2.set_ylabel("relative gap")
        ax2.set_xlabel("epoch")
        ax2.set_title("relative gap vs each test's threshold (a test fires where the gap dips below it)",
                      fontsize=9)
        ax2.legend(frameon=False, fontsize=7, loc="lower right", ncol=2)
        ax2.grid(alpha=0.3)
    fig.suptitle(f"SWATS switch tests on digits ({a.epochs} epochs, batch {a.batch_size}; a run that never switches "
                 f"shows the trajectory every test sees)", fontsize=10)
    return save_figure(fig, "switch_study.png", dpi=100)


if __name__ == "__main__":
    main()
