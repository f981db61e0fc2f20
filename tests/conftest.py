"""Shared fixtures: tiny LLaVA checkpoints saved in HF format and loaded back.

Tests load models through ``HookedLVLM.from_pretrained(path)``, the same path a
user takes with a hub name. Checkpoints are built once per session.
"""

from __future__ import annotations

import sys

import jaxtyping
import pytest
import torch

# Every function and dataclass of tl_lvlm and attribution is checked against its annotations,
# jaxtyping shapes included, on every call of the suite (JAXTYPING_DISABLE=1 turns the checks
# off; tests/test_runtime_typecheck.py fails if the hook is not active). The hook instruments
# only modules imported after it, hence before any of ours. PEP 484's numeric tower, as static
# type checkers read annotations: an int is a float. Public entry points marked
# `attribution.own_checks.checks_own_arguments` are left to their own validation, so that
# misuse meets our messages.
assert not any(name.split(".")[0] in ("tl_lvlm", "attribution") for name in sys.modules)
jaxtyping.install_import_hook(
    ["tl_lvlm", "attribution"],
    "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))",
)

from tl_lvlm import HookedLVLM  # noqa: E402
from tl_lvlm.testing import (  # noqa: E402
    TEST_QUESTIONS,
    TinyLlavaConfig,
    random_images,
    save_tiny_llava,
)

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


#: The test files that take longest (``pytest --durations``), longest first.
LONGEST_FILES = (
    "tests/zoo/test_zoo_checkpoint.py",
    "tests/cli/test_cli_study.py",
    "tests/cli/test_cli_runs.py",
    "tests/zoo/test_train_digits.py",
    "tests/families/test_contract.py",
    "tests/analysis/heads/test_cli_attribute.py",
    "tests/families/test_docs_families.py",
)


def pytest_collection_modifyitems(items):
    """Run the longest files first: ``make test`` hands whole files to pytest-xdist workers in
    collection order, and a long file started last would leave one worker running alone."""
    rank = {path: i for i, path in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
