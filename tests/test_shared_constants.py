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
MAS_CODES = {v: i for i, v in enumerate(rules.MAS_VARIANTS)}
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
    ("triton_kernels/mas.py", r"\"(\w+)\": (\d+)", lambda n: "mas_" + n),
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
