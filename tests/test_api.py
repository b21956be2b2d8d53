"""The torch.optim contract: bad input, param groups, schedulers, closures, checkpoints, backends."""
import copy
import math

import pytest
import torch

import fused_hybrid as fh
import cases
from cases import feed_grads, make_params, max_rel_err, quadratic_grads, roundtrip


# -- bad input ---------------------------------------------------------------------------------------------------

BAD = [
    (fh.Adam, dict(lr=-1.0), "lr"),
    (fh.Adam, dict(eps=-1e-8), "eps"),
    (fh.Adam, dict(betas=(1.0, 0.999)), "beta"),
    (fh.Adam, dict(betas=(0.9, -0.1)), "beta"),
    (fh.Adam, dict(weight_decay=-1.0), "weight_decay"),
    (fh.SGD, dict(lr=-0.1), "lr"),
    (fh.SGD, dict(momentum=-0.5), "momentum"),
    (fh.SGD, dict(nesterov=True), "nesterov"),
    (fh.Padam, dict(partial=0.0), "partial"),
    (fh.Padam, dict(partial=0.75), "partial"),
    (fh.AdamClip, dict(sgd_lr=0.1, lower=2.0, upper=1.0), "lower"),
    (fh.AdamClip, dict(), "sgd_lr"),
    (fh.AdaBound, dict(final_lr=-0.1), "final_lr"),
    (fh.SWATS, dict(granularity="layer"), "granularity"),
    (fh.SWATS, dict(switch_rtol=-1.0), "switch_rtol"),
    (fh.MAS, dict(variant="average"), "variant"),
    (fh.NDAdam, dict(vec_axes=[]), "vec_axes"),
    (fh.Adam, dict(backend="tpu"), "backend"),
    (fh.Adam, dict(differentiable=True), "differentiable"),
]


@pytest.mark.parametrize("cls,kwargs,name", BAD, ids=[f"{c.__name__}-{n}" for c, _, n in BAD])
def test_invalid_hyperparameters_name_the_argument(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls([torch.zeros(3, requires_grad=True)], **kwargs)


def test_invalid_group_values_and_unknown_keys():
    p, q = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = fh.Adam([p])
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [q], "lr": -1})
    with pytest.raises(TypeError, match="momentum"):  # a typo'd or foreign key is not silently ignored
        opt.add_param_group({"params": [q], "momentum": 0.9})
    with pytest.raises(ValueError, match="rule"):
        fh.Hybrid([{"params": [q], "rule": "lion"}])


def test_unsupported_parameters_and_sparse_grads():
    with pytest.raises(ValueError, match="complex"):
        fh.NDAdam([torch.zeros(3, 2, dtype=torch.complex64, requires_grad=True)])
    with pytest.raises(ValueError, match="dtype"):
        fh.Adam([torch.zeros(3, dtype=torch.complex32)])
    with pytest.raises(ValueError, match="dtype"):
        fh.SGD([torch.zeros(3, dtype=torch.int64)])
    p = torch.zeros(4, requires_grad=True)
    opt = fh.Adam([p])
    p.grad = torch.eye(4)[0].to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_unavailable_backend_is_an_error_not_a_fallback():
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.ones(3)
    for name in ("cuda", "triton"):
        status = fh.backends()[name]
        if "cpu" in status.split("rules")[0] and "available on" in status:
            continue  # that backend does serve CPU tensors here (Triton under its interpreter)
        opt = fh.Adam([p], backend=name)
        with pytest.raises(fh.BackendUnavailableError, match=name):
            opt.step()
    assert torch.equal(p.detach(), torch.zeros(3))


def test_backends_reports_every_backend():
    status = fh.backends()
    assert set(status) == {"reference", "cpu", "triton", "cuda", "cuda_sim"}
    assert status["reference"].startswith("available")
    for s in status.values():
        assert s.startswith("available") or s.startswith("unavailable: ")


# -- torch.optim behaviour ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("case", cases.params(cases.RULES))
def test_every_rule_trains_a_small_model(case, backend):
    cls, kwargs = case.cls, case.kw
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(128, 8)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2]
    opt = cls(model.parameters(), backend=backend, **{"lr": 1e-2, **kwargs})
    losses = []
    for _ in range(150):
        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        losses.append(opt.step(closure).item())
    assert math.isfinite(losses[-1]) and losses[-1] < 0.5 * losses[0]


def test_params_without_grad_are_skipped():
    a, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = fh.Adam([a, b], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and b not in opt.state
    assert not torch.equal(a.detach(), torch.ones(3))
    b.grad = torch.ones(3)  # b starts its own step count when it first gets a gradient
    opt.step()
    assert opt.state[a]["step"].item() == 2 and opt.state[b]["step"].item() == 1


def test_add_param_group_later_and_schedulers():
    a, b = make_params()
    opt = fh.Adam(a[:3], lr=1e-2)
    ref = torch.optim.Adam(b[:3], lr=1e-2, foreach=False)
    s1 = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    s2 = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=20)
    for k in range(20):
        if k == 5:
            opt.add_param_group({"params": a[3:], "lr": 5e-3})
            ref.add_param_group({"params": b[3:], "lr": 5e-3})
        quadratic_grads([a, b], k)
        for p in a[3:] + b[3:]:
            if k < 5:
                p.grad = None
        opt.step()
        ref.step()
        s1.step()
        s2.step()
    assert max_rel_err(a, b) < 1e-5
    assert opt.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"])


def test_zero_grad_and_repr():
    p = torch.ones(3, requires_grad=True)
    opt = fh.SWATS([p])
    p.grad = torch.ones(3)
    opt.zero_grad()
    assert p.grad is None
    assert "SWATS" in repr(opt)


