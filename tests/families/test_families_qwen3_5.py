"""Qwen3.5's hybrid decoder: loading and logits work; image-K/V head ablation (so head and
image-token attribution, both methods) is refused naming the linear-attention layers read
from the decoder config; the refusal is generic (any family whose config lists such layers)."""

from __future__ import annotations

import pytest
import torch
from tiny_families import family_model, family_path, sized_images
from transformers import Qwen3_5ForConditionalGeneration

from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline
from tl_lvlm.ablation.baseline import ImageKVBaseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.analysis.heads import head_attribution
from tl_lvlm.analysis.image_tokens import image_token_attribution
from tl_lvlm.families import Qwen3_5Family
from tl_lvlm.flow import knockout
from tl_lvlm.testing import QWEN3_5_LAYER_TYPES, random_images

QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]
LINEAR = (
    r"Qwen3\.5 does not support ablation: decoder layers \[0\] are linear_attention, not "
    "softmax attention over positions"
)


@pytest.fixture
def model():
    return family_model("qwen3_5")


def test_the_checkpoint_is_hybrid_and_its_layers_are_read_from_the_config(model):
    assert type(model.family) is Qwen3_5Family
    assert model.family.decoder_config.layer_types == QWEN3_5_LAYER_TYPES
    assert model.family.non_softmax_layers() == {0: "linear_attention"}
    assert model.family.softmax_layers() == [1]
    assert not model.family.supports("ablation") and not model.family.supports("engine")


def test_logits_match_hugging_face_with_images_of_two_sizes(model):
    images = sized_images((28, 28), (28, 40), seed=1)
    inputs = model.prepare(images, QUESTIONS)
    texts = [
        model.template.replace("{question}", q).replace("<image>", model.family.image_prompt)
        for q in QUESTIONS
    ]
    enc = model.processor(images=images, text=texts, return_tensors="pt", padding=True)
    hf = Qwen3_5ForConditionalGeneration.from_pretrained(
        family_path("qwen3_5"), attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        ref = hf(**enc).logits
        ours = model(inputs)
        row = model(inputs[1])
    assert ref.abs().max() > 0
    assert (ours - ref).abs().max().item() <= 1e-4
    assert (row[0] - ref[1]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("method", ["regression", "gradient"])
def test_head_attribution_is_refused_naming_the_linear_attention_layers(model, method):
    samples = [(image, QUESTIONS[0]) for image in random_images(2, 28, seed=4)]
    n = model.n_layers * model.n_heads
    with pytest.raises(NotImplementedError, match=r"Qwen3\.5 does not support (ablation|engine)"):
        head_attribution(model, samples, n_masks=4 * n, method=method, progress=False)
    with pytest.raises(NotImplementedError, match=LINEAR):
        head_attribution(model, samples, n_masks=4 * n, progress=False)


def test_every_ablation_entry_point_is_refused(model):
    sample = model.prepare(random_images(1, 28, seed=1), QUESTIONS[0])
    with pytest.raises(NotImplementedError, match=LINEAR):
        image_kv_baseline(model, sample, "zero")
    n_image = sample.positions("image", 0).numel()
    shape = (model.n_layers, model.n_kv_heads, n_image, model.d_head)
    # A baseline built elsewhere does not get past the engine or the hook reference either.
    zeros = torch.zeros(shape)
    baseline = ImageKVBaseline(zeros, zeros, "zero", model.template, sample.image_span(0), 0)
    keep = torch.ones(1, model.n_layers, model.n_heads, dtype=torch.bool)
    with pytest.raises(NotImplementedError, match=LINEAR):
        AblationEngine(model, sample, baseline)
    with pytest.raises(NotImplementedError, match=LINEAR):
        image_kv_ablation_hooks(model, sample, baseline, keep)
    with pytest.raises(NotImplementedError, match=LINEAR):
        image_token_attribution(model, sample, baseline="zero", n_masks=20, progress=False)
    with pytest.raises(NotImplementedError, match=r"Qwen3\.5 does not support knockout: its sof"):
        with knockout(model, sample, ("image", "final"), [1]):
            pass


def test_the_refusal_names_the_layers_of_any_hybrid_config(model, monkeypatch):
    """The check is generic: it reads ``layer_types`` of whichever decoder config (here the
    tiny LLaVA-1.5 made to look hybrid) and names every non-softmax layer; knockout runs in
    the softmax layers and refuses the others."""
    llava = family_model("llava")
    config = llava.family.decoder_config
    monkeypatch.setattr(config, "layer_types", ["full_attention", "mamba"], raising=False)
    assert llava.family.non_softmax_layers() == {1: "mamba"}
    sample = llava.prepare(random_images(1, 28, seed=1), QUESTIONS[0])
    with pytest.raises(NotImplementedError, match=r"decoder layers \[1\] are mamba"):
        image_kv_baseline(llava, sample, "zero")
    with knockout(llava, sample, ("image", "final"), [0]):
        pass
    with pytest.raises(NotImplementedError, match=r"decoder layers \[1\] are mamba; choose"):
        with knockout(llava, sample, ("image", "final"), [0, 1]):
            pass
    monkeypatch.setattr(config, "layer_types", ["sliding_attention", "full_attention"])
    assert llava.family.refusals() == {}


@pytest.mark.parametrize("shapes", [((28, 28),), ((28, 28), (28, 40))], ids=["single", "batch"])
def test_greedy_generate_equals_hugging_face_generate(model, shapes):
    images, questions = sized_images(*shapes, seed=1), QUESTIONS[: len(shapes)]
    texts = [
        model.template.replace("{question}", q).replace("<image>", model.family.image_prompt)
        for q in questions
    ]
    enc = model.processor(images=images, text=texts, return_tensors="pt", padding=True)
    hf = Qwen3_5ForConditionalGeneration.from_pretrained(
        family_path("qwen3_5"), attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        ref = hf.generate(**enc, max_new_tokens=3, do_sample=False)
    ours = model.generate(model.prepare(images, questions), max_new_tokens=3, return_type="tokens")
    assert torch.equal(ours, ref[:, enc["input_ids"].shape[1] :])
