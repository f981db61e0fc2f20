"""The family contract: every registered family against Hugging Face and tl-lvlm's references.

Parametrized over every family with a tiny builder (``tl_lvlm.testing.BUILDERS``;
a test checks that these are exactly the registered, supported families), each saved
with ``save_pretrained`` and loaded with ``HookedLVLM.from_pretrained(path)``:

- logits equal an independently loaded HF eager model's (<= 1e-4, fp32) on a padded batch of 2;
- token groups decode to the template's pieces;
- the AblationEngine equals the hook reference (<= 1e-4) in both scopes and both attention
  paths (fused, eager), in fp32 and (within bf16 noise) bf16, on 32 random
  masks plus the all-kept and all-ablated ones (and on per-position masks);
- attention knockout equals HF's own attention with the blocked pairs masked;
- head attribution runs end to end.

``docs/families.md`` cites these tests by id; ``test_docs_families`` checks every citation.
"""

from __future__ import annotations

import sys

import pytest
import torch
from tiny_families import FAMILIES, family_model, family_path
from transformers import AttentionInterface, AutoConfig
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.analysis.heads import head_attribution
from tl_lvlm.families import family_of, supported_architectures
from tl_lvlm.flow import knockout
from tl_lvlm.testing import random_images

QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]

#: Family -> decoded (prefix, text between image and question, text after the question).
EXPECTED_TEXT = {
    "llava": ("<s>USER: ", "\n", " ASSISTANT:"),
    "llava_next": ("<s>[INST] ", "\n", " [/INST]"),
    "gemma3": (
        "<s><start_of_turn>user\n\n\n<start_of_image>",
        "<end_of_image>\n\n",
        "<end_of_turn>\n<start_of_turn>model\n",
    ),
    "llava_onevision": ("<|im_start|>user ", "\n", "<|im_end|><|im_start|>assistant\n"),
    "qwen2_5_vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|>",
        "<|vision_end|>",
        "<|im_end|>\n<|im_start|>assistant\n",
    ),
}

N_RANDOM_MASKS = 32


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def model(family):
    return family_model(family)


def _hf(family: str, **kwargs):
    """An independent copy of the family's HF model (the bridge swaps attention in place)."""
    cls = family_of(AutoConfig.from_pretrained(family_path(family))).model_class()
    return cls.from_pretrained(family_path(family), **kwargs).eval()


def test_every_registered_family_has_a_tiny_checkpoint():
    built = {AutoConfig.from_pretrained(family_path(f)).architectures[0] for f in FAMILIES}
    assert built == set(supported_architectures())


def test_logits_match_hugging_face(family, model):
    hf = _hf(family, attn_implementation="eager")
    inputs = model.prepare(random_images(2, 28, seed=0), QUESTIONS)
    assert inputs.attention_mask[:, 0].tolist() != [1, 1], "the batch should need padding"
    with torch.no_grad():
        ours = model(inputs)
        ref = hf(input_ids=inputs.input_ids, **inputs.model_kwargs()).logits
        final = model.final_logits(inputs)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-4
    assert final.dtype == torch.float32
    assert (final - ref[:, -1]).abs().max().item() <= 1e-4


def test_token_groups_decode_to_the_template(model, family):
    if family not in EXPECTED_TEXT:
        pytest.fail(f"add the decoded template pieces of {family!r} to EXPECTED_TEXT")
    inputs = model.prepare(random_images(2, 28, seed=0), QUESTIONS)
    prefix, between, after = EXPECTED_TEXT[family]

    def text(row: int, *groups: str) -> str:
        pos = torch.cat([inputs.positions(g, row) for g in groups]).sort().values
        return model.tokenizer.decode(inputs.input_ids[row, pos])

    for row, question in enumerate(QUESTIONS):
        assert text(row, "prefix") == prefix
        assert text(row, "question") == between + question
        assert text(row, "role", "final") == after
        ids = inputs.input_ids[row]
        image = ids[inputs.positions("image", row)]
        assert bool((image == model.image_token_id).all())
        assert int((ids == model.image_token_id).sum()) == image.numel()


def _reference(model, sample, baseline, masks, scope: str, target: int) -> torch.Tensor:
    """Target logits of the hook reference: one hooked forward, one row per mask.

    For scope "text" the engine is an implementation of its own (shared prefix, custom
    attention); for scope "all" it runs these hooks in batches, so there the test
    checks its batching and logit extraction.
    """
    rows = sample[[0] * len(masks)]
    hooks = image_kv_ablation_hooks(model, rows, baseline, masks, scope=scope)
    with torch.no_grad():
        return model.final_logits(rows, hooks)[:, target]


