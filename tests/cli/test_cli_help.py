"""``tl-lvlm --help``: answers without importing torch / transformers, and shows defaults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tl_lvlm.cli import build_parser

COMMANDS = ("attribute", "report", "demo", "flow", "study")
HEAVY = ("torch", "transformers", "transformer_lens", "sklearn", "matplotlib")

# Parses --help of the top level and of every command in one child process, then lists the
# heavy libraries that got imported.
CHILD = f"""
import json, sys
from tl_lvlm.cli import main
for argv in [["--help"], *[[c, "--help"] for c in {COMMANDS!r}]]:
    try:
        main(argv)
    except SystemExit as exit:
        assert exit.code == 0, (argv, exit.code)
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def test_help_imports_no_heavy_library():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no warning either (the torchvision fallback came from imports)
    assert json.loads(proc.stdout.splitlines()[-1]) == []
    for command in COMMANDS:
        assert command in proc.stdout


def test_import_tl_lvlm_is_lazy():
    code = "import sys, tl_lvlm; print('torch' in sys.modules); print(tl_lvlm.HookedLVLM.__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["False", "HookedLVLM"], proc.stderr


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            "attribute",
            ["(default: 10000)", "(default: auto)", "(default: 0.75)", "(default: mean)"],
        ),
        ("flow", ["(default: 8)", "(default: 10000)", "(default: mean)"]),
        ("demo", ["(default: 8)", "(default: 400)", "(default: out/demo)"]),
    ],
)
def test_help_shows_defaults(command, expected, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in expected:
        assert default in text
    # The global options, given after the command, show their defaults too.
    assert "--dtype {auto,float32,bfloat16,float16}" in text
    assert "float32 on CPU (default: auto)" in text
