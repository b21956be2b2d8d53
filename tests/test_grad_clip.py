"""Gradient clipping fused into the step (issue 17): ``max_grad_norm``, ``norm_type``, ``skip_grad_norm_above``.

The contract, on every backend this machine runs (reference, cpu, triton under its interpreter, cuda_sim; cuda with
a GPU): a clipped step equals ``torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)`` followed by the same
optimizer's unclipped step, ``opt.grad_norm`` equals clip_grad_norm_'s return, a step whose norm is above
``skip_grad_norm_above`` (or not finite) changes nothing, and ``step()`` reads nothing on the host.

Two references, because the total norm is a sum in some order: ours in float64 in a fixed chunk order, torch's of
per-tensor float32 norms in its own. (1) ``clip_grads_with_norm_`` with *our* norm, then the unclipped step: the
trajectory must be bitwise equal (the clip coefficient is computed by torch's own expression, and the kernels'
single rounding of g * coef * inv_scale equals torch's two roundings for power-of-two scales, grad_clip.py's
Exactness). (2) ``clip_grad_norm_`` itself: the norms agree to float32 rounding of differently ordered sums
(rtol 2e-6 for p = 2: torch's float32 per-tensor norms are each within a few ulps; p = inf is a max, exact in any
order, so bitwise), and the trajectories to the resulting relative change of the clipped gradients, a few 1e-7,
amplified by at most the few steps' Adam normalisation: rtol 1e-5.
"""
import copy
import math
import pickle

import pytest
import torch

import fused_hybrid as fh
from fused_hybrid import grad_clip

BACKENDS = [b for b in ("reference", "cpu", "triton", "cuda_sim")
            if fh.backends()[b].startswith("available") and (b != "triton" or not torch.cuda.is_available())]
FUSED = [b for b in BACKENDS if b != "reference"]
SHAPES = [(33, 7), (5,), (300,), (4, 4, 3), (1,)]

RULES = [
    (fh.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (fh.Adam, dict(lr=1e-2, amsgrad=True)),
    (fh.AdamW, dict(lr=1e-2)),
    (fh.RMSprop, dict(lr=1e-2, momentum=0.5, centered=True)),
    (fh.Adagrad, dict(lr=1e-1)),
    (fh.Padam, dict(lr=1e-2)),
    (fh.AdaBound, dict(lr=1e-2)),
    (fh.SWATS, dict(lr=1e-2, switch_rtol=0.5)),
    (fh.MAS, dict(lr=1e-2, momentum=0.9)),
    (fh.MAS, dict(lr=1e-2, variant="vector")),
    (fh.NDAdam, dict(lr=1e-2)),
]
# Per step: how large the gradients are (norms below and above the limit), and whether GradScaler skips it.
GRAD_SIZE = [0.05, 3.0, 0.2, 8.0, 1.0]
MAX_NORM = 1.5
MAX_NORM_INF = 0.2  # the largest element of those gradients: ~0.13 x GRAD_SIZE
SCALER_SKIPS = 2


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in SHAPES]


def _groups(ps, device="cpu"):
    """Two groups, the second with a tensor lr (read on the device) and its own lr scale."""
    return lambda lr: [{"params": ps[:3]}, {"params": ps[3:], "lr": torch.tensor(lr * 0.5, device=device)}]


def _grads(step, dtype):
    g = torch.Generator().manual_seed(100 + step)
    return [(GRAD_SIZE[step % len(GRAD_SIZE)] / math.sqrt(sum(math.prod(s) for s in SHAPES)) *
             torch.randn(s, generator=g, dtype=torch.float64)).to(dtype) for s in SHAPES]


