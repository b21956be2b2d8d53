"""Adam, AdamW, AMSGrad, SGD, RMSprop and Adagrad (the "torch" cases of tests/cases.py) follow torch.optim's
trajectories (ALGORITHMS.md section 1): float32, relative error < 1e-5 after 100 steps, on a problem whose
gradients depend on the parameters."""
import pytest
import torch

import fused_hybrid as fh
import cases
from cases import make_params, max_rel_err, quadratic_grads

# "auto" is the cpu backend wherever the extension is built (test_cpu_backend: every family), else the reference.
BACKENDS = ["reference", "auto"]


def _run(case, backend, steps=100, dtype=torch.float32, seed=0):
    ours, theirs = make_params(dtype=dtype, seed=seed)
    o1 = case.build(ours, backend, "cpu")
    o2 = cases.TORCH_OF[case.cls](theirs, foreach=False, **case.kwargs("cpu"))
    for step in range(steps):
        quadratic_grads([ours, theirs], step, seed=seed)
        o1.step()
        o2.step()
    return ours, theirs, o1, o2


@pytest.mark.parametrize("case,backend", cases.params(cases.TORCH, backends=BACKENDS))
def test_matches_torch(case, backend):
    ours, theirs, _, _ = _run(case, backend)
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
    case = cases.Case(fh.Adam, dict(lr=1e-2))
    ours, theirs, _, _ = _run(case, "reference", steps=30, dtype=dtype)
    if dtype == torch.float64:
        assert max_rel_err(ours, theirs) < 1e-12
    else:
        ref32, _, _, _ = _run(case, "reference", steps=30)
        assert max_rel_err(ours, ref32) < 0.1  # bf16 params round away updates below 2^-8 relative


@pytest.mark.parametrize("case,backend", cases.params(cases.COMPLEX, backends=["reference", "auto"]))
def test_complex_params_match_torch(case, backend):
    """Complex params are stepped as their real views, as torch.optim does; state stays complex."""
    gen = torch.Generator().manual_seed(4)
    shapes = [(5, 3), (7,), (1,), (0,)]
    base = [torch.randn(s, generator=gen, dtype=torch.complex64) for s in shapes]
    ours, theirs = ([b.clone().requires_grad_() for b in base] for _ in range(2))
    o1, o2 = case.build(ours, backend, "cpu"), cases.TORCH_OF[case.cls](theirs, foreach=False, **case.kwargs("cpu"))
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
