"""The GPU step-time model (bench/gpu_model.py): its bytes come from the one bytes model and its CUDA launch
counts from the CUDA kernels' own launch planner, so a change to either shows up here."""
import math
import os
import sys

import pytest

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # after site-packages
from bench import bytes_model, gpu_model  # noqa: E402
from fused_hybrid import _ext  # noqa: E402


def test_prediction_is_bytes_over_bandwidth_plus_launches():
    shapes = gpu_model.SHAPES["resnet18"]()
    p = gpu_model.predict("adam", shapes, "H100")
    n = sum(math.prod(s) for s in shapes)
    assert p["bytes"] == 28 * n == bytes_model.step_bytes("adam", shapes)
    assert p["triton_ms"] == pytest.approx(1e3 * (28 * n / 3.0e12 + 2 * gpu_model.LAUNCH_S))
    assert gpu_model.predict("amsgrad", shapes, "H200")["bytes"] == 36 * n
    # MAS's reducing variants are predicted from what their two passes move (the PTX check in
    # tests/test_triton_ptx.py holds the kernels to the same per-pass counts): g, m, v in and m, v out, then
    # p, g, m, v in and p out.
    assert gpu_model.predict("mas_vector", shapes, "H100")["bytes"] == (20 + 20) * n
    assert gpu_model.predict("mas", shapes, "H100")["bytes"] == 28 * n
    # SWATS: its 2 bookkeeping launches per optimizer step count in the time, not in the per-group launches.
    sw = gpu_model.predict("swats", shapes, "H100")
    assert sw["triton_launches"] == 2 and sw["step_extra_launches"] == 2
    assert sw["triton_ms"] == pytest.approx(1e3 * (28 * n / 3.0e12 + 4 * gpu_model.LAUNCH_S))


@pytest.mark.skipif(not _ext.loaded(), reason="needs the extension's plan_launches op")
def test_cuda_launches_stay_at_two_per_group_for_big_models():
    """issue 5/8 target: <= 2 launches per group per step for the elementwise rules, even for 1.1B params."""
    for name in ("resnet18", "gpt_1b"):
        shapes = gpu_model.SHAPES[name]()
        for key in ("adam", "amsgrad", "sgd", "padam", "swats", "mas", "mas_vector", "ndadam"):
            rule, opts, depth = gpu_model.RULES[key]
            assert gpu_model.cuda_launches(rule, opts, shapes, depth) <= 2, (name, key)


@pytest.mark.skipif(not _ext.loaded(), reason="needs the extension's plan_launches op")
def test_cuda_launches_grow_when_the_argument_table_overflows():
    """5000 tensors cannot fit one kernel's argument table (~300 tensors): the model follows the planner."""
    shapes = [(10,)] * 5000
    rule, opts, depth = gpu_model.RULES["adam"]
    assert gpu_model.cuda_launches(rule, opts, shapes, depth) > 2


@pytest.mark.skipif(not _ext.loaded(), reason="needs the extension's plan_launches op")
def test_cuda_mas_reducing_variants_take_two_launches():
    """The reduce pass and the apply pass (which sums the slots and advances the steps): 2 launches for a
    ResNet-18-sized group, and for a 1.1B-parameter one, empty tensors included."""
    rule, opts, depth = gpu_model.RULES["mas_vector"]
    for name in ("resnet18", "gpt_1b"):
        assert gpu_model.cuda_launches(rule, opts, gpu_model.SHAPES[name](), depth) == 2, name
    assert gpu_model.cuda_launches(rule, opts, [(0,), (5, 3), (0, 4)], depth) == 2


@pytest.mark.skipif(not _ext.loaded(), reason="needs the extension's plan_launches op")
def test_min_chunks_gives_empty_tensors_a_block():
    """MAS's reducing variants plan with min_chunks=1: an empty tensor gets one (zero-length) chunk and slot, so
    its apply-pass block advances its step; without it the tensor has no block."""
    import torch
    plan = torch.ops.fused_hybrid.plan_launches
    flat = list(plan([0, 70000, 0], 65536, 5, 0, 0, 1))
    chunk, nl, slot_base, nt, nb = flat[:5]
    assert (chunk, nl, slot_base, nt, nb) == (65536, 1, 0, 3, 4)
    assert flat[5:8] == [0, 1, 2]  # every tensor in the table
    assert flat[8:] == [0, 0, 1, 0, 1, 1, 2, 0]  # (tensor, chunk) per block
    assert list(plan([0, 70000, 0], 65536, 5, 0, 0, 0))[2:5] == [0, 1, 2]  # one tensor, two blocks


