"""Gradient clipping fused into the step (issue 17): ``max_grad_norm``, ``norm_type``, ``skip_grad_norm_above``.

A clipped step runs in two phases. First every bucket of every group computes its gradients' partial norm on its
device (``sum |g|^p`` in float64, or ``max |g|`` for p = inf) with its backend's norm op: one pass over the
gradients, in a fixed order (csrc/grad_norm.h; triton_kernels/grad_norm.py; the reference in torch ops). Then, with
torch ops on the device and no host read:

- the partials are combined in bucket order (those of sharded DTensor parameters first, all-reduced over the
  optimizer's ``process_group``), and the p-th root gives the total norm, ``opt.grad_norm`` (what
  ``torch.nn.utils.clip_grad_norm_`` returns, of the gradients after GradScaler's unscale);
- ``clip_coef = clamp(max_grad_norm / (grad_norm + 1e-6), max=1)``, clip_grad_norm_'s coefficient, computed by the
  same torch expression, so an equal norm gives a bitwise equal coefficient;
- the update kernels then run unchanged with the *effective* ``grad_scale = scale / clip_coef`` (float64): they
  multiply each gradient by ``1 / grad_scale`` as they read it, so the gradients are clipped without being written
  back (``p.grad`` is left unclipped) and without a second pass;
- ``found_inf`` becomes ``found_inf OR grad_norm > skip_grad_norm_above OR grad_norm not finite`` (with
  ``skip_grad_norm_above`` set): the kernels then change nothing, steps and SWATS's switch test included, as for a
  step GradScaler skips.

Exactness. The kernels compute ``g * (C)(1 / grad_scale)`` in the compute dtype C. clip_grad_norm_ after
GradScaler's unscale_ computes ``(g * inv_scale) * clip_coef``, two roundings. With a power-of-two scale (GradScaler's
scales are: init 2^16, growth 2, backoff 0.5) or no scaler, ``g * inv_scale`` is exact and, for float32, bfloat16 and
float16 parameters (C = float32), ``(C)(1 / (scale / clip_coef))`` is exactly ``clip_coef * inv_scale`` (the double
quotients are within 2 double ulps of that float32 value, which rounding to float32 recovers), so given the same
total norm the clipped gradients, hence the trajectories, are bitwise those of clip_grad_norm_ + step. For float64
parameters (C = float64) the reciprocal of the reciprocal is clip_coef itself for most coefficients (83% of random
ones) and one double ulp off otherwise: no double x has 1 / x rounding to every double. The total norm itself is a
float64 sum in our fixed order, while torch sums per-tensor float32 norms in its own: the two agree to a few float32
ulps (the p = inf norm is a max, exact in any order, so it agrees bitwise), and the trajectories agree to that
relative difference in the clip coefficient (tests/test_grad_clip.py).
"""
from __future__ import annotations

import math

import torch

try:  # DTensor parameters (FSDP2's fully_shard, tensor parallelism)
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed
    DTensor = ()

# clip_grad_norm_'s epsilon in its coefficient max_norm / (total_norm + 1e-6).
EPS = 1e-6

SETTINGS = ("max_grad_norm", "norm_type", "skip_grad_norm_above")


def check(max_grad_norm, norm_type, skip_grad_norm_above) -> None:
    """ValueError for a setting clipping cannot take (as torch.optim checks a hyperparameter at construction)."""
    if max_grad_norm is not None:
        if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float)):
            raise ValueError(f"Invalid max_grad_norm: {max_grad_norm!r} (a number >= 0, or None)")
        if not max_grad_norm >= 0.0:  # NaN too
            raise ValueError(f"Invalid max_grad_norm: {max_grad_norm} (must be >= 0)")
    if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float)):
        raise ValueError(f"Invalid norm_type: {norm_type!r} (a number > 0, or inf)")
    if not norm_type > 0.0:
        raise ValueError(f"Invalid norm_type: {norm_type} (the p of a p-norm: > 0, or inf; clip_grad_norm_'s "
                         f"-inf and 0 are not supported)")
    if skip_grad_norm_above is not None:
        if isinstance(skip_grad_norm_above, bool) or not isinstance(skip_grad_norm_above, (int, float)):
            raise ValueError(f"Invalid skip_grad_norm_above: {skip_grad_norm_above!r} (a number >= 0, or None)")
        if not skip_grad_norm_above >= 0.0:
            raise ValueError(f"Invalid skip_grad_norm_above: {skip_grad_norm_above} (must be >= 0)")


class Setting:
    """A clipping setting as a validated attribute of the optimizer: it may be changed between steps (a schedule of
    max_grad_norm), and a bad value is refused when it is set, not at the next step."""

    def __set_name__(self, owner, name):
        self.name, self.slot = name, "_clip_" + name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return obj.__dict__.get(self.slot, 2.0 if self.name == "norm_type" else None)

    def __set__(self, obj, value):
        current = {k: getattr(obj, k) for k in SETTINGS}
        current[self.name] = value
        check(**current)
        obj.__dict__[self.slot] = float(value) if value is not None else None


def active(opt) -> bool:
    return opt.max_grad_norm is not None or opt.skip_grad_norm_above is not None