def _run(cls, kw, backend, *, clip=None, norm_type=2.0, scaler=False, ref=None, dtype=torch.float32, steps=5):
    """``steps`` steps. clip: our max_grad_norm. ref: "torch" (clip_grad_norm_ before an unclipped step) or
    "ours" (clip_grads_with_norm_ with the norm ``ref_norms`` gives, then the unclipped step). scaler: the
    gradients arrive scaled by 2^k with grad_scale set and GradScaler's found_inf marks step SCALER_SKIPS (the
    references unscale as GradScaler.unscale_ does and skip that step themselves)."""
    ps = _params(dtype)
    lr = kw["lr"]
    opt = cls(_groups(ps)(lr), backend=backend, max_grad_norm=clip, norm_type=norm_type,
              **{k: v for k, v in kw.items() if k != "lr"}, lr=lr)
    norms = []
    for k in range(steps):
        grads = _grads(k, dtype)
        scale = 2.0 ** (k + 3)
        skip = scaler and k == SCALER_SKIPS
        if ref is None:
            for p, g in zip(ps, grads):
                p.grad = g * scale if scaler else g
            if scaler:
                opt.grad_scale = torch.tensor(scale)
                opt.found_inf = torch.tensor(1.0 if skip else 0.0)
            opt.step()
            norms.append(opt.grad_norm.clone())
        else:
            for p, g in zip(ps, grads):
                # GradScaler.unscale_: g * (float32)(1 / scale), exact for a power of two
                p.grad = (g * scale) * torch.tensor(1.0 / scale, dtype=torch.float32).to(dtype) if scaler else g
            limit = MAX_NORM_INF if math.isinf(norm_type) else MAX_NORM
            if ref == "torch":
                norms.append(torch.nn.utils.clip_grad_norm_(ps, limit, norm_type))
            else:
                torch.nn.utils.clip_grads_with_norm_(ps, limit, ref[k])
            if not skip:
                opt.step()
    return ps, opt, norms


