"""Every supported family against Hugging Face and against tl-lvlm's own references.

For each tiny family checkpoint (LLaVA-NeXT, Gemma 3, ...), loaded with
``HookedLVLM.from_pretrained``:

- logits equal those of the HF model loaded separately (<= 1e-4, fp32);
- token groups decode to the template's pieces;
- the AblationEngine equals the hook reference on random per-head and per-position masks;
- attention knockout equals HF's own attention with the blocked pairs masked;
- head attribution runs end to end.
"""

from __future__ import annotations

import sys

import pytest
import torch
import transformers
from tiny_families import FAMILIES, family_model, family_path
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline
from tl_lvlm.engine import AblationEngine
from tl_lvlm.flow import knockout
from tl_lvlm.head_attribution import head_attribution
from tl_lvlm.testing import random_images

QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]

#: Family -> decoded (prefix, text between image and question, text after the question).
EXPECTED_TEXT = {
    "gemma3": (
        "<s><start_of_turn>user\n\n\n<start_of_image>",
        "<end_of_image>\n\n",
        "<end_of_turn>\n<start_of_turn>model\n",
    ),
    "llava_next": ("<s>[INST] ", "\n", " [/INST]"),
}


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def model(family):
    return family_model(family)


def _hf(family, model, **kwargs):
    cls = getattr(transformers, model.family.architecture)
    return cls.from_pretrained(family_path(family), **kwargs).eval()


def test_logits_match_hugging_face(family, model):
    hf = _hf(family, model, attn_implementation="eager")
    inputs = model.prepare(random_images(2, 28, seed=0), QUESTIONS)
    assert inputs.attention_mask[:, 0].tolist() != [1, 1], "the batch should need padding"
    with torch.no_grad():
        ours = model(inputs)
        ref = hf(input_ids=inputs.input_ids, **inputs.model_kwargs()).logits
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-4


def test_token_groups_decode_to_the_template(model, family):
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


def test_engine_equals_hook_reference(model):
    reference = model.prepare(random_images(3, 28, seed=5), QUESTIONS[0])
    baseline = image_kv_baseline(model, reference)
    sample = model.prepare(random_images(1, 28, seed=1), QUESTIONS[0])
    engine = AblationEngine(model, sample, baseline)
    g = torch.Generator().manual_seed(0)
    per_head = torch.rand(5, model.n_layers, model.n_heads, generator=g) > 0.5
    per_head[0] = True
    per_position = torch.rand(3, model.n_layers, model.n_heads, baseline.n_image, generator=g)
    for masks in (per_head, per_position > 0.5):
        rows = sample[[0] * masks.shape[0]]
        hooks = image_kv_ablation_hooks(model, rows, baseline, masks)
        with torch.no_grad():
            ref = model.run_with_hooks(rows, fwd_hooks=hooks)[:, -1, engine.target]
        got = engine.run(masks)
        assert (got - ref).abs().max() <= 1e-4
        assert (ref - engine.clean_logit).abs().max() > 1e-3  # the masks do something
    assert abs(float(got[0]) - engine.clean_logit) <= 1e-4 or masks is not per_head


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
    hf = _hf(
        family,
        model,
        attn_implementation={"text_config": "families_masked_eager", "": "eager"},
    )
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
