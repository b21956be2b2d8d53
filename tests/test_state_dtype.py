"""Issue 16: the ``state_dtype`` group keyword (bfloat16 moment buffers, math still float32).

What it promises, checked on every rule (test_low_precision.RULES) and every backend that implements it (reference,
cpu, triton: under its interpreter on CPU tensors here, on CUDA tensors on a GPU machine): every moment buffer is bfloat16 (step counts, seeds and Kahan buffers keep
theirs); the arithmetic is float32 (after one step the params are bitwise those of the float32-state run and the
state is exactly its float32 state rounded to nearest even); the backends agree bitwise; the trajectory stays close
to the float32-state one; checkpoints round-trip and convert; bad values, and a backend without it (none today: the
refusal is checked on a backend made to lack it), are refused clearly. The CUDA kernels (cuda, cuda_sim) are bitwise
the cpu backend for every rule.
"""
import copy

import pytest
import torch

import fused_hybrid as fh
import importlib

B = importlib.import_module("fused_hybrid.backends")  # (fused_hybrid.backends, the attribute, is a function)
from fused_hybrid import rounding as RD
from fused_hybrid import rules

from test_low_precision import RULES, _bits

from fused_hybrid import _ext
from fused_hybrid.backends import cuda as cuda_backend

BF16 = torch.bfloat16
_needs_sim = pytest.mark.skipif(not _ext.has_sim(), reason=f"cuda_sim unavailable: {_ext.SIM_LOAD_ERROR}")
_needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and cuda_backend.available(torch.device("cuda"))),
                                 reason="needs a CUDA device")
SIM = pytest.param("cuda_sim", marks=_needs_sim)
CUDA = pytest.param("cuda", marks=_needs_cuda)
DONE = ["reference", "cpu", "triton", SIM, CUDA]


# Odd sizes, several tensors, one past a CPU chunk (16384 elements); a 2-D one for ND-Adam's weight vectors.
SIZES = [(7, 13), 5, (3, 6007), 1]
SMALL = [(5, 7), 33, 1]  # the Triton interpreter is slow
# Entries that are not moment buffers (they keep their own dtypes).
NOT_MOMENTS = {"step", "rounding_seed", "kahan_comp"}


def _sizes(backend):
    return SMALL if backend in ("triton", "cuda_sim") else SIZES


def _device(backend):
    """Where a backend's tensors live: triton on the GPU when there is one (under its interpreter on CPU tensors
    only without one), as in test_low_precision. Comparisons across backends move both sides to the CPU."""
    import cases
    return {"cuda": "cuda", "triton": cases.DEVICE}.get(backend, "cpu")


def _params(dtype, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*((n,) if isinstance(n, int) else n), generator=g).to(dtype).requires_grad_()
            for n in sizes]


def _run(name, backend, dtype, steps=4, sizes=SIZES, state_dtype=BF16, **opts):
    cls, kw = RULES[name]
    torch.manual_seed(7)  # (stochastic rounding's seeds are drawn when the state is created)
    dev = _device(backend)
    ps = [p.detach().to(dev).requires_grad_() for p in _params(dtype, sizes)]
    opt = cls(ps, backend=backend, state_dtype=state_dtype, **kw, **opts)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g).to(dtype).to(dev)
        opt.step()
    return ps, opt


def _moments(opt, p):
    return {k: v for k, v in opt.state[p].items()
            if isinstance(v, torch.Tensor) and k not in NOT_MOMENTS and not k.startswith("swats_")}


def _state_bits(t):
    return t.detach().view(torch.int16) if t.dtype == BF16 else t.detach().view(torch.int32)


# ---- the option ---------------------------------------------------------------------------------------------------

def test_bad_values_raise():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="float16's range"):
        fh.Adam([p], state_dtype=torch.float16)
    for bad in (torch.float64, torch.int8, torch.complex64):
        with pytest.raises(ValueError, match="Invalid state_dtype"):
            fh.SGD([p], momentum=0.9, state_dtype=bad)
    for bad in ("bfloat16", 16, True):
        with pytest.raises(TypeError, match="Invalid state_dtype"):
            fh.RMSprop([p], state_dtype=bad)
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        fh.Hybrid([{"params": [p], "rule": "adagrad", "state_dtype": torch.float16}])
    opt = fh.Adam([p])
    with pytest.raises(TypeError, match="Invalid state_dtype"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "state_dtype": "bf16"})
    # The accepted values; None and float32 are today's state.
    for ok in (None, torch.float32, BF16):
        fh.Adam([torch.zeros(2, requires_grad=True)], state_dtype=ok)


