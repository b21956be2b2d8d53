"""The reference backend: the multi-tensor backend API served by looping over ``fused_hybrid.reference``.

Every backend module exposes one function per rule family with these arguments (the optimizer passes them by
keyword; the state lists a rule does not have are left out, hence rms's defaults):

    adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp, grad_scale, found_inf, swats, cache)
    rms(params, grads, square_avgs, steps, hp, grad_scale, found_inf, grad_avgs, momentum_buffers, cache)
    sgd(params, grads, momentum_buffers, firsts, hp, grad_scale, found_inf, cache)
    mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale, found_inf, cache)
    ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale, found_inf, cache)

All lists share one device and parameter dtype. ``cache`` is a dict the caller keeps per bucket of tensors (the
same params and state lists) for as long as that bucket lives; a backend may keep derived data there (the cpu
backend keeps its TensorTable) and must work without one (None). ``steps`` are 0-dim float32 tensors advanced by
one unless ``found_inf`` is set, in which case nothing changes at all. This backend may sync with the host (it
reads ``found_inf`` and the SWATS phase); the fused ones must not.
"""
from __future__ import annotations

import torch

from .. import reference as R
from .. import rounding as RD
from ..families import FAMILIES
from ..hyper import (CLIP_ADABOUND, CLIP_CONST, FORM_TORCH, MAS_VARIANTS, PHASE_SGD, ROUND_KAHAN, ROUND_NEAREST,
                     ROUND_STOCHASTIC)

NAME = "reference"
BF16_STATE = True  # bfloat16 moment buffers (a group's state_dtype): staged through float32 (_Staged)


def available(device: torch.device) -> bool:
    return True


def _skip(found_inf) -> bool:
    return found_inf is not None and bool(found_inf.item())


def _inv_scale(grad_scale):
    return None if grad_scale is None else 1.0 / float(grad_scale.item())


def _check_rounding(params, hp, kahan_comps, seeds, steps) -> None:
    if hp.rounding == ROUND_NEAREST or not params:
        return
    if params[0].dtype not in (torch.bfloat16, torch.float16) and not (
            hp.rounding == ROUND_STOCHASTIC and params[0].dtype == torch.float32):
        # (float32 params: stochastic rounding of their bfloat16 state, a group's state_dtype)
        raise ValueError(f"rounding mode {hp.rounding} applies to bfloat16/float16 params, not {params[0].dtype}")
    if hp.rounding == ROUND_KAHAN:
        if kahan_comps is None or len(kahan_comps) != len(params) or any(
                c is None or c.dtype != p.dtype or c.shape != p.shape for c, p in zip(kahan_comps, params)):
            raise ValueError("Kahan summation needs one compensation buffer of the param's dtype and shape per param")
    elif hp.rounding == ROUND_STOCHASTIC:
        if seeds is None or len(seeds) != len(params):
            raise ValueError("stochastic rounding needs one seed per param")
        if steps is None or len(steps) != len(params):
            raise ValueError("stochastic rounding needs one step count per param (the random bits' counter)")
    else:
        raise ValueError(f"unknown rounding mode {hp.rounding}")


def _store(p, w, hp, i, k, kahan_comps, seeds) -> None:
    """Write the float32 result w into the 16-bit (or float32/64) param p: nearest even (torch's cast), stochastic
    rounding with the counter-based bits of (seed, step k, stream 0, flat index), or the compensated store."""
    if hp.rounding == ROUND_STOCHASTIC:
        p.copy_(RD.stochastic_round_to(w, p.dtype, seeds[i], k, 0))
    elif hp.rounding == ROUND_KAHAN:
        wn, cn = RD.kahan_store(w, p, kahan_comps[i])
        p.copy_(wn)
        kahan_comps[i].copy_(cn)
    else:
        p.copy_(w)


def _tensors(params, grads, steps, hp, grad_scale, kahan_comps=None, seeds=None):
    """Yield (i, w, g, k) per tensor: w the parameter in its compute dtype (float32, or float64 for float64
    params; the param itself when it already is), g the effective gradient, k the step count after this step's
    increment (None without steps). w is written back to the parameter once the caller's loop body has run
    (as ``hp.rounding`` says, for 16-bit params)."""
    _check_rounding(params, hp, kahan_comps, seeds, steps)
    inv = _inv_scale(grad_scale)
    for i, (p, grad) in enumerate(zip(params, grads)):
        if grad.is_sparse:
            raise RuntimeError("fused_hybrid does not support sparse gradients; use torch.optim.SparseAdam")
        k = None
        if steps is not None:
            steps[i] += 1
            k = int(steps[i].item())
        dt = torch.float64 if p.dtype == torch.float64 else torch.float32
        w = p if p.dtype == dt else p.to(dt)
        yield i, w, R.effective_grad(grad, dt, hp.maximize, inv), k
        if w is not p:
            _store(p, w, hp, i, k, kahan_comps, seeds)


