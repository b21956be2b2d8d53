"""Robustness (issue 7's bad-input matrix, the parts that hold on every backend here): odd layouts, empty
tensors, NaN/inf gradients, hyperparameters changed between steps, checkpoints across backends, determinism."""
import pytest
import torch

import fused_hybrid as fh
import cases
from cases import feed_grads, make_params, max_rel_err, quadratic_grads, roundtrip

CPU_FUSED = fh.backends()["cpu"].startswith("available")
FUSED = ["cpu"] if CPU_FUSED else []


def test_non_contiguous_params_go_to_the_reference_under_auto():
    base = torch.randn(6, 4)
    a = torch.nn.Parameter(base.t())  # non-contiguous leaf
    b = torch.nn.Parameter(base.t().contiguous())
    o1 = fh.Adam([a], lr=1e-2)
    o2 = torch.optim.Adam([b], lr=1e-2, foreach=False)
    for k in range(5):
        g = torch.randn(4, 6)
        a.grad, b.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    assert max_rel_err([a], [b]) < 1e-6
    if CPU_FUSED:
        c = torch.nn.Parameter(base.t())
        c.grad = torch.randn(4, 6)
        with pytest.raises(RuntimeError, match="contiguous"):
            fh.Adam([c], backend="cpu").step()


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
def test_empty_tensors_and_groups(backend):
    a = [torch.zeros(0, requires_grad=True), torch.randn(5, requires_grad=True), torch.zeros(3, 0, requires_grad=True)]
    opt = fh.Adam([{"params": a}, {"params": []}], lr=0.1, backend=backend)
    for p in a:
        p.grad = torch.ones_like(p)
    opt.step()
    assert a[0].shape == (0,) and torch.all(a[1].detach() != 0)


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
def test_nan_grads_propagate_like_torch(backend):
    """Without a GradScaler, a NaN gradient is not filtered (as in torch.optim): the updated value is NaN."""
    a = torch.ones(4, requires_grad=True)
    b = torch.ones(4, requires_grad=True)
    o1 = fh.Adam([a], backend=backend)
    o2 = torch.optim.Adam([b])
    a.grad = torch.tensor([1.0, float("nan"), float("inf"), 1.0])
    b.grad = a.grad.clone()
    o1.step()
    o2.step()
    assert torch.equal(a.detach().isnan(), b.detach().isnan())


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
def test_hyperparameters_changed_between_steps(backend):
    a, b = make_params()
    o1 = fh.Padam(a, lr=1e-2, backend=backend)
    o2 = fh.Padam(b, lr=1e-2, backend="reference")
    for k in range(12):
        if k == 4:
            for o in (o1, o2):
                o.param_groups[0].update(lr=5e-3, betas=(0.8, 0.99), partial=0.25)
        if k == 8:
            for o in (o1, o2):
                o.param_groups[0].update(amsgrad=False, weight_decay=0.01)
        quadratic_grads([a, b], k)
        o1.step()
        o2.step()
    assert max_rel_err(a, b) < 1e-5


def test_momentum_switched_on_later_creates_its_buffer():
    a, b = make_params()
    o1 = fh.SGD(a, lr=0.1)
    o2 = torch.optim.SGD(b, lr=0.1)
    for k in range(6):
        if k == 3:
            o1.param_groups[0]["momentum"] = o2.param_groups[0]["momentum"] = 0.9
        feed_grads([a, b], k)
        o1.step()
        o2.step()
    assert max_rel_err(a, b) < 1e-6


@pytest.mark.parametrize("case", cases.params(cases.RULES))
@pytest.mark.parametrize("src,dst", [("reference", "cpu"), ("cpu", "reference")])
def test_checkpoint_moves_between_backends(case, src, dst):
    """Save on one backend, load on another, continue: the same trajectory as staying (the arithmetic is shared
    up to float rounding, so to float32 precision rather than bitwise)."""
    if not CPU_FUSED:
        pytest.skip("needs the C++ extension's cpu backend")
    cls, kwargs = case.cls, case.kw
    a, b = make_params()
    o1 = cls(a, backend=src, **{"lr": 1e-2, **kwargs})
    o2 = cls(b, backend=src, **{"lr": 1e-2, **kwargs})
    for k in range(20):
        quadratic_grads([a, b], k)
        o1.step()
        o2.step()
        if k == 9:
            sd = roundtrip(o2.state_dict())
            o2 = cls(b, backend=dst, **{"lr": 1e-2, **kwargs})
            o2.load_state_dict(sd)
    assert max_rel_err(b, a) < 1e-5
    if cls is fh.SWATS:
        assert [s["switch_step"] for s in o1.switch_info()] == [s["switch_step"] for s in o2.switch_info()]


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
@pytest.mark.parametrize("case", cases.params(cases.RULES))
def test_same_run_twice_is_bitwise_identical(case, backend):
    cls, kwargs = case.cls, case.kw
    runs = []
    for _ in range(2):
        a, = make_params(copies=1)
        opt = cls(a, backend=backend, **{"lr": 1e-2, **kwargs})
        for k in range(15):
            quadratic_grads([a], k)
            opt.step()
        runs.append(([p.detach().clone() for p in a], opt.switch_info()))
    assert all(torch.equal(x, y) for x, y in zip(runs[0][0], runs[1][0]))
    assert runs[0][1] == runs[1][1]


