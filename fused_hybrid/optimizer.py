"""``HybridOptimizer``: the one torch.optim.Optimizer behind every fused_hybrid optimizer.

A step: validate the gradients, create missing state, group each param group's tensors by (device, dtype) once
and cache that plan, hand each bucket to its backend (one call per bucket; the fused backends make one pass
over memory per call), and for SWATS run the device-side switch test on the partial sums the kernels wrote.
Nothing here reads a device value on the fused paths: lr, step, phase and found_inf stay on the device.
"""
from __future__ import annotations

from collections import defaultdict
from copy import deepcopy
import operator
from itertools import chain, repeat

import torch

from . import grad_clip, rules
from . import swats as sw
from .backends import check_name, resolve

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)

try:  # DTensor parameters (FSDP2's fully_shard, tensor parallelism)
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed
    DTensor = ()


def _local(t):
    """A DTensor's local shard, a plain tensor that shares its storage; anything else as it is."""
    return t._local_tensor if isinstance(t, DTensor) else t


def _real(t):
    """What the kernels step for a tensor: its local shard, as a real view when complex (torch.optim steps complex
    params as view_as_real too: real and imaginary parts are independent coordinates)."""
    t = _local(t)
    return torch.view_as_real(t) if t.is_complex() else t


class _Bucket:
    """The tensors of one group that share a device and dtype and have gradients this step, with their state
    lists built once (state tensors keep their identity until a checkpoint is loaded, which drops every plan)."""
    __slots__ = ("device", "params", "idx", "states", "flat_idx", "backend", "whole", "_lists", "covers_all", "cache",
                 "viewed", "nd_axes", "seeds", "bf16_state")

    def __init__(self, device, backend, viewed=False):
        self.device = device
        # DTensor params (FSDP2) and complex ones: params, grads and state go to the kernels as ``_real`` views
        # (local shards, real views), so each rank steps its own shard; SWATS's sums over shards are completed by
        # the optimizer's process_group, and over complex params they are real inner products Re<p, g>.
        self.viewed = viewed
        self.backend = backend  # the backend module, resolved once per plan
        self.params, self.idx, self.states = [], [], []
        self.flat_idx = None
        self.covers_all = False  # SWATS: this bucket is every SWATS tensor, in layout order, on the layout's device
        self.whole = False  # the group's only bucket, holding all its params in order: its grads are the group's
        self._lists = {}
        self.cache = {}  # the backend's own per-bucket data (its TensorTable, ...), dropped with the plan
        self.nd_axes = None  # ND-Adam: (the group's vec_axes, each param's vector dims); shapes are fixed per plan
        self.seeds = None  # stochastic rounding: each param's seed as an int (seeds never change while a plan lives)
        self.bf16_state = False  # the group's state_dtype makes this bucket's moment buffers bfloat16

    def state_list(self, key: str) -> list:
        lst = self._lists.get(key)
        if lst is None:
            lst = self._lists[key] = [s.get(key) for s in self.states]
        return lst


_GRAD = operator.attrgetter("grad")


def _grads_of(params: list) -> list:
    """Every param's .grad. The map/attrgetter form is C-level (2000 params: ~0.17 ms against ~0.3 ms for a
    list comprehension); torch.compile cannot trace attrgetter, so it gets the comprehension."""
    if torch.compiler.is_compiling():
        return [p.grad for p in params]
    return list(map(_GRAD, params))


def _none_missing(grads: list) -> bool:
    if torch.compiler.is_compiling():
        return all(g is not None for g in grads)
    return not any(map(operator.is_, grads, repeat(None)))


