#!/usr/bin/env bash
# The test command: sets up a fresh machine (scripts/setup_env.sh), then runs the whole test suite against the
# installed package. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
# The build above must have produced the extension: without this, a failed build would quietly leave only
# the reference backend and the fused tests would skip.
export FUSED_HYBRID_REQUIRE_EXTENSION=1
cd "$ROOT"
# `pytest` (not `python -m pytest`) so that the installed package is imported, not the source tree.
exec pytest -q -ra "$@"