def test_checkpoint_of_another_model_is_refused_before_loading():
    a, = make_params(copies=1)
    opt = fh.Adam(a)
    feed_grads([a], 0)
    opt.step()
    sd = opt.state_dict()
    other = [torch.zeros(s.shape[::-1] if s.dim() > 1 else (s.numel() + 1,), requires_grad=True) for s in a]
    target = fh.Adam(other, lr=0.5)
    with pytest.raises(ValueError, match="shape"):
        target.load_state_dict(sd)
    assert target.param_groups[0]["lr"] == 0.5 and len(target.state) == 0  # nothing half-loaded


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_complex_swats_is_swats_on_the_real_view(backend):
    """SWATS on complex params: the switch test's sums are real inner products Re<p, g> over the real views, so a
    complex run equals, bit for bit, a run on torch.view_as_real copies of the same params."""
    gen = torch.Generator().manual_seed(2)
    base = [torch.randn(s, generator=gen, dtype=torch.complex64) for s in [(6, 2), (5,)]]
    cplx = [b.clone().requires_grad_() for b in base]
    real = [torch.view_as_real(b).clone().requires_grad_() for b in base]
    oc = fh.SWATS(cplx, lr=1e-2, switch_rtol=0.3, backend=backend)
    orl = fh.SWATS(real, lr=1e-2, switch_rtol=0.3, backend=backend)
    for k in range(30):
        for pc, pr in zip(cplx, real):
            g = pc.detach() * (1 + 0.2j) + 0.01 * torch.randn(pc.shape, generator=torch.Generator().manual_seed(k),
                                                               dtype=torch.complex64)
            pc.grad, pr.grad = g, torch.view_as_real(g).clone()
        oc.step()
        orl.step()
    assert oc.switch_info() == orl.switch_info()
    assert oc.switch_info()[0]["switched"], "built to switch"
    for pc, pr in zip(cplx, real):
        assert torch.equal(torch.view_as_real(pc.detach()), pr.detach())


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("case", cases.params(cases.NONCONTIG))
def test_non_contiguous_grads_are_read_in_their_own_layout(backend, case):
    """A transposed or strided gradient (params contiguous) is read element by element as its own layout says,
    like the reference reading a contiguous copy of it."""
    base = [torch.randn(4, 6), torch.randn(5), torch.randn(3)]
    pa, pr = ([b.clone().requires_grad_() for b in base] for _ in range(2))
    oa, orf = case.build(pa, backend, "cpu"), case.build(pr, "reference", "cpu")
    for k in range(3):
        gen = torch.Generator().manual_seed(k)
        gs = [torch.randn(6, 4, generator=gen).t(), torch.randn(10, generator=gen)[::2], torch.randn(3, generator=gen)]
        assert not gs[0].is_contiguous() and not gs[1].is_contiguous()
        for p, q, g in zip(pa, pr, gs):
            p.grad, q.grad = g, g.contiguous()
        oa.step()
        orf.step()
    assert max_rel_err(pa, pr) < 1e-5


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
def test_adabound_bounds_follow_a_tensor_lr(backend):
    """AdaBound's bounds are final_lr * lr / base_lr with the lr of each step: a 0-dim tensor lr changed in place
    (a capturable schedule; the kernels read it where it lives, never on the host) moves them exactly as a float
    lr set on the group does. gamma is large so that the bounds clip from the first steps on."""
    gen = torch.Generator().manual_seed(6)
    base = [torch.randn(s, generator=gen) for s in [(7, 3), (5,)]]
    pa, pb = ([b.clone().requires_grad_() for b in base] for _ in range(2))
    oa = fh.AdaBound(pa, lr=torch.tensor(1e-2), final_lr=0.1, gamma=0.5, backend=backend)
    ob = fh.AdaBound(pb, lr=1e-2, final_lr=0.1, gamma=0.5, backend=backend)
    oc = fh.AdaBound([b.clone().requires_grad_() for b in base], lr=1e-2, final_lr=0.1, gamma=0.5, backend=backend)
    pc = oc.param_groups[0]["params"]
    for k in range(8):
        if k == 3:
            oa.param_groups[0]["lr"].fill_(2.5e-3)
            ob.param_groups[0]["lr"] = 2.5e-3
        g = [torch.randn(b.shape, generator=gen) for b in base]
        for ps in (pa, pb, pc):
            for p, gi in zip(ps, g):
                p.grad = gi.clone()
        oa.step()
        ob.step()
        oc.step()  # keeps lr 1e-2: must end elsewhere, or the test could not see the bounds move
    assert max_rel_err(pa, pb) < 1e-6
    assert max_rel_err(pa, pc) > 1e-3
