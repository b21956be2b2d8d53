"""torch.optim's contract, checked with torch's own OptimizerInfo machinery.

The torch wheel ships ``torch.testing._internal.common_optimizers``: ``optim_db`` holds, per optimizer, the
constructor configs torch tests (``optim_inputs_func``), the inputs that must raise (``optim_error_inputs_func``)
and the schedulers torch runs with it. Here our Adam / AdamW / SGD stand in for torch's and must step exactly like
torch's for-loop implementation under every config, on every backend that runs here; every public class (the
hybrid rules too) must keep the rest of the contract: ``defaults``, unknown keywords, every hook kind, state_dict
round trips, deepcopy / pickle / torch.save, all of torch's LR schedulers, closures, params without gradients.

Deliberate deviations from torch (see the README): ``foreach`` / ``fused`` choose nothing here (the backend does),
so torch's errors about tensor lr or betas "with foreach=True" do not apply.
"""
import copy
import pickle

import pytest
import torch
from torch.optim import lr_scheduler as L
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.optim.swa_utils import SWALR, AveragedModel
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

import fused_hybrid as fh
from fused_hybrid import rules
from cases import roundtrip

OURS = {torch.optim.Adam: fh.Adam, torch.optim.AdamW: fh.AdamW, torch.optim.SGD: fh.SGD,
        torch.optim.RMSprop: fh.RMSprop, torch.optim.Adagrad: fh.Adagrad}
INFOS = [oi for oi in optim_db if oi.optim_cls in OURS]
# Triton runs under its interpreter here: slow per launch, so it takes the trajectory and checkpoint checks only.
BACKENDS = [b for b in ("reference", "cpu", "triton") if "available on cpu" in fh.backends()[b] or b == "reference"]
STEPS = 12

# Every public class with a config that exercises its state (momentum buffers, amsgrad, a switch that fires).
PUBLIC = {
    "Adam": (fh.Adam, dict(amsgrad=True)), "AdamW": (fh.AdamW, {}), "SGD": (fh.SGD, dict(momentum=0.9)),
    "Padam": (fh.Padam, {}), "AdamClip": (fh.AdamClip, dict(sgd_lr=0.1)), "AdaBound": (fh.AdaBound, {}),
    "SWATS": (fh.SWATS, dict(switch_rtol=0.5)), "MAS": (fh.MAS, dict(momentum=0.9, variant="vector")),
    "NDAdam": (fh.NDAdam, {}), "RMSprop": (fh.RMSprop, dict(centered=True, momentum=0.9)),
    "Adagrad": (fh.Adagrad, dict(lr_decay=0.01)),
    "Hybrid": (fh.Hybrid, dict(rule="adam")),
}
RULE_OF = {"Adam": "adam", "AdamW": "adamw", "SGD": "sgd", "Padam": "padam", "AdamClip": "adamclip",
           "AdaBound": "adabound", "SWATS": "swats", "MAS": "mas", "NDAdam": "ndadam", "RMSprop": "rmsprop",
           "Adagrad": "adagrad", "Hybrid": "adam"}
TORCH_OF = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD,
            "RMSprop": torch.optim.RMSprop, "Adagrad": torch.optim.Adagrad}


def _configs():
    return [pytest.param(oi, oinput.kwargs, id=f"{oi.optim_cls.__name__}-{oinput.desc.replace(' ', '_')}")
            for oi in INFOS for oinput in oi.optim_inputs_func("cpu")]


def _model_params(dtype=torch.float32, seed=0, copies=2):
    """``copies`` identical lists: a Linear's weight and bias, an odd-sized vector and a 0-dim scalar."""
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in ((10, 5), (10,), (7,), ())]
    return [[torch.nn.Parameter(b.clone()) for b in base] for _ in range(copies)]


def _feed(lists, k):
    """The same random gradient (never zero) to every list, a fresh draw per step."""
    g = torch.Generator().manual_seed(1000 + k)
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in lists[0]]
    for params in lists:
        for p, gr in zip(params, grads):
            p.grad = gr.to(p.dtype)


