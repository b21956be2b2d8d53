"""Test set-up. Without a CUDA device, Triton kernels run under its interpreter on CPU tensors: the variable
must be set before triton is first imported, which is why it is set here, at collection time."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; none is present on this machine")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
