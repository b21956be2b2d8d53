"""SWATS's switch from Adam to SGD (Keskar & Socher 2017, Algorithm 1), decided on the device.

The kernels (any backend) write, per tensor, the partial sums <p, g> and <p, p> of the Adam step p. This module
sums them per *segment* (the set of tensors that switch together), runs the paper's test and keeps the result
in device tensors, so a step never waits for the host:

    gamma = p^T p / -p^T g                       (only where p^T g != 0; otherwise lam is kept, line 22)
    lam   = b2*lam + (1-b2)*gamma ;  Lambda_k = lam / (1 - b2^k)
    switch when k > 1, Lambda_k > 0 and |Lambda_k - gamma| < switch_atol + switch_rtol*|Lambda_k|

Segments by ``granularity``: "global" (the paper: all SWATS parameters of the optimizer), "group" (each param
group), "tensor" (each parameter). All sums are float64 over a fixed order (a padded gather, no atomics), so
the switch step is reproducible bit for bit.

After the switch the SGD step is (1-b1) * Lambda * buf. LR schedulers keep working: the step size is scaled by
lr_now / lr_at_switch of the tensor's group (``lr_ref`` records the lr at the switch, per tensor).
"""
from __future__ import annotations

import torch

from .backends import module
from .hyper import PHASE_ADAM, PHASE_SGD, SwatsArgs

GRANULARITIES = ("global", "group", "tensor")
STATE_KEY = "swats"  # where fused_hybrid <= 0.1 checkpoints kept the switch state (a non-parameter state entry)
_SEG_KEYS = ("phase", "lam", "Lambda", "switch_step", "seg_step", "gamma")
_VEC_KEYS = _SEG_KEYS + ("lr_ref",)
# The switch state lives in the optimizer state of the first SWATS parameter (the "anchor"), under these prefixed
# keys: every state entry then belongs to a parameter, which is what torch.distributed.checkpoint's
# get/set_optimizer_state_dict (FQN-keyed state) and FSDP2 require; a non-parameter key breaks them.
_PREFIX = "swats_"


def read_state(anchor_state: dict) -> dict | None:
    """The switch state kept in the anchor's optimizer state, as the dict of vectors the bookkeeping updates in
    place (plus ``T``, the tensor count it was made for), or None where there is none yet. The granularity is not
    stored: it fixes the segment count S for a given model, which the optimizer checks (``Layout.check_state``)."""
    if _PREFIX + "phase" not in anchor_state:
        return None
    st = {k: anchor_state[_PREFIX + k] for k in _VEC_KEYS}
    st["T"] = st["lr_ref"].numel()
    return st


def write_state(anchor_state: dict, st: dict) -> None:
    for k in _VEC_KEYS:
        anchor_state[_PREFIX + k] = st[k]


def anchor(param_groups: list[dict]) -> torch.Tensor:
    """The first SWATS parameter: its optimizer state holds the switch state (``read_state``)."""
    return next(p for g in param_groups if g["rule"] == "swats" for p in g["params"])


def is_switch_key(key: str) -> bool:
    return isinstance(key, str) and key.startswith(_PREFIX)


IMPLS = ("torch", "cpu", "triton")


def fused_impl(device: torch.device) -> str:
    """Where the bookkeeping runs fused for SWATS tensors on ``device``: the ``swats_bookkeeping`` of the backend
    ``backend="auto"`` picks there (the cpu backend: its C++ ops, csrc/cpu/swats.cpp, 3 calls; the cuda and triton
    backends on a GPU: the Triton backend's kernels, triton_kernels/swats.py, 2 launches), else the torch ops
    below (~70 small ops)."""
    from .backends import resolve
    return resolve("auto", device, "adaptive").swats_bookkeeping(device)


def bookkeeping(param_groups: list[dict], device: torch.device) -> str:
    """The bookkeeping of the backend(s) that step the SWATS groups (their ``swats_bookkeeping``); the torch ops
    when the groups' backends disagree."""
    from .backends import resolve
    kinds = {resolve(g["backend"], device, "adaptive").swats_bookkeeping(device)
             for g in param_groups if g["rule"] == "swats"}
    return kinds.pop() if len(kinds) == 1 else "torch"