def _clone_kwargs(kw):
    """A config's kwargs with fresh tensor values (a tensor lr is per optimizer, as schedulers write into it)."""
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def _close(xs, ys, dtype):
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x.detach(), y.detach(), **tol)


# -- trajectories against torch's for-loop implementation, with torch's own configs and schedulers ---------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("oi,kwargs", _configs())
def test_trajectory_equals_torch_forloop(oi, kwargs, backend):
    dtypes = (torch.float32, torch.float64) if backend == "cpu" else (torch.float32,)
    for dtype in dtypes:
        ours, theirs = _model_params(dtype)
        o1 = OURS[oi.optim_cls](ours, backend=backend, **_clone_kwargs(kwargs))
        o2 = oi.optim_cls(theirs, foreach=False, **_clone_kwargs(kwargs))
        for k in range(STEPS):
            _feed([ours, theirs], k)
            o1.step()
            o2.step()
        _close(ours, theirs, dtype)


@pytest.mark.parametrize("oi", INFOS, ids=lambda oi: oi.optim_cls.__name__)
def test_torch_scheduler_inputs_give_torch_trajectories(oi):
    """Each scheduler combination torch's OptimizerInfo runs with this optimizer (StepLR, ReduceLROnPlateau,
    ConstantLR, ExponentialLR, ...), stepped alongside ours and torch's."""
    for make in oi.scheduler_inputs:
        ours, theirs = _model_params()
        o1, o2 = OURS[oi.optim_cls](ours, lr=1e-2), oi.optim_cls(theirs, lr=1e-2, foreach=False)
        s1, s2 = [m(o1) for m in make], [m(o2) for m in make]
        for k in range(STEPS):
            _feed([ours, theirs], k)
            o1.step()
            o2.step()
            for a, b in zip(s1, s2):
                if isinstance(a, L.ReduceLROnPlateau):
                    a.step(1.0), b.step(1.0)  # a flat loss: the plateau scheduler cuts the lr
                else:
                    a.step(), b.step()
        _close(ours, theirs, torch.float32)
        assert [g["lr"] for g in o1.param_groups] == [g["lr"] for g in o2.param_groups]


# -- errors, by type and message ----------------------------------------------------------------------------------

def _torch_error_inputs():
    # Not the errors about torch's foreach kernels' own limits: a deliberate deviation (module docstring).
    return [pytest.param(oi, ei, id=f"{oi.optim_cls.__name__}-{ei.optimizer_error_input.desc[:40]}")
            for oi in INFOS for ei in oi.optim_error_inputs_func("cpu", torch.float32)
            if "foreach" not in ei.error_regex]


@pytest.mark.parametrize("oi,ei", _torch_error_inputs())
def test_torch_error_inputs_raise_the_same_errors(oi, ei):
    oinput = ei.optimizer_error_input
    params = oinput.params if oinput.params is not None else [torch.nn.Parameter(torch.randn(2, 3))]
    cls = OURS[oi.optim_cls]
    if ei.error_type is UserWarning:
        with pytest.warns(UserWarning, match=ei.error_regex):
            cls(params, **oinput.kwargs)
        return
    if ei.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(ei.error_type, match=ei.error_regex):
            cls(params, **oinput.kwargs)
    else:
        opt = cls(params, **oinput.kwargs)
        with pytest.raises(ei.error_type, match=ei.error_regex):
            opt.step()


@pytest.mark.parametrize("name", PUBLIC)
def test_unknown_keyword_is_a_type_error(name):
    cls, kw = PUBLIC[name]
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(TypeError, match="momentun"):
        cls(p, momentun=0.9, **kw)


def test_unknown_keyword_names_the_rule_keys():
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(TypeError, match=r"momentun.*'momentum'"):
        fh.Hybrid(p, rule="sgd", momentun=0.9)
    # A keyword of some rule that none of the optimizer's groups follows would silently do nothing.
    with pytest.raises(TypeError, match="momentum"):
        fh.Hybrid(p, rule="adam", momentum=0.9)
    opt = fh.Hybrid([{"params": p, "rule": "sgd"}], rule="adam", momentum=0.9)
    assert opt.param_groups[0]["momentum"] == 0.9 and "betas" not in opt.param_groups[0]
    with pytest.raises(TypeError, match="momentum"):  # a group key foreign to its rule
        fh.Adam([{"params": p, "momentum": 0.9}])


