"""Each hybrid rule against the papers' equations, written again here independently of fused_hybrid.reference
(float64 parameters, small tensors, so differences are rounding only)."""
import math

import pytest
import torch

import fused_hybrid as fh
from cases import feed_grads, make_params, max_rel_err, quadratic_grads

F64 = torch.float64
SMALL = [(5,), (4, 3), (2, 3, 2)]


def _drive(opt, params, oracle_step, steps=20, grads=feed_grads, seed=1):
    """Step ``opt`` and the oracle on identical gradients; oracle_step(k, ws, gs) updates ws in place."""
    ws = [p.detach().clone() for p in params]
    shadow = [w.clone().requires_grad_() for w in ws]
    for k in range(1, steps + 1):
        grads([params, shadow], k, seed=seed)
        gs = [s.grad.clone() for s in shadow]
        opt.step()
        oracle_step(k, ws, gs)
        for s, w in zip(shadow, ws):
            s.data.copy_(w)
    return ws


def test_padam_official_form():
    lr, b1, b2, eps, p, wd = 0.1, 0.9, 0.999, 1e-8, 0.125, 0.01
    params, = make_params(SMALL, F64, copies=1)
    opt = fh.Padam(params, lr=lr, partial=p, weight_decay=wd, backend="reference")
    st = [dict(m=torch.zeros_like(w), v=torch.zeros_like(w), vmax=torch.zeros_like(w)) for w in params]

    def oracle(k, ws, gs):  # uclaml/Padam Padam.py
        for w, g, s in zip(ws, gs, st):
            g = g + wd * w
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
            s["vmax"] = torch.maximum(s["vmax"], s["v"])
            denom = s["vmax"].sqrt() + eps
            w -= (lr * math.sqrt(1 - b2 ** k) / (1 - b1 ** k)) * s["m"] / denom ** (2 * p)

    ws = _drive(opt, params, oracle)
    assert max_rel_err(params, ws) < 1e-10


@pytest.mark.parametrize("partial", [0.5, 0.25, 0.3])
def test_padam_partials_agree_with_general_power(partial):
    """The nested-sqrt fast paths and the general power agree with the formula (float64)."""
    params, = make_params(SMALL, F64, copies=1)
    opt = fh.Padam(params, lr=0.01, partial=partial, backend="auto")
    st = [dict(m=torch.zeros_like(w), v=torch.zeros_like(w), vmax=torch.zeros_like(w)) for w in params]

    def oracle(k, ws, gs):
        for w, g, s in zip(ws, gs, st):
            s["m"] = 0.9 * s["m"] + 0.1 * g
            s["v"] = 0.999 * s["v"] + 0.001 * g * g
            s["vmax"] = torch.maximum(s["vmax"], s["v"])
            w -= 0.01 * math.sqrt(1 - 0.999 ** k) / (1 - 0.9 ** k) * s["m"] / (s["vmax"].sqrt() + 1e-8) ** (2 * partial)

    ws = _drive(opt, params, oracle)
    assert max_rel_err(params, ws) < 1e-10


def test_padam_half_is_amsgrad_up_to_eps_placement():
    """partial = 1/2 is AMSGrad; with eps = 0 the two eps placements coincide."""
    a, b = make_params()
    o1 = fh.Padam(a, lr=1e-2, partial=0.5, eps=0.0, backend="reference")
    o2 = torch.optim.Adam(b, lr=1e-2, amsgrad=True, eps=0.0, foreach=False)
    for k in range(50):
        feed_grads([a, b], k)
        o1.step()
        o2.step()
    assert max_rel_err(a, b) < 1e-5


@pytest.mark.parametrize("lower,upper", [(1.0, math.inf), (0.0, 1.0), (0.5, 2.0)])
def test_adam_clip(lower, upper):
    lr, sgd_lr, b1, b2, eps = 1e-3, 0.1, 0.9, 0.999, 1e-8
    params, = make_params(SMALL, F64, copies=1)
    opt = fh.AdamClip(params, lr=lr, sgd_lr=sgd_lr, lower=lower, upper=upper, backend="reference")
    st = [dict(m=torch.zeros_like(w), v=torch.zeros_like(w)) for w in params]

    def oracle(k, ws, gs):  # Keskar & Socher, section 2
        for w, g, s in zip(ws, gs, st):
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
            size = math.sqrt(1 - b2 ** k) / (1 - b1 ** k) * lr / (s["v"].sqrt() + eps)
            w -= size.clamp(lower * sgd_lr, upper * sgd_lr) * s["m"]

    ws = _drive(opt, params, oracle)
    assert max_rel_err(params, ws) < 1e-10


