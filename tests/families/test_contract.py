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
- head attribution runs end to end;
- greedy ``generate`` equals an independently loaded HF model's own ``generate``, on one
  image and on a batch of two (of two sizes where the family takes any size);
- the cache's ``decompose_resid`` and ``logit_attrs`` add up at the final position to the
  last residual and to HF's logits;
- ``tl_lvlm.patching`` equals a hand-written patch through ``run_with_hooks``;
- image-token attribution's logits are the hook reference's (or the family refuses it by
  name);
- head attribution with ``method="gradient"`` runs end to end, and a head's coefficient
  is the mean finite difference of the engine's gated output;
- ``flow_sweep`` equals running ``knockout`` window by window by hand.
- an analysis the family (or its checkpoint's layers) refuses raises ``NotImplementedError``
  naming the family and the reason instead.

``docs/families.md`` cites these tests by id; ``test_docs_families`` checks every citation.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch
from tiny_families import (
    FAMILIES,
    family_model,
    family_path,
    greedy_image_attribution,
    sized_images,
)
from transformers import AttentionInterface, AutoConfig
from transformers.masking_utils import AttentionMaskInterface, eager_mask

import tl_lvlm.patching
from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline, resolve_baseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.ablation.normalization import LogitNormalization
from tl_lvlm.analysis.heads import head_attribution
from tl_lvlm.analysis.image_tokens import image_token_attribution
from tl_lvlm.families import family_of, supported_architectures
from tl_lvlm.flow import flow_sweep, knockout
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
    "internvl": (
        "<|im_start|>user\n<img>",
        "</img>\n",
        "<|im_end|>\n<|im_start|>assistant\n",
    ),
    "gemma4": ("<s><|turn>user\n<|image>", "<image|>", "<turn|>\n<|turn>model\n"),
    "qwen3_vl": (
        "<|im_start|>user\n<|vision_start|>",
        "<|vision_end|>",
        "<|im_end|>\n<|im_start|>assistant\n",
    ),
    "qwen3_vl_moe": (
        "<|im_start|>user\n<|vision_start|>",
        "<|vision_end|>",
        "<|im_end|>\n<|im_start|>assistant\n",
    ),
    # The markers between the tiles are in no group (families/idefics3.py).
    "idefics3": (
        "<s>User:<fake_token_around_image><row_1_col_1>",
        "<fake_token_around_image>",
        "<end_of_utterance>\nAssistant:",
    ),
    "smolvlm": (
        "<|im_start|>User:<fake_token_around_image><row_1_col_1>",
        "<fake_token_around_image>",
        "<end_of_utterance>\nAssistant:",
    ),
    # The [IMG_BREAK]s between the rows are in no group (families/mistral3.py).
    "mistral3": (
        "<s>[SYSTEM_PROMPT]You are a helpful assistant.[/SYSTEM_PROMPT][INST]",
        "[IMG_END]",
        "[/INST]",
    ),
    "qwen2_vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|>",
        "<|vision_end|>",
        "<|im_end|>\n<|im_start|>assistant\n",
    ),
    "qwen3_5": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|>",
        "<|vision_end|>",
        "<|im_end|>\n<|im_start|>assistant\n",
    ),
}
EXPECTED_TEXT["internvl3_5"] = EXPECTED_TEXT["internvl"]  # the same template, a Qwen3 decoder

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


def _refused(model, analysis: str) -> bool:
    """Whether the model refuses ``analysis``; then ``require`` says so, naming the family."""
    if model.family.supports(analysis):
        return False
    with pytest.raises(NotImplementedError, match=f"{model.family.name} does not support"):
        model.family.require(analysis)
    return True


