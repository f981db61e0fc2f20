"""Gemma 4 specifics: the processor without torchvision, images of any size, the attention
hooks of TransformerLens 4.3, generate, the residual decomposition (per-layer inputs),
gradient attribution, geometry, and the checkpoint variants (K/V shared across layers, keys
as values, per-layer head dims, bidirectional image attention), run or refused with reasons.

The engine, knockout and ablation checks on the variants are the contract test's
(``test_contract._reference`` and its masked-eager attention, imported from there)."""

from __future__ import annotations

import functools
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_contract import _BLOCKED, _reference
from tiny_families import (
    check_own_keys_reproduce_the_clean_run,
    family_model,
    family_path,
    greedy_image_attribution,
    sized_images,
)
from transformers import Gemma4ForConditionalGeneration

from tl_lvlm import HookedLVLM
from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.analysis.heads import head_attribution
from tl_lvlm.families import Gemma4Family, PatchGeometry
from tl_lvlm.families.processors import torchvision_available
from tl_lvlm.flow import knockout
from tl_lvlm.testing import GEMMA4_PATCH, GEMMA4_POOL, build_tiny_gemma4, random_images
from tl_lvlm.testing._tiny import TinyFamilyConfig
from tl_lvlm.zoo.tiny_llava import save_atomic

QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]
# Removed when the interpreter exits.
_ROOT = tempfile.TemporaryDirectory(prefix="tl-lvlm-gemma4-")


@pytest.fixture
def model():
    return family_model("gemma4")


#: Tiny checkpoints with one variant of the public ones switched on (build_tiny_gemma4).
VARIANTS = {
    "ple": dict(per_layer_inputs=True),
    # As on E2B / E4B, KV sharing comes with per-layer inputs (HF's Gemma 4 needs both).
    "kv_shared": dict(kv_shared_layers=1, per_layer_inputs=True, cfg=TinyFamilyConfig(n_layers=3)),
    "global_head_dim": dict(global_head_dim=32),
    "k_eq_v": dict(keys_as_values=True),
    "bidirectional": dict(bidirectional_vision=True),
}


@functools.cache
def variant(name: str) -> str:
    """The path of the saved tiny checkpoint of variant ``name``."""
    return str(save_atomic(Path(_ROOT.name) / name, *build_tiny_gemma4(**VARIANTS[name])))


@functools.cache
def variant_model(name: str) -> HookedLVLM:
    return HookedLVLM.from_pretrained(variant(name), device="cpu")


def _texts(model, questions):
    return [
        model.template.replace("{question}", q).replace("<image>", model.family.image_prompt)
        for q in questions
    ]


def _hf(path: str) -> Gemma4ForConditionalGeneration:
    return Gemma4ForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()


def _processed(model, images, questions):
    """The processor's own outputs for the prompts (what a user hands HF)."""
    return model.processor(
        images=[[i] for i in images], text=_texts(model, questions), return_tensors="pt"
    )


@pytest.mark.skipif(torchvision_available(), reason="the standard processor is used")
def test_processor_without_torchvision_is_its_image_processor_and_tokenizer(model):
    """Its outputs equal the PIL image processor's and the tokenizer's with the image token
    expanded to BOI, one soft token per pooled 3 x 3 block, EOI."""
    processor = model.processor
    assert type(processor.image_processor).__name__ == "Gemma4ImageProcessorPil"
    assert not hasattr(processor, "video_processor")
    assert not hasattr(processor, "feature_extractor")
    images = sized_images((28, 28), (28, 44))
    enc = _processed(model, images, QUESTIONS)
    pixels = processor.image_processor(images=images, return_tensors="pt")
    assert torch.equal(enc["pixel_values"], pixels["pixel_values"])
    assert torch.equal(enc["image_position_ids"], pixels["image_position_ids"])
    counts = pixels["num_soft_tokens_per_image"]
    assert list(counts) == [64, 60]
    expanded = [
        text.replace("<|image|>", "<|image>" + "<|image|>" * int(n) + "<image|>")
        for text, n in zip(_texts(model, QUESTIONS), counts, strict=True)
    ]
    tokens = model.tokenizer(expanded, return_tensors="pt", padding=True)
    assert torch.equal(enc["input_ids"], tokens["input_ids"])
    # Saved as the standard class, so AutoProcessor loads it where torchvision is installed.
    config = json.loads((Path(family_path("gemma4")) / "processor_config.json").read_text())
    assert config["processor_class"] == "Gemma4Processor"


