"""The Triton backend's eager launchers: launch geometry, the pointer/chunk tables and their cache, and one
function per rule family (``_adaptive``, ``_sgd``, ``_mas``, ``_ndadam``) that builds the tables and launches the
kernels of ``fused_hybrid.triton_kernels``.

A leaf module: the backend API (``backends/triton.py``) calls these in eager steps, and the custom ops of
``triton_ops`` call the same functions at run time under torch.compile; neither of those is imported here. Every
launch goes through ``_launch`` (tests count launches by wrapping it; ``bench.host_overhead`` stubs it).
"""
from __future__ import annotations

import os
from collections import OrderedDict

import torch

from ..hyper import CLIP_ADABOUND, CLIP_NONE, FORM_PAPER, MAS_VARIANTS, ROUND_KAHAN, ROUND_NEAREST, ROUND_STOCHASTIC

try:
    import triton
    import triton.language as tl

    from ..triton_kernels import adaptive as _ka
    from ..triton_kernels import common as _kc
    from ..triton_kernels import mas as _km
    from ..triton_kernels import ndadam as _kn
    from ..triton_kernels import rms as _kr
    from ..triton_kernels import sgd as _ks
    _IMPORT_ERROR = ""
except Exception as e:  # noqa: BLE001 - any import failure means "unavailable", with the reason
    _IMPORT_ERROR = f"triton could not be imported: {e!r}"



def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------------------------------------------
# Launch geometry. On the GPU a program walks CHUNK elements in BLOCK-sized steps (many programs per SM for
# >= 1M elements, 128-bit accesses per thread); the interpreter pays per program and per op, so it takes fewer,
# wider blocks. Tests override these to make small tensors span several chunks.

GPU_BLOCK, GPU_CHUNK, GPU_WARPS = 1024, 8192, 4
INTERP_BLOCK, INTERP_CHUNK = 1024, 2048
ND_ROWS = 4  # weight vectors per ND-Adam program


def _geometry(device: torch.device) -> tuple[int, int, dict]:
    if device.type == "cuda":
        return GPU_BLOCK, GPU_CHUNK, {"num_warps": GPU_WARPS}
    return INTERP_BLOCK, INTERP_CHUNK, {}


# Compile options of every kernel of this backend. No FMA contraction: the kernels are memory-bound, so a fused
# multiply-add buys no time, and without it the GPU rounds every operation as written (as the interpreter does;
# division and sqrt are the correctly rounded div_rn / sqrt_rn, triton_kernels/common.py), i.e. computes the bits
# of the cpu backend and of the CUDA kernels, which nvcc builds with -fmad=false for the same reason (on an H200 the
# CUDA Adam step, without FMA, took 0.900 ms on GPT-2 small against 0.886 ms for this backend's, with FMA).
COMPILE_OPTIONS = {"enable_fp_fusion": False}


def _launch(kernel, grid, *args, **kwargs):
    """Every kernel launch of this backend (one place to count them, and to give them COMPILE_OPTIONS)."""
    kernel[grid](*args, **COMPILE_OPTIONS, **kwargs)


_TL_DTYPE = {}
if not _IMPORT_ERROR:
    _TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
                 torch.bfloat16: tl.bfloat16}


# --------------------------------------------------------------------------------------------------------------
# Tables

class _Tables:
    __slots__ = ("chunks", "meta", "ptrs", "T", "C", "aligned", "host", "_counters")

    def __init__(self, chunks, meta, ptrs, T, C, aligned, host):
        self.chunks, self.meta, self.ptrs, self.T, self.C, self.aligned = chunks, meta, ptrs, T, C, aligned
        self.host = host  # keeps pinned host copies alive until the asynchronous copies are done
        self._counters = None

    def counters(self, device) -> torch.Tensor:
        """int32 [T], zero between launches: MAS's pass-0 programs count themselves in per tensor (the kernel
        resets them), so they are made once per table, not per step."""
        if self._counters is None:
            self._counters = torch.zeros(max(self.T, 1), dtype=torch.int32, device=device)
        return self._counters


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 64


