"""Smoke test of the benchmark CLI (``python -m bench``): runs its quick mode in-process on tiny shapes and checks
the printed table and the JSON it writes. No timing assertions: timings on a shared CI machine mean nothing."""
import json
import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parent.parent)  # bench/ lives at the repository root, beside tests/
if _ROOT not in sys.path:
    sys.path.append(_ROOT)  # after site-packages: the installed fused_hybrid wins over the source tree

bench_main = pytest.importorskip("bench.__main__", reason="bench/ is not importable from this checkout")


def _run(tmp_path, capsys, *extra):
    argv = ["--quick", "--shapes", "many_small,resnet18", "--rules", "adam,sgd,swats", "--scale", "64",
            "--rounds", "2", "--warmup", "1", "--out", str(tmp_path), "--no-peers", *extra]
    res = bench_main.main(argv)
    return res, capsys.readouterr().out


def test_quick_table_and_json(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    res, out = _run(tmp_path, capsys)
    assert torch.get_num_threads() == threads  # --quick runs on one thread, then restores the setting
    # The printed table: a header per shape set, the columns, the memory report.
    assert "== many_small:" in out and "== resnet18:" in out
    for col in ("ms/step", "vs torch best", "GB/s", "% axpy", "B/el", "syncs"):
        assert col in out
    assert "optimizer state after one step" in out
    assert "reference bandwidth" in out
    # The JSON file: one per run, same content as the returned dict.
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["meta"]["device"] == "cpu"
    assert data["bandwidth"]["axpy_GBps"] > 0 and data["bandwidth"]["copy_GBps"] > 0
    names = [b["name"] for b in data["shape_sets"]]
    assert names == ["many_small", "resnet18"]
    rn = data["shape_sets"][1]
    assert rn["num_tensors"] == 62
    for block in data["shape_sets"]:
        rows = {(r["rule"], r["impl"]): r for r in block["results"]}
        # Every rule asked for has the reference backend (always available) and torch's for-loop baseline.
        for rule in ("adam", "sgd", "swats"):
            assert (rule, "fused_hybrid[reference]") in rows
        assert ("adam", "torch[forloop]") in rows and ("sgd", "torch[foreach]") in rows
        for r in block["results"]:
            for key in ("ms", "GBps", "pct_axpy", "state_bytes_per_param", "bytes_per_element", "inner",
                        "rounds"):
                assert key in r, key
            assert r["ms"] > 0 and r["rounds"] == 2
        # The bytes model and the measured state (fp32: Adam 8 B/param of state, SGD momentum 4).
        assert rows[("adam", "torch[forloop]")]["bytes_per_element"] == 28
        assert rows[("sgd", "torch[forloop]")]["bytes_per_element"] == 20
        assert rows[("swats", "fused_hybrid[reference]")]["bytes_per_element"] == 28
        assert rows[("adam", "torch[forloop]")]["state_bytes_per_param"] == pytest.approx(8, rel=0.05)
        assert rows[("sgd", "fused_hybrid[reference]")]["state_bytes_per_param"] == pytest.approx(4, rel=0.05)
        # Speedups are relative to torch's best of the same (or baseline) rule: the best torch one is 1.
        adam_torch = [r for r in block["results"] if r["rule"] == "adam" and r["family"] == "torch"]
        assert max(r["speedup_vs_torch_best"] for r in adam_torch) == pytest.approx(1.0)
        # Backends that cannot serve a rule are reported as skipped, not silently replaced.
        for s in block["skipped"]:
            assert s["reason"]


def test_unknown_rule_is_an_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown rule"):
        bench_main.main(["--quick", "--rules", "nope", "--out", ""])


def test_bytes_model():
    from bench import bytes_model as B

    assert B.bytes_per_element("adam") == 28
    assert B.bytes_per_element("adam", {"amsgrad": True}) == 36
    assert B.bytes_per_element("padam") == 36
    assert B.bytes_per_element("sgd", {"momentum": 0.9}) == 20
    assert B.bytes_per_element("sgd") == 12
    assert B.bytes_per_element("swats") == 28
    assert B.bytes_per_element("swats", {"phase": "sgd"}) == 20
    assert B.bytes_per_element("mas", {"momentum": 0.9}) == 36
    # ND-Adam: weight vectors 20 B/el, 1-D params as Adam.
    assert B.step_bytes("ndadam", [(10, 10), (10,)]) == 20 * 100 + 28 * 10


def test_lowp_bench(capsys):
    """bench.lowp: every 16-bit configuration this build takes is timed beside torch's fused / foreach Adam, with
    the bytes model's bytes per element; configurations it lacks (state_dtype before it lands) say so."""
    import inspect

    import fused_hybrid as fh
    from bench import lowp
    from fused_hybrid import _ext
    if not _ext.loaded():
        pytest.skip(f"the cpu backend needs the C++ extension: {_ext.LOAD_ERROR}")
    res = lowp.main(["--numel", "4099", "--rounds", "2", "--steps", "1", "--threads", "1", "--rules", "adam,swats",
                     "--device", "cpu"])
    out = capsys.readouterr().out
    adam = res["adam"]["results"]
    assert adam["fused_hybrid[cpu] nearest"][2] == 22
    assert adam["fused_hybrid[cpu] stochastic rounding"][2] == 22
    assert adam["fused_hybrid[cpu] Kahan"][2] == 26
    assert adam["torch[foreach]"][2] == 14  # torch's state in the param dtype
    assert all(med > 0 for med, _, _ in adam.values())
    assert {"torch[fused] adam", "torch[foreach] adam"} <= set(res["swats"]["results"])  # SWATS against Adam
    if "state_dtype" in inspect.signature(fh.Adam).parameters:
        assert adam["fused_hybrid[cpu] bf16 state"][2] == 14
        assert adam["fused_hybrid[cpu] bf16 state + Kahan"][2] == 18
    else:
        assert "bf16 state" in out and "not available in this build" in out


def test_shape_sets():
    from bench import shapes as S

    assert len(S.resnet18()) == 62 and S.numel(S.resnet18()) == 11_689_512
    assert len(S.gpt2()) == 148 and S.numel(S.gpt2()) == 124_439_808
    assert S.many_small() == [(1000,)] * 2000
    assert S.one_big() == [(2 ** 24,)]
    assert len(S.resnet18(16)) == 62 and len(S.gpt2(16)) == 148


def test_paired_ratios(capsys):
    """bench.paired: one ratio per pair, positive and finite; the printed table names every rule asked for."""
    import math

    from fused_hybrid import _ext
    if not _ext.loaded():
        pytest.skip(f"the cpu backend needs the C++ extension: {_ext.LOAD_ERROR}")
    from bench import paired
    r = paired.pair_ratios("swats", 4096 * 4, 5)
    assert len(r) == 5 and all(x > 0 and math.isfinite(x) for x in r)
    paired.main(["--numel", str(4096 * 4), "--pairs", "3", "--threads", "1", "--rules", "adam,padam,ndadam"])
    out = capsys.readouterr().out
    assert all(f"\n{rule} " in out for rule in ("adam", "padam", "ndadam"))


def test_host_overhead_table(capsys):
    """bench.host_overhead: both columns for each rule asked for, launches restored afterwards."""
    from bench import host_overhead
    from fused_hybrid.backends import triton as tb
    from fused_hybrid.backends import triton_launch as tl_

    if not tb.available(torch_device()):
        pytest.skip(f"triton backend unavailable: {tb.why_unavailable(torch_device())}")
    real = tl_._launch
    rows = host_overhead.main(["--shapes", "resnet18", "--rules", "adam,mas", "--steps", "3"])
    assert tl_._launch is real
    assert [r["rule"] for r in rows] == ["adam", "mas"]
    assert all(r["fast_ms"] > 0 and r["general_ms"] > 0 for r in rows)
    assert "general/fast" in capsys.readouterr().out


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