@pytest.mark.parametrize("name", sorted(RULES))
def test_moments_are_bf16(name):
    """Every moment buffer is bfloat16 for bfloat16, float16 and float32 params; the step stays a float32 count,
    and float64 params keep float64 state (the option narrows float32 state only)."""
    for dtype in (BF16, torch.float16, torch.float32):
        ps, opt = _run(name, "reference", dtype, steps=2, sizes=[(4, 6), 3])
        for p in ps:
            mom = _moments(opt, p)
            assert mom or name == "sgd"
            assert all(v.dtype == BF16 and v.is_contiguous() for v in mom.values()), (dtype, mom.keys())
            if "step" in opt.state[p]:
                assert opt.state[p]["step"].dtype == torch.float32
    ps, opt = _run(name, "reference", torch.float64, steps=2, sizes=[(4, 6), 3])
    assert all(v.dtype == torch.float64 for p in ps for v in _moments(opt, p).values())


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_complex_params_keep_complex_state(backend):
    """Complex params keep complex state of their dtype (torch has no complex bfloat16): the option does not apply."""
    p = torch.randn(6, 5, dtype=torch.complex64, requires_grad=True)
    opt = fh.Adam([p], state_dtype=BF16, backend=backend)
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.complex64


def test_mixed_groups_and_float32_default():
    """state_dtype is per group: a bfloat16-state group next to a float32-state one (Hybrid)."""
    a, b = torch.randn(10, requires_grad=True), torch.randn(10, requires_grad=True)
    opt = fh.Hybrid([{"params": [a], "rule": "adam", "state_dtype": BF16},
                     {"params": [b], "rule": "sgd", "momentum": 0.9}], backend="reference")
    a.grad, b.grad = torch.ones(10), torch.ones(10)
    opt.step()
    assert opt.state[a]["exp_avg"].dtype == BF16 and opt.state[b]["momentum_buffer"].dtype == torch.float32


# ---- math is float32 ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", DONE)
@pytest.mark.parametrize("name", sorted(RULES))
def test_first_step_is_float32_math(name, backend):
    """After one step from the same start, the params are bitwise those of the float32-state run (the update uses
    the unrounded new moments), and each bfloat16 buffer is exactly the float32 run's buffer rounded to nearest
    even (rounding.round_to, the integer RNE every backend's store uses)."""
    sizes = _sizes(backend)
    ref, ref_opt = _run(name, backend, torch.float32, steps=1, sizes=sizes, state_dtype=None)
    got, opt = _run(name, backend, torch.float32, steps=1, sizes=sizes)
    for a, b in zip(ref, got):
        assert torch.equal(a, b), (name, (a - b).abs().max().item())
        m32, m16 = _moments(ref_opt, a), _moments(opt, b)
        assert m32.keys() == m16.keys()
        for k in m32:
            assert torch.equal(_state_bits(m16[k]).cpu(), _state_bits(RD.round_to(m32[k].cpu(), BF16))), k


@pytest.mark.parametrize("name", sorted(RULES))
def test_close_to_float32_state_trajectory(name):
    """Float32 params, 20 steps, bfloat16 against float32 state. Each stored moment carries a relative error of at
    most 2^-9 (half a bfloat16 unit), which perturbs that step's update by a relative ~2^-9 (m, buffers) to 2^-10
    (v, under a square root); the gradients here do not depend on w, so the perturbations add up without feedback.
    Bound: |w - w32| <= 2^-6 * (the float32 run's path length sum_k |dw_k|) per element, a 4x margin over the
    sum of those relative errors (centered RMSprop's sqrt(sq - g_avg^2) and the momentum buffers' accumulated
    error are the largest terms), plus float32 rounding."""
    cls, kw = RULES[name]
    out = {}
    for sd in (None, BF16):
        ps = _params(torch.float32, [(9, 17), 40])
        opt = cls(ps, backend="reference", state_dtype=sd, **kw)
        path = [torch.zeros_like(p) for p in ps]
        g = torch.Generator().manual_seed(3)
        for _ in range(20):
            before = [p.detach().clone() for p in ps]
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
            for acc, p, b in zip(path, ps, before):
                acc += (p.detach() - b).abs()
        out[sd] = (ps, path)
    for a, b, path in zip(out[None][0], out[BF16][0], out[None][1]):
        err = (a.detach() - b.detach()).abs()
        assert bool((err <= 2.0 ** -6 * path + 1e-6).all()), (name, (err / (path + 1e-12)).max().item())


