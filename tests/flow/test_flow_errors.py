"""Knockout refuses what it cannot do, with messages that say why."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

from tl_lvlm.flow import knockout, resolve_groups
from tl_lvlm.testing import random_images

QUESTION = "What is the main object in this image?"


@pytest.fixture(scope="module")
def inputs(tiny_mha):
    return tiny_mha.prepare(random_images(2, 28), QUESTION)


def test_unknown_group(tiny_mha, inputs):
    with pytest.raises(ValueError, match="unknown token group 'answer'"):
        knockout(tiny_mha, inputs, ("question", "answer"), 0)
    with pytest.raises(ValueError, match="unknown token group"):
        knockout(tiny_mha, inputs, [(("image", "questions"), "final")], 0)


def test_aliases_and_sets_resolve_in_prompt_order():
    assert resolve_groups("text") == ("question", "role", "final")
    assert resolve_groups(["final", "image"]) == ("image", "final")
    with pytest.raises(ValueError, match="names no token group"):
        resolve_groups([])


def test_empty_group(tiny_mha, images):
    # No text after the question: the template has no role tokens.
    no_role = tiny_mha.prepare(images, QUESTION, template="USER: <image>\n{question}")
    assert no_role.positions("role", 0).numel() == 0
    with pytest.raises(ValueError, match="token group role is empty in batch row"):
        knockout(tiny_mha, no_role, ("image", "role"), 0)


def test_layers_outside_the_model(tiny_mha, inputs):
    for layers in (range(1, 3), [-1], 2, []):
        with pytest.raises(ValueError, match="outside the model|window is empty"):
            knockout(tiny_mha, inputs, ("image", "final"), layers)


def test_bad_heads(tiny_mha, inputs):
    with pytest.raises(ValueError, match="head indices in 0..3"):
        knockout(tiny_mha, inputs, ("image", "final"), 0, heads=[4])


def test_bad_edge(tiny_mha, inputs):
    with pytest.raises(ValueError, match=r"\(source, destination\) pair"):
        knockout(tiny_mha, inputs, [("image", "role", "final")], 0)


def test_query_left_with_no_key(tiny_mha, inputs):
    # Question tokens could then read nothing at all: softmax over no keys.
    edges = [("prefix", "question"), ("image", "question"), ("question", "question")]
    with pytest.raises(ValueError, match="question group, batch row 0.*undefined"):
        knockout(tiny_mha, inputs, edges, 0)


def test_run_on_other_inputs(tiny_mha, inputs):
    other = tiny_mha.prepare(inputs.pixel_values[:1], "Which number is written here?")
    ko = knockout(tiny_mha, inputs, ("question", "final"), 0)
    with torch.no_grad(), pytest.raises(ValueError, match="do not fit a knockout"):
        tiny_mha.run_with_hooks(other, fwd_hooks=ko.fwd_hooks)


def test_read_only_scores_hook(tiny_mha, inputs, monkeypatch):
    """An attention bridge that runs HF attention natively (as on Qwen2.5-VL's text tower)."""
    attn = tiny_mha.bridge.blocks[1].attn  # the component itself, not the view
    native = type("NativeAttentionBridge", (type(attn),), {"forward": AttentionBridge.forward})
    monkeypatch.setattr(attn, "__class__", native)
    # Layer 0 keeps its reimplementing attention: a window there still works.
    knockout(tiny_mha, inputs, ("image", "final"), 0)
    with pytest.raises(NotImplementedError, match="blocks.1.attn .*silently do nothing"):
        knockout(tiny_mha, inputs, ("image", "final"), [0, 1])
