"""tl_lvlm.patching runs TransformerLens patching utilities with the images carried."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tl_patching

import tl_lvlm.patching
from tl_lvlm.testing import TEST_QUESTIONS as QUESTIONS
from tl_lvlm.testing import random_images


def test_patching_carries_images(tiny_mha):
    m = tiny_mha
    clean = m.prepare(random_images(1, 28, seed=1), QUESTIONS[0])
    corrupted = m.prepare(random_images(1, 28, seed=2), QUESTIONS[0])
    assert torch.equal(clean.input_ids, corrupted.input_ids)
    _, clean_cache = m.run_with_cache(clean)

    def metric(logits):
        return logits[0, -1].max()

    ours = tl_lvlm.patching.get_act_patch_attn_head_out_all_pos(m, corrupted, clean_cache, metric)
    assert ours.shape == (m.n_layers, m.n_heads)
    # Reference: the same patch done by hand with the images.
    with torch.no_grad():
        by_hand = m.run_with_hooks(
            corrupted,
            fwd_hooks=[
                (
                    "blocks.1.attn.hook_z",
                    lambda z, hook: _patch_head(z, clean_cache["blocks.1.attn.hook_z"], 2),
                )
            ],
        )
    assert torch.allclose(ours[1, 2], metric(by_hand), atol=1e-5)
    # What TransformerLens computes without the images differs.
    text_only = tl_patching.get_act_patch_attn_head_out_all_pos(
        m.bridge, corrupted.input_ids, clean_cache, metric
    )
    assert (ours - text_only).abs().max() > 1e-3


def _patch_head(z, clean_z, head):
    z = z.clone()
    z[:, :, head] = clean_z[:, :, head]
    return z


def test_patching_rejects_tokens(tiny_mha):
    with pytest.raises(TypeError, match="takes LVLMInputs"):
        tl_lvlm.patching.get_act_patch_resid_pre(tiny_mha, torch.zeros(1, 3), None, None)


def test_bound_model_refuses_other_tokens(tiny_mha, images):
    inputs = tiny_mha.prepare(images, QUESTIONS)
    bound = tiny_mha.bind(inputs)
    with pytest.raises(ValueError, match="only runs the input_ids it was bound to"):
        bound(inputs.input_ids[:1])