def _equal(a, b):
    return all(torch.equal(x.detach(), y.detach()) for x, y in zip(a, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls,kw", RULES, ids=lambda x: x.__name__ if isinstance(x, type) else "")
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clipped_steps_follow_clip_grad_norm(backend, cls, kw, norm_type):
    scaler = cls in (fh.Adam, fh.SGD, fh.SWATS, fh.MAS)  # GradScaler on for some rules, off for others
    limit = MAX_NORM_INF if math.isinf(norm_type) else MAX_NORM
    ps, opt, norms = _run(cls, kw, backend, clip=limit, norm_type=norm_type, scaler=scaler)
    # (1) clip_grads_with_norm_ with our norms, then the same unclipped step: bitwise.
    exact, _, _ = _run(cls, kw, backend, ref=norms, norm_type=norm_type, scaler=scaler)
    assert _equal(ps, exact)
    # (2) clip_grad_norm_ itself: its norms, and the trajectory within the norms' rounding.
    ref, _, ref_norms = _run(cls, kw, backend, ref="torch", norm_type=norm_type, scaler=scaler)
    assert any(n > limit for n in ref_norms) and any(n < limit for n in ref_norms)
    for ours, theirs in zip(norms, ref_norms):
        assert ours.dtype == theirs.dtype
        if math.isinf(norm_type):
            assert torch.equal(ours, theirs)
        else:
            torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=0)
    for a, b in zip(ps, ref):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_clipped_steps_follow_clip_grads_with_norm(backend):
    """float64: the kernels' multiplier 1 / (scale / clip_coef) is clip_coef / scale or one double ulp off it (no
    double inverts to every double): the trajectory within a few double ulps of clip_grads_with_norm_ + step."""
    kw = dict(lr=1e-2)
    ps, _, norms = _run(fh.Adam, kw, backend, clip=MAX_NORM, scaler=True, dtype=torch.float64)
    assert all(n.dtype == torch.float64 for n in norms)
    exact, _, _ = _run(fh.Adam, kw, backend, ref=norms, scaler=True, dtype=torch.float64)
    for a, b in zip(ps, exact):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    ref, _, ref_norms = _run(fh.Adam, kw, backend, ref="torch", scaler=True, dtype=torch.float64)
    for ours, theirs in zip(norms, ref_norms):
        torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_grad_norm_is_the_unscaled_gradients_norm(backend, p, dtype):
    """opt.grad_norm (skip_grad_norm_above alone: no clipping) is the p-norm of the gradients the kernels step with,
    g * (compute dtype)(1 / grad_scale), within float64 rounding of the float64 reference; and p.grad is left as it
    was."""
    ps = _params(dtype)
    opt = fh.SGD(ps, lr=0.0, backend=backend, norm_type=p, skip_grad_norm_above=1e30)
    grads = [(10 * g).to(dtype) for g in _grads(1, torch.float64)]
    for q, g in zip(ps, grads):
        q.grad = g.clone()
    opt.grad_scale = torch.tensor(3.0)  # not a power of two: the unscale rounds, as the kernels' does
    opt.step()
    inv = torch.tensor(1 / 3.0, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    x = torch.cat([(g.to(inv.dtype) * inv).double().flatten() for g in grads])
    want = torch.linalg.vector_norm(x, p)
    assert opt.grad_norm.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rtol = 1e-12 if p in (1.0, 2.0, math.inf) else 1e-10  # |x|^p: pow, or exp2(p*log2|x|) in Triton
    torch.testing.assert_close(opt.grad_norm.double(), want.to(opt.grad_norm.dtype).double(),
                               rtol=max(rtol, 2 ** -23 if dtype != torch.float64 else 0), atol=0)
    assert all(torch.equal(q.grad, g) for q, g in zip(ps, grads))


@pytest.mark.parametrize("backend", FUSED)
def test_norm_is_reproducible_and_order_free(backend, monkeypatch):
    """The same gradients give bitwise the same norm whatever the thread count (cpu), the order the simulator runs
    threads and blocks in (cuda_sim) or the chunk size (triton); and NaN / inf propagate as in vector_norm."""
    from fused_hybrid.backends import cuda_sim
    ps = _params()
    grads = [g * 5 for g in _grads(3, torch.float32)]

    def norm(p=2.0):
        opt = fh.SGD(ps, lr=0.0, backend=backend, norm_type=p, skip_grad_norm_above=1e30)
        for q, g in zip(ps, grads):
            q.grad = g.clone()
        opt.step()
        return opt.grad_norm

    base = {p: norm(p) for p in (2.0, math.inf)}
    if backend == "cpu":
        threads = torch.get_num_threads()
        try:
            for n in (1, 3):
                torch.set_num_threads(n)
                assert all(torch.equal(norm(p), v) for p, v in base.items())
        finally:
            torch.set_num_threads(threads)
    elif backend == "cuda_sim":
        for order in ("reversed", "shuffled"):
            with cuda_sim.settings(thread_order=order, block_order=order, seed=7):
                assert all(torch.equal(norm(p), v) for p, v in base.items())
        with cuda_sim.settings(base_chunk=64, max_chunk=64, max_blocks=8):  # several chunks, several launches
            for p, v in base.items():
                torch.testing.assert_close(norm(p), v, rtol=2e-7, atol=0)
    for bad in (math.nan, math.inf):
        grads[1][2] = bad
        for p in (2.0, math.inf):
            got = norm(p)
            assert (got.isnan() if math.isnan(bad) else got.isinf()), (bad, p, got)
    grads[1][2] = 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls,kw", [(fh.Adam, dict(lr=1e-2)), (fh.SWATS, dict(lr=1e-2, switch_rtol=0.5)),
                                    (fh.SGD, dict(lr=0.1, momentum=0.9)), (fh.MAS, dict(lr=1e-2, variant="vector")),
                                    (fh.RMSprop, dict(lr=1e-2))], ids=lambda x: getattr(x, "__name__", ""))
def test_spiked_step_changes_nothing(backend, cls, kw):
    """skip_grad_norm_above: a step whose norm is above it, or NaN / inf, leaves params, state, step counts and
    SWATS's switch test bitwise as they were; the next normal step steps (with clipping too)."""
    ps = _params()
    opt = cls(ps, backend=backend, max_grad_norm=MAX_NORM, skip_grad_norm_above=20.0, **kw)
    for k in range(2):
        for p, g in zip(ps, _grads(k, torch.float32)):
            p.grad = g
        opt.step()
    for spike in (1e3, math.nan, math.inf):
        before = copy.deepcopy((ps, opt.state_dict()))
        for p, g in zip(ps, _grads(7, torch.float32)):
            p.grad = g * spike if not math.isnan(spike) else g
        if math.isnan(spike):
            ps[1].grad[0] = math.nan
        opt.step()
        assert opt.grad_norm > 20.0 or not torch.isfinite(opt.grad_norm)
        assert _equal(ps, before[0])
        _assert_same_state(opt.state_dict(), before[1])
    for p, g in zip(ps, _grads(8, torch.float32)):
        p.grad = g
    before = [p.detach().clone() for p in ps]
    opt.step()
    assert not _equal(ps, before)