class Layout:
    """Which segment each SWATS tensor belongs to. Tensors are numbered in (group, param) order over the groups
    whose rule is "swats"; ``groups`` lists (group index, first flat index, count).

    ``impl`` is how the bookkeeping runs: "torch" (the ops below: the reference backend's, and the fallback),
    "cpu" or "triton" (see ``fused_impl``; the optimizer asks for fused bookkeeping when fused backends step the
    SWATS tensors)."""

    def __init__(self, param_groups: list[dict], granularity: str, device: torch.device, fused: bool = False,
                 impl: str | None = None):
        self.granularity = granularity
        self.device = device
        self.impl = impl if impl is not None else (fused_impl(device) if fused else "torch")
        if self.impl not in IMPLS:
            raise ValueError(f"unknown SWATS bookkeeping {self.impl!r}; choose one of {IMPLS}")
        self.groups = []
        seg_of = []
        t = 0
        for gi, group in enumerate(param_groups):
            if group["rule"] != "swats":
                continue
            n = len(group["params"])
            self.groups.append((gi, t, n))
            for j in range(n):
                seg_of.append({"global": 0, "group": len(self.groups) - 1, "tensor": t + j}[granularity])
            t += n
        self.T = t
        self.S = (max(seg_of) + 1) if seg_of else 0
        self.seg_of = torch.tensor(seg_of, dtype=torch.long, device=device)
        # Padded member table: row s lists segment s's tensors, padded with T (an extra zero slot).
        members = [[] for _ in range(self.S)]
        for i, s in enumerate(seg_of):
            members[s].append(i)
        width = max([len(m) for m in members] or [0])  # no max(default=): torch 2.11's dynamo rejects the keyword
        self.members = torch.tensor([m + [t] * (width - len(m)) for m in members], dtype=torch.long,
                                    device=device).reshape(self.S, width)
        # First group of each segment: where its b2 and tolerances come from.
        first_group = []
        for s in range(self.S):
            i = members[s][0]
            first_group.append(next(gi for gi, t0, n in self.groups if t0 <= i < t0 + n))
        self.first_group = first_group
        self._vec_cache = (None, None)

    def segment_sum(self, per_tensor: torch.Tensor) -> torch.Tensor:
        """Sum a [T] or [T, C] float64 tensor per segment ([S] or [S, C]), in a fixed order."""
        padded = torch.cat([per_tensor, per_tensor.new_zeros((1,) + per_tensor.shape[1:])])
        return padded[self.members].sum(dim=1)

    def new_state(self) -> dict:
        z = lambda dt: torch.zeros(self.S, dtype=dt, device=self.device)  # noqa: E731
        return {"T": self.T, "phase": z(torch.int32), "lam": z(torch.float64),
                "Lambda": z(torch.float64), "switch_step": z(torch.int64), "seg_step": z(torch.int64),
                "gamma": z(torch.float64), "lr_ref": torch.zeros(self.T, dtype=torch.float64, device=self.device)}

    def adopt_state(self, st: dict) -> dict:
        """The switch state ``st`` (from a checkpoint, or made before ``add_param_group``) fitted to this layout:
        refused when made for as many tensors but another segment count (another granularity), grown when made for
        fewer tensors, moved to this layout's device."""
        if st["T"] == self.T and st["phase"].numel() != self.S:
            raise ValueError(f"SWATS state has {st['phase'].numel()} switch segments where granularity "
                             f"{self.granularity!r} makes {self.S} for these parameters: a checkpoint of an optimizer "
                             f"with another granularity?")
        if st["T"] != self.T or st["phase"].device != self.device:
            return self.extend_state(st)
        return st

    def extend_state(self, st: dict) -> dict:
        """Grow a state made for fewer tensors (after ``add_param_group``): new segments start in the Adam phase."""
        new = self.new_state()
        for key in _SEG_KEYS:
            n = min(st[key].numel(), self.S)
            new[key][:n] = st[key][:n].to(self.device)
        n = min(st["lr_ref"].numel(), self.T)
        new["lr_ref"][:n] = st["lr_ref"][:n].to(self.device)
        return new

    def group_vectors(self, param_groups: list[dict]) -> dict[str, torch.Tensor]:
        """Per-tensor lr and 1-b1, per-segment b2 and tolerances, as device vectors; cached while the groups'
        values stay the same. A tensor lr is used as is (no host read): its vector is rebuilt every step from the
        tensor by device ops only (it may change in place), the others stay cached, so a step with a device lr
        copies nothing from the host and can be captured in a CUDA graph (seen on an H200: rebuilding b2 and the
        tolerances from Python floats inside the capture failed)."""
        groups = [param_groups[gi] for gi, _, _ in self.groups]
        key = tuple((g["lr"], tuple(float(b) for b in g["betas"]), g["switch_rtol"], g["switch_atol"]) for g in groups)
        tensor_lr = any(isinstance(g["lr"], torch.Tensor) for g in groups)
        static_key = tuple(k[1:] for k in key) if tensor_lr else key
        cached_key, vecs = self._vec_cache
        f64 = dict(dtype=torch.float64, device=self.device)
        if cached_key != static_key:
            lrs = [torch.full((n,), float(g["lr"]) if not isinstance(g["lr"], torch.Tensor) else 0.0, **f64)
                   for g, (_, _, n) in zip(groups, self.groups)]
            omb1 = [torch.full((n,), 1.0 - float(g["betas"][0]), **f64) for g, (_, _, n) in zip(groups, self.groups)]
            segg = [param_groups[gi] for gi in self.first_group]
            vecs = {
                "lr": torch.cat(lrs) if lrs else torch.zeros(0, **f64),
                "one_minus_b1": torch.cat(omb1) if omb1 else torch.zeros(0, **f64),
                "b2": torch.tensor([float(g["betas"][1]) for g in segg], **f64),
                "rtol": torch.tensor([float(g["switch_rtol"]) for g in segg], **f64),
                "atol": torch.tensor([float(g["switch_atol"]) for g in segg], **f64),
            }
            self._vec_cache = (static_key, vecs)
        if tensor_lr:
            parts = [g["lr"].detach().to(**f64).reshape(1).expand(n) if isinstance(g["lr"], torch.Tensor)
                     else vecs["lr"].new_full((n,), float(g["lr"])) for g, (_, _, n) in zip(groups, self.groups)]
            vecs = {**vecs, "lr": torch.cat(parts)}
        return vecs