@pytest.mark.skipif(not _ext.loaded(), reason="needs the extension's plan_ndadam op")
def test_ndadam_rows_grow_per_block_instead_of_launches():
    """A [50257, 2048] embedding is 50257 long rows: at one row per block that is 25 launches; ndadam_grid scales
    every chunk by one power of two (here 32 rows per block) so the call fits one launch's 2048 blocks. Small calls
    keep one long row per block, and short rows keep their warp-per-row grouping."""
    import torch
    plan = torch.ops.fused_hybrid.plan_ndadam
    row_scale, chunk, launches, slot_base, tensors, blocks = list(plan([50257 * 2048, 2048], [2048, 0]))[:6]
    assert (row_scale, launches, tensors) == (32, 1, 2)
    assert blocks == -(-50257 // 32) + 1 <= 2048
    assert chunk == 65536 * 32
    small = list(plan([64 * 4096, 10 * 3, 7], [4096, 3, 0]))
    assert small[0] == 1 and small[5] == 64 + 1 + 1  # a block per long row, one for the 10 short rows, one flat
    with pytest.raises(RuntimeError, match="does not divide"):
        plan([10], [3])


def test_low_precision_bytes():
    """issue 16's bytes per element, 16-bit params and gradients: Adam with float32 state 22 B (p 2+2, g 2, m and
    v 4+4 each), bfloat16 state 14 B, Kahan + 4 B (its 16-bit buffer read and written), stochastic rounding + 0;
    float32 params ignore Kahan (no buffer). The GPU prediction follows the same bytes."""
    B = bytes_model
    assert B.bytes_per_element("adam", param_bytes=2) == 22
    assert B.bytes_per_element("adam", param_bytes=2, state_bytes=2) == 14
    assert B.bytes_per_element("adam", param_bytes=2, kahan=True) == 26
    assert B.bytes_per_element("adam", param_bytes=2, state_bytes=2, kahan=True) == 18
    assert B.bytes_per_element("adam", kahan=True) == 28  # float32 params: the option does nothing
    assert B.lowp_bytes_per_element("adam", stochastic_rounding=True) == 22
    assert B.lowp_bytes_per_element("adam", kahan_summation=True) == 26
    for rule, opts, fp32 in (("sgd", {"momentum": 0.9}, 20), ("padam", {}, 36), ("swats", {"phase": "sgd"}, 20),
                             ("rmsprop", {"centered": True}, 28), ("mas", {"momentum": 0.9}, 36)):
        state = (fp32 - 12) // 8
        assert B.bytes_per_element(rule, opts, 2) == 6 + 8 * state, rule
        assert B.bytes_per_element(rule, opts, 2, kahan=True) == 10 + 8 * state, rule
        assert B.bytes_per_element(rule, opts, 2, 2) == 6 + 4 * state, rule
    # ND-Adam: the buffer on every element, vectors and 1-D params alike.
    assert B.step_bytes("ndadam", [(10, 10), (10,)], param_bytes=2, kahan=True) == (14 + 4) * 100 + (22 + 4) * 10
    # MAS's two passes: the buffer only where p is written (pass 1).
    assert B.mas_pass_bytes(0, 2, 4, kahan=True) == B.mas_pass_bytes(0, 2, 4)
    r, w = B.mas_pass_bytes(1, 2, 4)
    assert B.mas_pass_bytes(1, 2, 4, kahan=True) == (r + 2, w + 2)
    shapes = gpu_model.SHAPES["resnet18"]()
    n = sum(math.prod(s) for s in shapes)
    for lab, pb, sb, k in gpu_model.LOWP:
        p = gpu_model.predict_lowp("adam", shapes, "H200", pb, sb, k)
        assert p["bytes"] == B.bytes_per_element("adam", None, pb, sb, k) * n, lab
        assert p["ms"] == pytest.approx(1e3 * (p["bytes"] / 4.3e12 + 2 * gpu_model.LAUNCH_S))
    assert gpu_model.predict_lowp("mas_vector", shapes, "H200", 2, 4, True)["bytes"] == (16 + 20) * n
