"""backend="cuda_sim": the CUDA kernels of csrc/cuda, built by the host compiler against the SIMT simulator of
csrc/sim and run on CPU tensors (fused_hybrid._C_sim), against the reference and bitwise against the cpu backend.

Every rule, option and dtype of the backend matrix runs here; so do orders of execution CUDA does not promise
(threads and blocks reversed and shuffled must give bitwise identical results: a cheap race detector), injected
faults the tests must notice (a __syncthreads that does nothing, a skipped shuffle step, a broken alignment test),
and a launch geometry shrunk so that small tensors span several chunks, blocks and launches.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

import fused_hybrid as fh
import cases
from fused_hybrid import _ext
from fused_hybrid import swats as sw
from fused_hybrid.backends import BackendUnavailableError, resolve
from fused_hybrid.backends import cuda_sim as cs

needs_sim = pytest.mark.skipif(not _ext.has_sim(), reason=f"cuda_sim unavailable: {_ext.SIM_LOAD_ERROR}")

# The shapes and their reasons: cases.PROFILES (with the small base chunk below, 9001 elements are 5 chunks).
_M = cases.PROFILES["cuda_sim"]
SIZES, ND_SHAPES, STEPS = _M.sizes, _M.nd_shapes, _M.steps


@pytest.fixture(autouse=True)
def small_chunks():
    """Chunks of 2048 elements instead of 65536, so the tensors above span several blocks (a partial sum per
    chunk, summed across chunks)."""
    if not _ext.has_sim():
        yield
        return
    with cs.settings(base_chunk=2048):
        yield


def _equal(a, b):
    """Params and every state tensor bitwise equal; SWATS's switch test (kept in its first param's state) to
    float64 rounding: its <p,g>, <p,p> sums run per CUDA chunk in a block tree here, in 16 lanes on the cpu backend."""
    (pa, oa), (pb, ob) = a, b
    for x, y in zip(pa, pb):
        assert torch.equal(x.detach(), y.detach())
        sa, sb = oa.state[x], ob.state[y]
        assert set(sa) == set(sb)
        for key, v in sa.items():
            if sw.is_switch_key(key):
                torch.testing.assert_close(v, sb[key], rtol=1e-12, atol=0, msg=key)
            elif isinstance(v, torch.Tensor):
                assert torch.equal(v, sb[key]), key


# ------------------------------------------------------------------------------------------------------------------
# The backend contract


def test_listed_never_auto_and_a_clear_error_when_not_built(monkeypatch):
    assert "cuda_sim" in fh.backends()
    assert cs.NAME == "cuda_sim" and cs.RULES == {"sgd", "adaptive", "mas", "ndadam", "rms"}
    for fam in cs.RULES:
        assert resolve("auto", torch.device("cpu"), fam).NAME != "cuda_sim"
    assert not cs.available(torch.device("cuda"))
    assert "CPU tensors only" in cs.why_unavailable(torch.device("cuda"))
    monkeypatch.setattr(_ext, "_C_sim", None)
    monkeypatch.setattr(_ext, "SIM_LOAD_ERROR", "the simulated CUDA kernels fused_hybrid._C_sim are not built")
    assert "unavailable: the simulated CUDA kernels fused_hybrid._C_sim are not built" in fh.backends()["cuda_sim"]
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    with pytest.raises(BackendUnavailableError, match="_C_sim"):
        fh.Adam([p], backend="cuda_sim").step()


def test_built_where_the_build_says_so():
    """scripts/test.sh sets FUSED_HYBRID_REQUIRE_EXTENSION=1: on Linux the simulator must then have been built, or
    every test below would skip."""
    if os.environ.get("FUSED_HYBRID_REQUIRE_EXTENSION") == "1" and sys.platform.startswith("linux") and \
            os.environ.get("FUSED_HYBRID_BUILD_SIM") != "0":
        assert _ext.has_sim(), _ext.SIM_LOAD_ERROR


# ------------------------------------------------------------------------------------------------------------------
# The backend matrix: against the reference, bitwise against the cpu backend

# Where the arithmetic is not the cpu backend's, results may differ in the last bits: ND-Adam's row sums (<g,w>,
# ||g||^2, ||w||^2) run in another order (lane strides, then a warp or block tree, against the cpu's 16 lanes per
# row) and, for float64 params, feed the update unrounded. (SWATS's and MAS's float64 sums run in other orders too,
# but reach the params only through coefficients and a switch test that these few steps leave equal.) For
# float32/bf16/fp16 every sum is rounded to float32 before use, and every case is bitwise equal.
NOT_BITWISE_FP64 = {fh.NDAdam}


@needs_sim
@pytest.mark.parametrize("case", cases.params(cases.FP32, "cuda_sim"))
def test_matches_reference_and_cpu_fp32(case):
    """The "scaler" cases pass lr, grad_scale and found_inf as tensors: in the simulator CPU tensors are the device
    memory, so they are read inside the kernels through device pointers (common.cu: device_scalar), as on a GPU."""
    sim = _M.check(case)
    _equal(_M.run(case, "cpu"), sim)


@needs_sim
@pytest.mark.parametrize("case,dtype", cases.params(cases.DTYPES, "cuda_sim",
                                                    dtypes=[torch.bfloat16, torch.float16, torch.float64]))
def test_other_dtypes(case, dtype):
    sim = _M.check(case, dtype)
    if not (dtype == torch.float64 and case.cls in NOT_BITWISE_FP64):
        _equal(_M.run(case, "cpu", dtype), sim)


# ------------------------------------------------------------------------------------------------------------------
# Orders CUDA does not promise: bitwise identical results

@needs_sim
@pytest.mark.parametrize("case", cases.params(cases.ORDER, "cuda_sim"))
def test_thread_and_block_order_do_not_change_results(case):
    cs.stats(reset=True)
    base = _M.run(case, steps=2)
    st = cs.stats()
    assert st["blocks"] > st["launches"] > 0
    if case.cls is not fh.Adam:
        assert st["block_barriers"] > 0 and st["warp_barriers"] > 0  # the reductions really synchronized
    for order in (dict(thread_order="reversed", block_order="reversed"),
                  dict(thread_order="shuffled", block_order="shuffled", seed=1),
                  dict(thread_order="shuffled", block_order="forward", seed=2)):
        with cs.settings(**order):
            _equal(base, _M.run(case, steps=2))


# ------------------------------------------------------------------------------------------------------------------
# Injected faults: the tests above must notice them


def _swats_partials(backend=cs):
    """One SWATS Adam-phase step through ``backend``'s adaptive function: the per-tensor <p,g>, <p,p> (on cuda_sim:
    a block_sum per chunk, the post-step kernel summing each tensor's chunks)."""
    from fused_hybrid import hyper as H
    gen = torch.Generator().manual_seed(5)
    sizes = (1, 4097, 9001)
    ps, gs, ms = ([torch.randn(n, generator=gen) for n in sizes] for _ in range(3))
    vs = [torch.rand(n, generator=gen) for n in sizes]
    sw = H.SwatsArgs(momentum_buffers=[torch.zeros(n) for n in sizes], phase=torch.zeros(3, dtype=torch.int32),
                     sgd_lr=torch.zeros(3, dtype=torch.float64),
                     partials=torch.full((3, 2), float("nan"), dtype=torch.float64))
    backend.adaptive(ps, gs, ms, vs, [], [torch.tensor(3.0) for _ in sizes],
                     H.Adaptive(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8), None, None, sw)
    return sw.partials