@pytest.mark.parametrize("name", [n for n in PUBLIC if n != "Hybrid"])
def test_invalid_hyperparameter_raises_before_params_are_read(name):
    """torch.optim checks hyperparameters first: fh.Adam(None, lr=-1) names the lr, not the None."""
    cls, kw = PUBLIC[name]
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        cls(None, **{**kw, "lr": -1.0})
    with pytest.raises(ValueError, match="Invalid weight_decay value"):
        cls(None, **{**kw, "weight_decay": -1.0})


# -- defaults -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tcls", list(OURS), ids=lambda c: c.__name__)
def test_defaults_hold_what_torchs_hold(tcls):
    p = [torch.nn.Parameter(torch.randn(3))]
    own = {torch.optim.SGD: dict(momentum=0.8), torch.optim.RMSprop: dict(alpha=0.9, centered=True),
           torch.optim.Adagrad: dict(lr_decay=0.1, initial_accumulator_value=0.5)}
    kw = dict(lr=0.02, weight_decay=0.1) | own.get(tcls, dict(betas=(0.8, 0.9)))
    theirs, ours = tcls(p, **kw).defaults, OURS[tcls](p, **kw).defaults
    for key, value in theirs.items():
        assert key in ours and ours[key] == value, key
    assert ours["rule"] in rules.DEFAULTS


@pytest.mark.parametrize("name", PUBLIC)
def test_defaults_hold_the_rules_effective_hyperparameters(name):
    cls, kw = PUBLIC[name]
    opt = cls([torch.nn.Parameter(torch.randn(3))], lr=0.03, **kw)
    rule = RULE_OF[name]
    assert opt.defaults["rule"] == rule
    assert set(rules.DEFAULTS[rule]) <= set(opt.defaults)
    assert opt.defaults["lr"] == 0.03
    for key, value in kw.items():
        if key != "rule":
            assert opt.defaults[key] == value
    group = opt.param_groups[0]
    assert {k: group[k] for k in opt.defaults} == opt.defaults


@pytest.mark.parametrize("sched", ["OneCycleLR", "CyclicLR"])
@pytest.mark.parametrize("name", PUBLIC)
def test_momentum_cycling_schedulers_find_betas_or_momentum(name, sched):
    """OneCycleLR and CyclicLR read ``defaults`` for momentum or betas and cycle it; every rule but Adagrad has one
    or the other, and the cycled value reaches the step (Adagrad has neither: the same error as torch's)."""
    cls, kw = PUBLIC[name]
    params = _model_params(copies=1)[0]
    opt = cls(params, lr=1e-2, **kw)
    make = ((lambda o: L.OneCycleLR(o, max_lr=1e-2, total_steps=10)) if sched == "OneCycleLR"
            else (lambda o: L.CyclicLR(o, base_lr=1e-3, max_lr=1e-2, step_size_up=3)))
    if name == "Adagrad":
        with pytest.raises(ValueError) as ours:
            make(opt)
        with pytest.raises(ValueError) as theirs:
            make(torch.optim.Adagrad(params))
        assert str(ours.value) == str(theirs.value)
        return
    s = make(opt)
    seen = set()
    for k in range(8):
        _feed([params], k)
        opt.step()
        s.step()
        g = opt.param_groups[0]
        seen.add(g["betas"][0] if "betas" in opt.defaults else g["momentum"])
    assert len(seen) > 2 and all(torch.isfinite(p).all() for p in params)


# -- every LR scheduler, every class -----------------------------------------------------------------------------

