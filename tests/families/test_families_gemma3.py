"""Gemma 3 specifics: q/k-normed keys in baselines, bidirectional image attention, local windows."""

from __future__ import annotations

import pytest
import torch
from tiny_families import family_model

from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline, key_hook
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.testing import random_images

QUESTION = "Which number is written here?"


@pytest.fixture
def model():
    return family_model("gemma3")


def test_baseline_keys_are_taken_after_the_k_norm(model):
    assert key_hook(model, 0) == ("blocks.0.attn.hook_k_normed", 2)


@pytest.mark.parametrize("scope", ["text", "all"])
def test_own_keys_as_baseline_reproduce_the_clean_run(model, scope):
    """Every head ablated with the sample's own K/V changes nothing, image queries included.

    Scope "all" swaps image columns for image queries too; those attend to the
    whole image both ways, so a swap limited to causal columns, or one reaching
    masked columns, would not reproduce the clean logits.
    """
    sample = model.prepare(random_images(1, 28, seed=2), QUESTION)
    baseline = image_kv_baseline(model, sample)
    keep = torch.zeros(1, model.n_layers, model.n_heads, dtype=torch.bool)
    with torch.no_grad():
        clean = model(sample)
        ablated = model.run_with_hooks(
            sample, fwd_hooks=image_kv_ablation_hooks(model, sample, baseline, keep, scope=scope)
        )
    assert (ablated - clean).abs().max() <= 1e-4


def test_engine_refuses_prompts_beyond_the_sliding_window(model, monkeypatch):
    sample = model.prepare(random_images(1, 28, seed=2), QUESTION)
    baseline = image_kv_baseline(model, sample)
    text_config = model.hf_model.model.language_model.config
    monkeypatch.setattr(text_config, "sliding_window", sample.seq_len - 1)
    with pytest.raises(NotImplementedError, match="Gemma 3: the prompt has .* sliding"):
        AblationEngine(model, sample, baseline)