class HybridOptimizer(torch.optim.Optimizer):
    """An optimizer whose parameter groups each follow a rule (``"adam"``, ``"sgd"``, ``"swats"``, ...).

    ``rule`` is the default for groups that do not name one, so
    ``HybridOptimizer([{"params": body, "rule": "adam"}, {"params": head, "rule": "sgd", "lr": 0.1}])``
    trains the body with Adam and the head with SGD in one optimizer (seed 003, section IV.A). Keyword
    arguments are defaults for every group whose rule has that hyperparameter; one that no group's rule has is a
    TypeError. ``defaults`` holds the default rule's effective hyperparameters (torch.optim's meaning: what
    schedulers such as OneCycleLR read), and each group holds exactly its own rule's keys.
    """

    _step_supports_amp_scaling = True  # GradScaler hands us grad_scale / found_inf; kernels unscale and skip

    # Gradient clipping fused into the step (fused_hybrid.grad_clip; validated when set, changeable between steps).
    max_grad_norm = grad_clip.Setting()
    norm_type = grad_clip.Setting()
    skip_grad_norm_above = grad_clip.Setting()

    @property
    def grad_norm(self):
        """The total gradient norm of the last step that computed one (``max_grad_norm`` or ``skip_grad_norm_above``
        set): a 0-dim tensor on the device, what clip_grad_norm_ would have returned, before clipping. step() never
        reads it; reading its value is the caller's sync. (Kept in a dict: torch.compile replays a dict's mutation
        but not an attribute set on an optimizer.)"""
        return self._clip_out.get("grad_norm")

    def __init__(self, params, rule: str = "adam", *, backend: str = "auto", granularity: str = "global",
                 process_group=None, max_grad_norm: float | None = None, norm_type: float = 2.0,
                 skip_grad_norm_above: float | None = None, **defaults):
        # As in torch.optim, every hyperparameter is checked before the params are looked at (fh.Adam(None, lr=-1)
        # names the lr): the keywords, then the default rule's effective values.
        check_name(backend)
        grad_clip.check(max_grad_norm, norm_type, skip_grad_norm_above)
        self._clip_out: dict = {}
        self.max_grad_norm, self.norm_type, self.skip_grad_norm_above = max_grad_norm, norm_type, skip_grad_norm_above
        if granularity not in sw.GRANULARITIES:
            raise ValueError(f"Invalid granularity: {granularity!r}; choose one of {sw.GRANULARITIES}")
        rules.get(rule)
        rules.check_keywords(rule, defaults, set(rules.RULES))
        if defaults.get("foreach") and defaults.get("fused"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self._rule = rule
        self.granularity = granularity
        # SWATS with sharded parameters: the switch test's sums are all-reduced over this group (None: this
        # process holds the whole model, as under DDP, whose replicas compute identical sums). Not pickled.
        self.process_group = process_group
        self._reset_caches()
        # The explicit keyword arguments apply to every group whose rule has that hyperparameter (Hybrid); torch's
        # ``defaults`` holds the default rule's effective hyperparameters, as torch.optim's holds its rule's.
        self._kwargs = {**defaults, "backend": backend}
        effective = rules.optimizer_defaults(rule, self._kwargs)
        rules.validate(effective)
        super().__init__(params, effective)
        rules.check_keywords(rule, defaults, {g["rule"] for g in self.param_groups})

    def _reset_caches(self) -> None:
        """Drop everything derived from the groups and state: the plans and SWATS's controller (``_invalidate``),
        and which momentum buffers are fresh (a new state or a loaded checkpoint decides that anew)."""
        self._invalidate()
        # A dict used as an identity set: torch 2.11's dynamo traces set.difference_update with tensor == (breaks).
        self._fresh_buffers: dict = {}

    # -- groups ---------------------------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        if isinstance(param_group, dict):
            param_group = dict(param_group)
            rules.fill_defaults(param_group, self._rule, self._kwargs)
            check_name(param_group["backend"])
            rules.validate(param_group)
            # torch's add_param_group gives the group every key of ``defaults``; a group of another rule (Hybrid)
            # has its own complete set, and takes none of the default rule's foreign keys.
            foreign = self.defaults.keys() - param_group.keys()
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for key in foreign:
            del group[key]
        for p in group["params"]:
            if p.is_complex() and not rules.RULES[group["rule"]].complex_ok:
                raise ValueError(f"{group['rule']} does not take complex parameters (ND-Adam: the norm of a complex "
                                 f"weight vector is not a per-row real norm of its view; pass torch.view_as_real(p) "
                                 f"to decide)")
            if p.dtype not in _FLOAT_DTYPES:
                raise ValueError(f"unsupported parameter dtype {p.dtype}; fused_hybrid takes {_FLOAT_DTYPES}")
        self._invalidate()

    def _invalidate(self) -> None:
        """Drop the plans (with their tables) and SWATS's controller: rebuilt by the next step."""
        self._plans: dict[int, tuple] = {}
        # swats.Controller, made when a step first needs it; held in a list because torch 2.11's dynamo refuses a
        # setattr on the optimizer inside a compiled step (a list append it traces).
        self._swats: list = []
        self._swats_calls: list = []  # (bucket, SwatsArgs) of a step's SWATS buckets (the rule's ``after`` hook)

    # -- step -----------------------------------------------------------------------------------------------------

    def _plan(self, gi: int, group: dict, grads: list) -> list[_Bucket]:
        """Buckets for group ``gi``: cached while the same parameters have gradients and the hyperparameters
        that decide which state exists (momentum on/off, amsgrad) are unchanged. This runs every step for every
        group, so the common case (every param has a gradient) costs one C-level scan of ``grads``."""
        every = _none_missing(grads)
        key = (True if every else tuple(g is not None for g in grads),) + rules.state_flags(group)
        cached = self._plans.get(gi)
        if cached is not None and cached[0] == key:
            return cached[1]
        buckets: dict[tuple, _Bucket] = {}
        for j, (p, g) in enumerate(zip(group["params"], grads)):
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError("fused_hybrid does not support sparse gradients; use torch.optim.SparseAdam")
            st = self.state[p]
            dtensor = isinstance(p, DTensor)
            if dtensor:
                self._check_dtensor(p, g, group)
            viewed = dtensor or p.is_complex()
            lp = _real(p)
            if rules.ensure_state(p, st, group):
                self._fresh_buffers[lp] = None
            # The fused kernels update params in place through their data pointers, so they take contiguous
            # params only; "auto" gives a non-contiguous one (a transposed view made a Parameter, say) to the
            # reference backend, a named fused backend refuses it with a clear error.
            dense = lp.is_contiguous()
            bkey = (lp.device, lp.dtype, dense, viewed)
            b = buckets.get(bkey)
            if b is None:
                name = group["backend"] if dense or group["backend"] != "auto" else "reference"
                bf16_state = rules.state_dtype(p, group) == torch.bfloat16
                b = buckets[bkey] = _Bucket(lp.device, resolve(name, lp.device, rules.RULES[group["rule"]].family,
                                                               bf16_state), viewed)
                b.bf16_state = bf16_state
            b.params.append(lp)
            b.idx.append(j)
            # State tensors keep their identity while the plan lives, so their views can be taken once.
            b.states.append({k: _real(v) if isinstance(v, torch.Tensor) else v for k, v in st.items()}
                            if viewed else st)
        plan = list(buckets.values())
        if len(plan) == 1 and every:
            plan[0].whole = True
        self._plans[gi] = (key, plan)
        return plan

    @staticmethod
    def _check_dtensor(p, g, group) -> None:
        if not rules.RULES[group["rule"]].sharded_ok:
            raise ValueError(f"{group['rule']} does not support DTensor (sharded) parameters yet (ND-Adam does not "
                             f"support DTensor: its weight vectors would need whole rows on every rank)")
        if not isinstance(g, DTensor) or g.placements != p.placements or g.device_mesh != p.device_mesh:
            raise ValueError(f"a DTensor parameter with placements {p.placements} has a gradient with "
                             f"{getattr(g, 'placements', 'no placements (a plain tensor)')}: the kernels step local "
                             f"shards, which must line up")

    def _fast_plan(self, gi: int, group: dict):
        """The cached plan of group ``gi`` when the backend can read the gradients itself: last step every param
        had one, the state flags are unchanged, and the group is one whole bucket of plain tensors on such a
        backend (GRADS_FROM_PARAMS: no Python reads of 2000 `.grad`s). None otherwise, or under torch.compile."""
        cached = self._plans.get(gi)
        if cached is None or cached[0][0] is not True or torch.compiler.is_compiling():
            return None
        plan = cached[1]
        if len(plan) != 1 or not plan[0].whole or plan[0].viewed or cached[0][1:] != rules.state_flags(group):
            return None
        return plan if getattr(plan[0].backend, "GRADS_FROM_PARAMS", False) else None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        # Emptied, not rebound: torch 2.11's dynamo refuses an attribute assignment on the optimizer inside a
        # compiled step (seen on the GPU machine's torch; 2.14 accepts both).
        self._swats_calls.clear()
        groups = self.param_groups
        if grad_clip.active(self):  # the norm first, then every bucket with the clipped grad_scale / found_inf
            found_inf = grad_clip.step(self, grad_scale, found_inf, _grads_of)
            groups = ()  # (stepped)
        for gi, group in enumerate(groups):
            hp = rules.record(group)
            plan = self._fast_plan(gi, group)
            # False: some param has no gradient this step; nothing was changed, and the general path skips it.
            if plan is not None and self._step_bucket(gi, group, hp, plan[0], None, grad_scale, found_inf) is not False:
                continue
            all_grads = _grads_of(group["params"])
            for b in self._plan(gi, group, all_grads):
                grads = all_grads if b.whole else [all_grads[j] for j in b.idx]
                self._step_bucket(gi, group, hp, b, grads, grad_scale, found_inf)
        if self._swats_calls:
            self._swats_controller().finalize(self._swats_calls, found_inf, self.process_group)
        return loss

    def _step_bucket(self, gi, group, hp, b, grads, grad_scale, found_inf) -> None:
        """One call of the rule family's backend function for bucket ``b`` of group ``gi`` with its hyperparameter
        record ``hp``, every argument by keyword: the rule's state lists (``State.arg``) and its ``step_args``.
        grads None: the backend reads the params' .grad itself, and returns False, having changed nothing, if one
        is missing (GRADS_FROM_PARAMS backends only)."""
        rule = rules.RULES[group["rule"]]
        if b.viewed:
            if torch.compiler.is_compiling():
                raise RuntimeError("fused_hybrid: torch.compile of step() does not support complex or DTensor "
                                   "parameters (their real views and local shards cannot be traced in place); "
                                   "step them eagerly")
            grads = [_real(g) for g in grads]
        kwargs = {s.arg: b.state_list(s.key) for s in rule.state if s.arg is not None}
        kwargs.update(rule.step_args(self, gi, group, b))
        if hp.rounding:
            hp = rules.bucket_rounding(hp, b, kwargs)
        stepped = getattr(b.backend, rule.family)(
            params=b.params, grads=grads, hp=hp, cache=b.cache,
            grad_scale=None if grad_scale is None else grad_scale.to(b.device),
            found_inf=None if found_inf is None else found_inf.to(b.device), **kwargs)
        if stepped is False:
            return False
        if rule.after is not None:
            rule.after(self, b, kwargs)
        return True

    # -- SWATS ----------------------------------------------------------------------------------------------------

    def _swats_controller(self) -> sw.Controller:
        if not self._swats:
            self._swats.append(sw.Controller(self.param_groups, self.state, self.granularity))
        return self._swats[0]

    def switch_info(self) -> list[dict]:
        """SWATS: one dict per switch segment (``granularity``): ``switched``, ``switch_step`` (the segment's step
        count at the switch, or None), ``sgd_lr`` (Lambda, or None), plus ``step``, ``gamma``, ``lam`` and
        ``lambda_k`` (see ``swats.info``). Syncs."""
        if not any(g["rule"] == "swats" for g in self.param_groups):
            return []
        return self._swats_controller().info(self.param_groups)

    def switch_state(self) -> dict:
        """SWATS: the device tensors of the switch test (per segment: phase, lam, Lambda, switch_step, seg_step,
        gamma; per tensor: lr_ref), updated in place by every step. They live in the optimizer state of the first
        SWATS parameter under ``swats_*`` keys, so checkpoints (torch.distributed.checkpoint's included) carry
        them like any per-parameter state."""
        if not any(g["rule"] == "swats" for g in self.param_groups):
            raise ValueError("switch_state: no parameter group of this optimizer follows SWATS")
        return self._swats_controller().state

    # -- copies -----------------------------------------------------------------------------------------------------

    def __getstate__(self) -> dict:
        """torch's pickled state (defaults, state, param_groups) plus this optimizer's configuration; the plans and
        tables are caches (rebuilt on the next step) and the process group is a live handle that does not pickle:
        a copy has ``process_group=None`` until it is set again. The clipping settings travel; the last step's
        ``grad_norm`` does not (a copy has stepped nothing)."""
        return {**super().__getstate__(), "_rule": self._rule, "granularity": self.granularity,
                "_kwargs": self._kwargs, **{k: getattr(self, k) for k in grad_clip.SETTINGS}}

    def __setstate__(self, state: dict) -> None:
        clip = {k: state.pop(k, None) for k in grad_clip.SETTINGS}  # (older pickles have none: no clipping)
        super().__setstate__(state)
        self.__dict__.setdefault("process_group", None)
        self.max_grad_norm, self.skip_grad_norm_above = clip["max_grad_norm"], clip["skip_grad_norm_above"]
        self.norm_type = 2.0 if clip["norm_type"] is None else clip["norm_type"]
        self._clip_out = {}
        self._reset_caches()

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def state_dict(self):
        sd = super().state_dict()
        sd["fused_hybrid"] = {"granularity": self.granularity}
        return sd

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict) -> None:
        """Load a checkpoint of this optimizer, or of torch.optim's Adam/AdamW/SGD. State is kept in float32
        (float64 for float64 params) whatever the parameter dtype, so bf16/fp16 training resumes bitwise
        (torch.optim's own loader would cast it to the parameter dtype); a group with state_dtype=torch.bfloat16
        gets its moment buffers in bfloat16 whatever dtype the checkpoint saved them in. torch's load_state_dict
        pre-hooks run first (and may replace the checkpoint), its post-hooks last."""
        state_dict = state_dict.copy()  # shallow, as torch's: a pre-hook may edit it in place
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            hook_result = pre_hook(self, state_dict)
            if hook_result is not None:
                state_dict = hook_result
        saved_groups = state_dict.get("param_groups")
        saved_state = state_dict.get("state")
        if saved_groups is None or saved_state is None:
            raise ValueError("not an optimizer state_dict: it needs 'state' and 'param_groups'")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        for i, (g, sg) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(f"parameter group {i} has {len(g['params'])} parameters, "
                                 f"the loaded one {len(sg['params'])}")
        meta = state_dict.get("fused_hybrid", {})
        if meta.get("granularity", self.granularity) != self.granularity:
            raise ValueError(f"checkpoint was saved with granularity {meta['granularity']!r}, "
                             f"this optimizer uses {self.granularity!r}")
        id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        new_groups = []
        for g, sg in zip(self.param_groups, saved_groups):
            ng = {**g}
            # The saved values of this group's keys win, as do a scheduler's initial_lr and the saved
            # param_names (torch keeps the checkpoint's names); keys foreign to the rule (another library's) drop.
            # Except state_dtype: how this run stores its moments is its own choice (as torch.optim's loader casts
            # state to the param dtype it has now), so a float32-state checkpoint resumes in bfloat16 state and back.
            for key, value in deepcopy(sg).items():
                if key not in ("params", "state_dtype") and (key in g or key in rules.COMMON
                                                             or key in rules.EXTRA_KEYS):
                    ng[key] = value
            rules.validate(ng)
            new_groups.append(ng)
        param_group_of = {id(p): g for g in new_groups for p in g["params"]}
        new_state = defaultdict(dict)
        for key, value in saved_state.items():
            if key in id_map:
                p = id_map[key]
                self._check_saved_state(p, value, param_group_of[id(p)], key)
                g = param_group_of[id(p)]
                new_state[p].update({k: self._cast_state(p, k, v, g) for k, v in value.items()})
            elif key == sw.STATE_KEY:  # an older checkpoint of ours: the switch state moves to its anchor's state
                anchor = sw.anchor(new_groups)
                sw.write_state(new_state[anchor], {k: (v.to(anchor.device).clone() if isinstance(v, torch.Tensor)
                                                       else v) for k, v in value.items()})
            else:
                raise ValueError(f"loaded state dict has state for an unknown parameter id {key!r}")
        self.param_groups[:] = new_groups
        self.state = new_state
        self._reset_caches()
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    @staticmethod
    def _check_saved_state(p: torch.Tensor, saved: dict, group: dict, pid) -> None:
        """Refuse, before anything is changed, a checkpoint whose state cannot belong to ``p``: a per-element
        state tensor of another shape (a checkpoint of another model), or a step that is not a scalar. Missing
        keys are fine: the step creates them (a torch.optim.Adam checkpoint has no SWATS momentum buffer)."""
        for k, v in saved.items():
            if k == "step" and not isinstance(v, (torch.Tensor, int, float)):
                raise ValueError(f"state of parameter {pid}: 'step' is a {type(v).__name__}, expected a number")
            if not isinstance(v, torch.Tensor):
                continue
            if k == "step":
                if v.numel() != 1:
                    raise ValueError(f"state of parameter {pid}: 'step' has {v.numel()} elements, expected 1")
                continue
            shape = {st.key: st.shape for st in rules.RULES[group["rule"]].state}.get(k, "param")
            if k == rules.SEED.key and v.numel() != 1:
                raise ValueError(f"state of parameter {pid}: {k!r} has {v.numel()} elements, expected 1")
            if shape in ("param", "comp") and k in rules.PER_ELEMENT_KEYS and v.shape != p.shape:
                raise ValueError(f"state of parameter {pid}: {k!r} has shape {tuple(v.shape)}, the parameter "
                                 f"{tuple(p.shape)} (a checkpoint of another model?)")

    @staticmethod
    def _cast_state(p: torch.Tensor, key: str, value, group: dict):
        if sw.is_switch_key(key):  # SWATS's switch state keeps its dtypes (float64 sums, int counts)
            return value.to(device=p.device).clone() if isinstance(value, torch.Tensor) else value
        if key == "step" and not isinstance(value, torch.Tensor):
            # A plain-number step (torch < 1.12, other libraries): a float32 tensor on the param's device, as
            # torch.optim's __setstate__ converts it; the kernels read the step on the device.
            return torch.tensor(float(value), dtype=torch.float32, device=p.device)
        if not isinstance(value, torch.Tensor):
            return value
        if key == "step":
            return value.to(dtype=torch.float32, device=p.device).clone()
        if key == rules.SEED.key:  # read on the host only: stays a CPU int64 scalar
            return value.to(dtype=torch.int64, device="cpu").clone()
        if key == rules.KAHAN_COMP.key:  # of the param's own dtype (what its stores lost)
            return value.to(dtype=p.dtype, device=p.device).clone()
        if value.is_floating_point():
            # A moment buffer: in the group's state dtype (float32, or bfloat16 under state_dtype=torch.bfloat16),
            # whatever the checkpoint holds (a float32-state checkpoint loads into bfloat16 state and back).
            return rules.convert_state(value.to(device=p.device), rules.state_dtype(p, group))
        return value.to(device=p.device).clone()