def test_logits_match_hugging_face_with_images_of_two_sizes(model):
    """Rows with 64 and 60 image tokens; HF gets only the processor's outputs."""
    images = sized_images((28, 28), (28, 44), seed=1)
    inputs = model.prepare(images, QUESTIONS)
    assert [inputs.positions("image", r).numel() for r in range(2)] == [64, 60]
    enc = _processed(model, images, QUESTIONS)
    with torch.no_grad():
        ref = _hf(family_path("gemma4"))(**enc).logits
        ours = model(inputs)
        row = model(inputs[1])
    assert (ours - ref).abs().max().item() <= 1e-4
    assert (row[0] - ref[1]).abs().max().item() <= 1e-4
    # The final logits are soft-capped as HF caps them.
    cap = model.family.decoder_config.final_logit_softcapping
    assert ref.abs().max() < cap
    assert (model.final_logits(inputs) - ref[:, -1]).abs().max().item() <= 1e-4


ATTENTION_HOOKS = [
    "hook_q",
    "hook_k",
    "hook_v",
    "hook_z",
    "hook_attn_scores",
    "hook_pattern",
    "q_norm.hook_out",
    "k_norm.hook_out",
    "v_norm.hook_out",
]


def test_attention_hooks_exist_fire_and_hold_hugging_faces_tensors(model):
    """TransformerLens 4.3 exposes Gemma 4's attention hooks and they fire; the pattern is HF's
    attention weights, and the norms' outputs are the q/k/v the recomputed reference reads."""
    names = [f"blocks.{i}.attn.{n}" for i in range(model.n_layers) for n in ATTENTION_HOOKS]
    assert set(names) <= set(model.hook_dict)
    images = sized_images((28, 28))
    inputs = model.prepare(images, QUESTIONS[:1])
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=names)
        ref = _hf(family_path("gemma4"))(
            **_processed(model, images, QUESTIONS[:1]), output_attentions=True
        )
    assert set(names) <= set(cache.keys())
    # The rotary hooks are listed but never fire: RoPE runs inside HF's native attention.
    rotary = {f"blocks.{i}.attn.hook_rot_{n}" for i in range(model.n_layers) for n in "qk"}
    assert rotary <= set(model.hook_dict) and not rotary & set(cache.keys())
    n = inputs.seq_len
    for layer in range(model.n_layers):
        prefix = f"blocks.{layer}.attn"
        pattern = cache[f"{prefix}.hook_pattern"]
        assert pattern.shape == (1, model.n_heads, n, n)
        assert (pattern - ref.attentions[layer]).abs().max() <= 1e-5
        # No pre-softmax tensor exists in Gemma 4's native attention: both hooks are the weights.
        assert torch.equal(cache[f"{prefix}.hook_attn_scores"], pattern)
        for name in ("q", "k", "v"):
            normed = cache[f"{prefix}.{name}_norm.hook_out"]
            assert normed.shape[:2] == (1, n) and normed.shape[-1] == model.d_head
        # q/k/v norms are RMS norms per head: v's has no scale, so its rows have unit RMS.
        v = cache[f"{prefix}.v_norm.hook_out"]
        assert torch.allclose(v.pow(2).mean(-1), torch.ones(()), atol=1e-4)


def test_bridge_is_booted_with_the_final_norm_bridge_only_while_loading(model):
    """The adapter subclass changes the final norm's mapping only (for hook_scale); the
    factory's registry entry is TransformerLens's own again after the boot."""
    from transformer_lens.factories.architecture_adapter_factory import (
        ArchitectureAdapterFactory,
    )
    from transformer_lens.model_bridge.generalized_components import RMSNormalizationBridge
    from transformer_lens.model_bridge.supported_architectures.gemma4 import (
        Gemma4ArchitectureAdapter,
    )

    adapter = model.bridge.adapter
    assert isinstance(adapter, Gemma4ArchitectureAdapter)
    assert isinstance(adapter.component_mapping["ln_final"], RMSNormalizationBridge)
    assert "ln_final.hook_scale" in model.hook_dict
    registered = ArchitectureAdapterFactory._adapters["Gemma4ForConditionalGeneration"]
    assert registered is Gemma4ArchitectureAdapter


