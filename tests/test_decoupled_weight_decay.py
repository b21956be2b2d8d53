"""Decoupled weight decay on every rule (``decoupled_weight_decay=True``): w *= 1 - lr*wd with the group's lr, then
the rule's own step without L2 (AdamW's form, Loshchilov & Hutter 2019; AdaBound with it is AdaBoundW).

The ground truth needs no implementation of ours: the same rule with weight_decay=0 stepping parameters that were
first multiplied by (1 - lr*wd) by hand. On the reference backend that is the same arithmetic, so it must agree bit
for bit; every fused backend must then agree with the reference."""
import pytest
import torch

import fused_hybrid as fh
from fused_hybrid import _ext
from fused_hybrid.backends import module as backend_module

import cases

WD = 0.1
# (class, kwargs): every rule that takes decoupled weight decay, with options that reach its other branches.
CASES = [
    (fh.Adam, dict(lr=1e-2)),
    (fh.Adam, dict(lr=1e-2, amsgrad=True)),
    (fh.SGD, dict(lr=0.1)),
    (fh.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (fh.RMSprop, dict(lr=1e-2, momentum=0.5, centered=True)),
    (fh.Adagrad, dict(lr=0.1, lr_decay=0.01)),
    (fh.Padam, dict(lr=0.1)),
    (fh.AdamClip, dict(lr=1e-2, sgd_lr=0.1, lower=0.5, upper=2.0)),
    (fh.AdaBound, dict(lr=1e-2, final_lr=0.1)),
    (fh.SWATS, dict(lr=1e-2, switch_rtol=0.5)),
    (fh.MAS, dict(lr=1e-2, momentum=0.9)),
    (fh.MAS, dict(lr=1e-2, momentum=0.9, variant="vector")),
    (fh.MAS, dict(lr=1e-2, variant="correction")),
]
IDS = [f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items() if k != 'lr')}" for c, kw in CASES]
SHAPES = [(1,), (17,), (33, 65), (4097,)]
# Where each backend runs: triton on the GPU when there is one (else under its interpreter, on CPU tensors).
DEVICES = {"reference": "cpu", "cpu": "cpu", "cuda_sim": "cpu", "triton": cases.DEVICE, "cuda": "cuda"}


def _params(dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_() for s in SHAPES]


def _run(cls, kw, backend, decoupled: bool, steps=6, dtype=torch.float32):
    """``steps`` steps with an LR that changes every step (the decay must use the lr of that step). decoupled:
    the rule's option; else weight_decay=0 and the params scaled by hand before each step. Returns CPU copies."""
    ps = _params(dtype, DEVICES.get(backend, "cpu"))
    opt = cls(ps, backend=backend, weight_decay=WD if decoupled else 0.0, decoupled_weight_decay=decoupled, **kw)
    g = torch.Generator().manual_seed(1)
    for k in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.device, dtype)
        lr = kw["lr"] * (1.0 + 0.5 * k)
        opt.param_groups[0]["lr"] = lr
        if not decoupled:
            with torch.no_grad():
                for p in ps:
                    p.mul_(1 - lr * WD)
        opt.step()
    return [p.detach().cpu().clone() for p in ps]


@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_reference_is_the_rule_after_a_hand_made_decay(cls, kw):
    ours = _run(cls, kw, "reference", True)
    truth = _run(cls, kw, "reference", False)
    for a, b in zip(ours, truth):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda_sim", "cuda"])
@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_fused_backends_match_the_reference(cls, kw, backend, monkeypatch):
    dev = torch.device(DEVICES[backend])
    if not backend_module(backend).available(dev):
        pytest.skip(f"backend {backend!r} is not available here: {backend_module(backend).why_unavailable(dev)}")
    ours = _run(cls, kw, backend, True, steps=4)
    ref = _run(cls, kw, "reference", True, steps=4)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


def test_decay_differs_from_l2():
    """Not vacuous: for Adam the two forms give different trajectories, so the tests above can tell them apart."""
    ps_l2 = _run(fh.Adam, dict(lr=1e-2), "reference", False)
    ps = _params()
    opt = fh.Adam(ps, backend="reference", lr=1e-2, weight_decay=WD)
    g = torch.Generator().manual_seed(1)
    for k in range(6):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(torch.float32)
        opt.param_groups[0]["lr"] = 1e-2 * (1.0 + 0.5 * k)
        opt.step()
    assert not all(torch.equal(a, b) for a, b in zip(ps_l2, ps))


def test_sgd_matches_torch_with_a_hand_made_decay():
    """Against torch.optim.SGD itself (no decoupled option there): the same decay by hand, then torch's step."""
    ps = _params()
    ts = [p.detach().clone().requires_grad_() for p in ps]
    opt = fh.SGD(ps, lr=0.1, momentum=0.9, weight_decay=WD, decoupled_weight_decay=True, backend="cpu"
                 if _ext.loaded() else "reference")
    topt = torch.optim.SGD(ts, lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        for p, t in zip(ps, ts):
            p.grad = torch.randn(p.shape, generator=g)
            t.grad = p.grad.clone()
        opt.step()
        with torch.no_grad():
            for t in ts:
                t.mul_(1 - 0.1 * WD)
        topt.step()
    for p, t in zip(ps, ts):
        torch.testing.assert_close(p, t, rtol=1e-6, atol=1e-7)


def test_ndadam_refuses_decoupled_decay():
    with pytest.raises(ValueError, match="decoupled_weight_decay: ND-Adam renormalizes"):
        fh.NDAdam(_params(), decoupled_weight_decay=True, weight_decay=0.1)


def test_every_rule_but_ndadam_takes_the_keyword():
    from fused_hybrid import rules
    for name, rule in rules.RULES.items():
        assert "decoupled_weight_decay" in rule.defaults, name
