"""``import tl_lvlm`` has no side effects: no matplotlib, nothing registered with transformers.

Checked in a fresh interpreter, since this test session has imported both long ago.
The engine registers its attention function when it first runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
import tl_lvlm
from transformers import AttentionInterface
from tl_lvlm.ablation.engine import ATTENTION_NAME
state = {
    "matplotlib": sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib"),
    "registered": ATTENTION_NAME in AttentionInterface._global_mapping,
}
# Then run an engine: it registers its attention function.
import torch
from tl_lvlm import AblationEngine, HookedLVLM, image_kv_baseline
from tl_lvlm.testing import build_tiny_llava, random_images
model = HookedLVLM.from_hf(*build_tiny_llava())
sample = model.prepare(random_images(1, 28), "Which number is written here?")
engine = AblationEngine(model, sample, image_kv_baseline(model, sample, "zero"))
engine.run(torch.ones(1, model.n_layers, model.n_heads, dtype=torch.bool))
state["registered_after_run"] = ATTENTION_NAME in AttentionInterface._global_mapping
print(json.dumps(state))
"""


def _probe() -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_loads_no_matplotlib_and_registers_nothing_until_an_engine_runs():
    assert _probe() == {"matplotlib": [], "registered": False, "registered_after_run": True}
