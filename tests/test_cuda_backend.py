"""backend="cuda" (the extension's multi-tensor-apply kernels, csrc/cuda) against backend="reference".

Each GPU test runs twice: on backend="cuda" (needs a CUDA device, skipped without one: 'needs a CUDA device') and on
backend="cuda_sim", the same kernels under the SIMT simulator on CPU tensors (csrc/sim), which runs everywhere. On a
GPU machine, test_cuda_matches_cuda_sim_bitwise then checks the two against each other. What can be checked
without a GPU is checked here too: that an extension built with CUDA really contains the CUDA kernels.
"""

import dataclasses
import math

import pytest
import torch

import fused_hybrid as fh
import cases
from fused_hybrid import _ext
from fused_hybrid.backends import cuda as cb
from fused_hybrid.backends import cuda_sim as cs

OPS = ("sgd_", "adaptive_", "mas_", "ndadam_")

# ------------------------------------------------------------------------------------------------------------------
# Without a GPU


def test_backend_module_contract():
    assert cb.NAME == "cuda"
    assert cb.RULES <= {"sgd", "adaptive", "mas", "ndadam", "rms"}
    assert not cb.available(torch.device("cpu"))
    assert "CUDA tensors only" in cb.why_unavailable(torch.device("cpu"))
    if not torch.cuda.is_available():
        assert not cb.available(torch.device("cuda"))
        assert cb.why_unavailable(torch.device("cuda"))


@pytest.mark.skipif(not _ext.loaded(), reason="the C++ extension is not built")
def test_cuda_kernels_registered_when_built_with_cuda():
    """An extension built with CUDA must carry a CUDA kernel for every op; one built without must carry none
    (and then says so). Runs without a GPU: dispatcher registration is host-side."""
    has = [torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_hybrid::{op}", "CUDA") for op in OPS]
    if _ext.has_cuda_kernels():
        assert all(has), dict(zip(OPS, has))
        for fam in ("sgd", "adaptive", "mas", "ndadam"):
            assert fam in cb.RULES
    else:
        assert not any(has), dict(zip(OPS, has))
        assert "without its CUDA kernels" in cb.why_unavailable(torch.device("cuda")) or \
            not torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------------------------
# On a GPU

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_backend = pytest.mark.skipif(not (torch.cuda.is_available() and cb.available(torch.device("cuda"))),
                                   reason="needs a CUDA device and the extension built with its CUDA kernels")
needs_sim = pytest.mark.skipif(not cs.available(torch.device("cpu")),
                               reason=f"cuda_sim unavailable: {cs.why_unavailable(torch.device('cpu'))}")

# Every GPU test below runs on the cuda backend's profile (cases.PROFILES["cuda"]: sizes with two chunks of 65536,
# float32 rtol 1e-5 for FMA contraction), on the GPU and on cuda_sim (CPU tensors) alike.
TARGETS = {"cuda": cases.PROFILES["cuda"],
           "cuda_sim": dataclasses.replace(cases.PROFILES["cuda"], backend="cuda_sim", device="cpu")}
SIZES, ND_SHAPES, STEPS = TARGETS["cuda"].sizes, TARGETS["cuda"].nd_shapes, TARGETS["cuda"].steps


@pytest.fixture(params=[pytest.param("cuda", marks=needs_backend), pytest.param("cuda_sim", marks=needs_sim)])
def tg(request):
    return TARGETS[request.param]


@pytest.mark.parametrize("case", cases.params(cases.FP32, "cuda"))
def test_matches_reference_fp32(tg, case):
    tg.check(case)


@pytest.mark.parametrize("case,dtype", cases.params(cases.DTYPES, "cuda",
                                                    dtypes=[torch.bfloat16, torch.float16, torch.float64]))
def test_other_dtypes(tg, case, dtype):
    tg.check(case, dtype)


def test_ndadam_blocks_loop_over_rows_when_the_grid_is_scaled(tg):
    """2100 rows of 2048 need more blocks than one launch holds: ndadam_grid doubles every chunk (2 long rows per
    block, 1-D chunks of 131072), so blocks loop over rows; the result must not change."""
    shapes = ((2100, 2048), (3, 5000), (7, 3), (140001,))
    assert list(torch.ops.fused_hybrid.plan_ndadam([math.prod(s) for s in shapes],
                                                   [math.prod(s[1:]) if len(s) > 1 else 0 for s in shapes]))[0] == 2
    tg.check(cases.Case(fh.NDAdam), sizes=shapes, steps=2)


def test_many_tensors_span_several_launches(tg):
    """More tensors than one argument table holds (277 for the adaptive op's 6 lists), and mixed sizes."""
    g = torch.Generator().manual_seed(7)
    sizes = [int(s) for s in torch.randint(0, 300, (700,), generator=g)] + [0, 1, 2049, 140000]
    groups = lambda ps, device: [{"params": ps[::2]}, {"params": ps[1::2], "lr": 3e-3, "weight_decay": 0.1}]  # noqa
    for case in cases.select(cases.SPLIT, "cuda"):
        tg.check(case, sizes=sizes, groups=groups, steps=2)


def test_misaligned_params(tg):
    """Pointers that are not 16-byte aligned take the scalar path."""
    def run(backend):
        base = torch.randn(4 * 4097 + 1, generator=torch.Generator().manual_seed(3)).to(tg.device)
        ps = [torch.nn.Parameter(base[1:4098]), torch.nn.Parameter(base[4099:4099 + 17])]
        assert ps[0].data_ptr() % 16 != 0
        opt = fh.Adam(ps, lr=1e-2, backend=backend)
        for k in range(2):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(k)).to(tg.device)
            opt.step()
        return ps
    for x, y in zip(run("reference"), run(tg.backend)):
        torch.testing.assert_close(y.detach(), x.detach(), **tg.tol(torch.float32))


