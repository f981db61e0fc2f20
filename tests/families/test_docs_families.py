"""``docs/families.md`` cites only tests that exist, and has a column per registered family."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tl_lvlm.families import registered_families

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "families.md"
#: ``tests/<path>.py::test_name`` with an optional ``[parameter id]``, in backticks.
CITATION = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(\[[^\]`]+\])?`")


def _collected(files: list[str]) -> set[str]:
    """Node ids pytest collects from ``files`` (a fresh process: collection only)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    return {line.strip() for line in out.stdout.splitlines() if "::" in line}


def test_every_cited_test_exists():
    citations = CITATION.findall(DOC.read_text())
    assert len(citations) > 40, "the citation pattern no longer matches the document"
    files = sorted({path for path, _, _ in citations})
    missing_files = [f for f in files if not (ROOT / f).is_file()]
    assert not missing_files, f"docs/families.md cites missing files {missing_files}"
    ids = _collected(files)
    missing = []
    for path, name, param in citations:
        node = f"{path}::{name}{param}"
        # An id without a parameter cites every parametrization of the test.
        if node not in ids and not (not param and any(i.startswith(node + "[") for i in ids)):
            missing.append(node)
    assert not missing, f"docs/families.md cites tests that do not exist: {missing}"


def test_every_registered_family_has_a_column():
    header = next(line for line in DOC.read_text().splitlines() if line.startswith("| Feature"))
    columns = [c.strip() for c in header.strip("|").split("|")[1:]]
    assert sorted(columns) == sorted(f.name for f in registered_families().values())
