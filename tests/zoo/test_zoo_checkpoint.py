"""The committed tiny-digits checkpoint loads like a hub model and reads digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tl_lvlm.testing import DIGIT_WORDS
from tl_lvlm.zoo import (
    ZOO,
    digit_token_ids,
    evaluate_accuracy,
    predict_first_tokens,
    resolve,
)
from tl_lvlm.zoo.digits import load_digit_images

NAME = "tl-lvlm/tiny-digits"


@pytest.fixture(scope="module")
def loaded():
    path = resolve(NAME)
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    return model, processor


@pytest.fixture(scope="module")
def record():
    return json.loads((Path(resolve(NAME)) / "training.json").read_text())


def test_resolve():
    path = Path(resolve(NAME))
    assert path == Path(ZOO[NAME]) and (path / "config.json").is_file()
    assert resolve("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    assert resolve("/some/local/dir") == "/some/local/dir"


def test_checkpoint_is_small_and_complete():
    path = Path(resolve(NAME))
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= files
    assert sum(p.stat().st_size for p in path.iterdir()) <= 10 * 2**20


def test_architecture(loaded):
    model, processor = loaded
    cfg = model.config
    assert cfg.architectures == ["LlavaForConditionalGeneration"]
    assert cfg.vision_config.model_type == "clip_vision_model"
    assert cfg.text_config.model_type == "llama"
    assert cfg.text_config.num_hidden_layers == 8
    assert cfg.text_config.num_attention_heads == 8
    ids = processor(images=load_digit_images("test")[0][:1], text=["USER: <image>\nx"])["input_ids"]
    assert sum(t == cfg.image_token_id for t in ids[0]) == 64 == cfg.image_seq_length
    # every answer word is one token, and they are distinct
    assert len(set(digit_token_ids(processor.tokenizer))) == 10


def test_heldout_accuracy_original(loaded, record):
    model, processor = loaded
    images, labels = load_digit_images("test", "original")
    acc = evaluate_accuracy(model, processor, images, labels)
    assert acc >= 0.95
    # the recorded number is what this checkpoint actually gets
    assert abs(acc - record["test_accuracy"]["original"]) <= 0.01


def test_answers_depend_on_image(loaded):
    """Different digits get different answers; the text alone does not decide."""
    model, processor = loaded
    images, labels = load_digit_images("test", "original")
    pred = predict_first_tokens(model, processor, images[:100])
    assert len(set(pred.tolist())) == 10
    words = processor.tokenizer.convert_ids_to_tokens(pred[:5].tolist())
    assert [w.lstrip("Ġ") for w in words] == [DIGIT_WORDS[d] for d in labels[:5]]


def test_generate_says_the_word(loaded):
    model, processor = loaded
    images, labels = load_digit_images("test", "original")
    i = int(np.flatnonzero(labels == 7)[0])
    enc = processor(
        images=[images[i]],
        text=[
            "USER: <image>\nWhat is the main object in this image? Answer in a single word. "
            "ASSISTANT:"
        ],
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    text = processor.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip() == "seven"


def test_evaluate_accuracy_can_fail(loaded):
    """Wrong labels score near chance, so the accuracy check is not vacuous."""
    model, processor = loaded
    images, labels = load_digit_images("test", "original")
    assert evaluate_accuracy(model, processor, images[:100], (labels[:100] + 1) % 10) < 0.2
