"""The C++ extension: built, loaded, and its ops registered for the dispatch keys it claims."""
import os

import pytest
import torch

import fused_hybrid as fh
from fused_hybrid import _ext

REQUIRED = os.environ.get("FUSED_HYBRID_REQUIRE_EXTENSION") == "1"


def test_extension_loads_when_the_build_ran():
    """scripts/test.sh sets FUSED_HYBRID_REQUIRE_EXTENSION=1 after building, so a broken build fails here
    instead of letting every fused test skip."""
    if not REQUIRED and not _ext.loaded():
        pytest.skip(f"extension not built in this environment: {_ext.LOAD_ERROR}")
    assert _ext.loaded(), _ext.LOAD_ERROR
    assert fh.backends()["cpu"].startswith("available on cpu")


@pytest.mark.parametrize("op", ["sgd_", "adaptive_", "mas_", "ndadam_"])
def test_ops_have_schemas(op):
    if not _ext.loaded():
        pytest.skip(f"extension not built: {_ext.LOAD_ERROR}")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_hybrid::{op}", "CPU")
    assert hasattr(torch.ops.fused_hybrid, op)


SGD_KW = dict(firsts=[0], lr=0.1, lr_tensor=None, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
              decoupled=False, maximize=False, rounding=0, seeds=[], grad_scale=None, found_inf=None)


def test_cpu_op_rejects_bad_input_clearly():
    if not _ext.loaded():
        pytest.skip(f"extension not built: {_ext.LOAD_ERROR}")
    p = torch.zeros(4)
    with pytest.raises(RuntimeError, match="grads"):
        torch.ops.fused_hybrid.sgd_([p], [], [], [], [], **SGD_KW)
    with pytest.raises(RuntimeError, match="contiguous"):
        q = torch.zeros(4, 4).t()
        torch.ops.fused_hybrid.sgd_([q], [torch.zeros(4, 4).t()], [], [], [], **SGD_KW)