def _ablation_refused(model) -> bool:
    """Whether the model refuses image-K/V ablation, which its baselines then say."""
    if not _refused(model, "ablation"):
        return False
    with pytest.raises(NotImplementedError, match="does not support ablation"):
        image_kv_baseline(model, model.prepare(random_images(3, 28, seed=5), QUESTIONS[0]))
    return True


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
    if _ablation_refused(model):
        return
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
    if _ablation_refused(model):
        return
    engine, sample, baseline, masks, _ = _engine_case(model, "text", attention)
    got = engine.run(masks, batch_size=8)
    ref = _reference(model, sample, baseline, masks, "text", engine.target)
    assert got.dtype == torch.float32
    step = 2.0**-7 * float(ref.abs().max())
    assert (got - ref).abs().max() <= 4 * step
    assert (ref - ref[0]).abs().max() > 8 * step  # the masks move it twice the tolerance


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
    if _refused(model, "knockout"):
        inputs = model.prepare(random_images(1, 28, seed=3), QUESTIONS[0])
        with pytest.raises(NotImplementedError, match="does not support knockout"):
            with knockout(model, inputs, ("image", "final"), [1]):
                pass
        return
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
    if _refused(model, "ablation"):
        with pytest.raises(NotImplementedError, match="does not support ablation"):
            head_attribution(model, samples, n_masks=4 * n_components, progress=False)
        return
    result = head_attribution(
        model, samples, n_masks=4 * n_components, min_logit_gap=0.0, progress=False
    )
    kept = list(result.sample_ids)
    assert kept, f"every sample was excluded: {result.excluded}"
    assert sorted(kept + [e.sample_id for e in result.excluded]) == [0, 1, 2]
    assert result.coef.shape == (len(kept), model.n_layers, model.n_heads)
    assert result.evaluation is not None


def _until_eos(row: torch.Tensor, eos: int) -> list[int]:
    """Token ids up to and including the first end-of-sequence token (after it the two
    loops pad differently)."""
    ids = row.tolist()
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def test_generate_equals_hugging_face_greedy(family, model):
    hf = _hf(family, attn_implementation="eager")
    if model.family.fixed_resolution:
        pair = random_images(2, model.image_size, seed=7)
    else:  # two sizes: two image-token counts, so the rows' image spans differ
        pair = sized_images((28, 28), (16, 40), seed=7)
    batches = [
        model.prepare(random_images(1, 28, seed=6), QUESTIONS[0]),
        model.prepare(pair, QUESTIONS),
    ]
    eos = model.tokenizer.eos_token_id
    for inputs in batches:
        ours = model.generate(inputs, max_new_tokens=4, return_type="tokens")
        with torch.no_grad():
            ref = hf.generate(
                inputs.input_ids, **inputs.model_kwargs(), do_sample=False, max_new_tokens=4
            )[:, inputs.seq_len :]
        assert ours.shape[0] == inputs.batch_size
        for row in range(inputs.batch_size):
            assert _until_eos(ours[row], eos) == _until_eos(ref[row], eos), row
    if not model.family.fixed_resolution:
        n_image = [batches[1].positions("image", row).numel() for row in (0, 1)]
        assert n_image[0] != n_image[1], "the two sizes should give two image-token counts"
    with pytest.raises(ValueError, match="generate needs use_past_kv_cache=True"):
        model.generate(batches[0], max_new_tokens=2, use_past_kv_cache=False)


def test_cache_decomposition_adds_up_at_the_final_position(family, model):
    if model.family.non_softmax_layers():
        # TransformerLens's bridge maps a hybrid decoder's linear-attention layers to no
        # attention component, so its decompose_resid has no hook_attn_out there.
        pytest.skip(f"{model.family.name}: decompose_resid does not cover linear-attention layers")
    hf = _hf(family, attn_implementation="eager")
    inputs = model.prepare(random_images(2, 28, seed=0), QUESTIONS)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs)
        final = hf(input_ids=inputs.input_ids, **inputs.model_kwargs()).logits[:, -1]
    parts, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)
    # Besides the embedding and each block's attention and MLP: what a family adds to the
    # residual stream between blocks (Qwen3-VL's DeepStack).
    extra = sum(len(model.family.residual_inputs(layer)) for layer in range(model.n_layers))
    assert labels[0] == "embed" and len(labels) == 1 + 2 * model.n_layers + extra
    last = cache[f"blocks.{model.n_layers - 1}.hook_resid_post"][:, -1]
    assert (parts.sum(0) - last).abs().max() <= 1e-4
    rows = torch.arange(inputs.batch_size)
    answer, other = final.topk(2).indices.T
    # logit_attrs applies the final norm's scale (tokens_to_residual_directions folds its
    # weight in); HF's logits are the independent reference. A final soft cap (Gemma 4) is
    # not linear in the residual: the attributions add up to the logit before it.
    cap = getattr(model.family.decoder_config, "final_logit_softcapping", None)
    if cap is not None:
        final = cap * torch.atanh(final / cap)
    attrs = cache.logit_attrs(parts, tokens=answer, pos_slice=-1)
    assert attrs.shape == (len(labels), inputs.batch_size)
    assert (attrs.sum(0) - final[rows, answer]).abs().max() <= 1e-4
    diff = cache.logit_attrs(parts, tokens=answer, incorrect_tokens=other, pos_slice=-1)
    expected = final[rows, answer] - final[rows, other]
    assert (expected.abs() > 1e-4).all(), "a vacuous logit difference"
    assert (diff.sum(0) - expected).abs().max() <= 1e-4


