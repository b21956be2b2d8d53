#!/usr/bin/env bash
# The main job: sets up a fresh machine (scripts/setup_env.sh), then benchmarks every fused_hybrid rule and
# backend against torch.optim (and peer libraries when installed) on this machine's device. Extra arguments go to
# `python -m bench` (try --help, or --quick for a one-minute smoke run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec python -m bench "$@"
