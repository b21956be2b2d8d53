"""Codes that cross a language boundary (Python records -> C++ ops -> CUDA kernels, and -> Triton constexprs) are
declared once per language; this checks that every declaration agrees with the Python one, which the optimizer
hands to the backends. A drifted code would pick another branch in one backend only."""
import pathlib
import re

import pytest

from fused_hybrid import hyper as H
from fused_hybrid import rules

ROOT = pathlib.Path(__file__).resolve().parents[1]

# name in Python -> value; the Python declarations are the reference.
MAS_CODES = {v: i for i, v in enumerate(H.MAS_VARIANTS)}
PY = {"form_torch": H.FORM_TORCH, "form_paper": H.FORM_PAPER, "clip_none": H.CLIP_NONE, "clip_const": H.CLIP_CONST,
      "clip_adabound": H.CLIP_ADABOUND, "phase_adam": H.PHASE_ADAM, "phase_sgd": H.PHASE_SGD,
      **{f"mas_{v}": i for v, i in MAS_CODES.items()}}

# (file, regex with groups (name, value), how a declared name maps to a PY key)
DECLARATIONS = [
    ("csrc/include/fused_hybrid/rules.h", r"\b(kForm\w+|kClip\w+|kPhase\w+)\s*=\s*(\d+)",
     lambda n: re.sub(r"^k(Form|Clip|Phase)", r"\1_", n).lower()),
    ("csrc/cpu/mas.cpp", r"\b(kSum|kCorrection|kNormalized|kVector)\s*=\s*(\d+)", lambda n: "mas_" + n[1:].lower()),
    ("csrc/cuda/mas.cu", r"\b(kSum|kCorrection|kNormalized|kVector)\s*=\s*(\d+)", lambda n: "mas_" + n[1:].lower()),
    ("triton_kernels/adaptive.py", r"^(FORM_\w+|CLIP_\w+)\s*=\s*tl\.constexpr\((\d+)\)", str.lower),
    ("triton_kernels/swats.py", r"^(PHASE_\w+)\s*=\s*tl\.constexpr\((\d+)\)", str.lower),
    ("triton_kernels/mas.py", r"^V_(\w+)\s*=\s*tl\.constexpr\((\d+)\)", lambda n: "mas_" + n.lower()),
]


@pytest.mark.parametrize("path,pattern,key", DECLARATIONS, ids=[f"{d[0]}:{d[1][:20]}" for d in DECLARATIONS])
def test_every_declaration_agrees_with_python(path, pattern, key):
    text = (ROOT / path).read_text()
    found = re.findall(pattern, text, flags=re.MULTILINE)
    assert found, f"no declaration matched in {path}: the pattern is stale"
    for name, value in found:
        assert key(name) in PY, f"{path}: {name} has no Python counterpart"
        assert int(value) == PY[key(name)], f"{path}: {name} = {value}, Python says {PY[key(name)]}"


def test_the_pattern_catches_a_drift(tmp_path):
    """Not vacuous: a declaration with another value fails the comparison."""
    path, pattern, key = DECLARATIONS[0]
    drifted = (ROOT / path).read_text().replace("kClipAdaBound = 2", "kClipAdaBound = 3")
    found = dict(re.findall(pattern, drifted))
    assert int(found["kClipAdaBound"]) != PY[key("kClipAdaBound")]


# --------------------------------------------------------------------------------------------------------------
# The family ops' arguments: csrc/op_families.h (C++, X-macros) and fused_hybrid.families (Python, from the
# records) declare them; every library that registers them must register the same schema.

from fused_hybrid import _ext  # noqa: E402
from fused_hybrid.families import FAMILIES  # noqa: E402


def _registered(ns: str, op: str) -> str:
    return str(getattr(getattr(__import__("torch").ops, ns), op).default._schema)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("ns", ["fused_hybrid", "fused_hybrid_sim"])
def test_cpp_op_schema_is_the_python_one(family, ns):
    if ns == "fused_hybrid" and not _ext.loaded():
        pytest.skip(f"the C++ extension is not built here: {_ext.LOAD_ERROR}")
    if ns == "fused_hybrid_sim" and not _ext.has_sim():
        pytest.skip(f"the simulated CUDA kernels are not built here: {_ext.SIM_LOAD_ERROR}")
    spec = FAMILIES[family]
    assert _registered(ns, f"{family}_") == f"{ns}::{spec.schema()}"
    table = _registered(ns, f"{family}_table_")
    kw = spec.schema().split(", *, ")[1]
    assert table == (f"{ns}::{family}_table_(__torch__.torch.classes.fused_hybrid.TensorTable table, "
                     f"Tensor[] grads, *, {kw.replace(' -> ()', ' -> bool')}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_triton_op_schema_is_the_python_one(family):
    pytest.importorskip("triton")
    from fused_hybrid.backends import triton_ops
    leading = triton_ops._ND_AXES if family == "ndadam" else None
    assert _registered("fused_hybrid", f"triton_{family}_") == \
        f"fused_hybrid::{FAMILIES[family].schema(f'triton_{family}_', leading=leading)}"


def test_every_op_argument_is_keyword_only_and_named_as_the_record_field():
    """Positional scalars could be passed in the wrong order without any error; by keyword, a wrong name fails."""
    for family in FAMILIES.values():
        schema = family.schema()
        head, kw = schema.split(", *, ")
        assert "float" not in head and "bool" not in head and "int" not in head, schema
        import dataclasses
        for f in dataclasses.fields(family.record):
            assert f" {f.name}," in kw or f" {f.name})" in kw, (family.name, f.name)


def test_a_drifted_cpp_argument_list_is_caught():
    """Not vacuous: the C++ header's list for the adaptive family, with two arguments swapped, no longer gives the
    Python schema's order."""
    text = (ROOT / "csrc/op_families.h").read_text()
    block = text[text.index("#define FH_ADAPTIVE_ARGS(X)"):text.index("// MAS (fused_hybrid.hyper.MAS)")]
    names = re.findall(r"X\((\w+), (\w+)\)", block)
    py = [n for _, n in FAMILIES["adaptive"].keyword_args()[:len(names)]]
    assert [n for _, n in names] == py
    swapped = block.replace("X(float, beta1) X(float, beta2)", "X(float, beta2) X(float, beta1)")
    assert [n for _, n in re.findall(r"X\((\w+), (\w+)\)", swapped)] != py