class _Staged:
    """A call's state lists as the arithmetic sees them: a float32 copy of every bfloat16 moment buffer (a group's
    state_dtype=torch.bfloat16), the tensor itself otherwise. The rule runs in float32 on the copies, exactly as on
    float32 state, so everything a step computes (the update, SWATS's and MAS's sums, AMSGrad's max) uses the
    unrounded new moments; ``store()`` then writes each copy back rounded to nearest even by fused_hybrid.rounding's
    integer arithmetic, the bits the cpu and triton kernels store, or, with stochastic rounding (hyper.ROUND_
    STOCHASTIC), stochastically rounded with the bits rand32(seed, step, stream, flat index), stream 1 + the list's
    position here (the param store is stream 0); the families pass their lists in the kernels' order
    (hyper.STATE_STREAMS). A buffer the step did not touch (SWATS's moments in its SGD phase) keeps its bits: a
    bfloat16 value widened and rounded back, to nearest or stochastically (its dropped bits are zero), is itself."""

    def __init__(self, *lists):
        self._pairs = []
        self.lists = []
        for j, lst in enumerate(lists):
            if lst is not None and any(t is not None and t.dtype == torch.bfloat16 for t in lst):
                wide = [None if t is None else t.float() for t in lst]
                self._pairs.append((lst, wide, 1 + j))
                lst = wide
            self.lists.append(lst)

    def store(self, hp=None, seeds=None, steps=None) -> None:
        sr = hp is not None and hp.rounding == ROUND_STOCHASTIC
        for lst, wide, stream in self._pairs:
            for i, (t, w) in enumerate(zip(lst, wide)):
                if t is None:
                    continue
                if sr:
                    t.copy_(RD.stochastic_round_to(w, torch.bfloat16, seeds[i], int(steps[i].item()), stream))
                else:
                    t.copy_(RD.round_to(w, torch.bfloat16))


def _weight_decay(w, g, hp, lr: float) -> None:
    """Every family's weight decay, before its own step: decoupled (AdamW's form, w *= 1 - lr*wd with the group's
    lr), or L2 (g += wd*w)."""
    if hp.weight_decay != 0:
        if hp.decoupled:
            w.mul_(1 - lr * hp.weight_decay)
        else:
            g.add_(w, alpha=hp.weight_decay)


def adaptive(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hp, grad_scale=None, found_inf=None,
             swats=None, cache=None, kahan_comps=None, seeds=None):
    if _skip(found_inf):
        return
    lr = float(hp.lr)
    st = _Staged(exp_avgs, exp_avg_sqs, max_exp_avg_sqs, swats.momentum_buffers if swats is not None else None)
    exp_avgs, exp_avg_sqs, max_exp_avg_sqs, swats_bufs = st.lists
    for i, w, g, k in _tensors(params, grads, steps, hp, grad_scale, kahan_comps, seeds):
        m, v = exp_avgs[i], exp_avg_sqs[i]
        _weight_decay(w, g, hp, lr)
        if swats is not None and int(swats.phase[i].item()) == PHASE_SGD:
            R.swats_sgd_phase(w, swats_bufs[i], g, hp.beta1, float(swats.sgd_lr[i]), swats.nesterov)
            swats.partials[i].zero_()
            continue
        R.adam_moments(m, v, g, hp.beta1, hp.beta2)
        v_used = R.amsgrad_max(max_exp_avg_sqs[i], v) if hp.amsgrad else v
        if hp.form == FORM_TORCH:
            step_p = R.adam_step_torch_form(w, m, v_used, lr, hp.eps, k, hp.beta1, hp.beta2)
            if swats is not None:
                swats.partials[i, 0], swats.partials[i, 1] = R.swats_projection(step_p, g)
        else:
            clip = None
            if hp.clip_mode == CLIP_CONST:
                clip = (hp.clip_lo, hp.clip_hi)
            elif hp.clip_mode == CLIP_ADABOUND:
                final = hp.final_lr * lr if hp.final_lr_relative else hp.final_lr
                clip = R.adabound_bounds(final, hp.gamma, k)
            R.adam_step_paper_form(w, m, v_used, lr, hp.eps, k, hp.beta1, hp.beta2, hp.partial, clip)
    st.store(hp, seeds, steps)


