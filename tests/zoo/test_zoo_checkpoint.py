"""The committed tiny-digits checkpoint (version 2) loads like a hub model and answers its
four questions at the accuracies its model card states, measured as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tl_lvlm import HookedLVLM
from tl_lvlm.zoo import (
    ZOO,
    evaluate_accuracy,
    predict_first_tokens,
    resolve,
)
from tl_lvlm.zoo.digits import CANVAS_SIZE, load_digit_images, load_digit_set, user_arrays
from tl_lvlm.zoo.evaluate_digits import POLARITIES, style_accuracy, task_accuracy
from tl_lvlm.zoo.questions import ANSWER_WORDS, OBJECT_QUESTION, TASKS, answer_token_ids
from tl_lvlm.zoo.tiny_llava import DIGIT_WORDS

NAME = "tl-lvlm/tiny-digits"


@pytest.fixture(scope="module")
def loaded():
    path = resolve(NAME)
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    return model, processor


@pytest.fixture(scope="module")
def hooked() -> HookedLVLM:
    return HookedLVLM.from_pretrained(NAME, device="cpu")


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
    assert "README.md" in files
    assert sum(p.stat().st_size for p in path.iterdir()) <= 15 * 2**20


def test_card_and_record_say_version_2(record):
    card = (Path(resolve(NAME)) / "README.md").read_text()
    assert "version: 2" in card and record["version"] == 2
    minutes = record["train_wall_time_s"] / 60
    assert minutes <= 90
    assert f"{minutes:.0f} minutes" in card


def test_architecture_is_the_recorded_one(loaded, record):
    model, processor = loaded
    cfg, shapes = model.config, record["config"]["model"]
    assert cfg.architectures == ["LlavaForConditionalGeneration"]
    assert cfg.vision_config.model_type == "clip_vision_model"
    assert cfg.text_config.model_type == "llama"
    assert cfg.vision_config.image_size == CANVAS_SIZE == shapes["image_size"]
    assert cfg.text_config.num_hidden_layers == shapes["n_layers"] == 12
    assert cfg.text_config.num_attention_heads == shapes["n_heads"] == 8
    assert cfg.text_config.num_key_value_heads == shapes["n_kv_heads"] == 4
    ids = processor(images=load_digit_images("test")[0][:1], text=["USER: <image>\nx"])["input_ids"]
    n_image = (shapes["image_size"] // shapes["patch_size"]) ** 2
    assert sum(t == cfg.image_token_id for t in ids[0]) == n_image == cfg.image_seq_length == 36
    # every answer word is one token, and they are distinct
    assert len(set(answer_token_ids(processor.tokenizer, ANSWER_WORDS))) == len(ANSWER_WORDS)


def test_main_object_on_all_sklearn_digits_as_user_arrays(hooked, record):
    """All 1,797 bare 8x8 scans through ``prepare``: uint8 or [0, 1] floats, either
    polarity, grey or RGB, full frame. Per polarity the four forms must prepare to the same
    inputs, bit for bit, so one forward pass per image answers for all four (what
    ``user_array_accuracy`` measures form by form)."""
    ids = np.asarray(answer_token_ids(hooked.tokenizer, TASKS["object"].answers))
    question = TASKS["object"].question
    for polarity in POLARITIES:
        forms = {
            f"{dtype}/{polarity}/{channels}": user_arrays(dtype, polarity, channels)
            for dtype in ("uint8", "float")
            for channels in ("grey", "rgb")
        }
        (first, labels), *others = forms.values()
        hits = 0
        for start in range(0, len(first), 64):
            inputs = hooked.prepare(list(first[start : start + 64]), question)
            for arrays, other_labels in others:
                same = hooked.prepare(list(arrays[start : start + 64]), question)
                assert torch.equal(same.pixel_values, inputs.pixel_values)
                assert torch.equal(same.input_ids, inputs.input_ids)
                np.testing.assert_array_equal(other_labels, labels)
            answers, _ = hooked.answer(inputs)
            hits += int((answers.numpy() == ids[labels[start : start + 64]]).sum())
        accuracy = hits / len(first)
        assert len(first) == 1797 and accuracy >= 0.95, polarity
        for form in forms:  # the recorded number is what this checkpoint actually gets
            assert accuracy == pytest.approx(record["user_arrays_object_accuracy"][form]), form


@pytest.fixture(scope="module")
def tasks(hooked):
    return task_accuracy(hooked)


def test_task_accuracies_are_the_recorded_ones(tasks, record):
    assert set(tasks) == set(TASKS)
    for name, a in tasks.items():
        recorded = record["test_task_accuracy"][name]
        assert a["question"] == pytest.approx(recorded["question"]), name
        assert a["held_out_phrasings"] == pytest.approx(recorded["held_out_phrasings"]), name


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_on_held_out_coloured_digits(tasks, name):
    """>= 90% on held-out digits with random size, position and colours, both with the
    canonical question and with the phrasings training never showed."""
    assert tasks[name]["question"] >= 0.90
    assert tasks[name]["held_out_phrasings"] >= 0.90


def test_style_accuracies_are_the_recorded_ones(hooked, record):
    acc = style_accuracy(hooked)
    assert acc == pytest.approx(record["test_accuracy"])
    for style in ("original", "inverted", "shifted", "coloured"):  # the trained renderings
        assert acc[style] >= 0.90, style


def test_hf_path_agrees_with_prepare(loaded, hooked):
    """Two implementations of the greedy answer: HF forward vs HookedLVLM.prepare/answer."""
    model, processor = loaded
    digits = load_digit_set("test", "coloured")
    for question in (OBJECT_QUESTION, TASKS["parity"].held_out_phrasings[0]):
        hf = predict_first_tokens(model, processor, digits.images[:64], question)
        ids, _ = hooked.answer(hooked.prepare(digits.images[:64], question))
        np.testing.assert_array_equal(hf, ids.numpy())


def test_answers_depend_on_image(loaded):
    """Different digits get different answers; the text alone does not decide."""
    model, processor = loaded
    digits = load_digit_set("test", "original")
    pred = predict_first_tokens(model, processor, digits.images[:100])
    assert len(set(pred.tolist())) == 10
    words = processor.tokenizer.convert_ids_to_tokens(pred[:5].tolist())
    assert [w.lstrip("Ġ") for w in words] == [DIGIT_WORDS[d] for d in digits.labels[:5]]


def test_each_question_gets_its_kind_of_answer(loaded):
    model, processor = loaded
    digits = load_digit_set("test", "coloured")
    tok = processor.tokenizer
    for name, task in TASKS.items():
        answers = set(answer_token_ids(tok, task.answers))
        got = predict_first_tokens(model, processor, digits.images[:40], task.question)
        assert set(got.tolist()) <= answers, name


def test_generate_says_the_word(loaded):
    model, processor = loaded
    images, labels = load_digit_images("test", "original")
    i = int(np.flatnonzero(labels == 7)[0])
    enc = processor(
        images=[images[i]],
        text=[f"USER: <image>\n{OBJECT_QUESTION} ASSISTANT:"],
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
