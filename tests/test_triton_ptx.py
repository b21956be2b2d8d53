"""GPU code quality of the Triton kernels without a GPU (issue 8): compile the library's real launches ahead of
time for sm_90 (bench/triton_ptx.py) and check that the full-chunk path of every elementwise kernel reads and
writes every operand with 128-bit accesses (as many as the bytes model predicts), that nothing spills to local
memory, that pointers not known to be aligned fall back to narrower accesses, and the launches per step."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
triton = pytest.importorskip("triton")
_NV_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
pytestmark = pytest.mark.skipif(not os.path.exists(_NV_BIN), reason="triton's NVIDIA backend (ptxas) is missing")

# adam-bf16-sr: stochastic rounding computes its random bits in registers, so the bytes model (and the 128-bit
# accesses) are those of the plain bfloat16 store (issue 16).
# adam-clip, sgd-clip-inf-bf16: the fused clipping's norm kernels, compiled for the GPU (the interpreter had hidden a
# global only a GPU compile refuses). adam-bf16-state-sr: bfloat16 state, 128-bit accesses of its 16-bit moments.
SUBSET = ["adam", "adam-bf16", "adam-bf16-sr", "sgd", "padam", "swats", "mas-vector", "adam-clip",
          "sgd-clip-inf-bf16", "adam-bf16-state-sr"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptx") / "ptx.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "triton_ptx.py"), "--rules", ",".join(SUBSET),
                        "--json", str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text()), r


def test_aligned_paths_are_128_bit_and_spill_free(report):
    data, r = report
    assert r.returncode == 0, r.stdout
    assert {k["config"] for k in data["kernels"]} == set(SUBSET)
    for k in data["kernels"]:
        assert k["violations"] == [], k
        assert k["result"]["local"] == 0 and k["result"].get("cubin_local", 0) == 0, k
        if k["expected_v4"] is not None:
            assert [k["result"]["ld_v4"], k["result"]["st_v4"]] == k["expected_v4"], k
            assert k["expected_v4"][0] > 0


def test_unaligned_fallback_has_no_wide_accesses(report):
    data, _ = report
    for k in data["kernels"]:
        if k["unaligned"]:
            assert k["unaligned"] == "0/0", k


def test_launches_per_step_model(report):
    data, _ = report
    # update + finalize per bucket; MAS's reducing variants: pass 0 (its last program per tensor finalizes) + apply;
    # SWATS: + its switch bookkeeping (per-tensor arguments, totals + test), as on a GPU.
    # Clipping: + the norm's two launches (per-chunk partials, then the finalize that writes the coefficient).
    assert data["launches"] == {"adam": 2, "adam-bf16": 2, "adam-bf16-sr": 2, "sgd": 1, "padam": 2, "swats": 2 + 2,
                                "mas-vector": 2, "adam-clip": 2 + 2, "sgd-clip-inf-bf16": 1 + 2,
                                "adam-bf16-state-sr": 2}
    kernels = {k["kernel"] for k in data["kernels"] if k["config"] == "swats"}
    assert {"swats_args_kernel", "swats_switch_kernel"} <= kernels


def test_kahan_buffer_accesses_are_128_bit():
    """Adam with kahan_summation on bfloat16 params: the bytes model says the buffer adds one 128-bit load and one
    store per thread on the full-chunk path (8 elements x 2 B). Failed (16-bit scalar accesses) until the buffer's
    pointer got the table's 16-byte alignment hint (triton_kernels/rounding.py rounding_ctx)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "triton_ptx.py"), "--rules", "adam-bf16-kahan"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert "adaptive_kernel" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.returncode == 0, r.stdout