def _partials_under(**faults):
    """The partials in each of three orders, with the given faults injected."""
    out = []
    for order in ("forward", "reversed", "shuffled"):
        with cs.settings(thread_order=order, block_order=order, seed=3, **faults):
            out.append(_swats_partials())
    return out


@needs_sim
def test_partials_are_the_reference_sums_in_every_order():
    from fused_hybrid.backends import reference as rb
    clean = _partials_under()
    assert all(torch.equal(clean[0], x) for x in clean[1:])
    torch.testing.assert_close(clean[0], _swats_partials(rb), rtol=1e-6, atol=1e-12)


def _differs(results, clean):
    return any(not torch.equal(r, clean) for r in results)


@needs_sim
def test_a_missing_syncthreads_is_caught():
    """With __syncthreads a no-op, block_sum's warps read each other's partial sums before they are written (the
    shared buffer holds the simulator's NaN poison) or after the next call overwrote them: at least one order gives
    other partials, so the order test and the reference comparison above would fail."""
    clean = _partials_under()[0]
    broken = _partials_under(fault_no_syncthreads=1)
    assert _differs(broken, clean)


@needs_sim
@pytest.mark.parametrize("lane_mask", [16, 1])
def test_a_skipped_shuffle_step_is_caught(lane_mask):
    """warp_sum without its xor-16 (or xor-1) step sums half of each warp: the partials leave the reference's."""
    clean = _partials_under()[0]
    broken = _partials_under(fault_skip_shuffle=lane_mask)
    assert _differs(broken, clean)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(broken[0], clean, rtol=1e-6, atol=0)
    # The matrix would notice too: MAS's vector variant scales its SGD step by the norms.
    case = cases.Case(fh.MAS, dict(variant="vector", momentum=0.9))
    ref = _M.run(case, "reference")
    with cs.settings(fault_skip_shuffle=lane_mask), pytest.raises(AssertionError):
        _M.compare(ref, _M.run(case), torch.float32)


