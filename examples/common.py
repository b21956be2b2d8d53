"""Shared pieces of the examples: scikit-learn's digits (ships with the package, no download), the models, the
optimizers under comparison, and a training loop that records what the plots need.

Reproducibility: the train/test split is fixed (random_state=0); ``seed`` sets the model's initialization and
the minibatch order. Everything runs on CPU; ``backend="auto"`` picks fused_hybrid's fastest backend available
for each rule (the reference backend where no fused one implements it yet).
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
if str(HERE.parent) not in sys.path:  # run from a checkout without installing: find fused_hybrid beside us
    sys.path.append(str(HERE.parent))  # last, so an installed fused_hybrid (with its extension) wins

import fused_hybrid as fh  # noqa: E402


# -- data -------------------------------------------------------------------------------------------------------

def load_digits_tensors(test_size: float = 0.2):
    """8x8 digits, 1797 images, 10 classes: (X_train, y_train, X_test, y_test) as float32 / int64 tensors,
    pixels scaled by 1/16 and standardized with the training set's per-pixel mean and std."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = d.data.astype("float32") / 16.0
    Xtr, Xte, ytr, yte = train_test_split(X, d.target, test_size=test_size, random_state=0, stratify=d.target)
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-3
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    t = lambda a, dt: torch.tensor(a, dtype=dt)  # noqa: E731
    return t(Xtr, torch.float32), t(ytr, torch.long), t(Xte, torch.float32), t(yte, torch.long)


# -- models -----------------------------------------------------------------------------------------------------

class MLP(nn.Module):
    """64 -> 128 -> 64 -> 10, ReLU: 6 tensors, 17,226 parameters."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """Two 3x3 convolutions (16, 32 channels), a 2x2 max-pool, two linear layers: 8 tensors, 38,282 parameters."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.f1 = nn.Linear(32 * 4 * 4, 64)
        self.f2 = nn.Linear(64, 10)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        x = F.max_pool2d(F.relu(self.c2(F.relu(self.c1(x)))), 2)
        return self.f2(F.relu(self.f1(x.flatten(1))))


class LogReg(nn.Module):
    """Multinomial logistic regression 64 -> 10 (``n_in`` -> 10): 2 tensors (a convex problem)."""

    def __init__(self, n_in: int = 64):
        super().__init__()
        self.fc = nn.Linear(n_in, 10)

    def forward(self, x):
        return self.fc(x)


MODELS = {"mlp": MLP, "cnn": CNN, "logreg": LogReg}


# -- optimizers -------------------------------------------------------------------------------------------------

# Hyperparameters: each rule's published defaults where it has them (Padam's official lr=0.1, partial=1/8;
# AdaBound's final_lr=0.1; SWATS starts as Adam with lr=1e-3), SGD's lr from a coarse sweep on these problems.
OPTIMIZERS = {
    "Adam": lambda ps: fh.Adam(ps, lr=1e-3),
    "SGD-momentum": lambda ps: fh.SGD(ps, lr=0.05, momentum=0.9),
    "SWATS": lambda ps: fh.SWATS(ps, lr=1e-3),
    "Padam": lambda ps: fh.Padam(ps, lr=0.1, partial=0.125),
    "AdaBound": lambda ps: fh.AdaBound(ps, lr=1e-3, final_lr=0.1),
    "MAS": lambda ps: fh.MAS(ps, lr=1e-2, adam_w=0.5, sgd_w=0.5),
}
COLORS = {"Adam": "tab:blue", "SGD-momentum": "tab:orange", "SWATS": "tab:red", "Padam": "tab:green",
          "AdaBound": "tab:purple", "MAS": "tab:brown"}


def lambda_of(info: dict, beta2: float = 0.999) -> float:
    """Bias-corrected Lambda_k = lam / (1 - b2^k) from a ``switch_info()`` segment (its ``lam`` is the raw
    exponential average)."""
    k = info["step"]
    return info["lam"] / (1.0 - beta2 ** k) if k > 0 else float("nan")


# -- training ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, X, y):
    model.eval()
    out = model(X)
    model.train()
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


def train(model_name: str, opt_name: str, seed: int, epochs: int, data, batch_size: int = 64,
          make_opt=None, on_step=None, progress=None) -> dict:
    """Train one model with one optimizer; return per-epoch train loss / test accuracy and, for SWATS, the
    per-step gamma and Lambda and the switch step. ``on_step(opt, k)`` is called after every step."""
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    opt = (make_opt or OPTIMIZERS[opt_name])(list(model.parameters()))
    gen = torch.Generator().manual_seed(seed)
    n = Xtr.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    hist = {"model": model_name, "optimizer": opt_name, "seed": seed, "epochs": epochs,
            "steps_per_epoch": steps_per_epoch, "train_loss": [], "test_acc": [], "test_loss": [],
            "train_acc": [], "gamma": [], "Lambda": [], "switch_step": None, "switch_Lambda": None}
    is_swats = any(g["rule"] == "swats" for g in opt.param_groups)
    t0 = time.perf_counter()
    k = 0
    for ep in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            k += 1
            if is_swats:
                info = opt.switch_info()[0]
                hist["gamma"].append(info["gamma"])
                hist["Lambda"].append(lambda_of(info, opt.param_groups[0]["betas"][1]))
                if info["switched"] and hist["switch_step"] is None:
                    hist["switch_step"] = info["switch_step"]
                    hist["switch_Lambda"] = info["sgd_lr"]
            if on_step is not None:
                on_step(opt, k)
        tl, ta = evaluate(model, Xtr, ytr)
        vl, va = evaluate(model, Xte, yte)
        hist["train_loss"].append(tl)
        hist["train_acc"].append(ta)
        hist["test_loss"].append(vl)
        hist["test_acc"].append(va)
        if progress is not None:
            progress.update(1)
            progress.set_postfix_str(f"{model_name} {opt_name} s{seed} loss {tl:.3g} acc {va:.3f}")
    hist["seconds"] = time.perf_counter() - t0
    hist["backend_rules"] = sorted({g["rule"] for g in opt.param_groups})
    return hist


def save_figure(fig, name: str, dpi: int, out_dir: Path | None = None) -> str:
    """Lay out ``fig``, write it to (``out_dir`` or OUT)/name, close it, and return the path written."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    path = (out_dir or OUT) / name
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return str(path)


def set_threads(n: int | None) -> None:
    """Small models train fastest on one thread; the examples default to it."""
    torch.set_num_threads(n or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(n or 1))
