"""Adam, AdamW, AMSGrad and SGD follow torch.optim's trajectories (ALGORITHMS.md section 1): float32, relative
error < 1e-5 after 100 steps, on a problem whose gradients depend on the parameters."""
import pytest
import torch

import fused_hybrid as fh
from util import make_params, max_rel_err, quadratic_grads

BACKENDS = ["reference", "auto"]

ADAM_CASES = [
    dict(),
    dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6),
    dict(weight_decay=0.1),
    dict(amsgrad=True),
    dict(amsgrad=True, weight_decay=0.05, maximize=True),
    dict(maximize=True),
    dict(lr=torch.tensor(3e-3)),
]


def _run(fh_cls, torch_cls, kwargs, backend, steps=100, dtype=torch.float32, seed=0):
    ours, theirs = make_params(dtype=dtype, seed=seed)
    t_kwargs = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    o1 = fh_cls(ours, backend=backend, **kwargs)
    o2 = torch_cls(theirs, foreach=False, **t_kwargs)
    for step in range(steps):
        quadratic_grads([ours, theirs], step, seed=seed)
        o1.step()
        o2.step()
    return ours, theirs, o1, o2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=str)
def test_adam_matches_torch(backend, kwargs):
    ours, theirs, _, _ = _run(fh.Adam, torch.optim.Adam, kwargs, backend)
    assert max_rel_err(ours, theirs) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", [dict(), dict(weight_decay=0.3, amsgrad=True), dict(lr=1e-2, maximize=True)],
                         ids=str)
def test_adamw_matches_torch(backend, kwargs):
    ours, theirs, _, _ = _run(fh.AdamW, torch.optim.AdamW, kwargs, backend)
    assert max_rel_err(ours, theirs) < 1e-5


SGD_CASES = [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(lr=0.05, momentum=0.5, maximize=True, weight_decay=0.02),
    dict(lr=torch.tensor(0.02), momentum=0.9),
]


@pytest.mark.parametrize("backend", BACKENDS + ["cpu"])
@pytest.mark.parametrize("kwargs", SGD_CASES, ids=str)
def test_sgd_matches_torch(backend, kwargs):
    if backend == "cpu" and "cpu" not in fh.backends()["cpu"]:
        pytest.skip(f"cpu backend unavailable: {fh.backends()['cpu']}")
    ours, theirs, _, _ = _run(fh.SGD, torch.optim.SGD, kwargs, backend)
    assert max_rel_err(ours, theirs) < 1e-5


def test_parity_detects_a_wrong_rule():
    """The parity check can fail: Adam against torch's Adam with another beta2 drifts far past 1e-5."""
    ours, theirs = make_params()
    o1 = fh.Adam(ours, betas=(0.9, 0.99), backend="reference")
    o2 = torch.optim.Adam(theirs, foreach=False)
    for step in range(100):
        quadratic_grads([ours, theirs], step)
        o1.step()
        o2.step()
    assert max_rel_err(ours, theirs) > 1e-4  # 10x the parity tolerance


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_adam_other_dtypes(dtype):
    """float64 follows torch exactly; bf16 keeps float32 state (torch keeps bf16 state), so it only tracks
    the float32 trajectory loosely."""
    ours, theirs, _, _ = _run(fh.Adam, torch.optim.Adam, dict(lr=1e-2), "reference", steps=30, dtype=dtype)
    if dtype == torch.float64:
        assert max_rel_err(ours, theirs) < 1e-12
    else:
        ref32, _, _, _ = _run(fh.Adam, torch.optim.Adam, dict(lr=1e-2), "reference", steps=30)
        assert max_rel_err(ours, ref32) < 0.1  # bf16 params round away updates below 2^-8 relative


COMPLEX_CASES = [(fh.Adam, torch.optim.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
                 (fh.AdamW, torch.optim.AdamW, dict(lr=1e-2)),
                 (fh.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fh_cls,torch_cls,kwargs", COMPLEX_CASES, ids=str)
def test_complex_params_match_torch(backend, fh_cls, torch_cls, kwargs):
    """Complex params are stepped as their real views, as torch.optim does; state stays complex."""
    gen = torch.Generator().manual_seed(4)
    shapes = [(5, 3), (7,), (1,), (0,)]
    base = [torch.randn(s, generator=gen, dtype=torch.complex64) for s in shapes]
    ours, theirs = ([b.clone().requires_grad_() for b in base] for _ in range(2))
    o1, o2 = fh_cls(ours, backend=backend, **kwargs), torch_cls(theirs, foreach=False, **kwargs)
    curv = [torch.rand(s, generator=gen) + 0.5 for s in shapes]
    for _ in range(30):
        for ps in (ours, theirs):
            for p, c in zip(ps, curv):
                p.grad = (c * p.detach()) * (1 + 0.5j)  # couples real and imaginary parts
        o1.step()
        o2.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    st = o1.state[ours[0]]
    assert all(v.is_complex() for k, v in st.items() if k != "step")