SCHEDULERS = {
    "StepLR": lambda o: L.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: L.MultiStepLR(o, milestones=[2, 5], gamma=0.3),
    "ConstantLR": lambda o: L.ConstantLR(o, factor=0.5, total_iters=4),
    "LinearLR": lambda o: L.LinearLR(o, start_factor=0.2, total_iters=5),
    "ExponentialLR": lambda o: L.ExponentialLR(o, gamma=0.8),
    "PolynomialLR": lambda o: L.PolynomialLR(o, total_iters=6, power=2.0),
    "CosineAnnealingLR": lambda o: L.CosineAnnealingLR(o, T_max=6),
    "CosineAnnealingWarmRestarts": lambda o: L.CosineAnnealingWarmRestarts(o, T_0=3),
    "LambdaLR": lambda o: L.LambdaLR(o, lambda k: 1.0 / (k + 1)),
    "MultiplicativeLR": lambda o: L.MultiplicativeLR(o, lambda k: 0.9),
    "OneCycleLR": lambda o: L.OneCycleLR(o, max_lr=2e-2, total_steps=STEPS + 1,
                                           cycle_momentum=False),
    "CyclicLR": lambda o: L.CyclicLR(o, base_lr=1e-3, max_lr=2e-2, step_size_up=3, cycle_momentum=False),
    "ReduceLROnPlateau": lambda o: L.ReduceLROnPlateau(o, patience=1, factor=0.5),
    "SequentialLR": lambda o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.1, total_iters=3),
                                                 L.ExponentialLR(o, gamma=0.7)], milestones=[3]),
    "ChainedScheduler": lambda o: L.ChainedScheduler([L.ConstantLR(o, factor=0.5, total_iters=4),
                                                      L.ExponentialLR(o, gamma=0.9)]),
    "SWALR": lambda o: SWALR(o, swa_lr=5e-3, anneal_epochs=3),
}


def _run_scheduled(opt, params, make, swa=None):
    sched = make(opt)
    lrs = []
    for k in range(STEPS):
        _feed([params], k)
        opt.step()
        if swa is not None:
            swa.update_parameters(torch.nn.ParameterList(params))
        sched.step(1.0) if isinstance(sched, L.ReduceLROnPlateau) else sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("sched", SCHEDULERS)
@pytest.mark.parametrize("name", PUBLIC)
def test_every_scheduler_drives_every_class(name, sched):
    """The lr sequence is torch's (the same scheduler on torch.optim.SGD), the steps use it (Adam and SGD: the
    trajectory equals torch's under the same scheduler), and SWALR averages the params with AveragedModel."""
    cls, kw = PUBLIC[name]
    ours, theirs = _model_params()
    swa = AveragedModel(torch.nn.ParameterList(ours)) if sched == "SWALR" else None
    lrs = _run_scheduled(cls(ours, lr=1e-2, **kw), ours, SCHEDULERS[sched], swa)
    tcls = TORCH_OF.get(name)
    ref = (tcls or torch.optim.SGD)(theirs, lr=1e-2, foreach=False, **(kw if tcls else {}))
    assert lrs == pytest.approx(_run_scheduled(ref, theirs, SCHEDULERS[sched]), rel=1e-12)
    if tcls is not None:
        _close(ours, theirs, torch.float32)
    assert all(torch.isfinite(p).all() for p in ours)
    if swa is not None:
        assert int(swa.n_averaged) == STEPS and not torch.equal(swa.module[0], ours[0].detach())


# -- hooks --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PUBLIC)
def test_every_hook_kind_runs(name):
    cls, kw = PUBLIC[name]
    params = _model_params(copies=1)[0]
    opt = cls(params, lr=1e-2, **kw)
    calls = []
    handles = [
        opt.register_step_pre_hook(lambda o, a, k: calls.append("pre")),
        opt.register_step_post_hook(lambda o, a, k: calls.append("post")),
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global_pre")),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append("global_post")),
        opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre")),
        opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1}),
        opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load_pre")),
        opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post")),
    ]
    try:
        _feed([params], 0)
        opt.step()
        assert calls == ["global_pre", "pre", "post", "global_post"]
        sd = opt.state_dict()
        assert sd["extra"] == 1 and calls[-1] == "sd_pre"
        opt.load_state_dict(sd)
        assert calls[-2:] == ["load_pre", "load_post"]
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("name", PUBLIC)
def test_load_state_dict_pre_hook_can_remap_the_checkpoint(name):
    """A pre-hook that rewrites the checkpoint (here: the lr of a renamed group, and a whole new dict) is what
    loads, as in torch; its post-hook sees the loaded state."""
    cls, kw = PUBLIC[name]
    params = _model_params(copies=1)[0]
    opt = cls(params, lr=1e-2, **kw)
    _feed([params], 0)
    opt.step()
    sd = opt.state_dict()

    def remap(o, d):
        d = copy.deepcopy(d)
        d["param_groups"][0]["lr"] = 0.123
        return d

    fresh = cls(params, lr=1e-2, **kw)
    fresh.register_load_state_dict_pre_hook(remap)
    seen = []
    fresh.register_load_state_dict_post_hook(lambda o: seen.append(o.param_groups[0]["lr"]))
    fresh.load_state_dict(sd)
    assert seen == [0.123] and sd["param_groups"][0]["lr"] == 1e-2

    def edit_in_place(o, d):
        d["param_groups"] = [{**g, "lr": 0.5} for g in d["param_groups"]]

    fresh.register_load_state_dict_pre_hook(edit_in_place, prepend=True)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["lr"] == 0.123  # prepend: the remap ran after it, on its result