def _assert_same_state(a, b):
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        sa, sb = a["state"][i], b["state"][i]
        assert sa.keys() == sb.keys()
        for key in sa:
            if isinstance(sa[key], torch.Tensor):
                assert torch.equal(sa[key], sb[key]), key
            else:
                assert sa[key] == sb[key], key


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("cls,kw", [(fh.Adam, dict(lr=1e-2)), (fh.SWATS, dict(lr=1e-2)),
                                    (fh.SGD, dict(lr=0.1, momentum=0.9))], ids=lambda x: getattr(x, "__name__", ""))
def test_no_host_sync_in_a_clipped_step(backend, cls, kw, monkeypatch):
    """Nothing in a fused clipped step reads a tensor on the host: item / __bool__ / tolist raise while it runs
    (first step, steady-state fast path, a group missing a gradient, GradScaler's tensors, tensor lr)."""
    ps = _params()
    opt = cls(_groups(ps)(kw["lr"]), backend=backend, max_grad_norm=MAX_NORM, skip_grad_norm_above=100.0,
              **{k: v for k, v in kw.items() if k != "lr"}, lr=kw["lr"])

    def refuse(*args, **kwargs):
        raise AssertionError("host sync inside step()")

    for k in range(4):
        for p, g in zip(ps, _grads(k, torch.float32)):
            p.grad = g * 4.0
        if k == 2:
            ps[4].grad = None
        opt.grad_scale = torch.tensor(4.0)
        opt.found_inf = torch.tensor(0.0)
        with monkeypatch.context() as m:
            for name in ("item", "__bool__", "tolist"):
                m.setattr(torch.Tensor, name, refuse)
            opt.step()
    assert torch.isfinite(opt.grad_norm)


def test_grad_scaler_end_to_end_matches_unscale_clip_step():
    """A real torch.amp.GradScaler: scaler.step(opt) on a clipping optimizer equals scaler.unscale_,
    clip_grads_with_norm_ (our norm) and scaler.step of an unclipped one, bitwise; and the norm is clip_grad_norm_'s
    within rounding."""
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    x, y = torch.randn(32, 8), torch.randn(32, 2)
    m1, m2 = model(), model()
    o1 = fh.Adam(m1.parameters(), lr=1e-2, max_grad_norm=0.5)
    o2 = fh.Adam(m2.parameters(), lr=1e-2)
    s1 = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    s2 = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for k in range(6):
        for m, o, s in ((m1, o1, s1), (m2, o2, s2)):
            o.zero_grad()
            s.scale(torch.nn.functional.mse_loss(m(x * (1 + k)), y)).backward()
        s2.unscale_(o2)
        ref = torch.nn.utils.get_total_norm([p.grad for p in m2.parameters()])
        s1.step(o1)
        torch.testing.assert_close(o1.grad_norm, ref, rtol=2e-6, atol=0)
        torch.nn.utils.clip_grads_with_norm_(m2.parameters(), 0.5, o1.grad_norm)
        s2.step(o2)
        s1.update()
        s2.update()
        assert _equal(m1.parameters(), m2.parameters())