def _ptr(x) -> int:
    return 0 if x is None else x.data_ptr()


def _to_device(host: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(device copy, pinned host tensor to keep alive): an asynchronous copy, no host sync."""
    if device.type == "cuda":
        host = host.pin_memory()
        return host.to(device, non_blocking=True), host
    return host, None


def _tables(device: torch.device, lists: list[list], numels: list[int], flags: list[int], chunk: int,
            units: list[int] | None = None, extra: list[tuple] | None = None, min_chunks: int = 0) -> _Tables:
    """Pointer table of ``lists`` (each a list of tensors or Nones, one per tensor), chunk table and meta
    (numel, first chunk, end chunk, flag, *extra[t]). ``units`` (ND-Adam: vectors) replaces numels when cutting
    chunks: chunk i of tensor t covers units [i*chunk, (i+1)*chunk). Every tensor gets at least ``min_chunks``
    chunks (1: an empty tensor gets a zero-length one, for kernels whose programs must visit every tensor)."""
    key = (device, chunk, min_chunks, tuple(numels), tuple(flags), tuple(units or ()), tuple(extra or ()),
           tuple(tuple(_ptr(x) for x in lst) for lst in lists))
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    T = len(numels)
    count = units if units is not None else numels
    chunks, meta = [], []
    for t, (n, f) in enumerate(zip(count, flags)):
        c0 = len(chunks)
        chunks.extend((t, i) for i in range(max(min_chunks, -(-n // chunk))))  # the kernels multiply by CHUNK
        meta.append((numels[t], c0, len(chunks), f) + (tuple(extra[t]) if extra else ()))
    ptr_rows = [[_ptr(x) for x in lst] for lst in lists]
    aligned = all(p % 16 == 0 for row in ptr_rows for p in row)
    host_parts = []
    chunks_t, h = _to_device(torch.tensor(chunks or [(0, 0)], dtype=torch.int64), device)
    host_parts.append(h)
    width = 4 + (len(extra[0]) if extra else 0)
    meta_t, h = _to_device(torch.tensor(meta or [(0,) * width], dtype=torch.int64), device)
    host_parts.append(h)
    ptrs_t, h = _to_device(torch.tensor(ptr_rows, dtype=torch.int64).reshape(len(lists), T), device)
    host_parts.append(h)
    tab = _Tables(chunks_t, meta_t, ptrs_t, T, len(chunks), aligned, host_parts)
    _CACHE[key] = tab
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return tab


_SEEDS: OrderedDict = OrderedDict()


def _bf16(*lists) -> bool:
    """Whether a call's moment buffers are bfloat16 (a group's state_dtype; see _state_type)."""
    return _state_type(None, *lists) == tl.bfloat16


def _rounding(params, hp, kahan_comps, seeds, dev, bf16_state=False):
    """How the kernels store the params (issue 16): (ROUND, the Kahan buffers' table row, the seed table). The
    seed table is int64 [T, 2] (each seed's low and high 32-bit words) on the device, made once per set of seeds
    (an asynchronous copy, cached like the pointer tables: the seeds never change while a plan lives). ROUND is the
    param store's code plus triton_kernels.rounding.STATE_SR (4) when stochastic rounding applies to bfloat16
    state too (float32 params: 4 alone, their own store is exact)."""
    T = len(params)
    r = int(hp.rounding)
    if r == ROUND_NEAREST:
        return 0, [None] * T, None
    state_sr = 4 if (r == ROUND_STOCHASTIC and bf16_state) else 0
    if params[0].dtype not in (torch.bfloat16, torch.float16) and not (state_sr and params[0].dtype == torch.float32):
        raise ValueError(f"rounding mode {r} applies to bfloat16/float16 params (and stochastic rounding to bfloat16 "
                         f"state), not {params[0].dtype}")
    if r == ROUND_KAHAN:
        if kahan_comps is None or len(kahan_comps) != T or any(
                c is None or c.dtype != p.dtype or c.numel() != p.numel() or not c.is_contiguous()
                for c, p in zip(kahan_comps, params)):
            raise ValueError("Kahan summation needs one contiguous compensation buffer of the param's dtype and "
                             "size per param")
        return ROUND_KAHAN, list(kahan_comps), None
    if r != ROUND_STOCHASTIC:
        raise ValueError(f"unknown rounding mode {r}")
    if seeds is None or len(seeds) != T:
        raise ValueError("stochastic rounding needs one seed per param")
    key = (dev, tuple(seeds))
    tab = _SEEDS.get(key)
    if tab is None:
        words = [(s & 0xFFFFFFFF, (s >> 32) & 0xFFFFFFFF) for s in (int(x) % (1 << 64) for x in seeds)]
        tab, host = _to_device(torch.tensor(words, dtype=torch.int64).reshape(T, 2), dev)
        _SEEDS[key] = tab = (tab, host)
        if len(_SEEDS) > _CACHE_SIZE:
            _SEEDS.popitem(last=False)
    else:
        _SEEDS.move_to_end(key)
    own = ROUND_STOCHASTIC if params[0].dtype in (torch.bfloat16, torch.float16) else 0
    return own | state_sr, [None] * T, tab[0]


def _check(params, grads) -> list[torch.Tensor]:
    """Flat kernels need dense row-major operands: a non-contiguous gradient is copied (rare; one extra
    launch), a non-contiguous parameter cannot be updated in place through a flat view."""
    out = []
    for p, g in zip(params, grads):
        if not p.is_contiguous():
            raise ValueError("the triton backend needs contiguous parameters (got strides "
                             f"{p.stride()} for shape {tuple(p.shape)}); use backend='reference'")
        if g.dtype != p.dtype:
            raise ValueError(f"gradient dtype {g.dtype} differs from parameter dtype {p.dtype}")
        out.append(g if g.is_contiguous() else g.contiguous())
    return out


def _lr_args(hp, device):
    """(float lr, lr tensor or None): a 0-dim tensor lr is read by the kernel, never on the host."""
    if isinstance(hp.lr, torch.Tensor):
        return 0.0, hp.lr.to(device)
    return float(hp.lr), None


def _dtypes(dtype: torch.dtype):
    """(parameter dtype, compute/state dtype) as Triton types: math in float32, float64 for float64 params."""
    return _TL_DTYPE[dtype], (tl.float64 if dtype == torch.float64 else tl.float32)


def _state_type(C, *lists):
    """The kernels' state dtype S: bfloat16 when the call's moment buffers are (a group's state_dtype; the optimizer
    makes every buffer of a bucket in one dtype, so the first one present decides), else the compute dtype C."""
    for lst in lists:
        for t in lst or ():
            if t is not None:
                return tl.bfloat16 if t.dtype == torch.bfloat16 else C
    return C


def _step_flags(dtype: torch.dtype, hp, lr_t, grad_scale, found_inf, *state_lists) -> dict:
    """The constexpr flags every update kernel takes: dtypes (P param, C compute, S state: see _state_type), which
    device scalars it reads, maximize, decay."""
    P, C = _dtypes(dtype)
    flags = dict(P=P, C=C, S=_state_type(C, *state_lists), LR_TENSOR=lr_t is not None, HAS_SCALE=grad_scale is not None,
                 HAS_FOUND_INF=found_inf is not None, MAXIMIZE=bool(hp.maximize), HAS_WD=hp.weight_decay != 0)
    if hasattr(hp, "decoupled"):  # every family but ND-Adam's (which refuses decoupled decay)
        flags["DECOUPLED"] = bool(hp.decoupled)
    return flags


def _finalize(tab, found_inf, step_list, partials_in=None, out=None, np_=0, npp=1, width=4):
    """Advance the steps of ``tab``'s tensors unless found_inf, and sum per-chunk partials per tensor."""
    if tab.T == 0:
        return
    _launch(_kc.finalize_kernel, (tab.T,), tab.meta, tab.ptrs, tab.T, partials_in, out, found_inf,
            STEP_LIST=getattr(step_list, "value", step_list), HAS_FOUND_INF=found_inf is not None, NP=np_, NPP=npp,
            W=width)


def _grads(params, grads) -> list:
    """The gradients the kernels read: contiguous copies where needed (``_check``). The family functions keep this
    list until their launches are queued: a copy freed earlier could be reused under the launch (at once for the
    interpreter's CPU tensors)."""
    return _check(params, [p.grad for p in params] if grads is None else grads)

# --------------------------------------------------------------------------------------------------------------
# Rule families (the arguments of backends/reference.py's API, plus ``snap``: the fast path's table source, see
# backends/triton.py's _Snapshot).

def _adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp, grad_scale=None, found_inf=None,
              swats=None, snap=None, kahan_comps=None, seeds=None):
    if not params:
        return
    dev = params[0].device
    BLOCK, CHUNK, opts = _geometry(dev)
    rnd, comps, seed_t = _rounding(params, hp, kahan_comps, seeds, dev,
                                   _bf16(exp_avgs, swats.momentum_buffers if swats is not None else None))

    def build():  # -> (tables, the gradients they point at)
        T = len(params)
        maxs = list(max_exp_avg_sqs) if hp.amsgrad else [None] * T
        bufs = list(swats.momentum_buffers) if swats is not None else [None] * T
        gs = _grads(params, grads)
        return _tables(dev, [params, gs, exp_avgs, exp_avg_sqs, maxs, bufs, steps, comps],
                       [p.numel() for p in params], [0] * T, CHUNK), gs

    tab, _live = build() if snap is None else snap.tables(build)
    _adaptive_launch(tab, dev, hp, grad_scale, found_inf, swats, params[0].dtype, BLOCK, CHUNK, opts, rnd, seed_t,
                     (exp_avgs, swats.momentum_buffers if swats is not None else None))


def _adaptive_launch(tab, dev, hp, grad_scale, found_inf, swats, dtype, BLOCK, CHUNK, opts, rnd=0, seed_t=None,
                     state_lists=()):
    lr, lr_t = _lr_args(hp, dev)
    chunk_partials = None
    if swats is not None:
        chunk_partials = torch.empty(max(tab.C, 1), 2, dtype=torch.float64, device=dev)
    clip_mode = hp.clip_mode if hp.form == FORM_PAPER else CLIP_NONE
    if tab.C > 0:
        _launch(_ka.adaptive_kernel, (tab.C,), tab.chunks, tab.meta, tab.ptrs, tab.T, lr_t, grad_scale, found_inf,
                None if swats is None else swats.phase, None if swats is None else swats.sgd_lr, chunk_partials,
                lr, float(hp.beta1), float(hp.beta2), float(hp.eps), float(hp.weight_decay), 2.0 * float(hp.partial),
                float(hp.clip_lo), float(hp.clip_hi) if clip_mode != CLIP_ADABOUND else float("inf"),
                float(hp.final_lr), float(hp.gamma),
                **_step_flags(dtype, hp, lr_t, grad_scale, found_inf, *state_lists),
                AMSGRAD=bool(hp.amsgrad), FORM=int(hp.form),
                POW=hp.form == FORM_PAPER and float(hp.partial) != 0.5, CLIP=int(clip_mode),
                SWATS=swats is not None, NESTEROV=bool(swats is not None and swats.nesterov), ALIGNED=tab.aligned,
                BLOCK=BLOCK, CHUNK=CHUNK, FINAL_LR_RELATIVE=bool(hp.final_lr_relative), seed_ptr=seed_t, ROUND=rnd,
                **opts)
    if swats is not None:
        _finalize(tab, found_inf, _ka.L_STEP, chunk_partials, swats.partials, 2, 2)
    else:
        _finalize(tab, found_inf, _ka.L_STEP)


def _sgd(params, grads, momentum_buffers, firsts, hp, grad_scale=None, found_inf=None, snap=None, steps=None,
         kahan_comps=None, seeds=None):
    if not params:
        return
    dev = params[0].device
    BLOCK, CHUNK, opts = _geometry(dev)
    use_mom = hp.momentum != 0
    rnd, comps, seed_t = _rounding(params, hp, kahan_comps, seeds, dev, use_mom and _bf16(momentum_buffers))
    sr_any = rnd % 4 == ROUND_STOCHASTIC or rnd >= 4  # (param or state)
    if sr_any and (steps is None or len(steps) != len(params)):
        raise ValueError("stochastic rounding needs one step count per param (the random bits' counter)")
    step_row = list(steps) if sr_any else [None] * len(params)

    def build():  # -> (tables, the gradients they point at)
        T = len(params)
        bufs = list(momentum_buffers) if use_mom else [None] * T
        flags = [int(bool(f)) for f in firsts] if use_mom else [0] * T
        gs = _grads(params, grads)
        return _tables(dev, [params, gs, bufs, step_row, comps], [p.numel() for p in params], flags, CHUNK), gs

    tab, _live = build() if snap is None else snap.tables(build)
    if tab.C > 0:
        lr, lr_t = _lr_args(hp, dev)
        _launch(_ks.sgd_kernel, (tab.C,), tab.chunks, tab.meta, tab.ptrs, tab.T, lr_t, grad_scale, found_inf,
                lr, float(hp.momentum), float(hp.dampening), float(hp.weight_decay),
                **_step_flags(params[0].dtype, hp, lr_t, grad_scale, found_inf,
                              momentum_buffers if use_mom else None), MOMENTUM=use_mom,
                NESTEROV=bool(hp.nesterov), ALIGNED=tab.aligned, BLOCK=BLOCK, CHUNK=CHUNK, seed_ptr=seed_t,
                ROUND=rnd, **opts)
    if sr_any:  # SGD counts steps only for stochastic rounding
        _finalize(tab, found_inf, _ks.L_STEP)


def _rms(params, grads, square_avgs, steps, hp, grad_scale=None, found_inf=None, grad_avgs=None,
         momentum_buffers=None, snap=None, kahan_comps=None, seeds=None):
    if not params:
        return
    dev = params[0].device
    BLOCK, CHUNK, opts = _geometry(dev)
    use_mom = hp.momentum != 0
    rnd, comps, seed_t = _rounding(params, hp, kahan_comps, seeds, dev, _bf16(square_avgs))

    def build():  # -> (tables, the gradients they point at)
        T = len(params)
        gavgs = list(grad_avgs) if hp.centered else [None] * T
        bufs = list(momentum_buffers) if use_mom else [None] * T
        gs = _grads(params, grads)
        return _tables(dev, [params, gs, square_avgs, gavgs, bufs, steps, comps], [p.numel() for p in params],
                       [0] * T, CHUNK), gs

    tab, _live = build() if snap is None else snap.tables(build)
    lr, lr_t = _lr_args(hp, dev)
    if tab.C > 0:
        _launch(_kr.rms_kernel, (tab.C,), tab.chunks, tab.meta, tab.ptrs, tab.T, lr_t, grad_scale, found_inf,
                lr, float(hp.keep), float(hp.add), float(hp.eps), float(hp.weight_decay), float(hp.momentum),
                float(hp.lr_decay), **_step_flags(params[0].dtype, hp, lr_t, grad_scale, found_inf, square_avgs),
                CENTERED=bool(hp.centered), MOMENTUM=use_mom, ALIGNED=tab.aligned, BLOCK=BLOCK, CHUNK=CHUNK,
                seed_ptr=seed_t, ROUND=rnd, **opts)
    _finalize(tab, found_inf, _kr.L_STEP)


def _mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale=None, found_inf=None,
         snap=None, kahan_comps=None, seeds=None):
    if not params:
        return
    dev = params[0].device
    BLOCK, CHUNK, opts = _geometry(dev)
    rnd, comps, seed_t = _rounding(params, hp, kahan_comps, seeds, dev, _bf16(exp_avgs))
    T = len(params)
    use_mom = hp.momentum != 0
    variant = int(hp.variant)  # hyper.MAS_VARIANTS code, = triton_kernels/mas.py V_*
    reducing = variant != MAS_VARIANTS.index("sum")

    def build():  # -> (tables, the gradients they point at)
        bufs = list(momentum_buffers) if use_mom else [None] * T
        gs = _grads(params, grads)
        # The reducing variants' pass-0 programs advance the steps, so an empty tensor gets one zero-length chunk.
        return _tables(dev, [params, gs, exp_avgs, exp_avg_sqs, bufs, steps, comps], [p.numel() for p in params],
                       [0] * T, CHUNK, min_chunks=int(reducing)), gs

    tab, _live = build() if snap is None else snap.tables(build)
    lr, lr_t = _lr_args(hp, dev)
    partials = totals = None
    if reducing:
        partials = torch.empty(max(tab.C, 1), _km.NPP, dtype=torch.float64, device=dev)
        totals = torch.empty(T, 3, dtype=torch.float64, device=dev)
    args = (tab.chunks, tab.meta, tab.ptrs, tab.T, lr_t, grad_scale, found_inf, partials, totals,
            tab.counters(dev) if reducing else None,
            lr, float(hp.beta1), float(hp.beta2), float(hp.eps), float(hp.weight_decay), float(hp.momentum),
            float(hp.dampening), float(hp.adam_w), float(hp.sgd_w))
    flags = dict(**_step_flags(params[0].dtype, hp, lr_t, grad_scale, found_inf, exp_avgs), MOMENTUM=use_mom,
                 NESTEROV=bool(hp.nesterov), VARIANT=variant, ALIGNED=tab.aligned, BLOCK=BLOCK, CHUNK=CHUNK,
                 seed_ptr=seed_t, ROUND=rnd, **opts)
    # bfloat16 state in the reducing variants: pass 0 computes the new moments for its sums without storing them,
    # pass 1 recomputes and stores them (triton_kernels/mas.py, _mas_block).
    defer = reducing and flags["S"] != flags["C"]
    if tab.C > 0:
        _launch(_km.mas_kernel, (tab.C,), *args, PASS=0, UPDATE_STATE=True, STORE_STATE=not defer, **flags)
    if not reducing:
        _finalize(tab, found_inf, _km.L_STEP)
        return
    # Pass 0's last program per tensor summed its partials and advanced its step.
    if tab.C > 0:
        _launch(_km.mas_kernel, (tab.C,), *args, PASS=1, UPDATE_STATE=defer, STORE_STATE=defer, **flags)