# -- per-bucket partials ------------------------------------------------------------------------------------------

def _sharded(p) -> bool:
    """A DTensor whose placements shard it: its local partials are parts of the whole, summed over the ranks. A
    replicated one holds the whole tensor on every rank and counts once, like a plain tensor."""
    return isinstance(p, DTensor) and any(pl.is_shard() for pl in p.placements)


def _reference_partial(grads, p: float, inv: float | None) -> torch.Tensor:
    """The partial in torch ops (the reference backend, and complex gradients): per tensor in list order, float64."""
    total = None
    for g in grads:
        dt = torch.float64 if g.dtype in (torch.float64, torch.complex128) else (
            torch.complex64 if g.is_complex() else torch.float32)
        x = g.to(dt)
        if inv is not None:
            x = x * inv
        a = x.abs().to(torch.float64)  # |z| of a complex element, as torch.linalg.vector_norm takes it
        if math.isinf(p):
            part = a.amax() if a.numel() else a.new_zeros(())  # amax propagates NaN
            total = part if total is None else torch.maximum(total, part)
        else:
            part = (a * a).sum() if p == 2.0 else (a.sum() if p == 1.0 else a.pow(p).sum())
            total = part if total is None else total + part
    return total


def _native_partial(b, ns: str, grads, p: float, scale) -> torch.Tensor | None:
    """The extension's norm op on namespace ``ns``. grads None: the params' .grad, read in C++ through a TensorTable
    of the bucket's params kept in its cache (no Python list of 2000 gradients per step); None when one of them has
    no gradient (the table op's empty result: nothing was computed)."""
    if grads is not None:
        return getattr(torch.ops, ns).grad_norm_partial(grads, p, scale)
    entry = b.cache.get("grad_norm")
    if entry is None or entry[0] is not b.params:
        entry = b.cache["grad_norm"] = (b.params, torch.classes.fused_hybrid.TensorTable([b.params]))
    part = _table_op(ns)(entry[1], p, scale)
    return None if part.dim() == 1 else part  # (a shape, not a value: no device read)


_TABLE_OPS: dict = {}


def _table_op(ns: str):
    """The C++ callable behind torch.ops.<ns>.grad_norm_partial_table: torch.ops' Python wrapper of an op that takes
    a TorchBind object walks every argument looking for fake script objects (~0.3 ms per 2000 tensors, see
    backends/extension_ops.py's _table_op); eager calls carry none."""
    fn = _TABLE_OPS.get(ns)
    if fn is None:
        overload = getattr(torch.ops, ns).grad_norm_partial_table.default
        fn = _TABLE_OPS[ns] = getattr(overload, "_op", overload)
    return fn


def _partial(b, grads, p: float, scale) -> torch.Tensor:
    """Bucket ``b``'s partial over ``grads`` (plain real tensors; None: its params' .grad), by its backend."""
    name = b.backend.NAME
    if name in ("cpu", "cuda") and not torch.compiler.is_compiling():
        return _native_partial(b, "fused_hybrid", grads, p, scale)
    if name == "cuda_sim" and not torch.compiler.is_compiling():
        return _native_partial(b, "fused_hybrid_sim", grads, p, scale)
    if name == "triton":
        from .backends import triton_norm
        return triton_norm.partial(grads, p, scale, b.params, b.cache)
    if grads is None:
        grads = [q.grad for q in b.params]
    if name in ("cpu", "cuda"):
        return torch.ops.fused_hybrid.grad_norm_partial(grads, p, scale)
    if name == "cuda_sim":
        return torch.ops.fused_hybrid_sim.grad_norm_partial(grads, p, scale)
    return _reference_partial(grads, p, None if scale is None else 1.0 / float(scale.item()))


def bucket_partials(b, grads, p: float, grad_scale, parts_of_model: bool) -> list[tuple[bool, torch.Tensor]]:
    """[(sharded, partial)] of bucket ``b`` (grads None: its params' .grad). ``sharded`` partials are summed over
    the ranks: those of sharded DTensors, and every plain tensor's when the optimizer has a ``process_group``
    (``parts_of_model``: each rank holds its part of the model, as for SWATS's sums; under DDP, replicas, it is
    None). A plain bucket is one call of its backend's norm op; a bucket of DTensor or complex params (``viewed``)
    splits its local shards into sharded and replicated ones, and takes complex gradients through torch ops (|z|
    is not a norm of the real view's parts)."""
    scale = None if grad_scale is None else grad_scale.to(b.device)
    if not b.viewed:
        return [(parts_of_model, _partial(b, grads, p, scale))]
    if grads is None:
        grads = [q.grad for q in b.params]
    out = []
    inv = None
    for sharded in (True, False):
        sel = [g for g in grads if (_sharded(g) if isinstance(g, DTensor) else parts_of_model) == sharded]
        if not sel:
            continue
        real = [g._local_tensor if isinstance(g, DTensor) else g for g in sel]
        cplx = [g for g in real if g.is_complex()]
        real = [g for g in real if not g.is_complex()]
        if real:
            out.append((sharded, _partial(b, real, p, scale)))
        if cplx:
            if inv is None and scale is not None:
                inv = 1.0 / scale.double()  # a device tensor: no host read
            out.append((sharded, _reference_partial(cplx, p, inv)))
    return out