def test_adam_clip_one_one_is_sgd_on_the_average():
    """Adam-Clip(1, 1): every step size is sgd_lr, so w moves by -sgd_lr * m."""
    params, = make_params(SMALL, F64, copies=1)
    opt = fh.AdamClip(params, lr=1e-3, sgd_lr=0.1, lower=1.0, upper=1.0, backend="reference")
    ms = [torch.zeros_like(p) for p in params]

    def oracle(k, ws, gs):
        for w, g, m in zip(ws, gs, ms):
            m.mul_(0.9).add_(0.1 * g)
            w -= 0.1 * m

    ws = _drive(opt, params, oracle)
    assert max_rel_err(params, ws) < 1e-10


@pytest.mark.parametrize("amsbound", [False, True])
def test_adabound_with_scheduler(amsbound):
    """Luolc/AdaBound, including its lr-relative bounds: a scheduler halving lr moves the bounds."""
    lr, final_lr, gamma, wd = 1e-3, 0.1, 1e-3, 1e-3
    params, = make_params(SMALL, F64, copies=1)
    opt = fh.AdaBound(params, lr=lr, final_lr=final_lr, gamma=gamma, weight_decay=wd, amsbound=amsbound,
                      backend="reference")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
    st = [dict(m=torch.zeros_like(w), v=torch.zeros_like(w), vmax=torch.zeros_like(w)) for w in params]

    def oracle(k, ws, gs):
        cur_lr = lr * 0.5 ** ((k - 1) // 7)
        for w, g, s in zip(ws, gs, st):
            g = g + wd * w
            s["m"] = 0.9 * s["m"] + 0.1 * g
            s["v"] = 0.999 * s["v"] + 0.001 * g * g
            v = s["v"]
            if amsbound:
                s["vmax"] = torch.maximum(s["vmax"], s["v"])
                v = s["vmax"]
            step_size = cur_lr * math.sqrt(1 - 0.999 ** k) / (1 - 0.9 ** k)
            final = final_lr * cur_lr / lr
            lower, upper = final * (1 - 1 / (gamma * k + 1)), final * (1 + 1 / (gamma * k))
            w -= (step_size / (v.sqrt() + 1e-8)).clamp(lower, upper) * s["m"]

    class Scheduled:  # opt.step() followed by sched.step(), as a training loop does
        def step(self):
            opt.step()
            sched.step()

    ws = _drive(Scheduled(), params, oracle, steps=25)
    assert max_rel_err(params, ws) < 1e-10


def _paper_swats(ws, grads_fn, steps, lr, b1=0.9, b2=0.999, eps=1e-9, rtol=1e-3, atol=0.0):
    """SWATS, Algorithm 1 of Keskar & Socher, global over all tensors, with torch's eps placement and the
    relative test. Returns (switch step or None, Lambda, the parameter trajectory)."""
    m = [torch.zeros_like(w) for w in ws]
    a = [torch.zeros_like(w) for w in ws]
    v = [torch.zeros_like(w) for w in ws]
    lam, Lam, phase, switch_k = 0.0, None, "adam", None
    for k in range(1, steps + 1):
        gs = grads_fn(k, ws)
        if phase == "sgd":
            for w, g, vk in zip(ws, gs, v):
                vk.mul_(b1).add_(g)
                w -= (1 - b1) * Lam * vk
            continue
        pg = pp = 0.0
        for w, g, mk, ak in zip(ws, gs, m, a):
            mk.mul_(b1).add_((1 - b1) * g)
            ak.mul_(b2).add_((1 - b2) * g * g)
            p = -(lr / (1 - b1 ** k)) * mk / (ak.sqrt() / math.sqrt(1 - b2 ** k) + eps)
            w += p
            pg += float((p * g).sum())
            pp += float((p * p).sum())
        if pg != 0:
            gamma = pp / -pg
            lam = b2 * lam + (1 - b2) * gamma
            lk = lam / (1 - b2 ** k)
            if k > 1 and lk > 0 and abs(lk - gamma) < atol + rtol * abs(lk):
                phase, Lam, switch_k = "sgd", lk, k
    return switch_k, Lam, ws


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_swats_switches_like_the_paper_and_then_takes_sgd_steps(backend):
    rtol = 2e-2
    params, = make_params(SMALL, F64, copies=1)
    start = [p.detach().clone() for p in params]
    curv = [torch.rand(p.shape, generator=torch.Generator().manual_seed(i), dtype=F64) + 0.5
            for i, p in enumerate(params)]

    def grads_at(k, ws):
        gen = torch.Generator().manual_seed(1000 + k)
        return [c * w + 0.3 * torch.randn(w.shape, generator=gen, dtype=F64) for c, w in zip(curv, ws)]

    switch_k, Lam, ws = _paper_swats([s.clone() for s in start], grads_at, 120, lr=1e-2, rtol=rtol)
    assert switch_k is not None and 3 <= switch_k < 100, "the problem must switch, and not on the first steps"
    opt = fh.SWATS(params, lr=1e-2, switch_rtol=rtol, backend=backend)
    for k in range(1, 121):
        for p, g in zip(params, grads_at(k, [p.detach() for p in params])):
            p.grad = g
        opt.step()
    info = opt.switch_info()
    assert len(info) == 1 and info[0]["switched"]
    assert info[0]["switch_step"] == switch_k
    assert info[0]["sgd_lr"] == pytest.approx(Lam, rel=1e-12)
    assert max_rel_err(params, ws) < 1e-9


def test_swats_literal_paper_test_rarely_fires():
    """switch_rtol=0, switch_atol=1e-9 is the paper's literal test; on a noisy problem it does not fire."""
    params, = make_params(SMALL, F64, copies=1)
    opt = fh.SWATS(params, lr=1e-2, switch_rtol=0.0, switch_atol=1e-9, backend="reference")
    for k in range(60):
        feed_grads([params], k)
        opt.step()
    assert opt.switch_info()[0]["switched"] is False


@pytest.mark.parametrize("granularity", ["group", "tensor"])
def test_swats_granularity_segments(granularity):
    a, = make_params(SMALL, F64, copies=1)
    opt = fh.SWATS([{"params": a[:1]}, {"params": a[1:]}], lr=1e-2, granularity=granularity, switch_rtol=0.05)
    for k in range(40):
        quadratic_grads([a], k, noise=0.0)
        opt.step()
    info = opt.switch_info()
    assert len(info) == (2 if granularity == "group" else len(SMALL))
    # A noise-free quadratic settles quickly: every segment switches, each with a positive Lambda.
    assert all(s["switched"] and s["sgd_lr"] > 0 for s in info)


def _mas_oracle(variant, lr, adam_w, sgd_w, momentum, wd, st):
    b1, b2, eps = 0.9, 0.999, 1e-8

    def oracle(k, ws, gs):
        for w, g, s in zip(ws, gs, st):
            d = g + wd * w
            s["m"] = b1 * s["m"] + (1 - b1) * d
            s["v"] = b2 * s["v"] + (1 - b2) * d * d
            d_a = s["m"] / (s["v"].sqrt() / math.sqrt(1 - b2 ** k) + eps)
            eta_a = lr / (1 - b1 ** k)
            if momentum:
                s["buf"] = d.clone() if k == 1 else momentum * s["buf"] + d
                d_s = s["buf"]
            else:
                d_s = d
            step_a, step_s = eta_a * d_a, lr * d_s
            if variant == "sum":
                w -= (sgd_w * lr + adam_w * eta_a) * (sgd_w * d_s + adam_w * d_a)
            elif variant == "correction":
                w -= step_a if float((d_a * d_s).sum()) < 0 else step_s
            elif variant == "normalized":
                w -= d_s * step_a.norm() / d_s.norm()
            else:
                w -= adam_w * step_a + sgd_w * d_s * step_a.norm() / d_s.norm()
    return oracle


@pytest.mark.parametrize("variant", ["sum", "correction", "normalized", "vector"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_mas_variants(variant, momentum):
    lr, adam_w, sgd_w, wd = 1e-2, 0.7, 0.3, 1e-3
    params, = make_params(SMALL, F64, copies=1)
    opt = fh.MAS(params, lr=lr, adam_w=adam_w, sgd_w=sgd_w, momentum=momentum, weight_decay=wd, variant=variant,
                 backend="reference")
    st = [dict(m=torch.zeros_like(w), v=torch.zeros_like(w)) for w in params]
    ws = _drive(opt, params, _mas_oracle(variant, lr, adam_w, sgd_w, momentum, wd, st))
    assert max_rel_err(params, ws) < 1e-10


def test_mas_weights_can_be_scheduled():
    """adam_w/sgd_w are group hyperparameters: moving them per step follows the formula with the new weights."""
    params, = make_params(SMALL, F64, copies=1)
    opt = fh.MAS(params, lr=1e-2, backend="reference")
    st = [dict(m=torch.zeros_like(w), v=torch.zeros_like(w)) for w in params]
    ws = [p.detach().clone() for p in params]
    shadow = [w.clone().requires_grad_() for w in ws]
    for k in range(1, 11):
        aw = 1.0 - k / 10
        opt.param_groups[0]["adam_w"], opt.param_groups[0]["sgd_w"] = aw, 1 - aw
        feed_grads([params, shadow], k)
        opt.step()
        _mas_oracle("sum", 1e-2, aw, 1 - aw, 0.0, 0.0, st)(k, ws, [s.grad for s in shadow])
        for s, w in zip(shadow, ws):
            s.data.copy_(w)
    assert max_rel_err(params, ws) < 1e-10


def test_ndadam_rows_and_biases():
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    W = torch.randn(6, 4, dtype=F64, requires_grad=True)
    bias = torch.randn(6, dtype=F64, requires_grad=True)
    opt = fh.NDAdam([W, bias], lr=lr, backend="reference")
    w = W.detach().clone()
    w /= w.norm(dim=1, keepdim=True)  # normalized at the first step (the paper: at initialization)
    bb = bias.detach().clone()
    m, v = torch.zeros_like(w), torch.zeros(6, 1, dtype=F64)
    mb, vb = torch.zeros_like(bb), torch.zeros_like(bb)
    for k in range(1, 21):
        gen = torch.Generator().manual_seed(k)
        gw, gb = torch.randn(6, 4, generator=gen, dtype=F64), torch.randn(6, generator=gen, dtype=F64)
        W.grad, bias.grad = gw.clone(), gb.clone()
        opt.step()
        # Zhang 2017, Algorithm 1, per row vector
        g = gw - (gw * w).sum(1, keepdim=True) * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g * g).sum(1, keepdim=True)
        w = w - lr * math.sqrt(1 - b2 ** k) / (1 - b1 ** k) * m / (v.sqrt() + eps)
        w = w / w.norm(dim=1, keepdim=True)
        mb = b1 * mb + (1 - b1) * gb
        vb = b2 * vb + (1 - b2) * gb * gb
        bb = bb - lr / (1 - b1 ** k) * mb / (vb.sqrt() / math.sqrt(1 - b2 ** k) + eps)
    assert max_rel_err([W, bias], [w, bb]) < 1e-10
    assert torch.allclose(W.detach().norm(dim=1), torch.ones(6, dtype=F64))


def test_ndadam_conv_filters_and_vec_axes():
    """Conv weights: one vector per output channel; vec_axes=[1] on a 3-D weight makes vectors along dim 1."""
    conv = torch.randn(4, 3, 3, 3, requires_grad=True)
    w3 = torch.randn(2, 5, 3, requires_grad=True)
    opt = fh.NDAdam([{"params": [conv]}, {"params": [w3], "vec_axes": [1]}], lr=1e-2, backend="reference")
    assert opt.state[conv] == {}
    conv.grad, w3.grad = torch.randn_like(conv), torch.randn_like(w3)
    opt.step()
    assert opt.state[conv]["exp_avg_sq"].shape == (4, 1, 1, 1)
    assert opt.state[w3]["exp_avg_sq"].shape == (2, 1, 3)
    assert torch.allclose(conv.detach().flatten(1).norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.allclose(w3.detach().norm(dim=1), torch.ones(2, 3), atol=1e-6)


def test_layerwise_split_equals_separate_optimizers():
    """Seed 003, IV.A: Adam on the hidden layers and SGD on the head, in one optimizer."""
    a, b = make_params()
    body, head = a[:-1], a[-1:]
    opt = fh.Hybrid([{"params": body, "rule": "adam"},
                     {"params": head, "rule": "sgd", "lr": 0.05, "momentum": 0.9}], lr=1e-3)
    t1 = torch.optim.Adam(b[:-1], lr=1e-3, foreach=False)
    t2 = torch.optim.SGD(b[-1:], lr=0.05, momentum=0.9, foreach=False)
    for k in range(30):
        quadratic_grads([a, b], k)
        opt.step()
        t1.step()
        t2.step()
    assert max_rel_err(a, b) < 1e-5
    assert [g["rule"] for g in opt.param_groups] == ["adam", "sgd"]