def test_amsgrad_max_stays_above_v_and_monotone():
    """AMSGrad with bfloat16 state: the stored max is the rounded max(old max, new v); rounding to nearest is
    monotone, so it is never below the stored v and never decreases."""
    p = torch.randn(4000, requires_grad=True)
    opt = fh.Adam([p], amsgrad=True, state_dtype=BF16, backend="cpu")
    prev = None
    g = torch.Generator().manual_seed(0)
    for k in range(30):
        p.grad = torch.randn(p.shape, generator=g) * (3.0 if k % 7 == 0 else 0.3)
        opt.step()
        st = opt.state[p]
        assert bool((st["max_exp_avg_sq"] >= st["exp_avg_sq"]).all())
        if prev is not None:
            assert bool((st["max_exp_avg_sq"] >= prev).all())
        prev = st["max_exp_avg_sq"].clone()


# ---- stochastic rounding of the state ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", DONE)
def test_state_sr_bits_are_the_counter_based_ones(backend):
    """With stochastic_rounding=True the bfloat16 moments are stored stochastically rounded, float32 params' too:
    after one step each buffer is exactly rounding.stochastic_round_to(the float32 run's buffer, seed, step 1,
    stream), streams as hyper.STATE_STREAMS (the param store is stream 0), and the float32 params are stored exactly
    (bitwise the float32-state run)."""
    from fused_hybrid.hyper import STATE_STREAMS
    sizes = _sizes(backend)
    for name, family in (("adamw_ams", "adaptive"), ("rmsprop", "rms"), ("sgd_mom", "sgd")):
        ref, ref_opt = _run(name, backend, torch.float32, steps=1, sizes=sizes, state_dtype=None)
        got, opt = _run(name, backend, torch.float32, steps=1, sizes=sizes, stochastic_rounding=True)
        differs = False
        for a, b in zip(ref, got):
            assert torch.equal(a, b)
            seed = int(opt.state[b]["rounding_seed"])
            for k, v in _moments(opt, b).items():
                v, ref_v = v.cpu(), ref_opt.state[a][k].cpu()
                expect = RD.stochastic_round_to(ref_v, BF16, seed, 1, 1 + STATE_STREAMS[family].index(k))
                assert torch.equal(_state_bits(v), _state_bits(expect)), (name, k)
                differs |= not torch.equal(v, RD.round_to(ref_v, BF16))
        assert differs  # (not nearest even in disguise)


def test_state_sr_tracks_where_nearest_stalls():
    """Why stochastic rounding of the state matters: Adam's v = b2*v + (1-b2)*g^2 with the default b2 = 0.999 moves
    by 0.001*(g^2 - v) a step, below half a bfloat16 unit of v (2^-9 relative) once v > g^2/2.95, so nearest even
    stops v near a third of g^2 (and the bias-corrected step grows by sqrt(3)); stochastic rounding keeps E[v] on
    the float32 trajectory (within the martingale bound of test_low_precision's tiny-update test)."""
    n, steps = 4096, 1500
    out = {}
    for key, opts in (("f32", dict(state_dtype=None)), ("rne", dict(state_dtype=BF16)),
                      ("sr", dict(state_dtype=BF16, stochastic_rounding=True))):
        p = torch.zeros(n, requires_grad=True)
        opt = fh.Adam([p], lr=0.0, backend="cpu", **opts)
        for _ in range(steps):
            p.grad = torch.ones(n)
            opt.step()
        out[key] = opt.state[p]["exp_avg_sq"].double()
    v32 = out["f32"][0].item()
    assert abs(v32 - (1 - 0.999 ** steps)) < 1e-4
    assert out["rne"].max().item() < 0.36 < v32  # stalled
    # Each SR store moves v by at most one unit (2^-8 at v < 1) from its float32 value, unbiased: the mean of n
    # elements after `steps` stores stays within 6 sigma, sigma <= sqrt(steps) * 2^-8 / (2 sqrt(n)), of the float32
    # trajectory (the recurrence only damps earlier errors: b2 < 1).
    sigma = steps ** 0.5 * 2.0 ** -8 / (2 * n ** 0.5)
    assert abs(out["sr"].mean().item() - v32) < 6 * sigma, (out["sr"].mean().item(), v32)


# ---- every backend the same bits ----------------------------------------------------------------------------------

OPTS = {"plain": {}, "sr": dict(stochastic_rounding=True), "kahan": dict(kahan_summation=True)}


