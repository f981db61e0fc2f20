"""A tiny LLaVA with a planted image-reading circuit, and its fixtures.

A pytest plugin rather than a ``conftest.py`` (test modules elsewhere import the
top-level conftest by name, which a second ``conftest`` module would shadow); test
modules load it with ``pytest_plugins = ["planted_llava"]``.

In the planted model only three heads of the last layer, :data:`PLANTED`, can move
image information to the text: every other head's ``o_proj`` columns are zero, so
its output (image-reading or not) is nothing. The three planted heads are copies of
one head (same Q/K/V rows and ``o_proj`` columns, strengthened 3x), so their effects
on the answer are equal and share one sign; samples kept for attribution have a
positive clean - all-ablated gap, so that sign is positive and head attribution must
rank exactly these heads first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tl_lvlm import HookedLVLM
from tl_lvlm.testing import TinyLlavaConfig, build_tiny_llava, random_images

QUESTION = "What is the main object in this image? Answer in a single word."
N_LAYERS, N_HEADS = 2, 4
PLANTED = ((1, 0), (1, 2), (1, 3))
PLANTED_SEED = 4
N_SAMPLES = 4


def save_planted_llava(path: Path) -> Path:
    """Build the planted model and save it (model + processor) to ``path``."""
    cfg = TinyLlavaConfig(n_layers=N_LAYERS, n_heads=N_HEADS, seed=PLANTED_SEED)
    hf_model, processor = build_tiny_llava(cfg)
    d_head = cfg.d_model // cfg.n_heads
    with torch.no_grad():
        for layer, block in enumerate(hf_model.model.language_model.layers):
            attn = block.self_attn
            heads = [h for lay, h in PLANTED if lay == layer]
            for h in range(N_HEADS):
                cols = slice(h * d_head, (h + 1) * d_head)
                if h not in heads:
                    attn.o_proj.weight[:, cols] = 0
                    continue
                src = slice(heads[0] * d_head, (heads[0] + 1) * d_head)
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                    proj.weight[cols] = proj.weight[src]
                attn.o_proj.weight[:, cols] = attn.o_proj.weight[:, src]
            for h in heads:  # strengthened after copying, so every copy gets the same 3x
                attn.o_proj.weight[:, h * d_head : (h + 1) * d_head] *= 3
        # Larger logits: the image moves the answer's logit by a few units, not a few hundredths.
        hf_model.lm_head.weight *= 10
    hf_model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def planted_path(tmp_path_factory) -> str:
    """Directory of the saved planted model."""
    return str(save_planted_llava(tmp_path_factory.mktemp("planted") / "model"))


@pytest.fixture(scope="session")
def planted_model(planted_path) -> HookedLVLM:
    return HookedLVLM.from_pretrained(planted_path, device="cpu")


@pytest.fixture(scope="session")
def planted_samples() -> list[tuple]:
    return [(image, QUESTION) for image in random_images(N_SAMPLES, 28, seed=PLANTED_SEED)]


@pytest.fixture(scope="session")
def planted_heads() -> set[int]:
    """Flat indices (``layer * n_heads + head``) of the :data:`PLANTED` heads."""
    return {layer * N_HEADS + head for layer, head in PLANTED}
