"""SWATS's per-step bookkeeping on the device in two launches (fused_hybrid/swats.py has the plain-PyTorch version,
~70 small tensor ops: on a GPU each is a launch, more than the whole Adam step of a ResNet-18; csrc/cpu/swats.cpp
is the CPU version).

- ``swats_args_kernel``: per tensor t, its segment's phase and the SGD-phase step size
  (1-b1) * Lambda[seg] * lr_now / lr_at_switch (swats.per_tensor_args).
- ``swats_switch_kernel``: one program per segment: the segment's <p,g>, <p,p> and stepped count over its member
  table row in a fixed order (swats.segment_totals), then Algorithm 1's test (swats.finalize, rules.h
  swats_switch_test), in place on the state. MODE 0 only writes the totals (a process group all-reduces them), MODE
  1 only runs the test on given totals, MODE 2 does both in one launch.

All arithmetic float64, as swats.py, and bit for bit as the C++ bookkeeping (csrc/cpu/swats.cpp, rules.h): the sums
run sequentially in tensor order (as the C++ loop; tl.sum's tree would round differently), b2**k is ``pow_whole``
(rules.h's binary exponentiation) and the launches turn off FMA contraction (triton_launch.swats_*). Measured on an
H200 before that: lam and gamma differed from cuda_sim's in the last bits, so the cuda backend (whose bookkeeping
is this) could switch a step apart from cuda_sim and cpu.
"""
import triton
import triton.language as tl

from .common import pow_whole

PHASE_SGD = tl.constexpr(1)


@triton.jit(do_not_specialize=["T"])  # the tensor count: one compile whatever it is
def swats_args_kernel(seg_of, phase, Lambda, lr_ref, lr, one_minus_b1, out_phase, out_sgd_lr, T: tl.int64,
                      BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < T
    s = tl.load(seg_of + offs, mask=mask, other=0)
    ph = tl.load(phase + s, mask=mask, other=0)
    in_sgd = ph == PHASE_SGD
    ratio = tl.where(in_sgd, tl.load(lr + offs, mask=mask, other=0.0) /
                     tl.where(in_sgd, tl.load(lr_ref + offs, mask=mask, other=1.0), 1.0), 0.0)
    sgd_lr = tl.load(one_minus_b1 + offs, mask=mask, other=0.0) * tl.load(Lambda + s, mask=mask, other=0.0) * ratio
    tl.store(out_phase + offs, ph, mask=mask)
    tl.store(out_sgd_lr + offs, sgd_lr, mask=mask)


@triton.jit(do_not_specialize=["W", "T"])  # member-table width and tensor count: one compile whatever they are
def swats_switch_kernel(members, W: tl.int64, T: tl.int64, partials, stepped, totals, found_inf, phase, lam, Lambda,
                        switch_step, seg_step, gamma, lr_ref, lr, b2s, rtols, atols, MODE: tl.constexpr,
                        HAS_STEPPED: tl.constexpr, HAS_FOUND_INF: tl.constexpr, BLOCK: tl.constexpr):
    s = tl.program_id(0)
    if MODE != 1:
        s_pg = tl.zeros((), tl.float64)
        s_pp = tl.zeros((), tl.float64)
        n = tl.zeros((), tl.float64)
        for j in range(0, W):  # one member at a time, in tensor order (the C++ loop's order of additions)
            idx = tl.load(members + s * W + j)
            m = idx < T  # the row is padded with T
            s_pg += tl.load(partials + 2 * idx, mask=m, other=0.0)
            s_pp += tl.load(partials + 2 * idx + 1, mask=m, other=0.0)
            if HAS_STEPPED:
                n += tl.load(stepped + idx, mask=m, other=0.0)
            else:
                n += m.to(tl.float64)
        if MODE == 0:
            tl.store(totals + 3 * s, s_pg)
            tl.store(totals + 3 * s + 1, s_pp)
            tl.store(totals + 3 * s + 2, n)
    if MODE == 1:
        s_pg = tl.load(totals + 3 * s)
        s_pp = tl.load(totals + 3 * s + 1)
        n = tl.load(totals + 3 * s + 2)
    if MODE != 0:
        _switch_test(s, s_pg, s_pp, n, members, W, T, found_inf, phase, lam, Lambda, switch_step, seg_step, gamma,
                     lr_ref, lr, b2s, rtols, atols, HAS_FOUND_INF, BLOCK)


@triton.jit
def _switch_test(s, s_pg, s_pp, n, members, W, T, found_inf, phase, lam, Lambda, switch_step, seg_step, gamma, lr_ref,
                 lr, b2s, rtols, atols, HAS_FOUND_INF: tl.constexpr, BLOCK: tl.constexpr):
    """Algorithm 1's test for segment s (rules.h swats_switch_test): a segment where no tensor stepped, or a step
    GradScaler skipped, changes nothing."""
    active = n > 0
    if HAS_FOUND_INF:
        active = active & (tl.load(found_inf) == 0)
    if active:
        k = tl.load(seg_step + s) + 1
        tl.store(seg_step + s, k)
        if (tl.load(phase + s) != PHASE_SGD) & (s_pg != 0.0):
            g = s_pp / -s_pg
            b2 = tl.load(b2s + s)
            la = b2 * tl.load(lam + s) + (1 - b2) * g
            tl.store(lam + s, la)
            tl.store(gamma + s, g)
            lam_k = la / (1 - pow_whole(b2, k))
            if (k > 1) & (lam_k > 0) & (tl.abs(lam_k - g) < tl.load(atols + s) + tl.load(rtols + s) * tl.abs(lam_k)):
                tl.store(phase + s, PHASE_SGD)
                tl.store(Lambda + s, lam_k)
                tl.store(switch_step + s, k)
                for j0 in range(0, W, BLOCK):  # lr_ref: each member tensor's lr at the switch
                    j = j0 + tl.arange(0, BLOCK)
                    idx = tl.load(members + s * W + j, mask=j < W, other=T)
                    m = idx < T
                    tl.store(lr_ref + idx, tl.load(lr + idx, mask=m, other=0.0), mask=m)