# -- copies and checkpoints ---------------------------------------------------------------------------------------

def _copy_ways():
    return {
        "deepcopy": copy.deepcopy,
        "pickle": lambda o: pickle.loads(pickle.dumps(o)),
        "torch.save": roundtrip,
    }


@pytest.mark.parametrize("how", list(_copy_ways()))
@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name", PUBLIC)
def test_copies_step_exactly_like_the_original(name, backend, how):
    """A copy of an optimizer carries its params (deepcopy / pickle copy them with it): after the copy, both step
    on the same gradients to bitwise the same params, SWATS's switch included."""
    cls, kw = PUBLIC[name]
    params = _model_params(copies=1)[0]
    opt = cls(params, lr=1e-2, backend=backend, **kw)
    for k in range(4):
        _feed([params], k)
        opt.step()
    twin = _copy_ways()[how](opt)
    twin_params = twin.param_groups[0]["params"]
    assert all(a is not b for a, b in zip(params, twin_params))
    assert twin.defaults == opt.defaults and twin.granularity == opt.granularity
    for k in range(4, 10):
        _feed([params, twin_params], k)
        opt.step()
        twin.step()
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params))
    if name == "SWATS":
        assert twin.switch_info() == opt.switch_info() and opt.switch_info()[0]["switched"]


def test_a_copy_drops_the_process_group():
    opt = fh.SWATS([torch.nn.Parameter(torch.randn(3))], process_group="stand-in for a live group")
    assert copy.deepcopy(opt).process_group is None  # a live handle does not pickle; set it again after a copy


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("oi,kwargs", _configs())
def test_checkpoints_move_both_ways_with_torch(oi, kwargs, backend):
    """torch -> ours and ours -> torch, through torch.save with weights_only=True, then both go on equal."""
    for src_is_torch in (True, False):
        a, b = _model_params()
        make_ours = lambda ps: OURS[oi.optim_cls](ps, backend=backend, **_clone_kwargs(kwargs))  # noqa: E731
        make_torch = lambda ps: oi.optim_cls(ps, foreach=False, **_clone_kwargs(kwargs))  # noqa: E731
        first, second = (make_torch, make_ours) if src_is_torch else (make_ours, make_torch)
        o1 = first(a)
        for k in range(4):
            _feed([a], k)
            o1.step()
        for p, q in zip(a, b):
            q.data.copy_(p.data)
        o2 = second(b)
        o2.load_state_dict(roundtrip(o1.state_dict(), weights_only=True))
        for k in range(4, 9):
            _feed([a, b], k)
            o1.step()
            o2.step()
        _close(b, a, torch.float32)


