"""Parameters spread over 2 processes (gloo, CPU): ZeRO-style sharding with SWATS's process_group, DDP replicas and
FSDP2's fully_shard (DTensor parameters). Every rank must step like one process holding the whole model, and
SWATS must switch at the same step with the same Lambda."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fused_hybrid as fh

SHAPES = [(7,), (5, 4), (33,), (3, 3, 2), (16,), (9,)]
STEPS = 60
RTOL = 2e-2


def _grads(step, params, offset):
    """Noisy quadratic gradients; tensor i of the whole model always gets the same curvature and noise."""
    out = []
    for j, p in enumerate(params):
        i = offset[j]
        curv = torch.rand(p.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64) + 0.5
        noise = torch.randn(p.shape, generator=torch.Generator().manual_seed(1000 * step + i), dtype=torch.float64)
        out.append(curv * p.detach() + 0.3 * noise)
    return out


def _initial():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]


def _train(params, index, process_group=None, backend="auto"):
    opt = fh.SWATS(params, lr=1e-2, switch_rtol=RTOL, process_group=process_group, backend=backend)
    for step in range(STEPS):
        for p, g in zip(params, _grads(step, params, index)):
            p.grad = g
        opt.step()
    return opt.switch_info()[0], [p.detach() for p in params]


def _worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # ZeRO-style sharding: rank r owns tensors r, r + world, ...
        index = list(range(rank, len(SHAPES), world))
        params = [_initial()[i].clone().requires_grad_() for i in index]
        info, final = _train(params, index, process_group=dist.group.WORLD)
        torch.save({"info": info, "index": index, "params": final}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_sharded_swats_switches_like_one_process(tmp_path):
    whole = [p.clone().requires_grad_() for p in _initial()]
    ref_info, ref_params = _train(whole, list(range(len(SHAPES))))
    assert ref_info["switched"] and ref_info["switch_step"] > 2, "the problem must switch after a few steps"

    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=world, join=True)
    for rank in range(world):
        res = torch.load(f"{tmp_path / 'out'}.{rank}", weights_only=False)
        assert res["info"]["switch_step"] == ref_info["switch_step"]
        assert res["info"]["sgd_lr"] == pytest.approx(ref_info["sgd_lr"], rel=1e-12)
        for i, p in zip(res["index"], res["params"]):
            torch.testing.assert_close(p, ref_params[i], rtol=1e-10, atol=1e-12)


def test_without_the_process_group_shards_decide_differently():
    """The all-reduce matters: a shard testing only its own sums switches at another step (or not at all)."""
    whole = [p.clone().requires_grad_() for p in _initial()]
    ref_info, _ = _train(whole, list(range(len(SHAPES))))
    index = [0, 2, 4]
    part = [_initial()[i].clone().requires_grad_() for i in index]
    info, _ = _train(part, index)
    assert (info["switch_step"], info["sgd_lr"]) != (ref_info["switch_step"], ref_info["sgd_lr"])


def _ddp_worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = fh.SWATS(ddp.parameters(), lr=1e-2, switch_rtol=RTOL)  # replicas agree: no process_group needed
        x, y = _ddp_data()
        half = 32 // world  # each replica takes its half of the step's 32-sample batch
        for step in range(STEPS):
            idx = _ddp_batch(step)
            xb, yb = x[idx][rank * half:(rank + 1) * half], y[idx][rank * half:(rank + 1) * half]
            opt.zero_grad()
            torch.nn.functional.mse_loss(ddp(xb), yb).backward()
            opt.step()
        torch.save({"info": opt.switch_info()[0], "params": [p.detach() for p in model.parameters()]},
                   f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def _ddp_data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(256, 6, generator=g, dtype=torch.float64)
    return x, torch.sin(x[:, :1]) + 0.3 * x[:, 1:2] + 0.1 * torch.randn(256, 1, generator=g, dtype=torch.float64)


def _ddp_batch(step):
    return torch.randperm(256, generator=torch.Generator().manual_seed(step))[:32]


def _train_on_batches(model, opt):
    """STEPS steps of mse on the steps' whole 32-sample batches (one process, or every FSDP2 rank alike)."""
    x, y = _ddp_data()
    for step in range(STEPS):
        idx = _ddp_batch(step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
    return opt


def test_ddp_replicas_switch_together_like_one_process(tmp_path):
    """Under DDP every replica sees the averaged gradient, so the replicas' switch tests agree without any
    communication, and match one process training on the whole batch."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    opt = _train_on_batches(model, fh.SWATS(model.parameters(), lr=1e-2, switch_rtol=RTOL))
    ref = opt.switch_info()[0]
    assert ref["switched"], "the problem must switch within the run"

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    res = [torch.load(f"{tmp_path / 'out'}.{r}", weights_only=False) for r in range(2)]
    assert res[0]["info"] == res[1]["info"]
    assert all(torch.equal(a, b) for a, b in zip(res[0]["params"], res[1]["params"]))
    assert res[0]["info"]["switch_step"] == ref["switch_step"]
    assert res[0]["info"]["sgd_lr"] == pytest.approx(ref["sgd_lr"], rel=1e-9)
    for a, b in zip(res[0]["params"], model.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-9, atol=1e-12)


# FSDP2: fully_shard makes every parameter a DTensor sharded on dim 0 (7 rows over 2 ranks: 4 + 3, uneven on
# purpose). Each rank steps its local shards; SWATS's sums over shards are completed by the process group.
FSDP_CASES = {"adam": (fh.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=0.01)),
              "sgd": (fh.SGD, dict(lr=5e-2, momentum=0.9, nesterov=True)),
              "swats": (fh.SWATS, dict(lr=1e-2, switch_rtol=RTOL)),
              "mas": (fh.MAS, dict(lr=1e-2, momentum=0.9))}


def _fsdp_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1)).double()


def _sharded_model():
    """_fsdp_model with each Linear and the whole model fully_shard-ed (FSDP2): its params are DTensors. Call it
    inside an initialized process group."""
    from torch.distributed.fsdp import fully_shard
    model = _fsdp_model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _fsdp_train(model, name, process_group=None):
    cls, kw = FSDP_CASES[name]
    opt = cls(model.parameters(), process_group=process_group, **kw) if name == "swats" else \
        cls(model.parameters(), **kw)
    return _train_on_batches(model, opt)


def _fsdp_worker(rank, world, init_file, result_file):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = {}
        for name in FSDP_CASES:
            model = _sharded_model()
            assert all(isinstance(p, DTensor) for p in model.parameters())
            opt = _fsdp_train(model, name, dist.group.WORLD)  # every rank sees the whole batch
            st = opt.state[next(iter(model.parameters()))]
            out[name] = {"params": [p.full_tensor() for p in model.parameters()],
                         "info": opt.switch_info()[0] if name == "swats" else None,
                         "state_is_dtensor": isinstance(st.get("exp_avg", st.get("momentum_buffer")), DTensor)}
        model = _fsdp_model()
        fully_shard(model)
        opt = fh.NDAdam(model.parameters())
        model(torch.ones(2, 6, dtype=torch.float64)).sum().backward()
        try:
            opt.step()
        except ValueError as exc:
            out["ndadam_error"] = str(exc)
        torch.save(out, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_fsdp2_sharded_params_step_like_one_process(tmp_path):
    """fully_shard (DTensor params and grads, uneven shards): every rule steps each rank's shard like one process
    stepping the whole model, keeps DTensor state as torch.optim does, and SWATS switches at the same step."""
    refs = {}
    for name in FSDP_CASES:
        model = _fsdp_model()
        opt = _fsdp_train(model, name)
        refs[name] = ([p.detach() for p in model.parameters()], opt.switch_info()[0] if name == "swats" else None)
    assert refs["swats"][1]["switched"], "the problem must switch within the run"
    mp.spawn(_fsdp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    for rank in range(2):
        res = torch.load(f"{tmp_path / 'out'}.{rank}", weights_only=False)
        for name, (params, info) in refs.items():
            assert res[name]["state_is_dtensor"], name
            for a, b in zip(res[name]["params"], params):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
            if info is not None:
                assert res[name]["info"]["switch_step"] == info["switch_step"]
                assert res[name]["info"]["sgd_lr"] == pytest.approx(info["sgd_lr"], rel=1e-9)
        assert "ND-Adam does not support DTensor" in res.get("ndadam_error", ""), "ND-Adam must refuse shards"



# torch.distributed.checkpoint: the API torchtitan and others save optimizers with (FQN-keyed state, DTensor shards).
# SWATS's switch state lives in per-parameter state (swats.read_state), so it travels like any other state.
DCP_CASES = {"adam": (fh.Adam, dict(lr=1e-2, amsgrad=True)), "sgd": (fh.SGD, dict(lr=5e-2, momentum=0.9)),
             "swats": (fh.SWATS, dict(lr=1e-2, switch_rtol=RTOL)), "mas": (fh.MAS, dict(lr=1e-2, momentum=0.9))}
DCP_SAVE_AT = 25


def _dcp_run(name, first, last, ckpt=None, resume=None):
    """Steps ``first`` .. ``last`` - 1 of an FSDP2 model on the whole batches; saves the optimizer with DCP at
    DCP_SAVE_AT into ``ckpt``, or starts from the checkpoint ``resume`` (model and optimizer)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    model = _sharded_model()
    cls, kw = DCP_CASES[name]
    extra = dict(process_group=dist.group.WORLD) if name == "swats" else {}
    opt = cls(model.parameters(), **kw, **extra)
    if resume is not None:
        sd = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
        dcp.load(sd, checkpoint_id=resume)
        set_model_state_dict(model, sd["model"])
        set_optimizer_state_dict(model, opt, sd["optim"])
    x, y = _ddp_data()
    for step in range(first, last):
        if step == DCP_SAVE_AT and ckpt is not None:
            dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
                     checkpoint_id=ckpt)
        idx = _ddp_batch(step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
    return {"params": [p.full_tensor() for p in model.parameters()],
            "info": opt.switch_info()[0] if name == "swats" else None}


def _dcp_worker(rank, world, init_file, result_file, ckpt_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = {}
        for name in DCP_CASES:
            whole = _dcp_run(name, 0, STEPS, ckpt=f"{ckpt_dir}/{name}")
            resumed = _dcp_run(name, DCP_SAVE_AT, STEPS, resume=f"{ckpt_dir}/{name}")
            out[name] = (whole, resumed)
        torch.save(out, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_fsdp2_dcp_checkpoint_resumes_bit_for_bit(tmp_path):
    """get_optimizer_state_dict / dcp.save half way, then a fresh FSDP2 model and optimizer restored with dcp.load
    and set_optimizer_state_dict: the rest of the run is bitwise the uninterrupted one on every rank, SWATS's switch
    step and Lambda included."""
    mp.spawn(_dcp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out"), str(tmp_path / "ckpt")),
             nprocs=2, join=True)
    for rank in range(2):
        res = torch.load(f"{tmp_path / 'out'}.{rank}", weights_only=False)
        for name, (whole, resumed) in res.items():
            assert all(torch.equal(a, b) for a, b in zip(whole["params"], resumed["params"])), name
            assert whole["info"] == resumed["info"], name
        swats = res["swats"][0]["info"]
        assert swats["switched"], "SWATS must switch within the run for the check to cover the switch state"
