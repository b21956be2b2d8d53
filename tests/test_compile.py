"""torch.compile: a compiled ``opt.step()`` traces in one graph (fullgraph=True: no graph breaks in our code or
ops) and gives the same parameters as eager steps."""
import pytest
import torch

import fused_hybrid as fh
import cases
from cases import feed_grads, make_params

CPU_FUSED = fh.backends()["cpu"].startswith("available")


@pytest.mark.skipif(not CPU_FUSED, reason="needs the C++ extension's cpu backend")
@pytest.mark.parametrize("case", cases.params(cases.COMPILE, "cpu"))
def test_compiled_step_matches_eager(case):
    torch._dynamo.reset()
    a, b = make_params(shapes=[(5, 3), (7,), (1,)])
    o1 = case.build(a, "cpu", "cpu")
    o2 = case.build(b, "cpu", "cpu")
    step = torch.compile(o1.step, fullgraph=True)  # state is created inside the compiled first step too
    for k in range(5):
        feed_grads([a, b], k)
        step()
        o2.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    if case.cls is fh.SWATS:
        assert o1.switch_info() == o2.switch_info()


@pytest.mark.skipif(not CPU_FUSED, reason="needs the C++ extension's cpu backend")
def test_compiled_step_refuses_complex_params_clearly():
    """Complex params are stepped through real views, which the tracer cannot mutate in place: a clear error
    under torch.compile (eager steps support them)."""
    torch._dynamo.reset()
    p = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    opt = fh.Adam([p], backend="cpu")
    p.grad = torch.ones_like(p)
    with pytest.raises(Exception, match="does not support complex or DTensor"):
        torch.compile(opt.step, fullgraph=True)()
    before = p.detach().clone()
    opt.step()  # eager is fine
    assert not torch.equal(before, p.detach())