def test_score_edits_are_discarded_so_the_reference_recomputes_attention(model):
    """Why the family recomputes attention: the bridge keeps Gemma 4's attention native."""
    assert model.family.attention_edits == "recompute"
    inputs = model.prepare(random_images(1, 28, seed=0), QUESTIONS[0])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean = model(inputs)
        edited = model.run_with_hooks(
            inputs, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda t, hook: t * 0)]
        )
    assert torch.equal(edited, clean)


@pytest.mark.parametrize("scope", ["text", "all"])
def test_own_keys_as_baseline_reproduce_the_clean_run(model, scope):
    """Every head ablated with the sample's own normalized K/V changes nothing: the baseline
    keys are rotated with each layer type's RoPE, in the reference and in the engine."""
    check_own_keys_reproduce_the_clean_run(
        model, model.prepare(sized_images((28, 44)), QUESTIONS[1]), scope
    )


def test_sliding_and_full_layers_rotate_differently(model):
    """Sliding layers use the default RoPE, full ones proportional partial RoPE: one
    (cos, sin) per layer type, as HF's rotary embedding gives for that type."""
    assert model.family.decoder_config.layer_types == ["sliding_attention", "full_attention"]
    x = torch.zeros(())
    positions = torch.arange(10)[None]
    (cos0, sin0), (cos1, sin1) = model.family.rotations(x, positions)
    assert not torch.allclose(cos0, cos1)
    rotary = model.family.decoder.rotary_emb
    rotary = getattr(rotary, "original_component", rotary)
    assert torch.equal(cos1, rotary(x, positions, "full_attention")[0])


@pytest.mark.parametrize("shapes", [[(28, 28)], [(28, 28), (28, 44)]], ids=["single", "two_sizes"])
def test_generate_equals_hugging_face_generate(model, shapes):
    images = sized_images(*shapes, seed=2)
    questions = QUESTIONS[: len(images)]
    inputs = model.prepare(images, questions)
    enc = _processed(model, images, questions)
    with torch.no_grad():
        ours = model.generate(inputs, max_new_tokens=3, return_type="tokens")
        ref = _hf(family_path("gemma4")).generate(**enc, max_new_tokens=3, do_sample=False)
    assert torch.equal(ours, ref[:, enc["input_ids"].shape[1] :])


def _final_logit_parts(model, inputs):
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs)
    parts = cache.decompose_resid(pos_slice=-1)  # [n_parts, batch, d_model]
    final = model.final_logits(inputs)
    answer = final.argmax(-1)
    attrs = cache.logit_attrs(parts, tokens=answer, pos_slice=-1)
    return cache, attrs, final[torch.arange(inputs.batch_size), answer]


def test_logit_attrs_add_up_to_the_final_logit_before_its_soft_cap(model):
    """decompose_resid sums to the residual stream, and logit_attrs (the final norm's scale
    applied, its weight folded in) to the final logit before Gemma 4's soft cap:
    ``cap * atanh(logit / cap)``; the cap itself is not linear, so no split adds up to it."""
    inputs = model.prepare(sized_images((28, 28), (28, 44), seed=1), QUESTIONS)
    cache, attrs, logit = _final_logit_parts(model, inputs)
    parts = cache.decompose_resid()
    last = cache[f"blocks.{model.n_layers - 1}.hook_resid_post"]
    assert (parts.sum(0) - last)[inputs.attention_mask.bool()].abs().max() <= 1e-4
    cap = model.family.decoder_config.final_logit_softcapping
    uncapped = cap * torch.atanh(logit / cap)
    assert (attrs.sum(0) - uncapped).abs().max() <= 1e-4
    assert (uncapped - logit).abs().min() > 1e-3  # the cap is visible on this model


