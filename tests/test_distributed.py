"""SWATS's global switch with the model spread over 2 processes (gloo, CPU): every rank must switch at the same
step with the same Lambda as one process holding the whole model."""
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