def test_settings_are_validated():
    p = [torch.zeros(3, requires_grad=True)]
    for kw in (dict(max_grad_norm=-1.0), dict(max_grad_norm=math.nan), dict(norm_type=0.0), dict(norm_type=-math.inf),
               dict(norm_type="fro"), dict(norm_type=math.nan), dict(skip_grad_norm_above=-2.0),
               dict(max_grad_norm="1")):
        with pytest.raises(ValueError):
            fh.Adam(p, **kw)
        with pytest.raises(ValueError):
            fh.Hybrid(p, rule="sgd", lr=0.1, **kw)
    opt = fh.SGD(p, lr=0.1, max_grad_norm=1.0)
    opt.max_grad_norm = 2  # a schedule may change it between steps
    assert opt.max_grad_norm == 2.0
    with pytest.raises(ValueError):
        opt.norm_type = 0
    assert opt.norm_type == 2.0
    assert opt.grad_norm is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_copies_keep_the_settings_and_checkpoints_resume(backend):
    ps = _params()
    opt = fh.Adam(ps, lr=1e-2, backend=backend, max_grad_norm=MAX_NORM, norm_type=math.inf, skip_grad_norm_above=9.0)
    for p, g in zip(ps, _grads(1, torch.float32)):
        p.grad = g
    opt.step()
    for copy_ in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert (copy_.max_grad_norm, copy_.norm_type, copy_.skip_grad_norm_above) == (MAX_NORM, math.inf, 9.0)
        assert copy_.grad_norm is None
    # A checkpoint carries state, not the clipping settings (they are the constructor's, like the backend).
    ps2 = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = fh.Adam(ps2, lr=1e-2, backend=backend, max_grad_norm=MAX_NORM, norm_type=math.inf,
                   skip_grad_norm_above=9.0)
    opt2.load_state_dict(opt.state_dict())
    for k in (2, 3):
        for p, q, g in zip(ps, ps2, _grads(k, torch.float32)):
            p.grad, q.grad = g, g.clone()
        opt.step()
        opt2.step()
    assert _equal(ps, ps2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_params_on_several_buckets_and_complex(backend):
    """float32 and float64 params in one group (two buckets: one norm over both, float64 grad_norm), and a complex
    param (|z|, not the real view's parts, for p = inf): clip_grad_norm_'s norm."""
    for p_ in (2.0, math.inf):
        g = torch.Generator().manual_seed(0)
        ps = [torch.randn(40, generator=g).requires_grad_(), torch.randn(7, dtype=torch.float64, generator=g)
              .requires_grad_(), torch.randn(5, dtype=torch.complex64, generator=g).requires_grad_()]
        grads = [torch.randn(q.shape, dtype=q.dtype, generator=g) for q in ps]
        be = backend
        opt = fh.Adam(ps, lr=1e-2, backend=be, max_grad_norm=0.5, norm_type=p_)
        for q, gr in zip(ps, grads):
            q.grad = gr.clone()
        opt.step()
        want = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(gr.to(torch.complex128), p_)
                                                     for gr in grads]), p_)
        assert opt.grad_norm.dtype == torch.float64
        torch.testing.assert_close(opt.grad_norm, want.real.double(), rtol=1e-7, atol=0)


@pytest.mark.parametrize("backend,cls,kw", [
    ("cpu", fh.Adam, dict(lr=1e-2)), ("cpu", fh.SWATS, dict(lr=1e-2, switch_rtol=0.5)),
    ("cpu", fh.SGD, dict(lr=0.1, momentum=0.9)), ("triton", fh.Adam, dict(lr=1e-2))],
    ids=["cpu-Adam", "cpu-SWATS", "cpu-SGD", "triton-Adam"])
def test_compiled_clipped_step_matches_eager(backend, cls, kw, monkeypatch):
    """torch.compile(fullgraph=True) of clipped and skipping steps gives eager's parameters and norms, bitwise. On
    triton the norm is the backend's custom op (fused_hybrid::triton_grad_norm_partial, a fake that returns the 0-dim
    partial), over several small chunks."""
    if not fh.backends()[backend].startswith("available"):
        pytest.skip(fh.backends()[backend])
    if backend == "triton":
        from cases import small_triton_chunks
        small_triton_chunks(monkeypatch, 8, 16)
    torch._dynamo.reset()
    a, b = _params(), _params()
    o1 = cls(a, backend=backend, max_grad_norm=MAX_NORM, skip_grad_norm_above=6.0, **kw)
    o2 = cls(b, backend=backend, max_grad_norm=MAX_NORM, skip_grad_norm_above=6.0, **kw)
    step = torch.compile(o1.step, fullgraph=True)
    for k in range(5):
        for p, q, g in zip(a, b, _grads(k, torch.float32)):
            p.grad, q.grad = g, g.clone()
        step()
        o2.step()
        assert torch.equal(o1.grad_norm, o2.grad_norm)
    assert _equal(a, b)


