"""fused_hybrid microbenchmarks: `python -m bench --help`."""
