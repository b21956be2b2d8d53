"""The CUDA kernels' host-side launch planning (csrc/include/fused_hybrid/launch_plan.h), run on the CPU through
the debug op torch.ops.fused_hybrid.plan_launches: how tensor lists are split into launches, chunks and
reduction slots. Needs no GPU and no CUDA build (the planner is plain C++ compiled into every build)."""
import random

import pytest
import torch

from fused_hybrid import _ext

pytestmark = pytest.mark.skipif(
    not (_ext.loaded() and hasattr(torch.ops.fused_hybrid, "plan_launches")),
    reason="the C++ extension is not built, or was built before the plan_launches debug op existed (rebuild it)")

KERNEL_PARAM_LIMIT = 32764  # bytes of kernel arguments, CUDA 12.1+ on Volta and newer
MAX_BLOCKS = 2048
BASE_CHUNK = 65536


def decode(flat):
    """plan::encode's flat list -> (chunk_size, [dict(slot_base, tensors, blocks=[(local tensor, chunk)])])."""
    chunk, n, i = flat[0], flat[1], 2
    launches = []
    for _ in range(n):
        slot_base, nt, nb = flat[i:i + 3]
        i += 3
        tensors = flat[i:i + nt]
        i += nt
        blocks = [(flat[i + 2 * b], flat[i + 2 * b + 1]) for b in range(nb)]
        i += 2 * nb
        launches.append(dict(slot_base=slot_base, tensors=tensors, blocks=blocks))
    assert i == len(flat)
    return chunk, launches


def plan(numels, chunk_size=0, depth=6, max_tensors=0, max_blocks=0):
    return decode(list(torch.ops.fused_hybrid.plan_launches(numels, chunk_size, depth, max_tensors, max_blocks)))


def model_plan(numels, chunk, max_tensors, max_blocks):
    """A straightforward Python statement of the planning contract, to compare against."""
    launches, cur, slot = [], None, 0

    def new():
        return dict(slot_base=slot, tensors=[], blocks=[])
    cur = new()
    for t, n in enumerate(numels):
        for c in range(-(-n // chunk) if n > 0 else 0):
            if not cur["tensors"] or cur["tensors"][-1] != t:
                if len(cur["tensors"]) == max_tensors:
                    launches.append(cur)
                    cur = new()
                cur["tensors"].append(t)
            cur["blocks"].append((len(cur["tensors"]) - 1, c))
            slot += 1
            if len(cur["blocks"]) == max_blocks:
                launches.append(cur)
                cur = new()
    if cur["blocks"]:
        launches.append(cur)
    return launches


def check_invariants(numels, chunk, launches, max_tensors, max_blocks):
    seen = []
    slot = 0
    for L in launches:
        assert 1 <= len(L["blocks"]) <= max_blocks
        assert 1 <= len(L["tensors"]) <= max_tensors
        assert L["slot_base"] == slot
        slot += len(L["blocks"])
        for lt, c in L["blocks"]:
            seen.append((L["tensors"][lt], c))
        # every listed tensor has a block in this launch
        assert {lt for lt, _ in L["blocks"]} == set(range(len(L["tensors"])))
    expected = [(t, c) for t, n in enumerate(numels) for c in range(-(-n // chunk) if n > 0 else 0)]
    assert seen == expected  # every chunk once, in (tensor, chunk) order: slots are contiguous per tensor
    return slot


def test_limits_fit_the_kernel_parameter_space():
    for depth in range(1, 9):
        mt, mb = torch.ops.fused_hybrid.plan_limits(depth)
        assert mb == MAX_BLOCKS
        # TensorListMeta<D>: D addresses + numel + aux + info (8 B each) + tensor index (4 B) per tensor,
        # slot_base + chunk_size, uint16 + int32 per block.
        size = (8 * depth + 28) * mt + 16 + 6 * mb
        assert size <= KERNEL_PARAM_LIMIT - 1536, (depth, size)  # 1536 B left for the functor
        assert mt >= 200  # hundreds of tensors per launch (PyTorch's 4 KB tables: 30..110)
    assert [torch.ops.fused_hybrid.plan_limits(d)[0] for d in (2, 3, 4, 5, 6)] == [429, 363, 315, 278, 248]


def test_small_call_is_one_launch():
    chunk, launches = plan([1, 3, 4097, 0, 70001])
    assert chunk == BASE_CHUNK
    assert len(launches) == 1
    L = launches[0]
    assert L["tensors"] == [0, 1, 2, 4]  # the empty tensor gets no slot
    assert L["blocks"] == [(0, 0), (1, 0), (2, 0), (3, 0), (3, 1)]
    assert L["slot_base"] == 0


def test_chunk_size_grows_so_a_large_model_needs_one_launch():
    # ~1e9 elements in 3 tensors: 2^19-element chunks, 1908 chunks, one launch
    numels = [600_000_000, 400_000_000, 1000]
    chunk, launches = plan(numels)
    assert chunk == 2**19
    assert len(launches) == 1
    check_invariants(numels, chunk, launches, 248, MAX_BLOCKS)
    # ResNet-18-like: 11.7M in 62 tensors -> base chunk, one launch
    numels = [11_700_000 // 62] * 62
    chunk, launches = plan(numels)
    assert chunk == BASE_CHUNK and len(launches) == 1


def test_chunk_size_is_capped_and_then_launches_split():
    numels = [2**22 * 3000]  # more than 2048 chunks even at the 2^22 cap
    chunk, launches = plan(numels)
    assert chunk == 2**22
    assert len(launches) == 2
    assert launches[1]["blocks"][0] == (0, 2048)  # the tensor continues in the next launch
    assert launches[1]["slot_base"] == 2048
    check_invariants(numels, chunk, launches, 248, MAX_BLOCKS)


def test_tensor_table_limit():
    numels = [5] * 1000
    chunk, launches = plan(numels, depth=6)
    assert [len(L["tensors"]) for L in launches] == [248, 248, 248, 248, 8]
    check_invariants(numels, chunk, launches, 248, MAX_BLOCKS)


def test_over_2_pow_31_elements():
    n = 2**31 + 5
    chunk, launches = plan([n])
    assert chunk == 2**21  # 1025 chunks of 2^21
    assert len(launches) == 1 and launches[0]["blocks"][-1] == (0, 1024)
    assert (1024 * chunk) < n <= 1025 * chunk


@pytest.mark.parametrize("seed", range(20))
def test_random_against_model(seed):
    rnd = random.Random(seed)
    numels = [rnd.choice([0, 1, 3, rnd.randint(1, 50), rnd.randint(1, 5000)]) for _ in range(rnd.randint(0, 60))]
    chunk = rnd.choice([1, 2, 7, 64])
    mt, mb = rnd.randint(1, 9), rnd.randint(1, 40)
    got_chunk, got = plan(numels, chunk, 6, mt, mb)
    assert got_chunk == chunk
    assert got == model_plan(numels, chunk, mt, mb)
    total = check_invariants(numels, chunk, got, mt, mb)
    assert total == sum(-(-n // chunk) for n in numels if n > 0)


def test_bad_arguments():
    with pytest.raises(RuntimeError):
        torch.ops.fused_hybrid.plan_launches([-1], 4, 6, 0, 0)
    with pytest.raises(RuntimeError):
        torch.ops.fused_hybrid.plan_launches([1], 4, 0, 0, 0)