def test_activation_patching_equals_a_hand_written_patch(model):
    clean, corrupted = (model.prepare(i, QUESTIONS[0]) for i in random_images(2, 28, seed=8))
    assert torch.equal(clean.input_ids, corrupted.input_ids)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        answer = int(model.final_logits(clean).argmax())
        corrupted_metric = float(model(corrupted)[0, -1, answer])

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, -1, answer]

    effect = tl_lvlm.patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    assert effect.shape == (model.n_layers, corrupted.seq_len)
    first_image = int(corrupted.positions("image", 0)[0])
    for layer, pos in [(0, first_image), (model.n_layers - 1, corrupted.seq_len - 1)]:
        name = f"blocks.{layer}.hook_resid_pre"

        def patch(resid, hook, pos=pos, name=name):
            resid = resid.clone()
            resid[:, pos] = clean_cache[name][:, pos]
            return resid

        with torch.no_grad():
            by_hand = float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])))
        assert abs(float(effect[layer, pos]) - by_hand) <= 1e-4, (layer, pos)
    assert (effect - corrupted_metric).abs().max() > 1e-3, "no patch changes the metric"


def test_image_token_attribution_or_its_refusal(model):
    sample = model.prepare(random_images(1, 28, seed=2), QUESTIONS[1])
    if not (model.family.supports("image_attribution") and model.family.supports("ablation")):
        with pytest.raises(NotImplementedError, match=re.escape(model.family.name)):
            image_token_attribution(model, sample, baseline="zero", n_masks=20, progress=False)
        return
    n_image = sample.positions("image", 0).numel()
    result = greedy_image_attribution(model, sample, n_masks=n_image + 8)
    geometry = model.family.patch_geometry(model.processor, sample)
    assert result.geometry == geometry
    assert result.coef.shape == (geometry.rows, geometry.cols)
    assert result.masks.shape == (n_image + 8, n_image)
    # The logits behind y are the hook reference's: one position mask for every head.
    keep = torch.from_numpy(result.masks[:4])
    every = torch.ones(1, n_image, dtype=torch.bool)
    keep = torch.cat([keep, every, ~every])  # the masks, all kept, all ablated
    per_head = keep[:, None, None].expand(-1, model.n_layers, model.n_heads, -1)
    baseline = resolve_baseline(model, "zero", None, sample)
    ref = _reference(model, sample, baseline, per_head, "text", result.target).double()
    assert abs(result.clean_logit - float(ref[-2])) <= 1e-4
    assert abs(result.ablated_logit - float(ref[-1])) <= 1e-4
    gap = result.clean_logit - result.ablated_logit
    logits = result.y[:4] * gap + result.ablated_logit
    assert np.abs(logits - ref[:4].numpy()).max() <= 1e-4
    assert abs(gap) > 1e-3, "ablating the image does not move the target"