def test_per_layer_inputs_are_outside_decompose_resid():
    """Per-Layer Embeddings (E2B / E4B) add each block's per-layer input to the residual after
    its MLP, outside hook_attn_out / hook_mlp_out: decompose_resid misses exactly
    ``post_per_layer_input_norm.hook_out`` of every layer (with layer_scalar 1); a
    layer_scalar other than 1 scales the whole residual and no additive split holds."""
    model = variant_model("ple")
    inputs = model.prepare(sized_images((28, 28)), QUESTIONS[:1])
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs)
    parts = cache.decompose_resid()
    last = cache[f"blocks.{model.n_layers - 1}.hook_resid_post"]
    per_layer = sum(
        cache[f"blocks.{i}.post_per_layer_input_norm.hook_out"] for i in range(model.n_layers)
    )
    assert (parts.sum(0) - last).abs().max() > 1e-2
    assert (parts.sum(0) + per_layer - last).abs().max() <= 1e-4
    scalars = [float(b.layer_scalar) for b in model.hf_model.model.language_model.layers]
    assert scalars == [1.0] * model.n_layers  # the tiny model's; checkpoints load theirs


def test_gradient_head_attribution_runs(model):
    samples = [(image, QUESTIONS[0]) for image in random_images(3, 28, seed=4)]
    result = head_attribution(
        model,
        samples,
        method="gradient",
        n_gradient_masks=8,
        min_logit_gap=0.0,
        progress=False,
    )
    kept = list(result.sample_ids)
    assert kept, f"every sample was excluded: {result.excluded}"
    assert result.coef.shape == (len(kept), model.n_layers, model.n_heads)
    assert np.isfinite(result.coef).all() and np.abs(result.coef).max() > 0


