"""The fused CPU backend (csrc/cpu, backends/cpu.py) against the reference backend, through the public optimizers.

Every case of tests/cases.py runs on backend="cpu" and backend="reference" from identical parameters and identical
gradients, and parameters and state must agree after several steps: float32 to ~1e-6 relative per step,
float64 to rounding, bf16/fp16 loosely. Also: sizes from 1 to 2**20+3 and 500 mixed tensors with empty ones,
GradScaler's grad_scale / found_inf, bitwise identical results for 1 and 2 threads, SWATS switching at the same
step with the same Lambda, and the raw ops overwriting poisoned outputs.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

import fused_hybrid as fh
from fused_hybrid import _ext
from fused_hybrid import swats as sw
from fused_hybrid.backends import cpu as cpu_backend

import cases
from cases import compare_scaled, feed_grads, make_params

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason=f"C++ extension not built: {_ext.LOAD_ERROR}")

_M = cases.PROFILES["cpu"]
MIXED = cases.MIXED


def _many_shapes(n=500, seed=3):
    """n tensors of mixed sizes (0 to ~3000 elements, 1-D to 3-D), every 50th one empty."""
    gen = torch.Generator().manual_seed(seed)
    shapes = []
    for i in range(n):
        if i % 50 == 7:
            shapes.append((0,) if i % 100 == 7 else (4, 0))
            continue
        r = int(torch.randint(0, 3, (), generator=gen))
        if r == 0:
            shapes.append((int(torch.randint(1, 3000, (), generator=gen)),))
        elif r == 1:
            shapes.append((int(torch.randint(1, 40, (), generator=gen)), int(torch.randint(1, 70, (), generator=gen))))
        else:
            shapes.append((int(torch.randint(1, 6, (), generator=gen)), 3, int(torch.randint(1, 9, (), generator=gen))))
    return shapes


@pytest.mark.parametrize("case", cases.params(cases.FP32, "cpu"))
def test_matches_reference_mixed_shapes(case):
    _M.check(case)


# Not RMSprop with L2 decay: among 500 random tensors some gradient lies within ~1e-6 of -wd*w, where the 1-ulp
# rounding of g + wd*w (an FMA or not) is a large relative change, and g/(sqrt(0.01*g^2) + eps) carries it into
# the step at O(1) (measured: 1e-5 of the state's scale after 3 steps). The mixed-shape test covers that config.
@pytest.mark.parametrize("case", cases.params(cases.MANY, "cpu"))
def test_matches_reference_many_tensors(case):
    _M.check(case, sizes=_many_shapes(), steps=3)


@pytest.mark.parametrize("case", cases.params(cases.BIG, "cpu"))
def test_matches_reference_big(case):
    shapes = [(2**20 + 3,), (3,)] if case.cls is not fh.NDAdam else [(3, 2**18 + 1), (4099, 257)]
    _M.check(case, sizes=shapes, steps=2)


@pytest.mark.parametrize("case,dtype", cases.params(cases.DTYPES, "cpu",
                                                    dtypes=[torch.float64, torch.bfloat16, torch.float16]))
def test_matches_reference_dtypes(case, dtype):
    pc, opt_c = _M.check(case, dtype)
    state_dt = torch.float64 if dtype == torch.float64 else torch.float32
    for p in pc:
        assert p.dtype == dtype
        for k, v in opt_c.state[p].items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and not sw.is_switch_key(k):  # SWATS's sums stay fp64
                assert v.dtype == state_dt


@pytest.mark.parametrize("case", cases.params(cases.THREADS, "cpu"))
def test_bitwise_identical_for_any_thread_count(case):
    shapes = [(3 * 16384 + 5,), (70000,), (40, 3000)] + [(17,)] * 30 + [(0,)]
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ps, = make_params(shapes, torch.float32, copies=1)
            opt = case.but(lr=0.01).build(ps, "cpu", "cpu")
            for k in range(1, 4):
                feed_grads([ps], k)
                opt.step()
            st = opt.state.get("swats")
            results.append(([p.detach().clone() for p in ps],
                            {k: v.clone() for k, v in st.items() if isinstance(v, torch.Tensor)} if st else {}))
    finally:
        torch.set_num_threads(old)
    (p1, s1), (p2, s2) = results
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k


def test_swats_switches_like_the_reference():
    """On a noisy quadratic, with a loose switch test, both backends switch at the same step with the same
    Lambda, and the SGD phase that follows (the SGD branch of the kernel) keeps them together."""
    shapes = [(200,), (30, 20), (5,)]
    pc, pr = make_params(shapes, torch.float32, seed=1)
    kw = dict(lr=0.05, switch_rtol=0.3)
    opt_c, opt_r = fh.SWATS(pc, backend="cpu", **kw), fh.SWATS(pr, backend="reference", **kw)
    curv = [torch.rand(s, generator=torch.Generator().manual_seed(i), dtype=torch.float64) * 2 + 0.1
            for i, s in enumerate(shapes)]
    switched_at = None
    for k in range(1, 61):
        gen = torch.Generator().manual_seed(k)
        noise = [torch.randn(s, generator=gen, dtype=torch.float64) * 0.01 for s in shapes]
        for ps in (pc, pr):
            for p, a, n in zip(ps, curv, noise):
                p.grad = (a * p.detach().double() + n).float()
        opt_c.step()
        opt_r.step()
        ic, ir = opt_c.switch_info()[0], opt_r.switch_info()[0]
        assert ic["switched"] == ir["switched"], f"step {k}: cpu {ic} reference {ir}"
        if ic["switched"] and switched_at is None:
            switched_at = k
            assert ic["switch_step"] == ir["switch_step"] == k
            assert ic["sgd_lr"] == pytest.approx(ir["sgd_lr"], rel=1e-5)
    assert switched_at is not None and switched_at < 50, "the problem was built to switch; it did not"
    compare_scaled((pc, opt_c), (pr, opt_r), rtol=1e-4)


def test_adaptive_op_overwrites_poisoned_partials():
    """swats_partials is an output: every entry, SGD-phase and empty tensors included, is written."""
    shapes = [(5,), (0,), (40000,), (7,)]
    ps = [torch.randn(s) for s in shapes]
    gs = [torch.randn(s) for s in shapes]
    z = lambda: [torch.zeros(s) for s in shapes]  # noqa: E731
    steps = [torch.zeros(()) for _ in shapes]
    phase = torch.tensor([0, 0, 0, 1], dtype=torch.int32)
    partials = torch.full((4, 2), float("nan"), dtype=torch.float64)
    from fused_hybrid import hyper as H
    from fused_hybrid.families import FAMILIES
    hp = H.Adaptive(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    torch.ops.fused_hybrid.adaptive_(ps, gs, z(), z(), [], steps, z(), [], **FAMILIES["adaptive"].kwargs(hp), seeds=[],
                                     swats_phase=phase, swats_sgd_lr=torch.full((4,), 0.01, dtype=torch.float64),
                                     swats_partials=partials, swats_nesterov=False, grad_scale=None, found_inf=None)
    assert not partials.isnan().any()
    assert partials[1].eq(0).all() and partials[3].eq(0).all()  # empty tensor; SGD phase
    assert (partials[[0, 2], 0] < 0).all() and (partials[[0, 2], 1] > 0).all()  # <p,g> < 0 < <p,p> for Adam
    assert all(float(s) == 1.0 for s in steps)


def test_ndadam_layout():
    p = torch.zeros(4, 3, 5)
    assert cpu_backend.ndadam_layout(p, ()) == (0, None)
    assert cpu_backend.ndadam_layout(p, (1, 2)) == (15, None)
    assert cpu_backend.ndadam_layout(p, (2,)) == (5, None)
    assert cpu_backend.ndadam_layout(p, (0, 1)) == (12, [2, 0, 1])


def test_cpu_backend_serves_every_family():
    assert cpu_backend.RULES == {"adaptive", "sgd", "mas", "ndadam", "rms"}
    from fused_hybrid.backends import resolve
    for fam in cpu_backend.RULES:
        assert resolve("auto", torch.device("cpu"), fam) is cpu_backend


@pytest.mark.parametrize("case,backend", cases.params(cases.TABLE, backends=["cpu", "cuda_sim"]))
def test_table_and_list_entry_points_agree(case, backend):
    """Eager steps pass params and state in a cached TensorTable (the <family>_table_ ops); without a bucket cache
    the backend passes lists (the ops torch.compile traces). Both must give bitwise identical results, and the
    eager optimizer must really have taken the table path (except ND-Adam's permuted copies, which cannot). On
    cuda_sim the table ops hand the lists to the simulated CUDA kernels through the dispatcher, as the cuda backend's
    table calls reach the CUDA kernels."""
    pt, pl = make_params(MIXED, torch.float32)
    opt_t, opt_l = case.build(pt, backend, "cpu"), case.build(pl, backend, "cpu")
    for k in range(1, 4):
        feed_grads([pt, pl], k)
        opt_t.step()
        for _, plan in opt_l._plans.values():
            for b in plan:
                b.cache = None  # the backend's list path
        opt_l.step()
    for a, b in zip(pt, pl):
        assert torch.equal(a, b)
    for p, q in zip(pt, pl):
        for key, v in opt_t.state[p].items():
            assert torch.equal(v, opt_l.state[q][key]), key
    # The cache's table entries are keyed by op name ("adaptive_", ...); it may hold other derived data too.
    tables = [e[1] for _, plan in opt_t._plans.values() for b in plan for k, e in b.cache.items() if k.endswith("_")]
    if case.kw.get("vec_axes"):
        assert not tables
    else:
        assert tables and all(isinstance(t, torch.ScriptObject) for t in tables)


# The sgd ops' keyword arguments for a plain step of lr 0.1 (the ops take every scalar by keyword).
SGD_KW = dict(firsts=[], lr=0.1, lr_tensor=None, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
              decoupled=False, maximize=False, rounding=0, seeds=[], grad_scale=None, found_inf=None)


def test_table_op_says_when_a_param_has_no_gradient():
    """The fast path's table op reads the params' .grad itself: a missing one is an expected case (a frozen layer this
    step), answered False with nothing changed, not an exception the caller has to parse."""
    p, q = torch.zeros(3), torch.zeros(2)
    p.grad = torch.ones(3)
    table = torch.classes.fused_hybrid.TensorTable([[p, q], [], [], []])
    assert torch.ops.fused_hybrid.sgd_table_(table, [], **SGD_KW) is False
    assert torch.equal(p, torch.zeros(3))
    q.grad = torch.ones(2)
    assert torch.ops.fused_hybrid.sgd_table_(table, [], **SGD_KW) is True
    assert torch.equal(p, torch.full((3,), -0.1)) and torch.equal(q, torch.full((2,), -0.1))


def test_table_op_rejects_a_table_of_the_wrong_shape():
    p, g = torch.zeros(3), torch.ones(3)
    op = torch.ops.fused_hybrid.sgd_table_
    kw = dict(SGD_KW, firsts=[False])
    with pytest.raises(RuntimeError, match="needs a TensorTable of 4 lists"):
        op(torch.classes.fused_hybrid.TensorTable([[p]]), [g], **kw)
    with pytest.raises(RuntimeError, match="1 params but 2 grads"):
        op(torch.classes.fused_hybrid.TensorTable([[p], [], [], []]), [g, g], **kw)
    assert op(torch.classes.fused_hybrid.TensorTable([[p], [], [], []]), [g], **kw) is True
    assert torch.equal(p, torch.full((3,), -0.1))


def test_table_ops_hand_other_devices_to_the_list_ops_kernel():
    """The cuda backend steps through the same table ops (backends/extension_ops.py): a table of non-CPU tensors goes
    through the dispatcher to the list op's kernel for its device. Meta tensors stand in for CUDA ones here: they
    reach the ops' fake (meta) kernels, which do nothing; the CPU kernels would refuse them. Every family, on the
    fast path (grads read from the params) and with a gradient list."""
    from fused_hybrid import hyper as H
    from fused_hybrid.backends import extension_ops as xo

    def meta_params(shapes):
        ps = [torch.zeros(s, device="meta") for s in shapes]
        for p in ps:
            p.grad = torch.zeros_like(p)
        return ps

    def like(ps):
        return [torch.zeros_like(p) for p in ps]

    def steps(ps):
        return [torch.zeros((), device="meta") for _ in ps]

    for grads_given in (False, True):
        ps = meta_params([(3,), (2, 4)])
        gs = [p.grad for p in ps] if grads_given else None
        xo.sgd(ps, gs, like(ps), [False, False], H.SGD(lr=0.1, momentum=0.9), cache={})
        xo.adaptive(ps, gs, like(ps), like(ps), like(ps), steps(ps),
                    H.Adaptive(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, amsgrad=True), cache={})
        xo.mas(ps, gs, like(ps), like(ps), like(ps), steps(ps),
               H.MAS(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, momentum=0.9,
                     variant=H.MAS_VARIANTS.index("vector")), cache={})
        xo.ndadam(ps, gs, like(ps), [torch.zeros(3, device="meta"), torch.zeros(2, device="meta")], steps(ps),
                  [(), (1,)], H.NDAdam(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8), cache={})
    # The same call on CPU tensors a CPU kernel cannot take is refused: the branch above really changed kernels.
    ps = meta_params([(3,)])
    table = torch.classes.fused_hybrid.TensorTable([[torch.zeros(3)], [], [], []])
    with pytest.raises(RuntimeError, match="sgd_"):
        torch.ops.fused_hybrid.sgd_table_(table, [ps[0].grad], **SGD_KW)


def test_table_follows_replaced_state_lists():
    """A checkpoint load replaces every state tensor: the next step must use the new ones, not the table's."""
    (pa, pb) = make_params([(5,), (7, 3)], torch.float32)
    opt_a, opt_b = fh.Adam(pa, backend="cpu"), fh.Adam(pb, backend="cpu")
    for k in range(1, 3):
        feed_grads([pa, pb], k)
        opt_a.step()
        opt_b.step()
    sd = copy.deepcopy(opt_a.state_dict())
    opt_a.step()  # opt_a moves on; loading its earlier state into it must rewind its state
    opt_a.load_state_dict(sd)
    with torch.no_grad():
        for x, y in zip(pa, pb):
            x.copy_(y)
    feed_grads([pa, pb], 3)
    opt_a.step()
    opt_b.step()
    for x, y in zip(pa, pb):
        assert torch.equal(x, y)


def _triton_interpreting() -> bool:
    from fused_hybrid.backends import triton as tb
    return tb.available(torch.device("cpu"))


def _switching_partials(gen, T: int, k: int):
    """Step k's random SWATS inputs for T tensors: per-tensor partial sums <p,g> < 0 and <p,p> whose ratio settles
    (noise ~ 1/k, so segments switch), some steps where not every tensor stepped, and a GradScaler skip every 9th
    step: (partials [T, 2] float64, stepped or None, found_inf)."""
    target = torch.rand(T, generator=gen, dtype=torch.float64) + 0.5
    pg = -(torch.rand(T, generator=gen, dtype=torch.float64) + 0.1) / 3  # /3: sums that round
    noise = 1 + 0.3 * torch.randn(T, generator=gen, dtype=torch.float64) / k
    partials = torch.stack([pg, -pg * target * noise], dim=1)
    stepped = None if k % 4 else (torch.rand(T, generator=gen) > 0.3).double()
    return partials, stepped, torch.tensor(float(k % 9 == 0))


@pytest.mark.parametrize("impl", ["cpu", "triton", "triton-separate"])
@pytest.mark.parametrize("granularity", ["global", "group", "tensor"])
def test_swats_bookkeeping_ops_match_swats_py(granularity, impl):
    """The fused bookkeeping (per-tensor args, segment totals, switch test) against the torch-op version in swats.py
    on random partial sums, with tensors that did not step, GradScaler skips and an lr change after some switches:
    same phases and switch steps, same Lambda up to the summation order and pow. impl "cpu": csrc/cpu/swats.cpp;
    "triton": triton_kernels/swats.py under the interpreter, totals and test in one launch (the optimizer's call
    without a process group); "triton-separate": totals, then the test (with a process group, an all-reduce runs
    between them)."""
    from fused_hybrid import swats as sw
    if impl.startswith("triton") and not _triton_interpreting():
        pytest.skip("the Triton kernels run on CPU tensors only under TRITON_INTERPRET=1")
    groups = [dict(rule="swats", params=[torch.zeros(2) for _ in range(3)], lr=0.1, betas=(0.9, 0.99),
                   switch_rtol=0.05, switch_atol=0.0),
              dict(rule="adam", params=[torch.zeros(1)]),
              dict(rule="swats", params=[torch.zeros(2) for _ in range(2)], lr=0.05, betas=(0.8, 0.9),
                   switch_rtol=0.02, switch_atol=1e-3)]
    lays = [sw.Layout(groups, granularity, torch.device("cpu"), impl=i) for i in (impl.split("-")[0], "torch")]
    sts = [lay.new_state() for lay in lays]
    gen = torch.Generator().manual_seed(5)
    T = lays[0].T
    switched_any = False
    for k in range(1, 40):
        if k == 25:
            groups[0]["lr"] = 0.03  # a scheduler step after some switches: lr_ref keeps the lr at the switch
        partials, stepped, found_inf = _switching_partials(gen, T, k)
        outs = []
        for lay, st in zip(lays, sts):
            vecs = lay.group_vectors(groups)
            phase, sgd_lr = sw.per_tensor_args(lay, st, vecs)
            part = torch.where(phase[:, None] == 1, 0.0, partials)
            if impl == "triton" and lay.impl == "triton":
                sw.switch_update(lay, st, vecs, part, stepped, found_inf)
                totals = None
            else:
                totals = sw.segment_totals(lay, part, stepped)
                sw.finalize(lay, st, vecs, totals, found_inf)
            outs.append((phase, sgd_lr, totals))
        (pf, lf, tf), (pt, lt, tt) = outs
        assert torch.equal(pf, pt) and torch.allclose(lf, lt, rtol=1e-12, atol=0)
        if tf is not None:
            assert torch.allclose(tf, tt, rtol=1e-12, atol=1e-300)
        for key in ("phase", "switch_step", "seg_step"):
            assert torch.equal(sts[0][key], sts[1][key]), (k, key)
        for key in ("lam", "Lambda", "gamma", "lr_ref"):
            assert torch.allclose(sts[0][key], sts[1][key], rtol=1e-12, atol=0), (k, key)
        switched_any |= bool(sts[0]["phase"].any())
    assert switched_any, "the partial sums were built to switch some segment"


@pytest.mark.parametrize("granularity", ["global", "group", "tensor"])
def test_swats_bookkeeping_cpu_and_triton_agree_bitwise(granularity):
    """The two fused bookkeeping implementations, csrc/cpu/swats.cpp (the cpu and cuda_sim backends') and
    triton_kernels/swats.py (the triton and cuda backends'; on the GPU where there is one, else under the
    interpreter), give identical bits on the same partial sums: lam, gamma, Lambda, the SGD-phase step sizes and the
    switch steps. Both sum in tensor order, take b2**k by the same binary exponentiation and round without FMA; on an
    H200, before they did, lam and gamma differed in the last bits (so the cuda backend could switch a step apart
    from cuda_sim and cpu)."""
    from fused_hybrid import swats as sw
    from fused_hybrid.backends import triton as tb
    dev = torch.device(cases.DEVICE)
    if not tb.available(dev):
        pytest.skip(f"the triton backend is unavailable: {tb.why_unavailable(dev)}")
    groups = [dict(rule="swats", params=[torch.zeros(2) for _ in range(5)], lr=0.1, betas=(0.9, 0.99),
                   switch_rtol=0.05, switch_atol=0.0),
              dict(rule="swats", params=[torch.zeros(2) for _ in range(3)], lr=0.05, betas=(0.8, 0.9),
                   switch_rtol=0.02, switch_atol=1e-3)]
    lays = [sw.Layout(groups, granularity, d, impl=i) for d, i in ((torch.device("cpu"), "cpu"), (dev, "triton"))]
    sts = [lay.new_state() for lay in lays]
    gen = torch.Generator().manual_seed(11)
    T = lays[0].T
    switched = 0
    for k in range(1, 40):
        partials, stepped, found_inf = _switching_partials(gen, T, k)
        outs = []
        for lay, st in zip(lays, sts):
            d = lay.device
            vecs = lay.group_vectors(groups)
            phase, sgd_lr = sw.per_tensor_args(lay, st, vecs)
            part = torch.where(phase[:, None] == 1, 0.0, partials.to(d))
            sw.switch_update(lay, st, vecs, part, None if stepped is None else stepped.to(d), found_inf.to(d))
            outs.append((phase.cpu(), sgd_lr.cpu()))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1]), k
        for key in ("phase", "switch_step", "seg_step", "lam", "Lambda", "gamma", "lr_ref"):
            assert torch.equal(sts[0][key].cpu(), sts[1][key].cpu()), (k, key)
        switched = int(sts[0]["phase"].sum())
    assert switched, "the partial sums were built to switch some segment"