def _vector_view(p: torch.Tensor, axes) -> tuple[int, int]:
    """(L, inner): p as [outer, L, inner] with its weight vectors along L. The axes must be consecutive dims."""
    axes = sorted(axes)
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise ValueError(f"the triton backend's ND-Adam needs consecutive vec_axes, got {tuple(axes)}; "
                         "use backend='reference'")
    L = 1
    for d in axes:
        L *= p.shape[d]
    inner = 1
    for d in range(axes[-1] + 1, p.dim()):
        inner *= p.shape[d]
    return L, inner


def _ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale=None, found_inf=None, snap=None,
            kahan_comps=None, seeds=None):
    """One row-kernel launch over every tensor (its 1-D tensors are plain-Adam chunks of the same kernel) and one
    finalize that advances the steps: 2 launches."""
    if not params:
        return
    dev = params[0].device
    BLOCK, _, _ = _geometry(dev)
    if not any(axes):
        # Only biases and other 1-D parameters: plain Adam with L2 decay (ND-Adam's reference code does the same).
        from ..hyper import Adaptive
        ahp = Adaptive(lr=hp.lr, beta1=hp.beta1, beta2=hp.beta2, eps=hp.eps, weight_decay=hp.weight_decay,
                       maximize=hp.maximize, rounding=hp.rounding)
        _adaptive(params, grads, exp_avgs, exp_avg_sqs, [], steps, ahp, grad_scale, found_inf, snap=snap,
                  kahan_comps=kahan_comps, seeds=seeds)
        return
    rnd, comps, seed_t = _rounding(params, hp, kahan_comps, seeds, dev, _bf16(exp_avgs))

    def build():  # -> ((tables, longest vector), the gradients they point at)
        shapes = [_vector_view(p, ax) if ax else (0, 1) for p, ax in zip(params, axes)]
        numels = [p.numel() for p in params]
        # Units a chunk is cut in: weight vectors, or blocks of BLOCK elements of a 1-D tensor (L = 0).
        units = [n // L if L else -(-n // BLOCK) for n, (L, _) in zip(numels, shapes)]
        gs = _grads(params, grads)
        tab = _tables(dev, [params, gs, exp_avgs, exp_avg_sqs, steps, comps], numels, [0] * len(params), ND_ROWS,
                      units=units, extra=shapes)
        return (tab, max(L for L, _ in shapes)), gs

    (tab, max_l), _live = build() if snap is None else snap.tables(build)
    if tab.C > 0:
        lr, lr_t = _lr_args(hp, dev)
        block_l = min(triton.next_power_of_2(max(max_l, 16)), 1024)
        _launch(_kn.ndadam_kernel, (tab.C,), tab.chunks, tab.meta, tab.ptrs, tab.T, lr_t, grad_scale, found_inf,
                lr, float(hp.beta1), float(hp.beta2), float(hp.eps), float(hp.weight_decay),
                **_step_flags(params[0].dtype, hp, lr_t, grad_scale, found_inf, exp_avgs), ROWS=ND_ROWS,
                BLOCK_L=block_l,
                FLAT_BLOCK=BLOCK, seed_ptr=seed_t, ROUND=rnd)
    _finalize(tab, found_inf, _kn.L_STEP, width=_kn.META_W)


# --------------------------------------------------------------------------------------------------------------
# SWATS's switch test (fused_hybrid.swats calls these through the registry when the Triton kernels are the
# bookkeeping of the backend that steps the SWATS tensors)

SWATS_BLOCK = 256  # tensors per program of the bookkeeping kernels


def swats_per_tensor(seg_of, st: dict, vecs: dict):
    """phase[t] (int32) and the SGD-phase step size (float64) of every SWATS tensor: one launch."""
    from ..triton_kernels import swats as ks
    T = seg_of.numel()
    phase = torch.empty(T, dtype=torch.int32, device=seg_of.device)
    sgd_lr = torch.empty(T, dtype=torch.float64, device=seg_of.device)
    if T:
        _launch(ks.swats_args_kernel, (-(-T // SWATS_BLOCK),), seg_of, st["phase"], st["Lambda"], st["lr_ref"],
                vecs["lr"], vecs["one_minus_b1"], phase, sgd_lr, T, BLOCK=SWATS_BLOCK)
    return phase, sgd_lr


def swats_switch(members, T: int, partials, stepped, totals, found_inf, st: dict, vecs: dict, mode: int) -> None:
    """One launch of triton_kernels.swats.swats_switch_kernel over the segments (the rows of ``members``; ``mode``:
    see the kernel's docstring)."""
    from ..triton_kernels import swats as ks
    _launch(ks.swats_switch_kernel, (members.shape[0],), members, members.shape[1], T, partials, stepped, totals,
            found_inf, st["phase"], st["lam"], st["Lambda"], st["switch_step"], st["seg_step"], st["gamma"],
            st["lr_ref"], vecs["lr"], vecs["b2"], vecs["rtol"], vecs["atol"], MODE=mode,
            HAS_STEPPED=stepped is not None, HAS_FOUND_INF=found_inf is not None, BLOCK=SWATS_BLOCK)
    # (No FMA, COMPILE_OPTIONS: lam = b2*lam + (1-b2)*gamma rounds as the C++ bookkeeping rounds it.)