@pytest.mark.parametrize("tcls", [torch.optim.Adam, torch.optim.AdamW], ids=lambda c: c.__name__)
def test_a_plain_number_step_loads(tcls):
    """Checkpoints of torch < 1.12 (and of other libraries) store ``step`` as a number: converted as torch does."""
    a, b = _model_params()
    kw = dict(lr=1e-2, amsgrad=True)
    t = tcls(a, foreach=False, **kw)
    for k in range(3):
        _feed([a], k)
        t.step()
    sd = t.state_dict()
    for st in sd["state"].values():
        st["step"] = int(st["step"].item())
    for p, q in zip(a, b):
        q.data.copy_(p.data)
    for backend in ("reference", "cpu"):
        ours = OURS[tcls]([q.detach().clone().requires_grad_() for q in b], backend=backend, **kw)
        ours.load_state_dict(copy.deepcopy(sd))
        t2 = tcls([p.detach().clone().requires_grad_() for p in a], foreach=False, **kw)
        t2.load_state_dict(copy.deepcopy(sd))
        ps, ts = ours.param_groups[0]["params"], t2.param_groups[0]["params"]
        for k in range(3, 6):
            _feed([ps, ts], k)
            ours.step()
            t2.step()
        _close(ps, ts, torch.float32)


@pytest.mark.parametrize("name", PUBLIC)
def test_named_parameters_checkpoint_keeps_its_names(name):
    """torch >= 2.6 saves ``param_names`` of named params; loaded into an optimizer built without names, the saved
    names are kept (torch's behaviour), and an optimizer with names keeps its own when the checkpoint has none."""
    cls, kw = PUBLIC[name]
    model = torch.nn.Linear(5, 3)
    named = cls(model.named_parameters(), lr=1e-2, **kw)
    assert named.param_groups[0]["param_names"] == ["weight", "bias"]
    model(torch.randn(4, 5)).sum().backward()
    named.step()
    sd = named.state_dict()
    assert sd["param_groups"][0]["param_names"] == ["weight", "bias"]
    plain = cls(model.parameters(), lr=1e-2, **kw)
    plain.load_state_dict(sd)
    assert plain.param_groups[0]["param_names"] == ["weight", "bias"]
    unnamed_sd = cls(model.parameters(), lr=1e-2, **kw).state_dict()
    named.load_state_dict(unnamed_sd)
    assert named.param_groups[0]["param_names"] == ["weight", "bias"]


def test_a_scheduler_resumes_from_a_checkpoint_of_its_optimizer():
    """initial_lr travels with the groups, so a scheduler made with last_epoch >= 0 after a load finds it."""
    params = _model_params(copies=1)[0]
    opt = fh.SGD(params, lr=0.1)
    sched = L.StepLR(opt, step_size=2)
    for k in range(3):
        _feed([params], k)
        opt.step()
        sched.step()
    fresh = fh.SGD(params, lr=0.1)
    fresh.load_state_dict(opt.state_dict())
    resumed = L.StepLR(fresh, step_size=2, last_epoch=2)
    assert fresh.param_groups[0]["initial_lr"] == 0.1 and resumed.last_epoch == 3  # made at 2, stepped once


# -- step(): closures, params without gradients -------------------------------------------------------------------

@pytest.mark.parametrize("name", PUBLIC)
def test_closure_is_called_with_grad_enabled_and_its_loss_returned(name):
    cls, kw = PUBLIC[name]
    model = torch.nn.Linear(4, 1)
    opt = cls(model.parameters(), lr=1e-2, **kw)
    x = torch.randn(8, 4)

    def closure():
        assert torch.is_grad_enabled()
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    before = model.weight.detach().clone()
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert not torch.equal(before, model.weight.detach())
    assert opt.step() is None


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name", PUBLIC)
def test_empty_and_gradless_params(name, backend):
    """A param without a gradient is left alone and gets no state; an empty param steps as a no-op; a group that
    has no gradient at all is fine."""
    cls, kw = PUBLIC[name]
    a, empty, idle = (torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(0, 3)),
                      torch.nn.Parameter(torch.randn(5)))
    other = torch.nn.Parameter(torch.randn(2))
    opt = cls([{"params": [a, empty, idle]}, {"params": [other]}], lr=1e-2, backend=backend, **kw)
    idle_before = idle.detach().clone()
    for k in range(3):
        a.grad, empty.grad = torch.randn(4, 3), torch.randn(0, 3)
        opt.step()
    assert torch.equal(idle.detach(), idle_before) and idle not in opt.state and other not in opt.state
    assert empty.shape == (0, 3) and torch.isfinite(a).all()
