"""The README's API tour runs as written on the bundled model, with hook names that exist."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def _api_tour() -> str:
    """The README's "## API tour" section, up to the next second-level heading."""
    text = README.read_text()
    start = text.index("\n## API tour\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _python_blocks(section: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_api_tour_has_its_python_blocks():
    blocks = _python_blocks(_api_tour())
    assert len(blocks) >= 4
    tour = "\n".join(blocks)
    for needed in ("flow_sweep(", "transformer_lens.utilities", "hook_embed", "generate("):
        assert needed in tour


@pytest.fixture(scope="module")
def tour_namespace() -> dict:
    """Every python block of the API tour run in order, with ``image`` a seven."""
    from tl_lvlm.zoo.digits import load_digit_images

    images, labels = load_digit_images("test", "original")
    namespace = {"image": images[int(np.flatnonzero(labels == 7)[0])]}
    for i, block in enumerate(_python_blocks(_api_tour())):
        exec(compile(block, f"README.md API tour block {i}", "exec"), namespace)
    return namespace


def test_the_api_tour_runs_as_written(tour_namespace):
    ns = tour_namespace
    model, inputs = ns["model"], ns["inputs"]
    # What the comments say.
    assert ns["words"] == [" seven"]
    assert model.generate(inputs, max_new_tokens=4) == [" seven"]
    assert model.to_str_tokens(ns["blind"][0, -1].argmax()) != [" seven"]
    assert ns["effect"].shape == (model.n_layers, model.n_heads)
    assert set(ns["sweep"].curves()) == set(ns["PAPER_EDGE_SETS"]["image_flow"])
    assert not torch.allclose(ns["knocked"], ns["logits"])
    lead = ns["lead"]
    assert lead.config["metric"] == "logit_diff" and not lead.excluded
    assert lead.config["foils"] == [model.to_single_token(" seven")]
    assert ns["margin"].config["metric"].endswith("top2_margin") and not ns["margin"].excluded


def test_the_api_tour_hook_names_exist_on_the_bundled_model(tour_namespace):
    hook_dict = tour_namespace["model"].hook_dict
    names = set(re.findall(r"\b(?:blocks\.\d+\.[\w.]*hook_\w+|vision_\w+\.hook_\w+)", _api_tour()))
    names |= set(re.findall(r"\"(hook_\w+)\"", _api_tour()))
    assert {"blocks.5.attn.hook_pattern", "hook_embed", "vision_projector.hook_out"} <= names
    assert sorted(n for n in names if n not in hook_dict) == []
