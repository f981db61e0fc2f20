"""Helpers of the CLI tests: run ``tl-lvlm`` in a child process, hash a run directory, read the
one error line."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "tl_lvlm.cli"]


def run_cli(*args, env: dict[str, str] | None = None, timeout: float = 600, **kwargs):
    """``tl-lvlm ARGS`` in a child process; fails the test if it printed a traceback."""
    proc = subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        **kwargs,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest); directories as ``dir``."""
    return {
        str(p.relative_to(root)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
    }


def one_error_line(stderr: str, prog: str = "tl-lvlm attribute") -> str:
    """The one line of ``stderr``, checked to be ``prog``'s error."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), stderr
    return lines[0]
