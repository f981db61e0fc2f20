"""Shared fixtures: tiny LLaVA checkpoints saved in HF format and loaded back.

Tests load models through ``HookedLVLM.from_pretrained(path)``, the same path a
user takes with a hub name. Checkpoints are built once per session.
"""

from __future__ import annotations

import pytest
import torch

from tl_lvlm import HookedLVLM
from tl_lvlm.testing import TEST_QUESTIONS, TinyLlavaConfig, random_images, save_tiny_llava

# Tiny models are dominated by per-op overhead: one thread is faster than two,
# and keeps the suite's speed steady when the machine is busy.
torch.set_num_threads(1)

QUESTIONS = TEST_QUESTIONS

CONFIGS = {
    "mha": TinyLlavaConfig(n_layers=2, n_heads=4, n_kv_heads=4, seed=0),
    "gqa": TinyLlavaConfig(n_layers=2, n_heads=4, n_kv_heads=2, seed=1),
}


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory) -> dict[str, str]:
    """``{"mha": dir, "gqa": dir}``: tiny checkpoints written with ``save_pretrained``."""
    root = tmp_path_factory.mktemp("tiny")
    return {name: str(save_tiny_llava(root / name, cfg)) for name, cfg in CONFIGS.items()}


@pytest.fixture(scope="session", params=["mha", "gqa"])
def tiny_model(request, tiny_paths) -> HookedLVLM:
    """A tiny HookedLVLM, once MHA and once GQA (parametrized)."""
    torch.manual_seed(0)
    return HookedLVLM.from_pretrained(tiny_paths[request.param], device="cpu")


@pytest.fixture(scope="session")
def tiny_gqa(tiny_paths) -> HookedLVLM:
    return HookedLVLM.from_pretrained(tiny_paths["gqa"], device="cpu")


@pytest.fixture(scope="session")
def tiny_mha(tiny_paths) -> HookedLVLM:
    return HookedLVLM.from_pretrained(tiny_paths["mha"], device="cpu")


@pytest.fixture
def images():
    """Two random 28x28 RGB images (the tiny configs' image size)."""
    return random_images(2, 28, seed=0)


@pytest.fixture(scope="session")
def check_report_in_browser():
    """:func:`check_report_in_browser` of ``tests/report/browser.py`` (open a report in
    headless Chromium; see there). Skips the test without Chromium, or fails it when
    ``TL_LVLM_REQUIRE_BROWSER=1`` (CI)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "report" / "browser.py"
    spec = importlib.util.spec_from_file_location("tl_lvlm_tests_browser", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.require_chromium()
    return module.check_report_in_browser
