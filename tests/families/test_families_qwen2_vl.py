"""Qwen2-VL specifics: tl-lvlm's TransformerLens adapter (registered only while booting), the
processor without torchvision, logits and greedy generation against HF, the cache tooling,
both head-attribution methods, the merged-patch geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_families import family_model, family_path, greedy_image_attribution, sized_images
from transformers import Qwen2VLForConditionalGeneration

from tl_lvlm.analysis.heads import head_attribution
from tl_lvlm.families import PatchGeometry, Qwen2_5_VLFamily, Qwen2VLFamily, family_of
from tl_lvlm.families.processors import torchvision_available
from tl_lvlm.families.qwen2_vl import qwen2_vl_adapter
from tl_lvlm.testing import QWEN_MERGE, QWEN_PATCH, random_images

QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]


@pytest.fixture
def model():
    return family_model("qwen2_vl")


def _hf():
    return Qwen2VLForConditionalGeneration.from_pretrained(
        family_path("qwen2_vl"), attn_implementation="eager"
    ).eval()


def _enc(model, images, questions):
    """The processor's own outputs for the family's prompts (what HF is given)."""
    texts = [
        model.template.replace("{question}", q).replace("<image>", model.family.image_prompt)
        for q in questions
    ]
    return model.processor(images=images, text=texts, return_tensors="pt", padding=True)


def test_the_family_is_a_qwen2_5_vl_variant(model):
    assert type(model.family) is Qwen2VLFamily
    assert issubclass(Qwen2VLFamily, Qwen2_5_VLFamily)
    assert family_of(model.hf_model.config) is Qwen2VLFamily
    assert model.family.attention_edits == "recompute"


def test_adapter_is_ours_and_registered_only_while_booting(model):
    """TransformerLens 4.3 has no Qwen2-VL adapter: after the boot its tables are unchanged,
    and the bridge's adapter maps Qwen2-VL's vision MLP (fc1/fc2), whose hooks fire."""
    from transformer_lens.factories import architecture_adapter_factory as factory

    assert type(model.bridge.adapter) is qwen2_vl_adapter()
    assert qwen2_vl_adapter().required_libraries == []
    for table in (factory.SUPPORTED_ARCHITECTURES, factory.ArchitectureAdapterFactory._adapters):
        assert "Qwen2VLForConditionalGeneration" not in table
    assert model.bridge.cfg.vision_hidden_size == model.hf_model.config.vision_config.embed_dim
    names = [
        "vision_encoder.blocks.0.mlp.in.hook_out",
        "vision_encoder.blocks.1.mlp.out.hook_out",
        "vision_projector.hook_out",
        "blocks.1.attn.hook_z",
    ]
    inputs = model.prepare(random_images(1, 28, seed=0), QUESTIONS[0])
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=names)
    assert set(names) <= set(cache.keys())
    d_vision = model.hf_model.config.vision_config.embed_dim
    assert cache[names[0]].shape[-1] == 2 * d_vision  # mlp_ratio 2
    assert cache[names[1]].shape[-1] == d_vision


@pytest.mark.skipif(torchvision_available(), reason="the standard processor is used")
def test_processor_without_torchvision_saves_as_the_standard_one(model):
    processor = model.processor
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert not hasattr(processor, "video_processor")
    config = json.loads((Path(family_path("qwen2_vl")) / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen2VLProcessor"


def test_logits_match_hugging_face_with_images_of_two_sizes(model):
    images = sized_images((28, 28), (28, 40), seed=1)
    inputs = model.prepare(images, QUESTIONS)
    assert inputs.extra["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 10]]
    with torch.no_grad():
        ref = _hf()(**_enc(model, images, QUESTIONS)).logits
        ours = model(inputs)
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("shapes", [((28, 28),), ((28, 28), (28, 40))], ids=["single", "batch"])
def test_greedy_generate_equals_hugging_face_generate(model, shapes):
    """Single image, and a padded batch of two images of different sizes: the bridge's loop
    (hooks firing at every step) gives HF ``generate``'s greedy tokens."""
    images, questions = sized_images(*shapes, seed=1), QUESTIONS[: len(shapes)]
    enc = _enc(model, images, questions)
    with torch.no_grad():
        ref = _hf().generate(**enc, max_new_tokens=3, do_sample=False)
    ours = model.generate(model.prepare(images, questions), max_new_tokens=3, return_type="tokens")
    assert torch.equal(ours, ref[:, enc["input_ids"].shape[1] :])


def test_generate_leaves_the_position_ids_of_the_forward_alone(model):
    """The generation-time cut of M-RoPE positions is undone afterwards."""
    inputs = model.prepare(sized_images((28, 40), seed=2), QUESTIONS[1])
    with torch.no_grad():
        before = model(inputs)
        model.generate(inputs, max_new_tokens=2)
        after = model(inputs)
    assert "compute_3d_position_ids" not in vars(model.hf_model.model)
    assert torch.equal(before, after)


def test_decompose_resid_and_logit_attrs_add_up_to_the_final_logit(model):
    inputs = model.prepare(sized_images((28, 28), (28, 40), seed=1), QUESTIONS)
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs)
    final = logits[:, -1]
    answer = final.argmax(-1)
    parts = cache.decompose_resid(pos_slice=-1)  # [1 + 2 * n_layers, batch, d_model]
    assert parts.shape == (1 + 2 * model.n_layers, 2, model.cfg.d_model)
    attrs = cache.logit_attrs(parts, tokens=answer, pos_slice=-1)
    rows = torch.arange(2)
    assert (final[rows, answer].abs() > 1e-3).all(), "a vacuous logit"
    assert torch.allclose(attrs.sum(0), final[rows, answer], atol=1e-4)


def test_head_attribution_by_gradient_runs(model):
    samples = [(image, QUESTIONS[0]) for image in random_images(3, 28, seed=4)]
    result = head_attribution(
        model, samples, method="gradient", n_gradient_masks=8, min_logit_gap=0.0,
        progress=False, evaluate=False,
    )  # fmt: skip
    kept = list(result.sample_ids)
    assert kept, f"every sample was excluded: {result.excluded}"
    assert result.coef.shape == (len(kept), model.n_layers, model.n_heads)
    assert np.isfinite(result.coef).all() and np.abs(result.coef).max() > 0


def test_image_token_map_is_the_merged_grid_of_the_resized_image(model):
    sample = model.prepare(sized_images((28, 40), seed=3), QUESTIONS[1])
    geometry = model.family.patch_geometry(model.processor, sample)
    # 28 x 40 resized (aspect kept) to multiples of 8: 32 x 40, i.e. 4 x 5 merged tokens.
    side = QWEN_PATCH * QWEN_MERGE
    assert geometry == PatchGeometry(32 // side, 40 // side, "stretch")
    result = greedy_image_attribution(model, sample, n_masks=60)
    assert result.coef.shape == (4, 5)
    mask = np.zeros((28, 40), bool)
    mask[:, :8] = True  # the left fifth of the image: the first column of tokens
    mass = result.object_mass(mask)
    assert (mass.n_object, mass.n_background) == (4, 16)