def per_tensor_args(layout: Layout, st: dict, vecs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """phase[t] and the SGD-phase step size (1-b1)*Lambda*lr_now/lr_at_switch for every SWATS tensor."""
    if layout.impl == "cpu":
        return torch.ops.fused_hybrid.swats_args(layout.seg_of, st["phase"], st["Lambda"], st["lr_ref"], vecs["lr"],
                                                 vecs["one_minus_b1"])
    if layout.impl == "triton":
        return module("triton").swats_per_tensor(layout.seg_of, st, vecs)
    seg = layout.seg_of
    phase = st["phase"][seg]
    in_sgd = phase == PHASE_SGD
    ratio = torch.where(in_sgd, vecs["lr"] / torch.where(in_sgd, st["lr_ref"], 1.0), 0.0)
    sgd_lr = vecs["one_minus_b1"] * st["Lambda"][seg] * ratio
    return phase, sgd_lr


def segment_totals(layout: Layout, partials: torch.Tensor, stepped: torch.Tensor | None, process_group=None):
    """Per segment: <p,g>, <p,p> and how many tensors stepped ([S, 3] float64); ``stepped`` flags the tensors that
    stepped (float64 [T]), None when all did. With a process group
    (sharded parameters: FSDP2, ZeRO), the totals are summed over its ranks, so every rank runs the test on the
    whole model's sums and switches at the same step with the same Lambda. The all-reduce is asynchronous with
    respect to the host on GPU backends (NCCL), so it adds no host sync."""
    if layout.impl == "cpu":
        totals = torch.ops.fused_hybrid.swats_totals(partials, stepped, layout.seg_of, layout.S)
    elif layout.impl == "triton":
        totals = torch.empty(layout.S, 3, dtype=torch.float64, device=layout.device)
        _switch_kernel(layout, None, None, partials, stepped, totals, None, mode=0)
    else:
        if stepped is None:
            stepped = partials.new_ones(layout.T)
        totals = layout.segment_sum(torch.cat([partials, stepped[:, None]], dim=1))
    if process_group is not None:
        import torch.distributed as dist
        dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=process_group)
    return totals


