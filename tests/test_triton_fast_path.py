"""The Triton backend's fast path (backends/triton.py: _Snapshot): once a group's plan is cached the optimizer passes
no gradients, and one C++ call (TensorTable.snapshot) returns every numel, shape hash and pointer, gradients
included; the tables are reused while it is unchanged. It must give bitwise the same steps as the general path, and
notice every change that makes the old tables wrong."""
import pytest
import torch

import fused_hybrid as fh
import cases
from cases import small_triton_chunks
from fused_hybrid import _ext
from fused_hybrid.backends import triton as tb
from fused_hybrid.backends import triton_launch as tl_

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.skipif(not tb.available(torch.device(DEVICE)),
                       reason=f"triton backend unavailable: {tb.why_unavailable(torch.device(DEVICE))}"),
    pytest.mark.skipif(not _ext.loaded(), reason="the fast path needs the C++ extension's TensorTable"),
]

SHAPES = [(3, 5), (17,), (0,), (4, 2, 3), (40,)]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    small_triton_chunks(monkeypatch, 8, 16)


def _params(shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).float().to(DEVICE).requires_grad_() for s in shapes]


def _grad(p, k, i):
    g = torch.Generator().manual_seed(1000 * k + i)
    return torch.randn(p.shape, generator=g, dtype=torch.float64).float().to(DEVICE)


def _run(cls, kw, monkeypatch, fast, steps=4):
    monkeypatch.setattr(tb, "GRADS_FROM_PARAMS", fast)
    ps = _params()
    opt = cls(ps, backend="triton", **kw)
    for k in range(steps):
        for i, p in enumerate(ps):
            p.grad = _grad(p, k, i)  # new tensors every step: pointers may move
        opt.step()
    return ps, opt


def _same(a, b):
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x.detach(), y.detach())
    for x, y in zip(a[0], b[0]):
        for key, v in a[1].state[x].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, b[1].state[y][key]), key


def _cache_entry(opt):
    (plan,) = [v[1] for v in opt._plans.values()]
    return plan[0].cache.get("triton")


@pytest.mark.parametrize("case", cases.params(cases.FAST, "triton"))
def test_fast_path_is_bitwise_the_general_path(monkeypatch, case):
    cls, kw = case.cls, case.kw
    fast = _run(cls, kw, monkeypatch, True)
    assert isinstance(_cache_entry(fast[1]), tb._Snapshot), "the fast path was not taken"
    general = _run(cls, kw, monkeypatch, False)
    assert _cache_entry(general[1]) is None
    _same(fast, general)


def _count_builds(monkeypatch):
    calls = []
    real = tl_._tables

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(tl_, "_tables", counting)
    return calls


def test_tables_are_reused_while_nothing_moves_and_rebuilt_when_a_pointer_moves(monkeypatch):
    ps = _params()
    opt = fh.Adam(ps, backend="triton")
    grads = [_grad(p, 0, i) for i, p in enumerate(ps)]
    for p, g in zip(ps, grads):
        p.grad = g
    opt.step()  # the general path; caches the plan
    builds = _count_builds(monkeypatch)
    opt.step()  # the fast path's first step builds its tables
    opt.step()
    opt.step()  # same gradient tensors: nothing rebuilt
    assert len(builds) == 1
    ps[1].grad = ps[1].grad.clone()  # one gradient moved
    opt.step()
    assert len(builds) == 2
    snap = _cache_entry(opt).snap
    assert int(snap[3, 1]) == ps[1].grad.data_ptr()  # row 3: the gradients' pointers


def _replay(opt_cls, kw, mutate):
    """Two optimizers on equal params and gradients; `mutate(ps, opt, k)` is applied to both before step k. One
    runs on the fast path, one on the general path: they must stay bitwise equal."""
    out = []
    for fast in (True, False):
        ps = _params()
        opt = opt_cls(ps, backend="triton", **kw)
        saved = tb.GRADS_FROM_PARAMS
        tb.GRADS_FROM_PARAMS = fast
        try:
            for k in range(5):
                for i, p in enumerate(ps):
                    p.grad = _grad(p, k, i)
                mutate(ps, opt, k)
                opt.step()
        finally:
            tb.GRADS_FROM_PARAMS = saved
        out.append((ps, opt))
    _same(*out)
    return out


def test_param_data_replaced_between_steps():
    """p.data = new storage keeps the Parameter object (and its place in the bucket) but moves its pointer."""
    def mutate(ps, opt, k):
        if k == 3:
            ps[0].data = ps[0].data.clone() * 0.5
    _replay(fh.Adam, {}, mutate)


def test_a_reshape_that_keeps_storage_and_numel_still_rebuilds(monkeypatch):
    """ND-Adam's tables follow the shapes (its weight vectors), so the snapshot holds a hash of each shape."""
    ps = _params()
    opt = fh.Adam(ps, backend="triton")
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    opt.step()
    builds = _count_builds(monkeypatch)
    ptr = ps[3].data_ptr()
    ps[3].data = ps[3].data.view(4, 6)
    ps[3].grad = ps[3].grad.view(4, 6)
    assert ps[3].data_ptr() == ptr
    opt.step()
    assert len(builds) == 1


def test_non_contiguous_gradient_takes_the_general_path_and_is_right():
    def mutate(ps, opt, k):
        if k >= 2:
            ps[0].grad = ps[0].grad.t().contiguous().t()  # same values, transposed strides
            assert not ps[0].grad.is_contiguous()
    _replay(fh.Adam, {}, mutate)


def test_missing_gradient_falls_back_and_skips_that_param():
    def mutate(ps, opt, k):
        if k == 3:
            ps[1].grad = None
    (fast, fopt), _ = _replay(fh.Adam, {}, mutate)
    assert float(fopt.state[fast[1]]["step"]) == 4.0
    assert float(fopt.state[fast[0]]["step"]) == 5.0


def test_checkpoint_load_between_steps():
    """load_state_dict replaces every state tensor: the fast path must step the new ones (its tables are dropped
    with the plan), as the general path does."""
    import copy

    def mutate(ps, opt, k):
        if k == 3:
            opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for cls, kw in [(fh.Adam, dict(amsgrad=True)), (fh.SWATS, dict(lr=1e-2)), (fh.MAS, dict(variant="vector"))]:
        _replay(cls, kw, mutate)