def test_swats_bookkeeping_ops_reject_bad_input():
    seg = torch.tensor([0, 1, 5])
    with pytest.raises(RuntimeError, match="is not a segment of 2"):
        torch.ops.fused_hybrid.swats_totals(torch.zeros(3, 2, dtype=torch.float64), None, seg, 2)
    with pytest.raises(RuntimeError, match="partials must be a contiguous CPU Double tensor of 4 elements"):
        torch.ops.fused_hybrid.swats_totals(torch.zeros(3, 2, dtype=torch.float64), None, torch.tensor([0, 1]), 2)


def test_gradients_read_in_cpp_once_the_plan_is_known(monkeypatch):
    """After the first step the cpu backend reads the params' .grad in C++ (Python reads none); when a gradient goes
    missing the op refuses before changing anything and the step takes the general path, which skips that param
    (its state untouched, as torch.optim does); the trajectory matches the reference throughout."""
    import fused_hybrid.optimizer as fo
    reads = []
    real = fo._grads_of
    monkeypatch.setattr(fo, "_grads_of", lambda ps: reads.append(len(ps)) or real(ps))
    for case in cases.select(cases.GRAD_READ):
        reads.clear()
        pc, pr = make_params(MIXED, torch.float32)
        oc, orf = case.build(pc, "cpu", "cpu"), case.build(pr, "reference", "cpu")
        for k in range(1, 7):
            feed_grads([pc, pr], k)
            if k in (3, 4):
                pc[3].grad = pr[3].grad = None
            oc.step()
            orf.step()
        compare_scaled((pc, oc), (pr, orf), rtol=1e-5)
        # The reference reads them in Python every step (6); the cpu optimizer on the first step, on steps 3 (the
        # refused fast attempt), 4 (a plan with a gap) and 5 (back to every param): 4 of 6.
        assert len(reads) == 6 + 4, (case.id, reads)
        if case.cls is not fh.SGD:
            assert float(oc.state[pc[3]]["step"]) == 4.0