def test_grad_scaler_protocol_skips_on_inf():
    """GradScaler sets grad_scale/found_inf on optimizers with _step_supports_amp_scaling; the step unscales, and
    a found_inf step changes nothing, its step count included."""
    a, b = make_params()
    opt = fh.Adam(a, lr=1e-2)
    ref = torch.optim.Adam(b, lr=1e-2, foreach=False)
    for k in range(6):
        feed_grads([a, b], k)
        for p in a:
            p.grad *= 1024.0
        opt.grad_scale = torch.tensor(1024.0)
        opt.found_inf = torch.tensor(1.0 if k == 3 else 0.0)
        before = [p.detach().clone() for p in a]
        opt.step()
        if k == 3:
            assert all(torch.equal(x, y.detach()) for x, y in zip(before, a))
        else:
            ref.step()
    del opt.grad_scale, opt.found_inf
    assert max_rel_err(a, b) < 1e-5
    assert opt.state[a[0]]["step"].item() == 5


def test_real_grad_scaler_on_cpu():
    model = torch.nn.Linear(4, 2)
    opt = fh.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.randn(8, 4)).sum()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert all(not torch.equal(x, p.detach()) for x, p in zip(before, model.parameters()))
    model.weight.grad.fill_(float("inf"))
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(x, p.detach()) for x, p in zip(before, model.parameters()))
    assert opt.state[model.weight]["step"].item() == 1


# -- checkpoints -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases.params(cases.RULES))
def test_resume_gives_the_same_trajectory(case):
    cls, kwargs = case.cls, case.kw
    a, b = make_params()
    o1 = cls(a, **{"lr": 1e-2, **kwargs})
    o2 = cls(b, **{"lr": 1e-2, **kwargs})
    for k in range(40):
        quadratic_grads([a, b], k, noise=0.0 if cls is fh.SWATS else 0.1)
        o1.step()
        if k == 19:  # o2 is rebuilt from a checkpoint half way
            sd = roundtrip(o2.state_dict())
            params = [p for p in b]
            o2 = cls(params, **{"lr": 1e-2, **kwargs})
            o2.load_state_dict(sd)
        else:
            o2.step()
        if k == 19:
            o2.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    if cls is fh.SWATS:
        assert o1.switch_info() == o2.switch_info()


def test_swats_checkpoint_after_the_switch_resumes_in_sgd_phase():
    a, = make_params(copies=1)
    opt = fh.SWATS(a, lr=1e-2, switch_rtol=0.05)
    for k in range(30):
        quadratic_grads([a], k, noise=0.0)
        opt.step()
    info = opt.switch_info()
    assert info[0]["switched"]
    opt2 = fh.SWATS(a, lr=1e-2, switch_rtol=0.05)
    opt2.load_state_dict(roundtrip(opt.state_dict()))
    assert opt2.switch_info() == info
    with pytest.raises(ValueError, match="granularity"):
        fh.SWATS(a, granularity="tensor").load_state_dict(opt.state_dict())


def test_torch_adam_checkpoint_loads_into_adam_and_swats():
    a, b, c = make_params(copies=3)
    t = torch.optim.Adam(a, lr=1e-2)
    for k in range(10):
        feed_grads([a], k)
        t.step()
    sd = roundtrip(t.state_dict())
    for p, q, r in zip(a, b, c):
        q.data.copy_(p.data)
        r.data.copy_(p.data)
    ours = fh.Adam(b, lr=1e-2)
    ours.load_state_dict(copy.deepcopy(sd))
    sw = fh.SWATS(c, lr=1e-2, eps=1e-8, switch_rtol=0.0)  # SWATS before its switch is Adam
    sw.load_state_dict(copy.deepcopy(sd))
    for k in range(10, 20):
        feed_grads([a, b, c], k)
        t.step()
        ours.step()
        sw.step()
    assert max_rel_err(b, a) < 1e-5 and max_rel_err(c, a) < 1e-5


def test_torch_sgd_checkpoint_loads():
    a, b = make_params()
    t = torch.optim.SGD(a, lr=0.1, momentum=0.9)
    for k in range(5):
        feed_grads([a], k)
        t.step()
    for p, q in zip(a, b):
        q.data.copy_(p.data)
    ours = fh.SGD(b, lr=0.1, momentum=0.9)
    ours.load_state_dict(roundtrip(t.state_dict()))
    for k in range(5, 10):
        feed_grads([a, b], k)
        t.step()
        ours.step()
    assert max_rel_err(b, a) < 1e-6


def test_bf16_state_stays_float32_through_a_checkpoint():
    a, = make_params(dtype=torch.bfloat16, copies=1)
    opt = fh.Adam(a, lr=1e-2)
    feed_grads([a], 0)
    opt.step()
    opt2 = fh.Adam(a, lr=1e-2)
    opt2.load_state_dict(roundtrip(opt.state_dict()))
    assert opt2.state[a[0]]["exp_avg"].dtype == torch.float32
    assert torch.equal(opt2.state[a[0]]["exp_avg"], opt.state[a[0]]["exp_avg"])


def test_mismatched_checkpoints_are_refused_whole():
    a, = make_params(copies=1)
    opt = fh.Adam(a)
    feed_grads([a], 0)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="parameter groups"):
        fh.Adam([{"params": a[:2]}, {"params": a[2:]}]).load_state_dict(sd)
    with pytest.raises(ValueError, match="parameters"):
        fh.Adam(a[:-1]).load_state_dict(sd)
    with pytest.raises(ValueError, match="state_dict"):
        fh.Adam(a).load_state_dict({"state": {}})