def finalize(layout: Layout, st: dict, vecs: dict, totals: torch.Tensor, found_inf: torch.Tensor | None) -> None:
    """Run the switch test of Algorithm 1 for every segment, in place on the device state ``st``.

    ``totals`` comes from ``segment_totals``: per segment <p,g>, <p,p> and how many tensors stepped (a segment
    with none is left alone). A step skipped by GradScaler (found_inf) changes nothing.
    """
    if layout.impl == "cpu":
        torch.ops.fused_hybrid.swats_finalize_(totals, layout.seg_of, st["phase"], st["lam"], st["Lambda"],
                                               st["switch_step"], st["seg_step"], st["gamma"], st["lr_ref"],
                                               vecs["lr"], vecs["b2"], vecs["rtol"], vecs["atol"], found_inf)
        return
    if layout.impl == "triton":
        _switch_kernel(layout, st, vecs, None, None, totals, found_inf, mode=1)
        return
    s_pg, s_pp = totals[:, 0], totals[:, 1]
    active = totals[:, 2] > 0
    if found_inf is not None:
        active = active & (found_inf.to(layout.device).reshape(()) == 0)
    st["seg_step"] += active.to(torch.int64)
    k = st["seg_step"]
    valid = active & (st["phase"] == PHASE_ADAM) & (s_pg != 0)
    gamma = s_pp / torch.where(s_pg != 0, -s_pg, 1.0)
    b2 = vecs["b2"]
    lam = torch.where(valid, b2 * st["lam"] + (1 - b2) * gamma, st["lam"])
    lam_k = lam / (1 - torch.pow(b2, k.to(torch.float64)))
    switch = valid & (k > 1) & (lam_k > 0) & ((lam_k - gamma).abs() < vecs["atol"] + vecs["rtol"] * lam_k.abs())
    st["lam"].copy_(lam)
    st["gamma"].copy_(torch.where(valid, gamma, st["gamma"]))
    st["phase"].copy_(torch.where(switch, PHASE_SGD, st["phase"]).to(torch.int32))
    st["Lambda"].copy_(torch.where(switch, lam_k, st["Lambda"]))
    st["switch_step"].copy_(torch.where(switch, k, st["switch_step"]))
    st["lr_ref"].copy_(torch.where(switch[layout.seg_of], vecs["lr"], st["lr_ref"]))


def switch_update(layout: Layout, st: dict, vecs: dict, partials: torch.Tensor, stepped: torch.Tensor | None,
                  found_inf: torch.Tensor | None, process_group=None) -> None:
    """``segment_totals`` then ``finalize``: one launch with the Triton bookkeeping when no process group has to
    all-reduce the totals in between."""
    if layout.impl == "triton" and process_group is None:
        _switch_kernel(layout, st, vecs, partials, stepped, None, found_inf, mode=2)
        return
    finalize(layout, st, vecs, segment_totals(layout, partials, stepped, process_group), found_inf)


def _switch_kernel(layout, st, vecs, partials, stepped, totals, found_inf, mode: int) -> None:
    """The Triton backend's switch-test kernel over the segments (``swats_switch``; ``mode``: see its docstring)."""
    if layout.S == 0:
        return
    if st is None:  # mode 0 reads and writes no state: seg_of fills the state arguments' places
        st = {k: layout.seg_of for k in _VEC_KEYS}
        vecs = {k: layout.seg_of for k in ("lr", "b2", "rtol", "atol")}
    if found_inf is not None:
        found_inf = found_inf.to(device=layout.device, dtype=torch.float32).reshape(1)
    module("triton").swats_switch(layout.members, layout.T, partials, stepped, totals, found_inf, st, vecs, mode)