def sgd(params, grads, momentum_buffers, firsts, hp, grad_scale=None, found_inf=None, cache=None, steps=None,
        kahan_comps=None, seeds=None):
    if _skip(found_inf):
        return
    lr = float(hp.lr)
    # SGD counts steps only for stochastic rounding (the random bits' counter).
    steps = steps if hp.rounding == ROUND_STOCHASTIC else None
    st = _Staged(momentum_buffers)
    momentum_buffers, = st.lists
    for i, w, g, _ in _tensors(params, grads, steps, hp, grad_scale, kahan_comps, seeds):
        _weight_decay(w, g, hp, lr)
        d = R.sgd_direction(momentum_buffers[i], g, hp.momentum, hp.dampening, hp.nesterov, firsts[i])
        w.add_(d, alpha=-lr)
    st.store(hp, seeds, steps)


def mas(params, grads, exp_avgs, exp_avg_sqs, momentum_buffers, steps, hp, grad_scale=None, found_inf=None,
        cache=None, kahan_comps=None, seeds=None):
    if _skip(found_inf):
        return
    lr = float(hp.lr)
    st = _Staged(exp_avgs, exp_avg_sqs, momentum_buffers)
    exp_avgs, exp_avg_sqs, momentum_buffers = st.lists
    for i, w, d, k in _tensors(params, grads, steps, hp, grad_scale, kahan_comps, seeds):
        _weight_decay(w, d, hp, lr)
        d_a, eta_a, d_s = R.mas_steps(exp_avgs[i], exp_avg_sqs[i], momentum_buffers[i], d, lr,
                                      hp.beta1, hp.beta2, hp.eps, k, hp.momentum, hp.dampening, hp.nesterov)
        w.add_(R.mas_update(d_a, eta_a, d_s, lr, hp.adam_w, hp.sgd_w, MAS_VARIANTS[hp.variant]))
    st.store(hp, seeds, steps)


def ndadam(params, grads, exp_avgs, exp_avg_sqs, steps, axes, hp, grad_scale=None, found_inf=None, cache=None,
           kahan_comps=None, seeds=None):
    if _skip(found_inf):
        return
    lr = float(hp.lr)
    st = _Staged(exp_avgs, exp_avg_sqs)
    exp_avgs, exp_avg_sqs = st.lists
    for i, w, g, k in _tensors(params, grads, steps, hp, grad_scale, kahan_comps, seeds):
        m, v = exp_avgs[i], exp_avg_sqs[i]
        if axes[i]:
            R.ndadam_vector_step(w, m, v, g, tuple(axes[i]), lr, hp.beta1, hp.beta2, hp.eps, k, hp.weight_decay)
        else:  # biases and other 1-D parameters: plain Adam (ND-Adam's reference code does the same)
            if hp.weight_decay != 0:
                g.add_(w, alpha=hp.weight_decay)
            R.adam_moments(m, v, g, hp.beta1, hp.beta2)
            R.adam_step_torch_form(w, m, v, lr, hp.eps, k, hp.beta1, hp.beta2)
    st.store(hp, seeds, steps)


def rms(params, grads, square_avgs, steps, hp, grad_scale=None, found_inf=None, grad_avgs=None, momentum_buffers=None,
        cache=None, kahan_comps=None, seeds=None):
    if _skip(found_inf):
        return
    lr = float(hp.lr)
    st = _Staged(square_avgs, grad_avgs, momentum_buffers)
    square_avgs, grad_avgs, momentum_buffers = st.lists
    for i, w, g, k in _tensors(params, grads, steps, hp, grad_scale, kahan_comps, seeds):
        _weight_decay(w, g, hp, lr)  # the group's lr, not Adagrad's decayed one
        R.rms_step(w, square_avgs[i], grad_avgs[i] if hp.centered else None,
                   momentum_buffers[i] if hp.momentum != 0 else None, g, lr, hp.keep, hp.add, hp.eps, hp.momentum,
                   hp.lr_decay, k)
    st.store(hp, seeds, steps)


RULES = frozenset(FAMILIES)  # every family


def why_unavailable(device: torch.device) -> str:
    return ""


def swats_bookkeeping(device: torch.device) -> str:
    return "torch"