def _close_bits(x, y, what):
    """16-bit tensors: equal but for a few elements (at most 1 in 100, or 2), each one unit apart in its format, or
    at most one unit of the tensor's largest value apart: a difference of one unit, once there, is carried on by the
    moment's recurrence (scaled by beta <= 1) while the value itself may shrink by cancellation (0 against 2^-29,
    or a centered RMSprop grad_avg near zero). float32 params (no rounding of their own to hide last-bit
    differences): within float32 rounding, as tests/cases.py compares float32 backends."""
    xf, yf = x.double(), y.double()
    scale = max(xf.abs().max().item(), 1e-30)
    if x.dtype == torch.float32:
        torch.testing.assert_close(xf, yf, rtol=1e-5, atol=scale * 1e-6, msg=what)
        return
    bad = _bits16(x) != _bits16(y)
    if not bool(bad.any()):
        return
    unit = 2.0 ** -7 if x.dtype == BF16 else 2.0 ** -10
    diff = (xf - yf).abs()
    ok = (diff <= torch.maximum(xf.abs(), yf.abs()) * unit * 1.01) | (diff <= scale * unit)
    assert bool(ok[bad].all()), (what, (xf - yf)[bad & ~ok][:5].tolist())
    assert bad.sum().item() <= max(2, x.numel() // 100), (what, bad.sum().item())


def _bits16(t):
    return t.detach().view(torch.int16)


def _pairs(ra, ropt, rb, opt):
    out = []
    for i, (a, b) in enumerate(zip(ra, rb)):
        ma, mb = _moments(ropt, a), _moments(opt, b)
        assert ma.keys() == mb.keys() and all(v.dtype == BF16 for v in mb.values())
        out += [(f"param {i}", a.detach().cpu(), b.detach().cpu())] + [(f"{k} {i}", ma[k].cpu(), mb[k].cpu())
                                                                       for k in ma]
    return out


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [BF16, torch.float32, torch.float16], ids=["bf16", "fp32", "fp16"])
@pytest.mark.parametrize("opts", sorted(OPTS))
@pytest.mark.parametrize("name", sorted(RULES))
def test_matches_reference(name, opts, dtype, backend):
    """Params and bfloat16 state against the reference, alone and with the 16-bit param stores (stochastic
    rounding, Kahan summation; float32 params ignore those). Not bitwise: torch's vectorized lerp (the reference's
    first moment) rounds with a fused multiply-add, so about 1 in 10 of the reference's float32 moments differ from
    the kernels' unfused lerp (rules.h) in the last bit; a float32 state hides that, a bfloat16 store shows it
    where the value sits at a rounding boundary (a handful of elements, one unit apart) or where the moment is a
    cancellation residue (0 against 2^-29). ND-Adam's row sums and the Kahan buffers add last-bit differences of
    their own (test_low_precision.test_bits_equal_reference). The cpu and triton kernels agree bitwise: below."""
    if dtype != BF16 and opts != "plain":
        if (dtype == torch.float32 and opts == "kahan") or (backend == "triton" and dtype == torch.float16):
            pytest.skip("Kahan summation applies to 16-bit params; one 16-bit dtype covers it on Triton")
    if backend == "triton" and dtype == torch.float16 and name not in ("adam", "sgd_mom", "mas_vector", "ndadam"):
        pytest.skip("the Triton interpreter is slow: float16 params on a few families")
    sizes = _sizes(backend)
    ref, ref_opt = _run(name, "reference", dtype, sizes=sizes, **OPTS[opts])
    got, opt = _run(name, backend, dtype, sizes=sizes, **OPTS[opts])
    for what, x, y in _pairs(ref, ref_opt, got, opt):
        _close_bits(x, y, what)


