"""prepare takes the images users pass (PIL, uint8 / float arrays, grayscale, paths) and
refuses the rest with a message naming the accepted forms."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lvlm_cases import DIGIT_QUESTION
from PIL import Image

from tl_lvlm.inputs.images import ACCEPTED_IMAGES

FORMS = (
    "PIL",
    "PIL grayscale",
    "uint8 HxWx3",
    "uint8 HxW",
    "float64 HxWx3",
    "float32 HxW",
    "str path",
    "Path",
)


def _as(form: str, image: Image.Image, path: Path):
    """``image`` (a gray digit: R = G = B) in one accepted form."""
    u8 = np.asarray(image)
    assert (u8 == u8[:, :, :1]).all()
    if form in ("str path", "Path"):
        image.save(path)
        return str(path) if form == "str path" else path
    return {
        "PIL": image,
        "PIL grayscale": image.convert("L"),
        "uint8 HxWx3": u8,
        "uint8 HxW": u8[:, :, 0].copy(),
        "float64 HxWx3": u8 / 255.0,
        "float32 HxW": (u8[:, :, 0] / 255.0).astype(np.float32),
    }[form]


@pytest.fixture(scope="module")
def reference(digits_model, digit_images):
    """Inputs and greedy answers of the ten digits given as PIL images."""
    images, words = digit_images
    inputs = digits_model.prepare(images, DIGIT_QUESTION)
    answers = digits_model.answer(inputs)[1]
    # The bundled model reads the digits (floats read as 0-255 made it answer " four").
    assert sum(a.strip() == w for a, w in zip(answers, words, strict=True)) >= 8
    return inputs, answers


@pytest.mark.parametrize("form", FORMS)
def test_every_form_gives_the_same_pixel_values_and_answers(
    digits_model, digit_images, reference, form, tmp_path
):
    expected, answers = reference
    batch = [_as(form, im, tmp_path / f"{i}.png") for i, im in enumerate(digit_images[0])]
    inputs = digits_model.prepare(batch, DIGIT_QUESTION)
    assert torch.equal(inputs.pixel_values, expected.pixel_values)
    assert digits_model.answer(inputs)[1] == answers
    # One image, not in a list.
    single = digits_model.prepare(batch[3], DIGIT_QUESTION)
    assert torch.equal(single.pixel_values, expected.pixel_values[3:4])


def test_float_intensities_are_not_read_as_0_to_255(digits_model, digit_images):
    u8 = np.asarray(digit_images[0][0])
    inputs = digits_model.prepare([u8, u8 / 255.0], DIGIT_QUESTION)
    assert torch.equal(inputs.pixel_values[0], inputs.pixel_values[1])
    # Black and white floats span the processor's whole range.
    extremes = digits_model.prepare([np.zeros((32, 32)), np.ones((32, 32))], DIGIT_QUESTION)
    zeros = digits_model.prepare(np.zeros((32, 32), np.uint8), DIGIT_QUESTION)
    ones = digits_model.prepare(np.full((32, 32), 255, np.uint8), DIGIT_QUESTION)
    assert torch.equal(extremes.pixel_values[0], zeros.pixel_values[0])
    assert torch.equal(extremes.pixel_values[1], ones.pixel_values[0])


def test_transparency_is_composited_onto_white_as_the_processor_does(tiny_mha, tmp_path):
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (28, 28, 4), dtype=np.uint8), mode="RGBA")
    rgba.save(tmp_path / "rgba.png")
    by_processor = tiny_mha.processor(images=[rgba], text=["<image>"], return_tensors="pt")
    for image in (rgba, tmp_path / "rgba.png"):
        inputs = tiny_mha.prepare(image, "What is it?")
        assert torch.equal(inputs.pixel_values, by_processor["pixel_values"])
    # Not vacuous: dropping the alpha channel gives other pixels.
    dropped = tiny_mha.prepare(rgba.convert("RGB"), "What is it?")
    assert not torch.equal(dropped.pixel_values, by_processor["pixel_values"])


ACCEPTED = re.escape(ACCEPTED_IMAGES)


@pytest.mark.parametrize(
    "image, error, message",
    [
        (np.full((8, 8, 3), 1.5), ValueError, r"values in \[1.5, 1.5\]; float images must"),
        (np.full((8, 8), -0.25, np.float32), ValueError, r"values in \[-0.25, -0.25\]"),
        (np.full((8, 8), np.nan), ValueError, "NaN/inf"),
        (np.zeros((8, 8, 3), np.int64), TypeError, "dtype int64.*astype\\(np.uint8\\)"),
        (np.zeros((8, 8), bool), TypeError, "dtype bool"),
        (np.zeros((8, 8, 4), np.uint8), ValueError, r"shape \(8, 8, 4\)"),
        (np.zeros((3, 8, 8), np.uint8), ValueError, r"channels first\? use a.transpose"),
        (np.zeros((2, 8, 8, 3), np.uint8), ValueError, r"shape \(2, 8, 8, 3\)"),
        (np.zeros((8,), np.uint8), ValueError, r"shape \(8,\)"),
        ([[0, 1], [1, 0]], TypeError, "image 0 is of type list"),
        (3.0, TypeError, "image 0 is of type float"),
    ],
)
def test_other_images_are_refused_naming_the_accepted_forms(tiny_mha, image, error, message):
    with pytest.raises(error, match=message) as info:
        tiny_mha.prepare(image if isinstance(image, list) else [image], "What is it?")
    assert re.search(ACCEPTED, str(info.value))


def test_a_refused_array_is_not_printed(tiny_mha):
    values = np.linspace(2.0, 3.0, 28 * 28 * 3).reshape(28, 28, 3)
    with pytest.raises(ValueError) as info:
        tiny_mha.prepare(values, "What is it?")
    message = str(info.value)
    assert len(message) < 400 and "2.00" not in message.replace("[2, 3]", "")


def test_paths_that_are_not_images(tiny_mha, tmp_path):
    with pytest.raises(ValueError, match="image 0: no image file at .*missing.png"):
        tiny_mha.prepare(tmp_path / "missing.png", "What is it?")
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ValueError, match="notes.png' is not a readable image file"):
        tiny_mha.prepare(str(tmp_path / "notes.png"), "What is it?")


@pytest.mark.parametrize("question", ["<image>\nWhat is it?", "What is <image> showing?"])
def test_a_question_with_the_image_placeholder_is_refused(tiny_mha, images, question):
    with pytest.raises(ValueError, match="contains '<image>', but the template already places"):
        tiny_mha.prepare(images[0], question)
    with pytest.raises(ValueError, match="question 1 contains"):
        tiny_mha.prepare(images, ["What is it?", question])


def test_no_images_or_questions(tiny_mha, images):
    with pytest.raises(ValueError, match="at least one image"):
        tiny_mha.prepare([], "What is it?")
    with pytest.raises(ValueError, match="at least one question"):
        tiny_mha.prepare(images, [])
    with pytest.raises(TypeError, match="question 0 is of type int"):
        tiny_mha.prepare(images[0], [3])
