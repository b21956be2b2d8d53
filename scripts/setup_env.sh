#!/usr/bin/env bash
# Sets up everything fused_hybrid needs on a fresh machine, idempotently: a virtual environment (.venv, or
# $FH_VENV), torch 2.14.1 and the test/bench tools, and the package with its C++ extension built against that
# torch (CUDA kernels too where a CUDA toolkit is found). Sourced by scripts/test.sh and scripts/bench.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FH_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PY" -m venv "$VENV"
fi
export PATH="$VENV/bin:$PATH"
# expecttest: torch.testing._internal (torch's OptimizerInfo database, which tests/test_conformance.py runs) needs it.
echo "== installing torch 2.14.1 and tools (no-op when present)"
# mnist1d and tqdm: tests/test_examples_smoke.py runs examples/train_mnist1d.py --quick. The bench's optional
# peers (bench/requirements.txt: DeepSpeed, torch-optimi, heavyball, ...) are not installed here.
python -m pip install -q --disable-pip-version-check "torch==2.14.1" numpy pytest ninja setuptools wheel expecttest \
  mnist1d tqdm 2>&1 \
  | grep -v -E "^WARNING: Location|is ignored: it is neither" || true

# The CUDA toolkit root: torch derives it from the nvcc on PATH, which is a wrapper script on some machines
# (ours); setup.py resolves it properly, CUDA_HOME here only seeds that search.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
# No GPU here to ask which archs to build for: one arch keeps CI's nvcc time down (users set their own).
if [ -n "${CI:-}" ]; then export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"; fi

echo "== building and installing fused_hybrid (CUDA_HOME=${CUDA_HOME:-none}, archs=${TORCH_CUDA_ARCH_LIST:-default})"
start=$(date +%s)
(cd "$ROOT" && MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q --disable-pip-version-check --no-build-isolation . 2>&1 \
  | grep -v -E "^WARNING: Location|is ignored: it is neither" || true)
python -c "import fused_hybrid" || { echo "fused_hybrid failed to install" >&2; exit 1; }
echo "== build took $(( $(date +%s) - start )) s"
(cd /tmp && python -c "
import fused_hybrid as fh
print('   extension loaded:', fh._ext.loaded(), '| CUDA kernels compiled in:', fh._ext.has_cuda_kernels())
for k, v in fh.backends().items(): print(f'   {k}: {v}')")
