"""Nothing outside ``tl_lvlm/families/`` branches on the architecture or probes for a quirk.

The code of every other production module (docstrings and comments left out, string
literals kept, since a probe such as ``getattr(cfg, "sliding_window")`` is a string)
must not name an architecture or reach into a family's internals: those belong to
a :class:`~tl_lvlm.families.LVLMFamily` subclass.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import tl_lvlm

PACKAGE = Path(tl_lvlm.__file__).parent
#: The tiny-model kits (tiny_llava, the test kits) build checkpoints of named architectures and
#: the zoo's trainer builds the bundled LLaVA with them: naming architectures is their job.
EXEMPT = (
    "families/",
    "testing/",
    "zoo/tiny_llava.py",
    "zoo/train_digits.py",
)

FORBIDDEN = (
    "Gemma",
    "Qwen",
    "Llava",
    "OneVision",
    "Onevision",
    "Mistral",
    "Llama",
    "k_norm",
    "sliding_window",
    "softcapping",
    "language_model",
    "lm_head",
    "text_config",
    "vision_config",
    "token_type_ids",
    "image_grid_thw",
    "image_sizes",
    "inspect.signature",
    "sys.modules",
    ".architectures",
    '"architectures"',
)


def _code_without_docstrings(source: str) -> str:
    """The module's code as ``ast.unparse`` writes it, without comments and docstrings."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body:
            first = body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def _modules() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if not p.relative_to(PACKAGE).as_posix().startswith(EXEMPT)
    )


def test_the_scan_sees_the_generic_modules():
    names = {p.relative_to(PACKAGE).as_posix() for p in _modules()}
    assert {
        "model/hooked_lvlm.py",
        "ablation/engine.py",
        "ablation/hooks.py",
        "ablation/recomputed.py",
        "flow.py",
        "analysis/image_tokens.py",
    } <= names
    assert not any(n.startswith("families/") for n in names)


def test_the_scan_finds_a_probe_in_code_but_not_in_a_docstring():
    code = _code_without_docstrings(
        '"""Gemma 3 is mentioned here."""\n'
        "def f(cfg):\n"
        '    """k_norm in a docstring."""\n'
        "    # sliding_window in a comment\n"
        '    return getattr(cfg, "sliding_window", None)\n'
    )
    assert "Gemma" not in code and "k_norm" not in code
    assert "sliding_window" in code


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_architecture_specific_code_outside_families(path):
    code = _code_without_docstrings(path.read_text())
    found = sorted({word for word in FORBIDDEN if re.search(re.escape(word), code)})
    assert not found, (
        f"{path.relative_to(PACKAGE)} names {found}: architecture-specific code belongs in "
        "tl_lvlm/families/ (an LVLMFamily attribute or method)"
    )


def test_left_padding_arithmetic_lives_in_inputs():
    """Padding counts and padding-aware positions come from ``tl_lvlm.inputs`` only."""
    patterns = (r"==\s*0\)\.sum", r"\.cumsum\(")
    offenders = [
        p.relative_to(PACKAGE).as_posix()
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.relative_to(PACKAGE).as_posix() != "inputs/lvlm_inputs.py"
        and any(re.search(pat, _code_without_docstrings(p.read_text())) for pat in patterns)
    ]
    assert not offenders, (
        f"left-padding arithmetic outside tl_lvlm/inputs/lvlm_inputs.py in {offenders}"
    )
