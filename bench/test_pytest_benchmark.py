"""The benchmark's cases as a pytest-benchmark suite (skipped cleanly when pytest-benchmark is missing).

    pytest bench/test_pytest_benchmark.py --benchmark-only                      # quick sizes (1/16)
    BENCH_SCALE=1 pytest bench/test_pytest_benchmark.py --benchmark-only -k resnet18   # real sizes
    pytest bench/test_pytest_benchmark.py --benchmark-only --benchmark-group-by=param:shape,param:rule

Same cases as ``python -m bench`` (bench/cases.py): every fused_hybrid backend available here, torch.optim's
for-loop/foreach/fused, and installed peers; a case the device cannot run is skipped with its reason.
``python -m bench`` is the main tool (interleaved rounds, GB/s, % of axpy, memory); this suite is for
pytest-benchmark's comparison and history features (--benchmark-autosave, --benchmark-compare).
"""
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed (pip install pytest-benchmark)")

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.append(_ROOT)  # after site-packages: the installed fused_hybrid wins over the source tree

import torch  # noqa: E402

from bench import cases as C, shapes as S  # noqa: E402

SCALE = float(os.environ.get("BENCH_SCALE", "16"))
DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))


def _cases():
    backends = C.fused_backends(DEVICE)
    out = []
    for c in C.build(list(C.RULES), backends, DEVICE):
        if c.note == "baseline":
            continue
        out.append(c)
    return out


CASES = _cases()


@pytest.fixture(scope="module", params=list(S.SHAPE_SETS))
def params(request):
    gen = torch.Generator().manual_seed(0)
    ps = []
    for s in S.get(request.param, SCALE):
        p = torch.nn.Parameter(torch.randn(s, generator=gen).to(DEVICE))
        p.grad = torch.randn(s, generator=gen).to(DEVICE)
        ps.append(p)
    return request.param, ps


@pytest.mark.parametrize("case", CASES, ids=[f"{c.rule}-{c.impl}" for c in CASES])
def test_step(benchmark, params, case):
    shape, ps = params
    try:
        opt = case.make(ps)
        opt.step()
    except Exception as e:  # BackendUnavailableError, fused=True unsupported here, a peer's failure
        pytest.skip(f"{case.impl} cannot run {case.rule} here: {type(e).__name__}: {e}".splitlines()[0])
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)

    def step():
        opt.step()
        sync()

    benchmark.extra_info.update({"shape": shape, "rule": case.rule, "impl": case.impl, "scale": SCALE})
    benchmark.pedantic(step, rounds=5, iterations=3, warmup_rounds=1)
