"""SmolVLM specifics: the processor without a video processor (and without num2words), the
bridge booted with TransformerLens's Idefics3 adapter. The rest of its layout is Idefics3's
and is tested with it (``test_families_idefics3.py``, parametrized over both)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_families import family_model, family_path, processor_outputs, sized_images

from tl_lvlm.families.processors import num2words_available, torchvision_available

QUESTIONS = ["Which number is written here?", "What is the main object in this image?"]


@pytest.fixture
def model():
    return family_model("smolvlm")


def _expansion(rows: int, cols: int, per_tile: int = 4) -> str:
    """A split image's text: tiles row by row, a newline per row, then the global image."""
    fake, image = "<fake_token_around_image>", "<image>" * per_tile
    text = "".join(
        "".join(f"{fake}<row_{r + 1}_col_{c + 1}>{image}" for c in range(cols)) + "\n"
        for r in range(rows)
    )
    return f"{text}\n{fake}<global-img>{image}{fake}"


@pytest.mark.skipif(
    torchvision_available() and num2words_available(), reason="the standard processor is used"
)
def test_processor_without_torchvision_is_its_image_processor_and_tokenizer(model):
    """Its outputs equal the PIL image processor's and the tokenizer's with each image's
    tiles expanded; it saves as ``SmolVLMProcessor``, with no video processor."""
    processor = model.processor
    assert type(processor.image_processor).__name__ == "SmolVLMImageProcessorPil"
    assert not hasattr(processor, "video_processor")
    images = sized_images((28, 28), (16, 40))
    enc = processor_outputs(model, images, QUESTIONS)
    pixels = processor.image_processor(images=[[image] for image in images], return_tensors="pt")
    assert torch.equal(enc["pixel_values"], pixels["pixel_values"])
    assert torch.equal(enc["pixel_attention_mask"], pixels["pixel_attention_mask"])
    texts = [
        model.template.replace("{question}", q).replace("<image>", _expansion(*grid))
        for q, grid in zip(QUESTIONS, [(2, 2), (1, 2)], strict=True)
    ]
    tokens = model.tokenizer(texts, return_tensors="pt", padding=True)
    assert torch.equal(enc["input_ids"], tokens["input_ids"])
    assert torch.equal(enc["attention_mask"], tokens["attention_mask"])
    config = json.loads((Path(family_path("smolvlm")) / "processor_config.json").read_text())
    assert config["processor_class"] == "SmolVLMProcessor"


def test_chat_template_renders_without_a_video_processor(model):
    assert model.template == "<|im_start|>User:<image>{question}<end_of_utterance>\nAssistant:"


def test_bridge_boots_with_the_idefics3_adapter_and_leaves_the_config_as_it_was(model):
    from transformer_lens.factories.architecture_adapter_factory import (
        SUPPORTED_ARCHITECTURES,
        ArchitectureAdapterFactory,
    )
    from transformer_lens.model_bridge.supported_architectures.idefics3 import (
        Idefics3ArchitectureAdapter,
    )

    assert type(model.bridge.adapter) is Idefics3ArchitectureAdapter
    assert model.hf_model.config.architectures == ["SmolVLMForConditionalGeneration"]
    assert "SmolVLMForConditionalGeneration" not in SUPPORTED_ARCHITECTURES
    assert "SmolVLMForConditionalGeneration" not in ArchitectureAdapterFactory._adapters
    inputs = model.prepare(sized_images((28, 28)), QUESTIONS[0])
    names = ["blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_z", "vision_projector.hook_out"]
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=lambda n: n in names)
    assert set(names) <= set(cache.keys())
    # The connector's output per tile: 2 x 2 tiles and the global image, 4 tokens each.
    assert cache["vision_projector.hook_out"].shape == (5, 4, model.cfg.d_model)


def test_with_torchvision_and_num2words_the_standard_processor_is_used(monkeypatch):
    """Where both are installed, ``AutoProcessor`` loads the saved files (here it gets as far
    as needing torchvision for the video processor, so the files are complete)."""
    import tl_lvlm.families.smolvlm as smolvlm

    monkeypatch.setattr(smolvlm, "torchvision_available", lambda: True)
    monkeypatch.setattr(smolvlm, "num2words_available", lambda: True)
    with pytest.raises(ImportError, match="requires the Torchvision"):
        smolvlm.SmolVLMFamily.load_processor(family_path("smolvlm"))