def info(st: dict, beta2: list[float]) -> list[dict]:
    """One dict per segment: switched, switch_step, sgd_lr (Lambda at the switch), plus the segment's step count,
    the last gamma_k, the raw moving average lam_k and its bias-corrected value lam_k/(1-b2^k) (the Lambda_k the
    test compares with gamma_k), for plots. Reads device tensors, so it syncs."""
    out = []
    phase, Lam, sw, ks, gam, lam = (st[k].tolist() for k in ("phase", "Lambda", "switch_step", "seg_step", "gamma",
                                                              "lam"))
    for s in range(len(phase)):
        switched = phase[s] == PHASE_SGD
        bc2 = 1.0 - beta2[s] ** ks[s]
        out.append({"switched": switched, "switch_step": int(sw[s]) if switched else None,
                    "sgd_lr": float(Lam[s]) if switched else None, "step": int(ks[s]), "gamma": float(gam[s]),
                    "lam": float(lam[s]), "lambda_k": float(lam[s]) / bc2 if bc2 > 0 else None})
    return out


class Controller:
    """SWATS's switch test for one optimizer's SWATS groups: the layout of its tensors, the switch state (kept in
    the anchor's optimizer state, see ``read_state``), the per-tensor phase and SGD step size each step's kernels
    read, and the test itself once the kernels wrote their sums. Rebuilt whenever the optimizer's plans are (new
    groups, a checkpoint load); nothing in it reads a device value."""

    def __init__(self, param_groups: list[dict], state: dict, granularity: str):
        first = anchor(param_groups)
        # The bookkeeping is a capability of the backend that steps the SWATS tensors (``bookkeeping``): the cpu
        # backend's C++ ops, the Triton kernels for the GPU backends, the plain-PyTorch ops for the reference.
        self.layout = Layout(param_groups, granularity, first.device, impl=bookkeeping(param_groups, first.device))
        st = read_state(state[first])
        self.state = self.layout.new_state() if st is None else self.layout.adopt_state(st)
        write_state(state[first], self.state)
        self._step = None  # (vecs, phase, sgd_lr) of the step being taken

    def args(self, param_groups: list[dict], gi: int, bucket, group: dict) -> SwatsArgs:
        """The adaptive family's ``swats`` argument for one bucket of group ``gi``."""
        lay = self.layout
        if self._step is None:
            vecs = lay.group_vectors(param_groups)
            self._step = (vecs,) + per_tensor_args(lay, self.state, vecs)
        _, phase, sgd_lr = self._step
        if bucket.flat_idx is None:
            t0 = next(t0 for g, t0, _ in lay.groups if g == gi)
            flat = [t0 + j for j in bucket.idx]
            bucket.flat_idx = torch.tensor(flat, dtype=torch.long, device=lay.device)
            bucket.covers_all = flat == list(range(lay.T)) and bucket.device == lay.device
        if not bucket.covers_all:  # the common single-bucket case needs no gathers
            phase, sgd_lr = phase[bucket.flat_idx].to(bucket.device), sgd_lr[bucket.flat_idx].to(bucket.device)
        return SwatsArgs(momentum_buffers=bucket.state_list("momentum_buffer"), phase=phase, sgd_lr=sgd_lr,
                         partials=torch.zeros(len(bucket.params), 2, dtype=torch.float64, device=bucket.device),
                         nesterov=group["nesterov"])

    def finalize(self, calls: list, found_inf, process_group) -> None:
        """The switch test on the sums the step's ``calls`` ((bucket, SwatsArgs) pairs) wrote."""
        lay = self.layout
        if len(calls) == 1 and calls[0][0].covers_all:
            partials, stepped = calls[0][1].partials, None  # every tensor stepped
        else:
            partials = torch.zeros(lay.T, 2, dtype=torch.float64, device=lay.device)
            stepped = torch.zeros(lay.T, dtype=torch.float64, device=lay.device)
            for b, args in calls:
                partials.index_copy_(0, b.flat_idx, args.partials.to(lay.device))
                stepped.index_fill_(0, b.flat_idx, 1.0)
        switch_update(lay, self.state, self._step[0], partials, stepped, found_inf, process_group)
        self._step = None

    def info(self, param_groups: list[dict]) -> list[dict]:
        return info(self.state, [float(param_groups[g]["betas"][1]) for g in self.layout.first_group])
