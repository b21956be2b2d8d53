#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA device that can reach no package registry (the image's own python3,
# torch and triton are used as they are): builds the extension in place, runs the test suite (the CUDA and
# Triton tests run for real there; test_cuda_matches_cuda_sim_bitwise compares the GPU with the simulator), then
# the benchmark against torch.optim. Each phase has a time cap, so a slow or hung phase still leaves the others'
# results. Everything is logged under $OUT (default ./device_out).
#
#   bash scripts/device_check.sh [build_s] [test_s] [bench_s] [lowp_s] [pytest args...]
#
# Caps default to 200, 180, 120 and 60 seconds (lowp: bench.lowp, bfloat16 models against torch's fused Adam). Extra pytest arguments replace the default selection (tests/);
# BENCH_ARGS adds arguments to `python -m bench` (e.g. "--shapes gpt2 --backends cuda").
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/device_out}"
mkdir -p "$OUT"
BUILD_S="${1:-200}" TEST_S="${2:-180}" BENCH_S="${3:-120}" LOWP_S="${4:-60}"
shift $(( $# < 4 ? $# : 4 ))
PY="${PYTHON:-python3}"
cd "$ROOT"
export PYTHONUNBUFFERED=1
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }

log "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nproc; which nvcc; nvcc --version | tail -2
  "$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  "$PY" -c "import triton; print('triton', triton.__version__)"; gcc --version | head -1; } 2>&1 | tee -a "$OUT/summary.txt"

# The source tree imports fused_hybrid.triton_kernels through this link (setup.py maps the folder on install).
ln -sfn ../triton_kernels fused_hybrid/triton_kernels
log "build (cap ${BUILD_S}s)"
start=$(date +%s)
# Another torch and gcc than CI's: their headers may warn where ours do not, so warnings are not errors here.
CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$(which nvcc)")")")}" TORCH_CUDA_ARCH_LIST=9.0 \
  MAX_JOBS="$(nproc)" FUSED_HYBRID_WERROR=0 timeout "$BUILD_S" "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1
log "build rc=$? in $(( $(date +%s) - start )) s"
grep -E "error|warning" "$OUT/build.log" | grep -v "^ptxas info" | head -20 | tee -a "$OUT/summary.txt"
"$PY" -c "
import fused_hybrid as fh
print('extension:', fh._ext.loaded(), fh._ext.LOAD_ERROR, '| cuda kernels:', fh._ext.has_cuda_kernels(), '| sim:', fh._ext.has_sim())
for k, v in fh.backends().items(): print(f'   {k}: {v}')" 2>&1 | tee -a "$OUT/summary.txt"

log "tests (cap ${TEST_S}s)"
start=$(date +%s)
# SIGINT first: pytest then stops, prints its summary and writes the junit file. One intra-op thread per xdist
# worker: with torch's default (a thread per core in every worker) the first run's load average reached 144.
OMP_NUM_THREADS=1 FUSED_HYBRID_REQUIRE_EXTENSION=1 timeout -s INT -k 30 "$TEST_S" "$PY" -m pytest -q -ra -p no:cacheprovider \
  -n "$(nproc)" --tb=short --junitxml="$OUT/junit.xml" "${@:-tests}" >"$OUT/pytest.txt" 2>&1
log "tests rc=$? in $(( $(date +%s) - start )) s"
tail -5 "$OUT/pytest.txt" | tee -a "$OUT/summary.txt"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.txt" | head -40 | tee -a "$OUT/summary.txt"

log "bench (cap ${BENCH_S}s)"
timeout -s INT "$BENCH_S" "$PY" -m bench --device cuda --no-peers --rounds 5 --warmup 2 --out "$OUT" \
  ${BENCH_ARGS:-} >"$OUT/bench.txt" 2>&1
log "bench rc=$?"

log "bench.lowp (cap ${LOWP_S}s)"
timeout -s INT "$LOWP_S" "$PY" -m bench.lowp --device cuda --rules adam,sgd --numel $((1 << 26)) ${LOWP_ARGS:-} \
  >"$OUT/lowp.txt" 2>&1
log "bench.lowp rc=$?"
