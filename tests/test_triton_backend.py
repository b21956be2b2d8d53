"""backend="triton" against backend="reference", through the public optimizers.

Without a CUDA device these run under Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1);
the interpreter is slow, so tensors are small and the chunk size is shrunk (``small_chunks``) so that small
tensors still span several chunks: full chunks take the unmasked path, the last one the masked path, and the
per-chunk partials of SWATS / MAS are summed across chunks.
"""

import os
import sys

import pytest
import torch

import fused_hybrid as fh
import cases
from cases import small_triton_chunks

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # after site-packages
from bench import gpu_model  # noqa: E402
from fused_hybrid.backends import triton as tb
from fused_hybrid.backends import triton_launch as tl_

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not tb.available(torch.device(DEVICE)),
                                reason=f"triton backend unavailable: {tb.why_unavailable(torch.device(DEVICE))}")

_M = cases.PROFILES["triton"]
SIZES, ND_SHAPES, STEPS = _M.sizes, _M.nd_shapes, _M.steps
_params, _run, _tol, _compare = _M.params, _M.run, _M.tol, _M.compare


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    small_triton_chunks(monkeypatch, 512, 2048)


@pytest.mark.parametrize("case", cases.params(cases.FP32, "triton"))
def test_matches_reference_fp32(case):
    _M.check(case)


@pytest.mark.parametrize("case,dtype", cases.params(cases.DTYPES, "triton",
                                                    dtypes=[torch.bfloat16, torch.float16, torch.float64]))
def test_other_dtypes(case, dtype):
    _M.check(case, dtype)


def test_many_mixed_tensors_and_groups():
    g = torch.Generator().manual_seed(7)
    sizes = [int(s) for s in torch.randint(0, 300, (40,), generator=g)] + [0, 1, 2049]
    groups = lambda ps, device: [{"params": ps[::2]}, {"params": ps[1::2], "lr": 3e-3, "weight_decay": 0.1}]  # noqa
    for case in cases.select(cases.SPREAD, "triton"):
        _M.check(case, sizes=sizes, groups=groups, steps=2)


def test_misaligned_params():
    """Pointers that are not 16-byte aligned take the kernels' unhinted path."""
    def run(backend):
        base = torch.randn(4 * 4097 + 1, generator=torch.Generator().manual_seed(3)).to(DEVICE)
        ps = [torch.nn.Parameter(base[1:4098]), torch.nn.Parameter(base[4099:4099 + 17])]
        assert ps[0].data_ptr() % 16 != 0
        opt = fh.Adam(ps, lr=1e-2, backend=backend)
        for k in range(2):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(k)).to(DEVICE)
            opt.step()
        return ps
    for x, y in zip(run("reference"), run("triton")):
        torch.testing.assert_close(y.detach(), x.detach(), **_tol(torch.float32))