def test_patch_geometry_is_the_pooled_grid_of_the_resized_image(model):
    sample = model.prepare(sized_images((28, 44)), QUESTIONS[0])
    geometry = model.family.patch_geometry(model.processor, sample)
    # 28 x 44 resized (aspect kept, <= 630 patches, sides multiples of 6): 36 x 60 pixels,
    # 18 x 30 patches of 2, pooled 3 x 3 to 6 x 10 image tokens.
    side = GEMMA4_PATCH * GEMMA4_POOL
    assert (geometry.rows, geometry.cols) == (36 // side, 60 // side)
    assert geometry.crop == "stretch"
    assert geometry.n_tokens == sample.positions("image", 0).numel() == 60


def test_image_token_attribution_maps_the_pooled_grid(model):
    sample = model.prepare(sized_images((28, 44), seed=3), QUESTIONS[1])
    result = greedy_image_attribution(model, sample, n_masks=120)
    assert result.coef.shape == (6, 10)
    assert result.geometry == PatchGeometry(6, 10, "stretch")
    # The grid covers the whole image: an object on its left half is the first 5 columns.
    mask = np.zeros((28, 44), bool)
    mask[:, :22] = True
    mass = result.object_mass(mask)
    assert (mass.n_object, mass.n_background) == (30, 30)


def test_default_image_size_is_a_square_of_16_by_16_pooled_patches(model):
    assert model.image_size == 16 * GEMMA4_POOL * GEMMA4_PATCH
    sample = model.prepare(random_images(1, model.image_size, seed=0), QUESTIONS[0])
    grid = model.family.patch_geometry(model.processor, sample)
    assert grid.rows == grid.cols  # shrunk to the processor's token budget, still square


def _engine_equals_reference(model, scope: str) -> None:
    """The contract's check (engine = hook reference on random and extreme masks)."""
    reference = model.prepare(random_images(3, 28, seed=5), QUESTIONS[0])
    baseline = image_kv_baseline(model, reference)
    sample = model.prepare(random_images(1, 28, seed=1), QUESTIONS[0])
    engine = AblationEngine(model, sample, baseline, scope=scope)
    g = torch.Generator().manual_seed(0)
    shape = (model.n_layers, model.n_heads)
    masks = torch.cat(
        [
            torch.ones(1, *shape, dtype=torch.bool),
            torch.zeros(1, *shape, dtype=torch.bool),
            torch.rand(16, *shape, generator=g) > 0.5,
        ]
    )
    got = engine.run(masks, batch_size=8)
    ref = _reference(model, sample, baseline, masks, scope, engine.target)
    assert (got - ref).abs().max() <= 1e-4
    assert (ref - engine.clean_logit).abs().max() > 1e-3


def _knockout_matches_masked_hf(model, path: str, layers: list[int]) -> None:
    """The contract's knockout check at ``layers``: HF's eager attention with the pairs masked."""
    hf = Gemma4ForConditionalGeneration.from_pretrained(
        path, attn_implementation={"text_config": "families_masked_eager", "": "eager"}
    ).eval()
    images = sized_images((28, 28), (28, 44), seed=3)
    inputs = model.prepare(images, QUESTIONS)
    keys, queries = inputs.group_mask("image"), inputs.group_mask("final")
    _BLOCKED.update({layer: (queries[:, :, None] & keys[:, None, :])[:, None] for layer in layers})
    try:
        with torch.no_grad():
            ref = hf(**_processed(model, images, QUESTIONS)).logits[:, -1]
    finally:
        _BLOCKED.clear()
    with torch.no_grad():
        clean = model(inputs)[:, -1]
        with knockout(model, inputs, ("image", "final"), layers):
            knocked = model(inputs)[:, -1]
    assert (knocked - ref).abs().max() <= 1e-4
    assert (knocked - clean).abs().max() > 1e-3


@pytest.mark.parametrize("scope", ["text", "all"])
def test_kv_shared_layers_engine_equals_hook_reference(scope):
    """E2B / E4B-style: layer 2 reuses layer 1's K/V (and per-layer inputs are on)."""
    model = variant_model("kv_shared")
    assert [model.family.kv_source(i) for i in range(3)] == [0, 1, 1]
    _engine_equals_reference(model, scope)


def test_kv_shared_layers_knockout_matches_masked_hugging_face():
    _knockout_matches_masked_hf(variant_model("kv_shared"), variant("kv_shared"), [1, 2])


def _hf_with_image_kv(path: str, layers: dict[int, tuple]):
    """HF's Gemma 4 whose attention at ``layers`` sees ``(k, v)`` (post-RoPE) at the image
    columns for every query: the baseline inserted into HF itself."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.models.gemma4 import modeling_gemma4

    def attention(module, query, key, value, attention_mask, **kwargs):
        if module.layer_idx in layers:
            image, k, v = layers[module.layer_idx]
            key, value = key.clone(), value.clone()
            key[:, :, image], value[:, :, image] = k, v
        return modeling_gemma4.eager_attention_forward(
            module, query, key, value, attention_mask, **kwargs
        )

    AttentionInterface.register("gemma4_image_kv", attention)
    AttentionMaskInterface.register("gemma4_image_kv", eager_mask)  # eager's additive mask
    return Gemma4ForConditionalGeneration.from_pretrained(
        path, attn_implementation={"text_config": "gemma4_image_kv", "": "eager"}
    ).eval()


@pytest.mark.parametrize("ablated", [1, 2], ids=["source_layer", "sharing_layer"])
def test_kv_shared_ablation_is_per_layer_and_equals_hugging_face_with_the_baseline(ablated):
    """Ablating every head of one layer (scope "all") = HF with that layer's attention reading
    the baseline at the image columns. The K/V themselves are not replaced: ablating layer 1
    leaves layer 2, which reuses layer 1's K/V, clean; layer 2's baseline is the mean of the
    K/V it reads (layer 1's)."""
    model = variant_model("kv_shared")
    reference = model.prepare(random_images(3, 28, seed=5), QUESTIONS[0])
    baseline = image_kv_baseline(model, reference)
    assert torch.equal(baseline.k[2], baseline.k[1]) and torch.equal(baseline.v[2], baseline.v[1])
    images = sized_images((28, 28), seed=6)
    sample = model.prepare(images, QUESTIONS[0])
    keep = torch.ones(1, model.n_layers, model.n_heads, dtype=torch.bool)
    keep[:, ablated] = False
    hooks = image_kv_ablation_hooks(model, sample, baseline, keep, scope="all")
    image = sample.positions("image", 0)
    cos, sin = model.family.rotations(torch.zeros(()), image[None])[ablated]
    k = model.family.rotate_keys(ablated, baseline.k[ablated][None], cos, sin)
    hf = _hf_with_image_kv(variant("kv_shared"), {ablated: (image, k, baseline.v[ablated])})
    with torch.no_grad():
        ours = model.run_with_hooks(sample, fwd_hooks=hooks)
        ref = hf(**_processed(model, images, QUESTIONS[:1])).logits
        clean = model(sample)
    assert (ours - ref).abs().max() <= 1e-4
    assert (ours - clean).abs().max() > 1e-3


@pytest.mark.parametrize("scope", ["text", "all"])
def test_keys_as_values_engine_equals_hook_reference(scope):
    """``attention_k_eq_v``: the full layer has no value projection; its values are v_norm of
    the keys' projection."""
    model = variant_model("k_eq_v")
    assert model.family.attention(1).v_proj is None
    _engine_equals_reference(model, scope)


def test_layers_of_different_head_dims_refuse_ablation_and_run_knockout():
    """Full layers with a head dim of their own (the public checkpoints): the model equals HF
    and knockout equals masked HF; baselines, the ablation and the engine refuse, naming the
    family and the reason."""
    path, model = variant("global_head_dim"), variant_model("global_head_dim")
    images = sized_images((28, 28))
    inputs = model.prepare(images, QUESTIONS[:1])
    with torch.no_grad():
        ref = _hf(path)(**_processed(model, images, QUESTIONS[:1])).logits
        assert (model(inputs) - ref).abs().max() <= 1e-4
    _knockout_matches_masked_hf(model, path, [0, 1])
    match = r"Gemma 4.*\(head dim, KV heads\) differ"
    for kind in ("mean", "zero"):  # no baseline at all: its K/V would be one tensor
        with pytest.raises(NotImplementedError, match=match):
            image_kv_baseline(model, inputs, kind)
    with pytest.raises(NotImplementedError, match=match):
        model.family.check_engine(inputs.seq_len)


def test_bidirectional_vision_attention_is_refused_by_the_recomputed_reference():
    """``use_bidirectional_attention="vision"``: the model equals HF (image tokens attend both
    ways in the sliding layers), and the reference, which recomputes causal attention only,
    refuses rather than ablate with the wrong mask; the engine's split into HF's prefix run
    and its suffix attention reproduces the clean logit."""
    model = variant_model("bidirectional")
    assert model.family.bidirectional_image
    images = sized_images((28, 28))
    inputs = model.prepare(images, QUESTIONS[:1])
    with torch.no_grad():
        ref = _hf(variant("bidirectional"))(**_processed(model, images, QUESTIONS[:1])).logits
        assert (model(inputs) - ref).abs().max() <= 1e-4
    zero = image_kv_baseline(model, inputs, "zero")
    keep = torch.zeros(1, model.n_layers, model.n_heads, dtype=torch.bool)
    with pytest.raises(NotImplementedError, match="Gemma 4.*attend to each other both ways"):
        image_kv_ablation_hooks(model, inputs, zero, keep)
    # The engine's prefix is HF's own run (with the image block's mask): all kept = clean.
    engine = AblationEngine(model, inputs, zero)
    assert abs(float(engine.run(~keep)[0]) - engine.clean_logit) <= 1e-4
    assert abs(float(engine.run(keep)[0]) - engine.clean_logit) > 1e-3


def test_a_prompt_longer_than_the_sliding_window_is_refused(model, monkeypatch):
    sample = model.prepare(random_images(1, 28, seed=2), QUESTIONS[0])
    baseline = image_kv_baseline(model, sample, "zero")
    monkeypatch.setattr(model.family.decoder_config, "sliding_window", sample.seq_len - 1)
    with pytest.raises(NotImplementedError, match="Gemma 4.*sliding attention window"):
        AblationEngine(model, sample, baseline)


def test_family_is_registered_for_the_architecture(model):
    assert isinstance(model.family, Gemma4Family)
    assert model.family.shape_refusal() is None
    assert [model.family.kv_source(i) for i in range(model.n_layers)] == [0, 1]