def _engine_case(model, scope: str, attention: str):
    """An engine on one sample, its masks (all kept, all ablated, random) and per-position masks."""
    reference = model.prepare(random_images(3, 28, seed=5), QUESTIONS[0])
    baseline = image_kv_baseline(model, reference)
    sample = model.prepare(random_images(1, 28, seed=1), QUESTIONS[0])
    engine = AblationEngine(model, sample, baseline, scope=scope, attention=attention)
    g = torch.Generator().manual_seed(0)
    shape = (model.n_layers, model.n_heads)
    masks = torch.cat(
        [
            torch.ones(1, *shape, dtype=torch.bool),
            torch.zeros(1, *shape, dtype=torch.bool),
            torch.rand(N_RANDOM_MASKS, *shape, generator=g) > 0.5,
        ]
    )
    per_position = torch.rand(3, *shape, baseline.n_image, generator=g) > 0.5
    return engine, sample, baseline, masks, per_position


# Scope "all" runs the hook reference in batches, so its attention argument changes nothing.
ENGINE_PATHS = [("text", "fused"), ("text", "eager"), ("all", "fused")]


@pytest.mark.parametrize(("scope", "attention"), ENGINE_PATHS)
def test_engine_equals_hook_reference(model, scope, attention):
    engine, sample, baseline, masks, per_position = _engine_case(model, scope, attention)
    got = engine.run(masks, batch_size=8)
    ref = _reference(model, sample, baseline, masks, scope, engine.target)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max() <= 1e-4
    assert abs(float(got[0]) - engine.clean_logit) <= 1e-4  # all kept = clean
    assert (ref - engine.clean_logit).abs().max() > 1e-3  # the masks do something
    got = engine.run(per_position)
    ref = _reference(model, sample, baseline, per_position, scope, engine.target)
    assert (got - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("attention", ["fused", "eager"])
def test_bf16_engine_equals_bf16_hook_reference(family, attention):
    """In bf16 the engine and the hook reference round differently (other kernels, other
    summation orders), so they agree within bf16 noise: a few bf16 steps (2^-7 of the
    octave) of the logits' scale, while the masks move the logit by many more."""
    model = family_model(family, torch.bfloat16)
    engine, sample, baseline, masks, _ = _engine_case(model, "text", attention)
    got = engine.run(masks, batch_size=8)
    ref = _reference(model, sample, baseline, masks, "text", engine.target)
    assert got.dtype == torch.float32
    step = 2.0**-7 * float(ref.abs().max())
    assert (got - ref).abs().max() <= 4 * step
    assert (ref - ref[0]).abs().max() > 16 * step  # the masks do something


# Layer -> [batch, 1, query, key] bool, True = blocked; read by _masked_eager.
_BLOCKED: dict[int, torch.Tensor] = {}


def _masked_eager(module, query, key, value, attention_mask, **kwargs):
    """The family's own eager attention with the pairs of ``_BLOCKED`` masked out."""
    blocked = _BLOCKED.get(module.layer_idx)
    if blocked is not None:
        attention_mask = attention_mask.masked_fill(blocked, torch.finfo(query.dtype).min)
    eager = sys.modules[type(module).__module__].eager_attention_forward
    return eager(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("families_masked_eager", _masked_eager)
# HF builds the additive float mask of eager attention for it too.
AttentionMaskInterface.register("families_masked_eager", eager_mask)


def test_knockout_matches_masked_hugging_face(family, model):
    hf = _hf(family, attn_implementation={"text_config": "families_masked_eager", "": "eager"})
    inputs = model.prepare(random_images(2, 28, seed=3), QUESTIONS)
    keys, queries = inputs.group_mask("image"), inputs.group_mask("final")
    blocked = (queries[:, :, None] & keys[:, None, :])[:, None]
    _BLOCKED.update({1: blocked})
    try:
        with torch.no_grad():
            ref = hf(input_ids=inputs.input_ids, **inputs.model_kwargs()).logits[:, -1]
    finally:
        _BLOCKED.clear()
    with torch.no_grad():
        clean = model(inputs)[:, -1]
        with knockout(model, inputs, ("image", "final"), [1]):
            knocked = model(inputs)[:, -1]
    assert (knocked - ref).abs().max() <= 1e-4
    assert (knocked - clean).abs().max() > 1e-3


def test_head_attribution_runs_end_to_end(model):
    # Random models: with these images at least one sample's answer depends on the
    # image heads (clean above all-ablated) in every family, so the fit runs.
    samples = [(image, QUESTIONS[0]) for image in random_images(3, 28, seed=4)]
    n_components = model.n_layers * model.n_heads
    result = head_attribution(
        model, samples, n_masks=4 * n_components, min_logit_gap=0.0, progress=False
    )
    kept = list(result.sample_ids)
    assert kept, f"every sample was excluded: {result.excluded}"
    assert sorted(kept + [e.sample_id for e in result.excluded]) == [0, 1, 2]
    assert result.coef.shape == (len(kept), model.n_layers, model.n_heads)
    assert result.evaluation is not None