# -- 2 processes (gloo): the norm over shards is the norm of the whole model ----------------------------------------

DIST_STEPS = 12
DIST_CASES = {"adam_l2": (fh.Adam, dict(lr=1e-2), 2.0, 0.05), "sgd_inf": (fh.SGD, dict(lr=5e-2, momentum=0.9),
                                                                          math.inf, 0.02)}


def _dist_train(model, name, process_group=None):
    """DIST_STEPS steps on the whole batches of tests/test_distributed.py's data, with clipping; the norms."""
    from test_distributed import _ddp_batch, _ddp_data
    cls, kw, p, limit = DIST_CASES[name]
    opt = cls(model.parameters(), max_grad_norm=limit, norm_type=p, skip_grad_norm_above=50 * limit,
              process_group=process_group, **kw)
    x, y = _ddp_data()
    norms = []
    for step in range(DIST_STEPS):
        idx = _ddp_batch(step)
        opt.zero_grad()
        scale = 1e3 if step == 5 else 1.0  # one spiked step: above skip_grad_norm_above, skipped on every rank
        (scale * torch.nn.functional.mse_loss(model(x[idx]), y[idx])).backward()
        opt.step()
        norms.append(opt.grad_norm.clone())
    return torch.stack(norms)


def _zero_train(params, index, process_group=None):
    """ZeRO-style: this process steps the tensors ``index`` of the whole model, with ``process_group`` over the
    ranks that hold the rest (plain tensors: the optimizer sums the partials over it)."""
    from test_distributed import _grads
    opt = fh.Adam(params, lr=1e-2, max_grad_norm=0.5, process_group=process_group)
    norms = []
    for step in range(DIST_STEPS):
        for p, g in zip(params, _grads(step, params, index)):
            p.grad = g
        opt.step()
        norms.append(opt.grad_norm.clone())
    return torch.stack(norms), [p.detach() for p in params]