def _misaligned(backend):
    base = torch.randn(4 * 4097 + 1, generator=torch.Generator().manual_seed(3))
    ps = [torch.nn.Parameter(base[1:4098]), torch.nn.Parameter(base[4099:4099 + 17])]
    assert all(p.data_ptr() % 16 for p in ps)
    opt = fh.Adam(ps, lr=1e-2, backend=backend)
    for k in range(2):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(k))
        opt.step()
    return ps


@needs_sim
def test_misaligned_tensors_take_the_scalar_path_and_a_misaligned_vector_access_is_caught():
    cs.stats(reset=True)
    for x, y in zip(_misaligned("reference"), _misaligned("cuda_sim")):
        torch.testing.assert_close(y.detach(), x.detach(), **_M.tol(torch.float32))
    assert cs.stats()["vector_accesses"] == 0  # the kernels saw the misalignment and never loaded 128 bits
    # A kernel whose alignment test is wrong (here: always "aligned") makes misaligned 128-bit accesses: caught.
    with cs.settings(fault_assume_aligned=1), pytest.raises(RuntimeError, match="misaligned 128-bit vector access"):
        _misaligned("cuda_sim")


# ------------------------------------------------------------------------------------------------------------------
# Launch plans: several chunks, launches and tables with small tensors


@needs_sim
@pytest.mark.parametrize("case", cases.params(cases.PLANS, "cuda_sim"))
def test_multi_launch_plans(case):
    """Chunks of 256-512 elements, at most 5 blocks and 3 tensors per launch: a call takes many launches, a tensor's
    chunks continue in the next launch, slots run across launches, pick_chunk_size / ndadam_grid grow the chunk
    (and ND-Adam's row_scale, so a block loops over rows). Against the reference, and elementwise rules bitwise
    against the default geometry (their arithmetic does not depend on the chunking)."""
    cls, kw = case.cls, case.kw
    g = torch.Generator().manual_seed(11)
    if cls is fh.NDAdam:
        sizes = [(6, 2048), (40, 3), (5,), (3, 1500), (2, 5, 3), (1,)]
    else:
        sizes = [int(s) for s in torch.randint(0, 1200, (9,), generator=g)] + [0, 1, 2049]
    groups = lambda ps, device: [{"params": ps[::2]}, {"params": ps[1::2], "lr": 3e-3}]  # noqa: E731
    default = _M.run(case, sizes=sizes, groups=groups)
    cs.stats(reset=True)
    with cs.settings(base_chunk=256, max_chunk=512, max_blocks=5, max_tensors=3):
        small = _M.run(case, sizes=sizes, groups=groups)
    assert cs.stats()["launches"] >= 4 * STEPS
    _M.compare(_M.run(case, "reference", sizes=sizes, groups=groups), small, torch.float32)
    if cls in (fh.Adam, fh.SGD) or (cls is fh.MAS and not kw):
        _equal(default, small)


# ------------------------------------------------------------------------------------------------------------------
# The simulator itself: kernels that misuse CUDA on purpose (ops_sim.cpp: self_test_kernel)

DIVERGENT_RETURN, DIVERGENT_LINES, WARP_SUMS, SHARED_BEFORE_WRITE = range(4)


@needs_sim
def test_divergent_barriers_are_reported_not_hung():
    with pytest.raises(RuntimeError, match="divergent barrier.*returned"):
        torch.ops.fused_hybrid_sim.sim_self_test(DIVERGENT_RETURN, 2, 64)
    with pytest.raises(RuntimeError, match="wait at different __syncthreads"):
        torch.ops.fused_hybrid_sim.sim_self_test(DIVERGENT_LINES, 1, 64)


@needs_sim
@pytest.mark.parametrize("order", ["forward", "reversed", "shuffled"])
def test_warp_shuffles_exchange_within_each_warp(order):
    """A butterfly sum over each warp of a 2-block, 80-thread grid (a partial last warp of 16 lanes must shuffle
    with a mask naming its 16 lanes: the full mask is refused)."""
    with cs.settings(thread_order=order, block_order=order, seed=7):
        out = torch.ops.fused_hybrid_sim.sim_self_test(WARP_SUMS, 2, 64)
        with pytest.raises(RuntimeError, match="mask"):
            torch.ops.fused_hybrid_sim.sim_self_test(WARP_SUMS, 1, 80)
    t = torch.arange(64, dtype=torch.float64)
    want = torch.cat([t[:32].sum().expand(32), t[32:].sum().expand(32)]).repeat(2)
    assert torch.equal(out, want)


@needs_sim
def test_shared_memory_is_poisoned_per_block():
    out = torch.ops.fused_hybrid_sim.sim_self_test(SHARED_BEFORE_WRITE, 3, 32)
    assert out.isnan().all()  # even in blocks 1 and 2, after block 0 wrote it