def test_swats_partials_reproducible_and_match_reference(tg):
    """<p,g>, <p,p> from per-chunk slots summed in a fixed order: identical run to run, close to float64 torch."""
    from fused_hybrid import hyper as H
    from fused_hybrid.backends import reference as rb

    DEVICE = tg.device
    be_under_test = cb if tg.backend == "cuda" else cs

    def call(be):
        ps = tg.params((1, 4097, 300001), torch.float32, seed=5)
        gen = torch.Generator().manual_seed(6)
        gs = [torch.randn(p.shape, generator=gen).to(DEVICE) for p in ps]
        ms = [torch.randn(p.shape, generator=gen).to(DEVICE) for p in ps]
        vs = [torch.rand(p.shape, generator=gen).to(DEVICE) for p in ps]
        steps = [torch.tensor(3.0, device=DEVICE) for _ in ps]
        sw = H.SwatsArgs(momentum_buffers=[torch.zeros_like(p) for p in ps],
                         phase=torch.zeros(len(ps), dtype=torch.int32, device=DEVICE),
                         sgd_lr=torch.zeros(len(ps), dtype=torch.float64, device=DEVICE),
                         partials=torch.full((len(ps), 2), float("nan"), dtype=torch.float64, device=DEVICE))
        hp = H.Adaptive(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
        with torch.no_grad():
            be.adaptive([p.detach() for p in ps], gs, ms, vs, [], steps, hp, None, None, sw)
        return sw.partials.cpu()
    a, b, r = call(be_under_test), call(be_under_test), call(rb)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-12)


# Only on a GPU: CUDA graphs, a 2^31-element tensor.
DEVICE = "cuda"
_params = TARGETS["cuda"].params


@needs_backend
def test_cuda_graph_capture_matches_eager():
    """A capturable step (lr, steps, grad_scale, found_inf on the device) captured in a CUDA graph and replayed
    equals eager steps."""
    for case in cases.select(cases.GRAPH, "cuda"):
        cls, kw = case.cls, case.kw
        sizes = ND_SHAPES[:4] if cls is fh.NDAdam else (17, 4097, 70001)
        grads = [[torch.randn(*((n,) if isinstance(n, int) else n), device=DEVICE) for n in sizes]
                 for _ in range(4)]

        def make():
            ps = _params(sizes, torch.float32)
            opt = cls([{"params": ps, "lr": torch.tensor(kw.get("lr", 1e-3), device=DEVICE)}], backend="cuda",
                      **{k: v for k, v in kw.items() if k != "lr"})
            for p, g in zip(ps, grads[0]):
                p.grad = g.clone()
            opt.step()  # warm-up: creates the state outside the graph
            return ps, opt

        pe, oe = make()
        for k in (1, 2, 3):
            for p, g in zip(pe, grads[k]):
                p.grad.copy_(g)
            oe.step()
        pg, og = make()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                og.step()
        torch.cuda.current_stream().wait_stream(s)
        for k in (1, 2, 3):
            for p, g in zip(pg, grads[k]):
                p.grad.copy_(g)
            graph.replay()
        torch.cuda.synchronize()
        for x, y in zip(pe, pg):
            torch.testing.assert_close(y.detach(), x.detach(), rtol=0, atol=0)


def test_grad_scaler_skips_inf_step(tg):
    model = torch.nn.Linear(64, 32).to(tg.device)
    opt = fh.Adam(model.parameters(), lr=1e-2, backend=tg.backend)
    scaler = torch.amp.GradScaler(tg.device)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.randn(8, 64, device=tg.device)).sum()
    scaler.scale(loss).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)
        assert float(opt.state[p].get("step", 0)) == 0


