"""``benchmarks/gpu_check.py --dry-run``: the prepared GPU command runs every step on the CPU.

Runs the script as a user would (a fresh interpreter), at its tiny dry-run size, and
checks that it exits 0, that every check agreed with the hook reference, and that the
JSON holds each number the GPU run reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_dry_run_runs_every_step_and_writes_its_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "200 x 10,000 study" in proc.stdout
    r = json.loads(out.read_text())
    assert r["dry_run"] and r["checks_ok"]
    for check in r["checks"].values():
        assert check["fused"]["max_abs_diff"] <= check["fused"]["tolerance"]
        assert check["eager"]["max_abs_diff"] <= check["eager"]["tolerance"]
    t = r["throughput"]
    assert set(t["masks_per_s"]) == {"engine", "engine_eager", "engine_compiled", "naive"}
    assert all(v > 0 for v in t["masks_per_s"].values())
    # bf16 engine vs the bf16 naive loop: within bf16 noise of logits of order 1.
    assert max(t["max_abs_diff_vs_naive"].values()) < 0.05
    assert 0 < t["fraction_of_peak"] < 1 and t["study"]["minutes"] > 0