def test_swats_bookkeeping_impl_per_device(monkeypatch):
    """Where SWATS's fused bookkeeping runs: C++ ops on the CPU, Triton kernels on GPUs Triton targets (compute
    capability 8.0+), the torch ops elsewhere and for the reference backend."""
    from fused_hybrid import swats as sw
    from fused_hybrid.backends import triton as tb
    assert sw.fused_impl(torch.device("cpu")) == "cpu"
    cuda = torch.device("cuda")
    monkeypatch.setattr(tb, "available", lambda device: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert sw.fused_impl(cuda) == "triton"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert sw.fused_impl(cuda) == "torch"
    monkeypatch.setattr(tb, "available", lambda device: False)
    assert sw.fused_impl(cuda) == "torch"
    groups = [dict(rule="swats", params=[torch.zeros(2)], lr=0.1, betas=(0.9, 0.99), switch_rtol=0.05,
                   switch_atol=0.0)]
    assert sw.Layout(groups, "global", torch.device("cpu")).impl == "torch"  # not fused: the reference's
    assert sw.Layout(groups, "global", torch.device("cpu"), fused=True).impl == "cpu"
    with pytest.raises(ValueError, match="unknown SWATS bookkeeping"):
        sw.Layout(groups, "global", torch.device("cpu"), impl="cuda")