def test_gradient_head_attribution_equals_finite_differences(model):
    samples = [(image, QUESTIONS[0]) for image in random_images(3, 28, seed=4)]
    n_masks = 8
    if _refused(model, "engine"):
        with pytest.raises(NotImplementedError, match="method='gradient' needs the ablation"):
            head_attribution(model, samples, method="gradient", progress=False)
        return
    result = head_attribution(
        model, samples, method="gradient", n_gradient_masks=n_masks, baseline="zero",
        min_logit_gap=0.0, progress=False,
    )  # fmt: skip
    kept = list(result.sample_ids)
    assert kept, f"every sample was excluded: {result.excluded}"
    assert sorted(kept + [e.sample_id for e in result.excluded]) == [0, 1, 2]
    assert result.coef.shape == (len(kept), model.n_layers, model.n_heads)
    assert result.config["method"] == "gradient" and result.y.shape == (len(kept), n_masks)
    assert result.evaluation is not None

    # The first kept sample's largest coefficient, against the engine's gated output
    # g -> y moved along that head's gate into the cube (gates must stay in [0, 1]).
    sample = model.prepare(samples[kept[0]][0], QUESTIONS[0])
    baseline = resolve_baseline(model, "zero", None, sample)
    engine = AblationEngine(model, sample, baseline, target=int(result.targets[0]))
    layer, head = np.unravel_index(np.abs(result.coef[0]).argmax(), result.coef.shape[1:])
    assert abs(result.coef[0, layer, head]) > 1e-3, "no head moves the answer"
    # Raw logits (gap 1) so that the differences are not amplified by a small gap.
    raw = LogitNormalization(1.0, 0.0)
    gates = torch.from_numpy(result.masks).float()
    inward = torch.where(gates[:, layer, head] > 0.5, -1.0, 1.0)
    h = 0.01
    offsets = torch.tensor([0, h / 2, h, 2 * h])
    shifted = gates[None].repeat(len(offsets), 1, 1, 1)
    shifted[:, :, layer, head] += offsets[:, None] * inward
    y, grads = engine.gate_gradients(shifted.reshape(-1, *gates.shape[1:]), normalization=raw)
    y = y.double().reshape(len(offsets), n_masks)

    def one_sided(y0, y1, y2, step):  # second order: error c * step**2
        return (-3 * y0 + 4 * y1 - y2) / (2 * step)

    # Richardson-extrapolated over steps h and h/2 (error O(h^3)): the tiny models' gates
    # curve enough for the O(h^2) error alone to reach 1 %. A mixture of experts routes by
    # top-k, so y has kinks; a mask whose two step sizes disagree by 2 % crossed one and has
    # no derivative to check there (at most a quarter of them may).
    coarse, fine = one_sided(*y[[0, 2, 3]], h), one_sided(y[0], y[1], y[2], h / 2)
    fd = inward.double() * (4 * fine - coarse) / 3
    grad = grads[:n_masks, layer, head].double()
    scale = max(1.0, float(fd.abs().max()))
    # The two step sizes' disagreement bounds the differences' own error.
    disagree = (coarse - fine).abs()
    smooth = disagree <= 0.02 * scale
    assert int(smooth.sum()) >= n_masks - n_masks // 4, f"y is not smooth in the gates: {smooth}"
    assert ((grad - fd).abs() - disagree)[smooth].max() <= 2e-3 * scale
    gap = float(result.clean_logit[0] - result.ablated_logit[0])
    np.testing.assert_allclose(result.y[0] * gap + result.ablated_logit[0], y[0], atol=1e-4)
    # The coefficient is the mean gate gradient over the masks (checked against the
    # differences above where they exist).
    assert abs(float(result.coef[0, layer, head]) * gap - float(grad.mean())) <= 1e-4 * scale


def test_flow_sweep_equals_knockout_window_by_window(model):
    samples = model.prepare(random_images(2, 28, seed=3), QUESTIONS)
    name, edges = "image -> final", [("image", "final")]
    if _refused(model, "knockout"):
        with pytest.raises(NotImplementedError, match="does not support knockout"):
            flow_sweep(model, samples, {name: edges}, window=1, progress=False)
        return
    sweep = flow_sweep(model, samples, {name: edges}, window=1, batch_size=1, progress=False)
    assert sweep.starts == list(range(model.n_layers))
    rows = torch.arange(samples.batch_size)
    with torch.no_grad():
        clean = model(samples)[:, -1]
    targets = clean.argmax(-1)
    assert sweep.targets.tolist() == targets.tolist()
    assert np.abs(sweep.clean - clean[rows, targets].numpy()).max() <= 1e-4
    for i, start in enumerate(sweep.starts):
        with torch.no_grad(), knockout(model, samples, edges, range(start, start + 1)):
            knocked = model(samples)[:, -1]
        assert np.abs(sweep.knocked[name][i] - knocked[rows, targets].numpy()).max() <= 1e-4
    assert np.abs(sweep.knocked[name] - sweep.clean).max() > 1e-3, "the knockout does nothing"