@needs_backend
@pytest.mark.slow
def test_tensor_over_2_pow_31_elements():
    """64-bit indexing: SGD on a 2^31 + 5 element float16 tensor (4 GiB + grads)."""
    n = 2**31 + 5
    try:
        p = torch.zeros(n, dtype=torch.float16, device=DEVICE, requires_grad=True)
        p.grad = torch.ones(n, dtype=torch.float16, device=DEVICE)
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory")
    fh.SGD([p], lr=0.5, backend="cuda").step()
    assert float(p[0]) == -0.5 and float(p[-1]) == -0.5 and float(p[2**31 + 1]) == -0.5


# Padam's generic partial power is exp2(2p * log2(x)): the GPU's exp2/log2 are not the host libm's (a few ulps).
def _bitwise_on_gpu(case):
    return not (case.cls is fh.Padam and case.kw.get("partial", 0.125) not in (0.5, 0.25, 0.125))


@needs_backend
@needs_sim
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in cases.CASES if "cuda" not in c.skip and
                                  (cases.FP32 in c.suites or cases.DTYPES in c.suites)])
def test_cuda_matches_cuda_sim_bitwise(case):
    """The GPU and the simulator run the same kernels, the same reduction trees and (nvcc -fmad=false, host
    -ffp-contract=off) the same roundings: params and state bitwise equal, float64 included."""
    gpu, sim = TARGETS["cuda"], TARGETS["cuda_sim"]
    exact = _bitwise_on_gpu(case)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        sizes = gpu.shapes(case)
        a = gpu.run(case, "cuda", dtype, sizes=sizes, steps=STEPS)
        b = sim.run(case, "cuda_sim", dtype, sizes=sizes, steps=STEPS)
        if not exact:
            sim.compare(b, a, dtype)
            continue
        for x, y in zip(a[0], b[0]):
            assert torch.equal(x.detach().cpu(), y.detach())
            for key, v in a[1].state[x].items():
                if isinstance(v, torch.Tensor):
                    assert torch.equal(v.cpu(), b[1].state[y][key]), key


# Issue 16: stochastic rounding and Kahan summation of 16-bit params. The GPU's stores go through the same
# rounding.h integer arithmetic with the same Philox bits as the simulator's: params, compensation buffers and
# every state bitwise equal, every family (both SWATS phases: a loose per-tensor switch test switches within the
# few steps; MAS one- and two-pass).
LOWP_RULES = [
    (fh.SGD, dict(lr=1e-2)), (fh.SGD, dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    (fh.Adam, dict(lr=1e-3)), (fh.AdamW, dict(lr=1e-3, amsgrad=True)), (fh.Padam, dict(lr=1e-2)),
    (fh.AdaBound, dict(lr=1e-3)), (fh.AdamClip, dict(lr=1e-3, sgd_lr=0.1, lower=0.1, upper=10.0)),
    (fh.SWATS, dict(lr=1e-3, granularity="tensor", switch_rtol=0.5)),
    (fh.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True)), (fh.Adagrad, dict(lr=1e-2)),
    (fh.MAS, dict(lr=1e-3, momentum=0.9)), (fh.MAS, dict(lr=1e-3, momentum=0.9, variant="vector")),
    (fh.MAS, dict(lr=1e-3, variant="correction")), (fh.MAS, dict(lr=1e-3, variant="normalized")),
    (fh.NDAdam, dict(lr=1e-3)),
]


def _lowp_run(cls, kw, backend, device, dtype, opts, sizes, steps=3):
    torch.manual_seed(7)  # the rounding seeds are drawn from torch's generator when the state is created
    ps = cases.random_params(sizes, dtype, device)
    opt = cls(ps, backend=backend, **kw, **opts)
    g = torch.Generator().manual_seed(1234)
    for _ in range(steps):
        for p in ps:
            p.grad = (1 + 0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)
        opt.step()
    return ps, opt


@needs_backend
@needs_sim
@pytest.mark.parametrize("opts", [dict(stochastic_rounding=True), dict(kahan_summation=True)], ids=["sr", "kahan"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rule", [pytest.param(r, id=f"{r[0].__name__}-{i}") for i, r in enumerate(LOWP_RULES)])
def test_cuda_matches_cuda_sim_bitwise_lowp(rule, dtype, opts):
    from fused_hybrid import swats as sw
    cls, kw = rule
    sizes = ND_SHAPES if cls is fh.NDAdam else SIZES
    a = _lowp_run(cls, kw, "cuda", "cuda", dtype, opts, sizes)
    b = _lowp_run(cls, kw, "cuda_sim", "cpu", dtype, opts, sizes)
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x.detach().cpu().view(torch.int16), y.detach().view(torch.int16))
        for key, v in a[1].state[x].items():
            if sw.is_switch_key(key):
                torch.testing.assert_close(v.cpu(), b[1].state[y][key], rtol=1e-12, atol=0, msg=key)
            elif isinstance(v, torch.Tensor):
                w = b[1].state[y][key]
                if v.dtype in (torch.bfloat16, torch.float16):
                    v, w = v.view(torch.int16), w.view(torch.int16)
                assert torch.equal(v.cpu(), w), key
