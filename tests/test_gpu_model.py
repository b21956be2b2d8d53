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


@pytest.mark.skipif(not _ext.loaded(), reason="needs the extension's plan_launches op")
def test_cuda_launches_stay_at_two_per_group_for_big_models():
    """issue 5/8 target: <= 2 launches per group per step for the elementwise rules, even for 1.1B params."""
    for name in ("resnet18", "gpt_1b"):
        shapes = gpu_model.SHAPES[name]()
        for key in ("adam", "amsgrad", "sgd", "padam", "swats", "mas"):
            rule, opts, depth = gpu_model.RULES[key]
            assert gpu_model.cuda_launches(rule, opts, shapes, depth) <= 2, (name, key)


@pytest.mark.skipif(not _ext.loaded(), reason="needs the extension's plan_launches op")
def test_cuda_launches_grow_when_the_argument_table_overflows():
    """5000 tensors cannot fit one kernel's argument table (~300 tensors): the model follows the planner."""
    shapes = [(10,)] * 5000
    rule, opts, depth = gpu_model.RULES["adam"]
    assert gpu_model.cuda_launches(rule, opts, shapes, depth) > 2


@pytest.mark.skipif(not _ext.loaded(), reason="needs the extension's plan_launches op")
def test_cuda_mas_reducing_variants_take_three_launches():
    """pass 1, the post-step (per-tensor sums and step counts), pass 2: 3 launches for a ResNet-18-sized group."""
    rule, opts, depth = gpu_model.RULES["mas_vector"]
    assert gpu_model.cuda_launches(rule, opts, gpu_model.SHAPES["resnet18"](), depth) == 3
