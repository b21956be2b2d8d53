"""Triton kernels of fused_hybrid, installed as fused_hybrid.triton_kernels (never as a top-level package:
a different PyPI package owns the name triton_kernels)."""
