"""Helpers of the CLI tests: run ``tl-lvlm`` in a child process, hash a run directory."""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tl_lvlm.head_attribution import head_attribution

#: The driver branch's head attribution API (on_sample_done, stored_samples, batch_size=None,
#: n_masks="auto", umask-respecting atomic files). Tests marked with this run after the merge.
DRIVER_API = "on_sample_done" in inspect.signature(head_attribution).parameters
needs_driver = pytest.mark.skipif(
    not DRIVER_API, reason="needs the driver branch's head attribution API (runs after merge)"
)

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