@pytest.mark.parametrize("dtype", [BF16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("opts", sorted(OPTS))
@pytest.mark.parametrize("name", sorted(RULES))
def test_cpu_and_triton_bitwise(name, opts, dtype):
    """The cpu and Triton kernels compute the same float32 operations (rules.h's forms, no fused multiply-add) and
    store through the same integer rounding: params and bfloat16 state are bitwise equal, but for ND-Adam (row sums
    in another order), Kahan summation (test_low_precision says why) and Padam's partial power (the cpu's nested
    square roots against Triton's float64 exp2/log2: equal up to rare last-bit ties), which agree within
    _close_bits."""
    if dtype == torch.float32 and opts == "kahan":
        pytest.skip("Kahan summation applies to 16-bit params")
    a, ao = _run(name, "cpu", dtype, sizes=SMALL, **OPTS[opts])
    b, bo = _run(name, "triton", dtype, sizes=SMALL, **OPTS[opts])
    for what, x, y in _pairs(a, ao, b, bo):
        if name in ("ndadam", "padam") or opts == "kahan":
            _close_bits(x, y, what)
        else:
            assert torch.equal(_state_bits(x) if x.dtype != torch.float16 else _bits(x),
                               _state_bits(y) if y.dtype != torch.float16 else _bits(y)), what


# ---- checkpoints --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name", ["adamw_ams", "sgd_mom", "rmsprop", "mas_vector", "swats"])
def test_checkpoint_round_trip(name, backend):
    """3 steps, state_dict through a deep copy, 3 more steps in a fresh optimizer: bitwise the 6-step run, the
    loaded state bfloat16."""
    full, _ = _run(name, backend, BF16, steps=6)
    half, opt = _run(name, backend, BF16, steps=3)
    sd = copy.deepcopy(opt.state_dict())
    ps = [p.detach().clone().requires_grad_() for p in half]
    cls, kw = RULES[name]
    opt2 = cls(ps, backend=backend, state_dtype=BF16, **kw)
    opt2.load_state_dict(sd)
    for p in ps:
        assert all(v.dtype == BF16 for v in _moments(opt2, p).values())
    g = torch.Generator().manual_seed(1)
    for k in range(6):
        grads = [torch.randn(p.shape, generator=g).to(BF16) for p in ps]
        if k >= 3:
            for p, gr in zip(ps, grads):
                p.grad = gr
            opt2.step()
    for a, b in zip(full, ps):
        assert torch.equal(_bits(a), _bits(b))


def test_checkpoint_of_another_state_dtype_converts():
    """A float32-state checkpoint loads into a bfloat16-state optimizer as its state rounded to nearest even (the
    loading optimizer's state_dtype wins over the checkpoint's group), and back (widened exactly); a torch.optim
    checkpoint loads too."""
    name = "adamw_ams"
    cls, kw = RULES[name]
    ps32, opt32 = _run(name, "cpu", torch.float32, steps=3, state_dtype=None, sizes=[(6, 5), 7])
    q = [p.detach().clone().requires_grad_() for p in ps32]
    opt16 = cls(q, backend="cpu", state_dtype=BF16, **kw)
    opt16.load_state_dict(copy.deepcopy(opt32.state_dict()))
    assert all(g["state_dtype"] == BF16 for g in opt16.param_groups)
    for a, b in zip(ps32, q):
        m32, m16 = _moments(opt32, a), _moments(opt16, b)
        assert m32.keys() == m16.keys()
        for k in m32:
            assert m16[k].dtype == BF16 and torch.equal(m16[k], RD.round_to(m32[k], BF16)), k
    # Stepping on from the converted state is stepping a bfloat16-state optimizer from that state.
    for p in q:
        p.grad = torch.ones_like(p)
    opt16.step()
    assert all(v.dtype == BF16 for p in q for v in _moments(opt16, p).values())
    # bfloat16 -> float32: widened exactly.
    r = [p.detach().clone().requires_grad_() for p in q]
    back = cls(r, backend="cpu", **kw)
    back.load_state_dict(copy.deepcopy(opt16.state_dict()))
    for a, b in zip(q, r):
        for k, v in _moments(back, b).items():
            assert v.dtype == torch.float32 and torch.equal(v, opt16.state[a][k].float()), k
    # torch.optim.AdamW's checkpoint (float32 state).
    t = [p.detach().clone().requires_grad_() for p in ps32]
    topt = torch.optim.AdamW(t, amsgrad=True)
    for p in t:
        p.grad = torch.ones_like(p)
    topt.step()
    u = [p.detach().clone().requires_grad_() for p in t]
    mine = fh.AdamW(u, amsgrad=True, state_dtype=BF16, backend="cpu")
    mine.load_state_dict(topt.state_dict())
    for a, b in zip(t, u):
        assert torch.equal(mine.state[b]["exp_avg_sq"], RD.round_to(topt.state[a]["exp_avg_sq"], BF16))


def test_changing_state_dtype_between_steps_converts():
    p = torch.randn(50, requires_grad=True)
    opt = fh.RMSprop([p], momentum=0.9, backend="cpu")
    for k in range(4):
        p.grad = torch.randn(50)
        if k == 2:
            before = {key: v.clone() for key, v in _moments(opt, p).items()}
            opt.param_groups[0]["state_dtype"] = BF16
        opt.step()
        if k == 2:
            after = _moments(opt, p)
            assert all(v.dtype == BF16 for v in after.values())
    opt.param_groups[0]["state_dtype"] = None
    p.grad = torch.randn(50)
    opt.step()
    assert all(v.dtype == torch.float32 for v in _moments(opt, p).values()) and before


# ---- backends without it ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", [SIM, CUDA])
@pytest.mark.parametrize("name", ["mas_vector", "ndadam", "sgd_mom"])
def test_float64_params_keep_float64_state_on_cuda(name, backend):
    """state_dtype=bfloat16 narrows float32 state only: float64 params step with float64 state on the CUDA kernels
    (the ops would refuse bfloat16 state next to them: test_cuda_ops_refuse_bf16_state_with_float64_params)."""
    q = torch.ones(4, 4, dtype=torch.float64, device=_device(backend), requires_grad=True)
    cls, kw = RULES[name]
    opt = cls([q], backend=backend, state_dtype=BF16, **kw)
    q.grad = torch.full_like(q, 0.5)
    opt.step()
    assert bool((q != 1).any()) and all(v.dtype == torch.float64 for v in _moments(opt, q).values())


def test_backend_without_bf16_state_is_refused_by_name(monkeypatch):
    """A backend whose kernels lack bfloat16 state (its BF16_STATE false; every backend has it today, so one is made
    to lack it) is refused when named, before anything changes, saying which backends have it."""
    from fused_hybrid.backends import cpu
    monkeypatch.setattr(cpu, "BF16_STATE", False)
    p = torch.ones(4, 4, requires_grad=True)
    opt = fh.MAS([p], lr=0.1, backend="cpu", state_dtype=BF16)
    p.grad = torch.ones_like(p)
    with pytest.raises(B.BackendUnavailableError, match=r"state_dtype=torch.bfloat16 is not implemented by its "
                                                        r"kernels \(bfloat16 moment buffers run on \['cuda'"):
        opt.step()
    assert bool((p == 1).all()) and all(float(s["step"]) == 0 for s in opt.state.values())


@_needs_sim
def test_cuda_ops_refuse_bf16_state_with_float64_params():
    """At the op level (under the optimizer's dtype policy): bfloat16 state needs float32/16-bit params."""
    from fused_hybrid import hyper as H
    be = B.module("cuda_sim")
    p = torch.zeros(8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="bfloat16 state needs float32/bfloat16/float16 params"):
        be.sgd([p], [p.clone()], [torch.zeros(8, dtype=BF16)], [True], H.SGD(lr=0.1, momentum=0.9), None, None)


def test_auto_skips_backends_without_bf16_state(monkeypatch):
    """backend="auto" picks the first backend whose kernels take bfloat16 state when the group asks for it (here
    cuda_sim made to lack it: cpu is next), and the first one otherwise."""
    from fused_hybrid.backends import cuda_sim
    if not cuda_sim.available(torch.device("cpu")):
        pytest.skip(cuda_sim.why_unavailable(torch.device("cpu")))
    monkeypatch.setitem(B._AUTO_ORDER, "cpu", ("cuda_sim", "cpu"))
    dev = torch.device("cpu")
    for fam in ("mas", "ndadam", "adaptive"):
        assert B.resolve("auto", dev, fam, bf16_state=True).NAME == "cuda_sim"
    monkeypatch.setattr(cuda_sim, "BF16_STATE", False)
    assert B.resolve("auto", dev, "mas").NAME == "cuda_sim"
    assert B.resolve("auto", dev, "mas", bf16_state=True).NAME == "cpu"
    with pytest.raises(B.BackendUnavailableError, match="state_dtype"):
        B.resolve("cuda_sim", dev, "ndadam", bf16_state=True)


# ---- the CUDA kernels: bitwise the cpu backend ------------------------------------------------------------------------

# Small simulator chunks (1028 elements: a multiple of 4, so chunk starts are Philox group starts; the (3, 6007)
# tensor spans 18 chunks, its last one ending mid-group) and an odd one (1027: chunk starts off the groups, the
# scalar path's per-element bits).
@pytest.mark.parametrize("backend,chunk", [pytest.param("cuda_sim", 1028, marks=_needs_sim, id="sim-1028"),
                                           pytest.param("cuda_sim", 1027, marks=_needs_sim, id="sim-1027"),
                                           pytest.param("cuda", None, marks=_needs_cuda, id="cuda")])
@pytest.mark.parametrize("dtype", [BF16, torch.float32, torch.float16], ids=["bf16", "fp32", "fp16"])
@pytest.mark.parametrize("opts", sorted(OPTS))
@pytest.mark.parametrize("name", sorted(RULES))
def test_cuda_kernels_bits_equal_cpu(name, opts, dtype, backend, chunk):
    """The CUDA kernels' bfloat16 state: params and every state tensor bitwise the cpu backend's after 3 steps
    (nearest, stochastic rounding of params and state, Kahan), bfloat16 / float16 / float32 params, odd sizes,
    several tensors and chunks; SWATS's switch sums to float64 rounding (test_low_precision says why)."""
    if dtype == torch.float32 and opts == "kahan":
        pytest.skip("Kahan summation applies to 16-bit params")
    if dtype == torch.float16 and chunk == 1027:
        pytest.skip("one chunk size covers float16 params")
    from test_low_precision import _assert_same_run
    from fused_hybrid.backends import cuda_sim
    sizes = [(7, 13), 5, (3, 6007), 1, 64]
    a = _run(name, "cpu", dtype, steps=3, sizes=sizes, **OPTS[opts])
    if backend == "cuda_sim":
        with cuda_sim.settings(base_chunk=chunk):
            b = _run(name, backend, dtype, steps=3, sizes=sizes, **OPTS[opts])
    else:
        b = _run(name, backend, dtype, steps=3, sizes=sizes, **OPTS[opts])
    for p in b[0]:
        assert all(v.dtype == BF16 for v in _moments(b[1], p).values())
    _assert_same_run(a, b)


# MAS's and ND-Adam's branches that test_low_precision.RULES does not reach: the normalized variant, Nesterov, both
# kinds of weight decay, correction with momentum (both of its branches: the tensors' directions disagree or not).
MORE = {
    "mas_normalized": (fh.MAS, dict(lr=1e-2, momentum=0.9, nesterov=True, variant="normalized", weight_decay=0.1)),
    "mas_correction_mom": (fh.MAS, dict(lr=1e-2, momentum=0.5, dampening=0.1, variant="correction",
                                        weight_decay=0.1, decoupled_weight_decay=True)),
    "mas_vector_wd": (fh.MAS, dict(lr=1e-2, variant="vector", weight_decay=0.1, maximize=True)),
    "ndadam_wd": (fh.NDAdam, dict(lr=1e-2, weight_decay=0.1)),
}


@pytest.mark.parametrize("backend", [pytest.param("cuda_sim", marks=_needs_sim), CUDA])
@pytest.mark.parametrize("dtype", [BF16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("opts", ["plain", "sr"])
@pytest.mark.parametrize("name", sorted(MORE))
def test_cuda_mas_ndadam_branches_bits_equal_cpu(name, opts, dtype, backend, monkeypatch):
    """The CUDA kernels of MAS (pass 2 recomputes the moments from the old bfloat16 state) and ND-Adam (m recomputed
    in the passes after the moment update, v stored per row): params and state bitwise the cpu backend's after 4
    steps, in the branches RULES leaves out."""
    from test_low_precision import _assert_same_run
    from fused_hybrid.backends import cuda_sim
    monkeypatch.setitem(RULES, name, MORE[name])
    sizes = [(7, 13), 5, (3, 2100), 1, 64]
    a = _run(name, "cpu", dtype, sizes=sizes, **OPTS[opts])
    if backend == "cuda_sim":
        with cuda_sim.settings(base_chunk=1028):
            b = _run(name, backend, dtype, sizes=sizes, **OPTS[opts])
    else:
        b = _run(name, backend, dtype, sizes=sizes, **OPTS[opts])
    for p in b[0]:
        assert all(v.dtype == BF16 for v in _moments(b[1], p).values())
    _assert_same_run(a, b)


@pytest.mark.parametrize("backend", [SIM, CUDA])
@pytest.mark.parametrize("dtype", [BF16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("opts", ["plain", "sr"])
def test_cuda_swats_both_phases_bits_equal_cpu(opts, dtype, backend):
    """SWATS with bfloat16 state switching to its SGD phase after a few steps (per tensor, nearly constant
    gradients): the SGD phase's momentum buffer (stochastic-rounding stream 4, hyper.STATE_STREAMS) and the Adam
    phase's moments bitwise the cpu backend's, the switch steps the same."""
    from test_low_precision import _assert_same_run, swats_both_phases
    a, b = swats_both_phases(backend, dtype, [(3, 2007), 5, 1029], 1028, state_dtype=BF16, **OPTS[opts])
    assert all(b[1].state[p]["momentum_buffer"].dtype == BF16 for p in b[0])
    _assert_same_run(a, b)


# ---- GradScaler -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", DONE)
def test_found_inf_changes_nothing(backend):
    name = "mas_vector"
    ps, opt = _run(name, backend, BF16, steps=2, sizes=SMALL)
    before = {i: {k: v.clone() for k, v in _moments(opt, p).items()} for i, p in enumerate(ps)}
    params = [p.detach().clone() for p in ps]
    dev = _device(backend)
    opt.found_inf = torch.ones((), device=dev)
    opt.grad_scale = torch.ones((), device=dev)
    for p in ps:
        p.grad = torch.randn(p.shape).to(BF16).to(dev)
    opt.step()
    for i, p in enumerate(ps):
        assert torch.equal(_bits(p), _bits(params[i]))
        for k, v in _moments(opt, p).items():
            assert torch.equal(v, before[i][k])


@pytest.mark.parametrize("backend", DONE)
def test_poisoned_outputs_are_overwritten(backend):
    """Whatever an output holds before the call, the kernels overwrite it: a fresh SGD momentum buffer in bfloat16
    (NaN before its first step, buf = g after it), SWATS's partials (NaN before) next to bfloat16 moments; odd
    sizes, several tensors."""
    from fused_hybrid import hyper as H
    be = B.module(backend)
    sizes = _sizes(backend)
    dev = _device(backend)
    gen = torch.Generator().manual_seed(6)
    ps = [torch.randn((n,) if isinstance(n, int) else n, generator=gen).to(dev) for n in sizes]
    gs = [torch.randn(p.shape, generator=gen).to(dev) for p in ps]
    T = len(ps)
    bufs = [torch.full(p.shape, float("nan"), dtype=BF16, device=dev) for p in ps]
    be.sgd([p.clone() for p in ps], gs, bufs, [True] * T, H.SGD(lr=0.1, momentum=0.9), None, None)
    for b, g in zip(bufs, gs):
        assert torch.equal(_state_bits(b).cpu(), _state_bits(RD.round_to(g.cpu(), BF16)))
    m = [torch.randn(p.shape, generator=gen).to(BF16).to(dev) for p in ps]
    v = [torch.rand(p.shape, generator=gen).to(BF16).to(dev) for p in ps]
    sw = H.SwatsArgs(momentum_buffers=[torch.zeros(p.shape, dtype=BF16, device=dev) for p in ps],
                     phase=torch.zeros(T, dtype=torch.int32, device=dev),
                     sgd_lr=torch.zeros(T, dtype=torch.float64, device=dev),
                     partials=torch.full((T, 2), float("nan"), dtype=torch.float64, device=dev), nesterov=False)
    sw.phase[1] = 1
    sw.sgd_lr[1] = 0.05
    w = [p.clone() for p in ps]
    be.adaptive(w, gs, m, v, [], [torch.tensor(2.0, device=dev) for _ in ps],
                H.Adaptive(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8), None, None, sw)
    assert not sw.partials.isnan().any() and bool(sw.partials[1].eq(0).all())
    assert all(bool(t.isfinite().all()) for t in w + m + v + sw.momentum_buffers)
    assert not torch.equal(sw.momentum_buffers[1], torch.zeros_like(sw.momentum_buffers[1]))


@pytest.mark.parametrize("backend,name,opts", [
    ("cpu", "adamw_ams", {}), ("cpu", "mas_vector", dict(stochastic_rounding=True)),
    ("triton", "sgd_mom", {}), ("triton", "rmsprop", dict(stochastic_rounding=True)),
], ids=["cpu-adamw_ams", "cpu-mas_vector-sr", "triton-sgd_mom", "triton-rmsprop-sr"])
def test_compiled_step_matches_eager(backend, name, opts):
    """torch.compile(opt.step, fullgraph=True) with bfloat16 state: the ops see the state's dtype through fake
    tensors; params and state bitwise as eager steps (stochastic rounding: the first step eager, for its seeds)."""
    torch._dynamo.reset()
    cls, kw = RULES[name]
    dev = _device(backend)
    a = [p.detach().to(dev).requires_grad_() for p in _params(BF16, [(5, 7), 33])]
    b = [p.detach().to(dev).requires_grad_() for p in _params(BF16, [(5, 7), 33])]
    o1 = cls(a, backend=backend, state_dtype=BF16, **kw, **opts)
    o2 = cls(b, backend=backend, state_dtype=BF16, **kw, **opts)
    compiled = torch.compile(o1.step, fullgraph=True)
    g = torch.Generator().manual_seed(1)
    for k in range(3):
        for x, y in zip(a, b):
            x.grad = torch.randn(x.shape, generator=g).to(device=dev, dtype=BF16)
            y.grad = x.grad.clone()
        torch.manual_seed(9)
        (o1.step if (k == 0 and opts) else compiled)()
        torch.manual_seed(9)
        o2.step()
    for x, y in zip(a, b):
        assert torch.equal(_bits(x), _bits(y))
        assert all(v.dtype == BF16 for v in _moments(o1, x).values())
        for key in o1.state[x]:
            assert torch.equal(o1.state[x][key], o2.state[y][key]), key