def _dist_worker(rank, world, init_file, result_file):
    import torch.distributed as dist
    from test_distributed import SHAPES, _initial, _sharded_model
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = {}
        for name in DIST_CASES:
            model = _sharded_model()
            norms = _dist_train(model, name)  # process_group None: the DTensors' mesh
            out[name] = (norms, [p.full_tensor() for p in model.parameters()])
        index = list(range(rank, len(SHAPES), world))
        params = [_initial()[i].clone().requires_grad_() for i in index]
        out["zero"] = (*_zero_train(params, index, dist.group.WORLD), index)
        torch.save(out, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_sharded_norm_equals_one_process(tmp_path):
    """FSDP2 (DTensor params, uneven shards) and ZeRO-style plain shards with process_group, over 2 gloo processes:
    every rank's grad_norm is the norm of the whole model's gradients, and the clipped (and once skipped) steps
    follow one process holding the whole model. The partials are float64 sums in another grouping: equal to
    float64 rounding, not bitwise."""
    import torch.multiprocessing as mp
    from test_distributed import SHAPES, _fsdp_model, _initial
    refs = {}
    for name in DIST_CASES:
        model = _fsdp_model()
        norms = _dist_train(model, name)
        refs[name] = (norms, [p.detach() for p in model.parameters()])
        assert (norms > DIST_CASES[name][3]).any() and norms[5] > 50 * DIST_CASES[name][3], name
    whole = [p.clone().requires_grad_() for p in _initial()]
    zero_norms, zero_params = _zero_train(whole, list(range(len(SHAPES))))
    local, _ = _zero_train([_initial()[i].clone().requires_grad_() for i in (0, 2, 4)], [0, 2, 4])
    assert not torch.allclose(local, zero_norms, rtol=1e-3), "a shard's own norm is not the model's"
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    for rank in range(2):
        res = torch.load(f"{tmp_path / 'out'}.{rank}", weights_only=False)
        for name, (norms, params) in refs.items():
            torch.testing.assert_close(res[name][0], norms, rtol=1e-13, atol=0, msg=name)
            for a, b in zip(res[name][1], params):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
        norms, params, index = res["zero"]
        torch.testing.assert_close(norms, zero_norms, rtol=1e-13, atol=0)
        for i, p in zip(index, params):
            torch.testing.assert_close(p, zero_params[i], rtol=1e-10, atol=1e-12)


# -- launches and ops: what bench/gpu_model.py charges a clipped step ---------------------------------------------

def test_combination_ops_match_the_gpu_model():
    """The per-step combination (0-dim torch ops, one tiny kernel each on a GPU) dispatches the ops the GPU model
    counts, with GradScaler's tensors: sqrt, cast, clip_grad_norm_'s coefficient (add, reciprocal, mul, clamp),
    the effective scale (cast, cast, div), and for skip_grad_norm_above (le, not, cast, maximum)."""
    import os
    import sys
    from torch.utils._python_dispatch import TorchDispatchMode
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import gpu_model

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    for key, kw in (("clip", dict(max_grad_norm=1.0)), ("clip_and_skip", dict(max_grad_norm=1.0,
                                                                               skip_grad_norm_above=9.0))):
        opt = fh.Adam([torch.zeros(3, requires_grad=True)], backend="reference", **kw)
        part, scale, found = torch.tensor(4.0, dtype=torch.float64), torch.tensor(8.0), torch.tensor(0.0)
        Count.n = 0
        with Count():
            grad_clip.combine(opt, [(False, part)], {torch.float32}, scale, found)
        assert Count.n == gpu_model.CLIP_STEP_OPS[key], key


@pytest.mark.skipif("cuda_sim" not in BACKENDS, reason="needs the simulated CUDA kernels")
def test_cuda_norm_is_two_launches_per_bucket():
    """The CUDA norm: one multi-tensor launch (while the bucket fits one argument table) and the one-block
    finalize, per bucket; the update launches are unchanged. Smaller tables: more partial launches, same norm."""
    from fused_hybrid.backends import cuda_sim

    def launches(**clip):
        ps = _params()
        opt = fh.Adam(_groups(ps)(1e-2), backend="cuda_sim", **clip)
        for p, g in zip(ps, _grads(1, torch.float32)):
            p.grad = g
        opt.step()  # state creation
        cuda_sim.stats(reset=True)
        opt.step()
        return cuda_sim.stats()["launches"], opt.grad_norm

    base, _ = launches()
    clipped, norm = launches(max_grad_norm=0.1)
    assert clipped - base == 2 * 2  # two groups, one bucket each
    with cuda_sim.settings(max_tensors=1):  # a launch per tensor: 5 partial launches + 2 finalizes
        more, norm2 = launches(max_grad_norm=0.1)
        assert more - launches()[0] == len(SHAPES) + 2
    torch.testing.assert_close(norm2, norm, rtol=0, atol=0)


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the Triton interpreter")
def test_triton_norm_is_two_launches_per_bucket_and_reads_no_grad_in_python(monkeypatch):
    """Two launches per bucket; on the optimizer's fast path the gradients' pointers come from one C++ snapshot
    (no .grad read in Python once the tables are built) and a moved gradient rebuilds the tables."""
    from fused_hybrid.backends import triton_launch as tl_
    ps = _params()
    opt = fh.Adam(ps, backend="triton", max_grad_norm=0.1)
    for p, g in zip(ps, _grads(1, torch.float32)):
        p.grad = g
    opt.step()
    opt.step()
    from fused_hybrid.backends import triton_norm
    calls, built = [], []
    real, real_table = tl_._launch, triton_norm._table
    monkeypatch.setattr(tl_, "_launch", lambda k, *a, **kw: (calls.append(k), real(k, *a, **kw)))
    monkeypatch.setattr(triton_norm, "_table", lambda grads: (built.append(1), real_table(grads))[1])
    opt.step()
    assert len([k for k in calls if "norm" in getattr(k, "__name__", str(k))]) == 2
    assert not built  # the tables of the steps before: no gradient list was made
    want = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ps]))
    torch.testing.assert_close(opt.grad_norm, want, rtol=2e-6, atol=0)
    ps[1].grad = ps[1].grad * 100  # a new tensor: new pointer
    opt.step()
    assert built == [1]
    want = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ps]))
    torch.testing.assert_close(opt.grad_norm, want, rtol=2e-6, atol=0)


