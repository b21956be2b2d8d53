"""The backend-vs-reference harness shared by the fused backends' test files: the same optimizers, cases and
comparisons for every backend, so a case added here is checked on all of them."""
import math

import torch

import fused_hybrid as fh


def tensor_lr_groups(device):
    """A param-groups builder whose lr is a 0-dim tensor on ``device`` (read by the kernels, never the host)."""
    return lambda ps: [{"params": ps, "lr": torch.tensor(1e-2, device=device)}]


def scaler_hook(device):
    """A per-step hook that plays GradScaler: changes the tensor lr in place, sets grad_scale = 4 with the grads
    scaled to match, and marks step 1 as found_inf (a step that must change nothing, step counts included)."""
    def hook(opt, k):
        opt.param_groups[0]["lr"].fill_(1e-2 * (k + 1))
        opt.grad_scale = torch.tensor(4.0, device=device)
        for p in opt.param_groups[0]["params"]:
            p.grad.mul_(4.0)
        opt.found_inf = torch.tensor([1.0 if k == 1 else 0.0], device=device)
    return hook


def small_triton_chunks(monkeypatch, block, chunk):
    """Under the interpreter, shrink the Triton backend's block and chunk so small tensors span several chunks
    (on a GPU the real geometry is kept)."""
    from fused_hybrid.backends import triton_launch as tl_
    if not torch.cuda.is_available():
        monkeypatch.setattr(tl_, "INTERP_BLOCK", block)
        monkeypatch.setattr(tl_, "INTERP_CHUNK", chunk)


class Matrix:
    """Runs optimizers on ``device`` with seeded random gradients (never zeros) and compares two runs.
    ``f32`` is the float32 tolerance, the one thing that differs between backends (FMA contraction)."""

    def __init__(self, device, sizes, steps=3, f32=None):
        self.device, self.sizes, self.steps = device, sizes, steps
        self.f32 = f32 or dict(rtol=1e-6, atol=1e-6)

    def params(self, sizes, dtype, seed=0):
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(*((n,) if isinstance(n, int) else n), generator=g, dtype=torch.float64)
                .to(device=self.device, dtype=dtype).requires_grad_() for n in sizes]

    def run(self, cls, backend, kw, dtype=torch.float32, sizes=None, steps=None, groups=None, hook=None):
        """``steps`` steps of ``cls`` on fresh params; returns (params, optimizer)."""
        ps = self.params(self.sizes if sizes is None else sizes, dtype)
        opt = cls(groups(ps) if groups else ps, backend=backend, **kw)
        g = torch.Generator().manual_seed(1234)
        for k in range(self.steps if steps is None else steps):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(device=self.device, dtype=dtype)
            if hook:
                hook(opt, k)
            opt.step()
        return ps, opt

    def tol(self, dtype):
        return {torch.float32: self.f32, torch.float64: dict(rtol=1e-12, atol=1e-12),
                torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}[dtype]

    def compare(self, a, b, dtype):
        """Params within the dtype's tolerance; state: the same keys, the same values, steps exactly."""
        pa, oa = a
        pb, ob = b
        for x, y in zip(pa, pb):
            torch.testing.assert_close(y.detach().float().cpu(), x.detach().float().cpu(), **self.tol(dtype))
        for x, y in zip(pa, pb):
            sa, sb = oa.state[x], ob.state[y]
            assert set(sa) == set(sb)
            for key in sa:
                if key == "step":
                    assert float(sa[key]) == float(sb[key])
                elif isinstance(sa[key], torch.Tensor):
                    tol = self.tol(dtype if dtype == torch.float64 else torch.float32)
                    if dtype in (torch.bfloat16, torch.float16):
                        tol = dict(rtol=2e-2, atol=2e-2)
                    torch.testing.assert_close(sb[key].cpu(), sa[key].cpu(), **tol)

    def check_scaler_protocol(self, backend, sizes, nd_shapes):
        """lr as a 0-dim device tensor changed between steps, GradScaler's grad_scale, and a found_inf step that
        changes nothing at all (steps included), for one rule of each family against the reference."""
        dev = self.device
        hook, groups = scaler_hook(dev), tensor_lr_groups(dev)

        for cls, kw in [(fh.Adam, dict(amsgrad=True)), (fh.SGD, dict(momentum=0.9)), (fh.SWATS, {}),
                        (fh.MAS, dict(variant="vector", momentum=0.9)), (fh.NDAdam, {}),
                        (fh.RMSprop, dict(alpha=0.9, centered=True, momentum=0.5)), (fh.Adagrad, {})]:
            shapes = nd_shapes if cls is fh.NDAdam else sizes
            a = self.run(cls, "reference", kw, sizes=shapes, groups=groups, hook=hook)
            b = self.run(cls, backend, kw, sizes=shapes, groups=groups, hook=hook)
            self.compare(a, b, torch.float32)
            if cls is not fh.SGD:
                assert all(float(b[1].state[p]["step"]) == self.steps - 1 for p in b[0])


CASES = [
    (fh.Adam, {}),
    (fh.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=0.1, maximize=True)),
    (fh.Adam, dict(betas=(0.3, 0.9), eps=1e-3)),  # 1-b1 >= 0.5: torch's other lerp branch
    (fh.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    (fh.AdamW, dict(amsgrad=True, maximize=True)),
    (fh.SGD, dict(lr=0.1)),
    (fh.SGD, dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)),
    (fh.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    (fh.Padam, {}),
    (fh.Padam, dict(partial=0.5, amsgrad=False, weight_decay=0.1)),
    (fh.Padam, dict(partial=0.3, maximize=True)),
    (fh.AdamClip, dict(sgd_lr=0.1, lower=0.5, upper=2.0)),
    (fh.AdamClip, dict(sgd_lr=0.1, lower=1.0, upper=math.inf, amsgrad=True)),
    (fh.AdaBound, {}),
    (fh.AdaBound, dict(amsbound=True, gamma=0.0, weight_decay=0.01)),  # gamma*k = 0: upper bound inf
    (fh.SWATS, dict(lr=1e-2)),
    (fh.SWATS, dict(lr=1e-2, amsgrad=True, weight_decay=0.1, nesterov=True, maximize=True)),
    (fh.MAS, {}),
    (fh.MAS, dict(momentum=0.9, nesterov=True, weight_decay=0.1, adam_w=0.7, sgd_w=0.3)),
    (fh.MAS, dict(variant="correction", momentum=0.5)),
    (fh.MAS, dict(variant="normalized", maximize=True)),
    (fh.MAS, dict(variant="vector", momentum=0.9, dampening=0.1, weight_decay=0.01)),
    # RMSprop's normalized steps g/(sqrt(sq) + eps) are ~10 at the first steps, so a momentum buffer near a sign
    # change holds the last-bit rounding of values ~10-30 (1.9e-6) in an element of magnitude < 1: above this
    # table's elementwise atol. The momentum cases here are ones where no buffer element of the random data
    # cancels so; torch's configs in test_conformance cover the rest (rtol 1e-5).
    (fh.RMSprop, {}),
    (fh.RMSprop, dict(lr=1e-3, centered=True, maximize=True)),
    (fh.RMSprop, dict(lr=1e-3, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.1)),
    (fh.Adagrad, dict(lr_decay=0.1, initial_accumulator_value=0.2, weight_decay=0.01)),
]




def case_id(case):
    cls, kw = case
    return cls.__name__ + "-" + "-".join(f"{k}={v}" for k, v in kw.items())