# -- the combination ------------------------------------------------------------------------------------------------

def _group_of(opt):
    """The process group the sharded partials are summed over: the optimizer's ``process_group``, else the device
    mesh (one-dimensional) of the first sharded DTensor parameter."""
    if opt.process_group is not None:
        return opt.process_group
    mesh = next(q.device_mesh for g in opt.param_groups for q in g["params"] if _sharded(q))
    if mesh.ndim != 1:
        raise ValueError("gradient clipping over DTensor parameters on a multi-dimensional device mesh needs the "
                         "optimizer's process_group (the ranks that hold the shards of one model copy)")
    return mesh.get_group()


def _effective_scale(coef, grad_scale):
    """scale / clip_coef in float64 (1 / clip_coef without a scaler): the grad_scale the kernels unscale with, so
    that their multiplier ``(C)(1 / result)`` is clip_coef * inv_scale (see the module's Exactness)."""
    c = coef.to(torch.float64)
    if grad_scale is None:
        return c.reciprocal()
    return grad_scale.to(device=c.device, dtype=torch.float64) / c


def combine(opt, parts: list, dtypes: set, grad_scale, found_inf):
    """From the buckets' [(sharded, partial)]: store ``opt.grad_norm`` and return the (grad_scale, found_inf) the
    kernels run with. Torch ops on the device only: nothing is read on the host."""
    p = opt.norm_type
    inf = math.isinf(p)
    dev = grad_scale.device if grad_scale is not None else parts[0][1].device
    acc = (lambda a, x: torch.maximum(a, x)) if inf else (lambda a, x: a + x)
    total = None
    sharded = [t for s, t in parts if s]
    if sharded:
        total = sharded[0].to(dev)
        for t in sharded[1:]:
            total = acc(total, t.to(dev))
        import torch.distributed as dist
        group = _group_of(opt)
        total = total.clone()
        dist.all_reduce(total, op=dist.ReduceOp.MAX if inf else dist.ReduceOp.SUM, group=group)
    for s, t in parts:
        if not s:
            total = t.to(dev) if total is None else acc(total, t.to(dev))
    if inf or p == 1.0:
        norm = total
    elif p == 2.0:
        norm = total.sqrt()
    else:
        norm = total.pow(1.0 / p)
    # clip_grad_norm_'s norm has the gradients' dtype: float64 for float64 gradients, else float32 here (a float16
    # norm would overflow at 65504).
    norm = norm.to(torch.float64 if torch.float64 in dtypes else torch.float32)
    opt._clip_out["grad_norm"] = norm
    if opt.max_grad_norm is not None:
        coef = torch.clamp(opt.max_grad_norm / (norm + EPS), max=1.0)  # clip_grad_norm_'s own expression
        grad_scale = _effective_scale(coef, grad_scale)
    if opt.skip_grad_norm_above is not None:
        bad = ~(norm <= opt.skip_grad_norm_above)  # above it, or NaN (fails every comparison); inf is above
        found_inf = bad.to(torch.float32) if found_inf is None else torch.maximum(
            found_inf.to(device=dev, dtype=torch.float32), bad.to(torch.float32))
    return grad_scale, found_inf


# -- the step -------------------------------------------------------------------------------------------------------

def step(opt, grad_scale, found_inf, grads_of):
    """A clipped step of HybridOptimizer ``opt``: plan every group (its fast path when the backend reads the
    gradients itself), compute every bucket's partial, combine, then run every bucket's update with the effective
    grad_scale and found_inf. Returns the found_inf the step ran with (SWATS's bookkeeping needs it)."""
    from . import rules
    calls, parts, dtypes = [], [], set()
    pg = opt.process_group is not None
    for gi, group in enumerate(opt.param_groups):
        hp = rules.record(group)
        plan = opt._fast_plan(gi, group)
        if plan is not None:
            got = bucket_partials(plan[0], None, opt.norm_type, grad_scale, pg)
            # A None partial: some param has no gradient this step; nothing was computed, the general path skips it.
            if all(part is not None for _, part in got):
                parts.extend(got)
                calls.append((gi, group, hp, plan[0], None))
                dtypes.add(plan[0].params[0].dtype)
                continue
        all_grads = grads_of(group["params"])
        for b in opt._plan(gi, group, all_grads):
            grads = all_grads if b.whole else [all_grads[j] for j in b.idx]
            parts.extend(bucket_partials(b, grads, opt.norm_type, grad_scale, pg))
            calls.append((gi, group, hp, b, grads))
            dtypes.add(b.params[0].dtype)
    if not parts:  # no gradient at all: nothing to step, and no norm
        opt._clip_out.pop("grad_norm", None)
        return found_inf
    grad_scale, found_inf = combine(opt, parts, dtypes, grad_scale, found_inf)
    for gi, group, hp, b, grads in calls:
        opt._step_bucket(gi, group, hp, b, grads, grad_scale, found_inf)
    return found_inf
