#!/usr/bin/env bash
# The main job: sets up a fresh machine (scripts/setup_env.sh), then benchmarks every fused_hybrid rule and
# backend against torch.optim (and peer libraries when installed) on this machine's device. Extra arguments go to
# `python -m bench` (try --help, or --quick for a one-minute smoke run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
# Run from outside the checkout with the checkout appended to sys.path: `bench` comes from here, fused_hybrid from
# the installed package (the source tree has no compiled extension after a regular install).
cd "$(mktemp -d)"
exec python -P -c "import sys, runpy; sys.path.append('$ROOT'); sys.argv[0] = 'bench'; runpy.run_module('bench', run_name='__main__', alter_sys=True)" "$@"