def test_gpu_model_charges_one_read_of_the_gradients():
    import os
    import sys
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import gpu_model
    shapes = gpu_model.SHAPES["resnet18"]()
    n = sum(math.prod(s) for s in shapes)
    p = gpu_model.predict_clip("adam", shapes, "H100")
    assert p["clip_bytes"] == 4 * n and p["bytes"] == 28 * n
    cl = p["clip_launches"]
    assert cl["triton"] == 2 and cl["step"] == gpu_model.CLIP_STEP_OPS["clip"]
    assert p["triton_clip_ms"] == pytest.approx(p["triton_ms"] + 1e3 * (4 * n / 3.0e12 + (2 + cl["step"]) *
                                                                        gpu_model.LAUNCH_S))
    # torch: _foreach_norm reads, _foreach_mul_ reads and writes: three times the bytes of ours
    assert p["torch_clip_ms"] > 1e3 * 12 * n / 3.0e12
    if cl["cuda"] is not None:
        assert cl["cuda"] == 2  # ResNet-18 fits one argument table


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is present on this machine")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_gpu_clipped_steps(backend, norm_type):
    """On a GPU: the clipped step is bitwise clip_grads_with_norm_ (our norm) + the unclipped step, the norm is
    clip_grad_norm_'s, the spike is skipped, and nothing syncs (torch's sync debug mode raises on a sync)."""
    if not fh.backends()[backend].startswith("available"):
        pytest.skip(fh.backends()[backend])
    dev = torch.device("cuda")
    limit = MAX_NORM_INF if math.isinf(norm_type) else MAX_NORM
    a = [p.detach().to(dev).requires_grad_() for p in _params()]
    b = [p.detach().to(dev).requires_grad_() for p in _params()]
    o1 = fh.Adam(_groups(a, dev)(1e-2), lr=1e-2, backend=backend, max_grad_norm=limit, norm_type=norm_type,
                 skip_grad_norm_above=50 * limit)
    o2 = fh.Adam(_groups(b, dev)(1e-2), lr=1e-2, backend=backend)
    for k in range(6):
        grads = [g.to(dev) * (1e4 if k == 4 else 1.0) for g in _grads(k, torch.float32)]
        for p, g in zip(a, grads):
            p.grad = g * 2.0 ** 10
        o1.grad_scale, o1.found_inf = torch.tensor(2.0 ** 10, device=dev), torch.zeros((), device=dev)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            o1.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        for q, g in zip(b, grads):
            q.grad = g.clone()
        ref = torch.nn.utils.get_total_norm([q.grad for q in b], norm_type)
        if math.isinf(norm_type):
            assert torch.equal(o1.grad_norm, ref)
        else:
            torch.testing.assert_close(o1.grad_norm, ref, rtol=2e-6, atol=0)
        if k != 4:  # the spike: skipped by o1, not stepped by the reference
            torch.nn.utils.clip_grads_with_norm_(b, limit, o1.grad_norm)
            o2.step()
        assert _equal(a, b), k


@pytest.mark.parametrize("backend", FUSED)
def test_norm_does_not_depend_on_alignment_and_takes_empty_tensors(backend):
    """Gradients at odd addresses (views one element into a buffer: the CUDA kernel's scalar path, Triton's
    unaligned tables) give bitwise the norm of the same values at aligned addresses; empty tensors count zero."""
    ps = [torch.zeros(s, requires_grad=True) for s in [(301,), (0,), (17, 3), (0, 4)]]
    vals = [torch.randn(p.shape) for p in ps]

    def norm(offset, p_):
        opt = fh.SGD(ps, lr=0.0, backend=backend, norm_type=p_, skip_grad_norm_above=1e30)
        for q, v in zip(ps, vals):
            buf = torch.empty(v.numel() + offset)
            buf[offset:] = v.flatten()
            q.grad = buf[offset:].view(v.shape)
        opt.step()
        return opt.grad_norm

    for p_ in (2.0, math.inf):
        want = torch.linalg.vector_norm(torch.cat([v.flatten() for v in vals]).double(), p_).float()
        a, b = norm(0, p_), norm(1, p_)
        assert torch.equal(a, b), (p_, a, b)
        torch.testing.assert_close(a, want, rtol=2e-7, atol=0)