def test_poisoned_outputs_are_overwritten():
    """Whatever an output holds before the call, the kernels overwrite it: SWATS's partials, a fresh SGD
    momentum buffer (torch: buf = g on the first step)."""
    from fused_hybrid import hyper as H
    from fused_hybrid.backends import reference as rb

    def call(be):
        ps = _params(SIZES, torch.float32, seed=5)
        gen = torch.Generator().manual_seed(6)
        rnd = lambda p: torch.randn(p.shape, generator=gen).to(DEVICE)  # noqa: E731
        gs = [rnd(p) for p in ps]
        T = len(ps)
        st = [dict(m=rnd(p), v=rnd(p).abs(), s=torch.tensor(2.0, device=DEVICE), b=rnd(p)) for p in ps]
        sw = H.SwatsArgs(momentum_buffers=[s["b"] for s in st],
                         phase=torch.zeros(T, dtype=torch.int32, device=DEVICE),
                         sgd_lr=torch.zeros(T, dtype=torch.float64, device=DEVICE),
                         partials=torch.full((T, 2), float("nan"), dtype=torch.float64, device=DEVICE),
                         nesterov=False)
        sw.phase[1] = 1
        sw.sgd_lr[1] = 0.05
        hp = H.Adaptive(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
        with torch.no_grad():
            be.adaptive([p.detach() for p in ps], gs, [s["m"] for s in st], [s["v"] for s in st], [],
                        [s["s"] for s in st], hp, None, None, sw)
        bufs = [torch.full_like(p, float("nan")) for p in ps]
        with torch.no_grad():
            be.sgd([p.detach() for p in ps], gs, bufs, [True] * T, H.SGD(lr=0.1, momentum=0.9), None, None)
        return ps, sw.partials, bufs, st

    pa, qa, ba, sa = call(rb)
    pb, qb, bb, sb = call(tb)
    assert not qb.isnan().any()
    torch.testing.assert_close(qb, qa, rtol=1e-6, atol=1e-9)  # p differs from the reference by ulps
    assert float(qb[1].abs().sum()) == 0.0  # the SGD-phase tensor reports no partials
    for x, y in zip(pa + ba, pb + bb):
        torch.testing.assert_close(y.detach(), x.detach(), **_tol(torch.float32))
    assert [float(s["s"]) for s in sb] == [3.0] * len(SIZES)


def _count_launches(monkeypatch, case, sizes):
    calls = []
    real = tl_._launch

    def counting(kernel, grid, *a, **k):
        calls.append(kernel)
        return real(kernel, grid, *a, **k)

    monkeypatch.setattr(tl_, "_launch", counting)
    ps = _params(sizes, torch.float32)
    opt = case.build(ps, "triton", DEVICE)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    calls.clear()
    opt.step()
    monkeypatch.setattr(tl_, "_launch", real)
    return len(calls)


@pytest.mark.parametrize("case", cases.params(cases.LAUNCHES, "triton"))
def test_launches_independent_of_tensor_count(monkeypatch, case):
    """update + finalize per bucket (MAS's reducing variants: pass 0, which finalizes, + apply pass; ND-Adam: the
    row kernel, whose 1-D tensors are plain-Adam chunks, + finalize), whether the bucket holds 2 tensors or 40:
    exactly what the launch model behind the benchmark's GPU predictions (bench/gpu_model.py) says. Every rule
    takes at most 2."""
    few = [(3,), (5, 4)]
    many = [(3,), (5, 4)] + [(1 + i % 7,) if i % 2 else (2, 1 + i % 5) for i in range(38)]
    n_few = _count_launches(monkeypatch, case, few)
    n_many = _count_launches(monkeypatch, case, many)
    # On CUDA tensors SWATS's switch bookkeeping runs as 2 more Triton launches (per-tensor arguments, totals +
    # test; the README's "+2"); on CPU tensors it is the C++ ops. Seen on an H200: 4 launches.
    extra = 2 if case.rule == "swats" and DEVICE == "cuda" else 0
    assert n_few == n_many == gpu_model.triton_launches(case.rule, case.kw, many) + extra <= 2 + extra


def _swats_problem(backend, granularity, steps=30):
    """Least squares, grads from the params (so the trajectories feed back), until SWATS switches."""
    g = torch.Generator().manual_seed(11)
    A = torch.randn(64, 20, generator=g).to(DEVICE)
    y = torch.randn(64, generator=g).to(DEVICE)
    w1 = torch.nn.Parameter(torch.randn(20, 3, generator=g).to(DEVICE) * 0.1)
    w2 = torch.nn.Parameter(torch.randn(3, generator=g).to(DEVICE) * 0.1)
    opt = fh.SWATS([w1, w2], lr=3e-2, switch_rtol=0.05, granularity=granularity, backend=backend)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((A @ w1 @ w2 - y) ** 2).mean()
        loss.backward()
        opt.step()
    return [w1, w2], opt.switch_info()


@pytest.mark.parametrize("granularity", ["global", "tensor"])
def test_swats_same_switch_as_reference(granularity):
    pa, ia = _swats_problem("reference", granularity)
    pb, ib = _swats_problem("triton", granularity)
    assert any(s["switched"] for s in ia), ia  # the problem must exercise the switch and the SGD phase
    for sa, sb in zip(ia, ib):
        assert sa["switched"] == sb["switched"]
        assert sa["switch_step"] == sb["switch_step"]
        if sa["switched"]:
            assert sb["sgd_lr"] == pytest.approx(sa["sgd_lr"], rel=1e-5)
    for x, y in zip(pa, pb):
        torch.testing.assert_close(y.detach(), x.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", cases.params(cases.REPEAT, "triton"))
def test_bitwise_repeatable(case):
    a = _run(case)
    b = _run(case)
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x, y)
    if case.cls is fh.SWATS:
        sa, sb = a[1].switch_state(), b[1].switch_state()
        for key in ("lam", "gamma", "Lambda"):
            assert torch.equal(sa[key], sb[key])


def test_tables_cached_by_pointer():
    tl_._CACHE.clear()
    ps, opt = _run(cases.Case(fh.Adam), steps=1)
    n = len(tl_._CACHE)
    for p in ps:
        p.grad.normal_()  # same grad tensors, same pointers
    opt.step()
    assert len(tl_._CACHE) == n
    for p in ps:
        p.grad = p.grad.clone()  # new grad storage: the table is rebuilt
    opt.step()
    assert len(tl_._CACHE) == n + 1


def test_hyperparameters_are_runtime_arguments():
    """Changing lr (or any hyperparameter) must not recompile: none of them is a tl.constexpr."""
    import inspect

    import triton.language as tl

    from fused_hybrid.triton_kernels import adaptive, mas, ndadam, sgd
    hyper = {"lr", "beta1", "beta2", "eps", "wd", "partial2", "clip_lo", "clip_hi", "final_lr", "gamma",
             "momentum", "dampening", "adam_w", "sgd_w"}
    for kern in (adaptive.adaptive_kernel, sgd.sgd_kernel, mas.mas_kernel, ndadam.ndadam_kernel):
        fn = getattr(kern, "fn", kern)  # the Python function (JITFunction, or InterpretedFunction)
        names = set()
        for name, par in inspect.signature(fn).parameters.items():
            if name in hyper:
                names.add(name)
                assert par.annotation is tl.float64, (fn.__name__, name, par.annotation)
        assert "lr" in names


def test_unavailable_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not tb.available(torch.device("cpu"))
    assert "TRITON_INTERPRET" in tb.why_unavailable(torch.device("cpu"))
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    with pytest.raises(fh.BackendUnavailableError, match="TRITON_INTERPRET"):
        fh.Adam([p], backend="triton").step()


def test_mas_reducing_variant_launches_with_empty_tensors(monkeypatch):
    """MAS's reducing variants: pass 0 (whose last program per tensor sums the partials and advances the step) and
    pass 1; a tensor with no elements gets one zero-length chunk, so its program advances its step: still 2."""
    sizes = [(3,), (0,), (5, 4), (2, 0)]
    n = _count_launches(monkeypatch, cases.Case(fh.MAS, dict(variant="vector")), sizes)
    assert n == gpu_model.triton_launches("mas", dict(variant="vector"), sizes) == 2
    ps = _params(sizes, torch.float32)
    opt = fh.MAS(ps, backend="triton", variant="normalized")
    for k in range(3):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    assert [float(opt.state[p]["step"]) for p in ps] == [3.0] * len(sizes)


def test_launchers_are_a_leaf_module():
    """backends/triton_launch.py imports neither the backend API (triton.py) nor the custom ops (triton_ops.py):
    both of those import it, so there is no import cycle."""
    import subprocess
    import sys
    code = ("import sys, fused_hybrid.backends.triton_launch; "
            "print(sorted(m for m in sys.modules if m in ('fused_hybrid.backends.triton', "
            "'fused_hybrid.backends.triton_ops')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
