"""Attention knockout agrees with an independent mechanism: masks given to the HF model.

The reference is a separately loaded ``LlavaForConditionalGeneration`` (the bridge
swaps the attention modules of its own copy in place) whose Llama attention runs
HF's eager attention through a custom ``AttentionInterface`` function that adds a
per-layer (and per-head) mask built here from the token positions, never from
``tl_lvlm.flow``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, LlavaForConditionalGeneration
from transformers.models.llama.modeling_llama import eager_attention_forward

from tl_lvlm.flow import knockout
from tl_lvlm.testing import random_images

QUESTIONS = ["What is the main object in this image?", "Which number is written here?"]

# Layer -> [batch, heads or 1, query, key] bool, True = blocked; read by _reference_attention.
_BLOCKED: dict[int, torch.Tensor] = {}


def _reference_attention(module, query, key, value, attention_mask, **kwargs):
    blocked = _BLOCKED.get(module.layer_idx)
    if blocked is not None:
        attention_mask = attention_mask.masked_fill(blocked, torch.finfo(query.dtype).min)
    return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("flow_reference", _reference_attention)


@pytest.fixture(scope="module", params=["mha", "gqa"])
def pair(request, tiny_paths, tiny_mha, tiny_gqa):
    """(HookedLVLM, reference HF model with per-layer masks, inputs) for one checkpoint."""
    model = {"mha": tiny_mha, "gqa": tiny_gqa}[request.param]
    reference = LlavaForConditionalGeneration.from_pretrained(
        tiny_paths[request.param],
        attn_implementation={
            "text_config": "flow_reference",
            "vision_config": "eager",
            "": "eager",
        },
    ).eval()
    inputs = model.prepare(random_images(2, 28, seed=3), QUESTIONS)
    return model, reference, inputs


def _blocked(inputs, edges) -> torch.Tensor:
    """[batch, 1, query, key] True where a query of a destination group meets a source key."""
    n = inputs.seq_len
    out = torch.zeros(inputs.batch_size, 1, n, n, dtype=torch.bool)
    for row in range(inputs.batch_size):
        for sources, destinations in edges:
            for src in sources:
                for dst in destinations:
                    q = inputs.positions(dst, row)
                    k = inputs.positions(src, row)
                    out[row, 0, q[:, None], k[None, :]] = True
    return out


@torch.no_grad()
def _reference_logits(reference, inputs, blocked_by_layer) -> torch.Tensor:
    n = inputs.seq_len
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    allowed = causal & inputs.attention_mask.bool()[:, None, None, :]
    base = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    _BLOCKED.clear()
    _BLOCKED.update(blocked_by_layer)
    try:
        out = reference(
            input_ids=inputs.input_ids,
            pixel_values=inputs.pixel_values,
            attention_mask=base,
            position_ids=inputs.position_ids,
        )
    finally:
        _BLOCKED.clear()
    return out.logits


def _real(logits, inputs):
    """Logits at non-padding positions (padding queries are irrelevant to the output)."""
    return logits[inputs.attention_mask.bool()]


def test_no_mask_reference_equals_clean(pair):
    model, reference, inputs = pair
    with torch.no_grad():
        clean = model(inputs)
    ref = _reference_logits(reference, inputs, {})
    assert (_real(clean, inputs) - _real(ref, inputs)).abs().max() <= 1e-4


def test_empty_knockout_equals_clean(pair):
    model, _, inputs = pair
    with torch.no_grad():
        clean = model(inputs)
        with knockout(model, inputs, [], None):
            knocked = model(inputs)
        after = model(inputs)
    assert torch.equal(knocked, clean)
    assert torch.equal(after, clean)  # the context removed its hooks


@pytest.mark.parametrize(
    "edges, layers, heads",
    [
        # Image read by no text token, in every layer (one HF 4D mask could express this).
        ([(["image"], ["question", "role", "final"])], [0, 1], None),
        # Question -> role and final, only in layer 0 (a window: per-layer masks).
        ([(["question"], ["role", "final"])], [0], None),
        # Image -> question plus question -> question, layer 1, query heads 1 and 2 only.
        ([(["image"], ["question"]), (["question"], ["question"])], [1], [1, 2]),
    ],
    ids=["image-to-text-all-layers", "question-to-role-final-layer0", "two-edges-layer1-heads"],
)
def test_knockout_matches_hf_masks(pair, edges, layers, heads):
    model, reference, inputs = pair
    blocked = _blocked(inputs, edges)
    if heads is not None:
        chosen = torch.zeros(1, model.n_heads, 1, 1, dtype=torch.bool)
        chosen[0, heads] = True
        blocked = blocked & chosen
    ref = _reference_logits(reference, inputs, dict.fromkeys(layers, blocked))
    with torch.no_grad():
        clean = model(inputs)
        with knockout(model, inputs, edges, layers, heads=heads):
            knocked = model(inputs)
    assert (_real(knocked, inputs) - _real(ref, inputs)).abs().max() <= 1e-4
    # Not a vacuous agreement: the knockout moves the logits.
    assert (_real(knocked, inputs) - _real(clean, inputs)).abs().max() > 1e-3


def test_hooks_compose_with_other_hooks(pair):
    """fwd_hooks run alongside a caching hook, which sees the blocked pattern as zeros."""
    model, _, inputs = pair
    ko = knockout(model, inputs, ("question", "final"), 1)
    seen = {}

    def save(pattern, hook):
        seen[hook.name] = pattern.detach().clone()

    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.n_layers)]
    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=ko.fwd_hooks + [(n, save) for n in names])
    for row in range(inputs.batch_size):
        q, final = inputs.positions("question", row), inputs.positions("final", row)
        assert torch.all(seen[names[1]][row][:, final][..., q] == 0)
        assert torch.all(seen[names[0]][row][:, final][..., q] > 0)
