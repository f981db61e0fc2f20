"""Fixtures of tests/model: the bundled tiny-digits model, its digit images, family models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lvlm_cases import DIGIT_QUESTION, DIGITS, hf_copy

from tl_lvlm import HookedLVLM, zoo
from tl_lvlm.testing import DIGIT_WORDS, TEST_QUESTIONS, random_images, save_tiny_family
from tl_lvlm.zoo.digits import load_digit_images


@pytest.fixture(scope="session")
def digits_model() -> HookedLVLM:
    return HookedLVLM.from_pretrained(DIGITS, device="cpu")


@pytest.fixture(scope="session")
def digits_hf() -> torch.nn.Module:
    return hf_copy(zoo.resolve(DIGITS))


@pytest.fixture(scope="session")
def digit_images():
    """One held-out digit of each class, 0..9 in order: ``(PIL images, words)``."""
    images, labels = load_digit_images("test", "original")
    first = [int(np.flatnonzero(labels == d)[0]) for d in range(10)]
    return [images[i] for i in first], [DIGIT_WORDS[d] for d in range(10)]


@pytest.fixture(scope="session")
def family_paths(tmp_path_factory) -> dict[str, str]:
    """Tiny LLaVA-NeXT and Gemma 3 checkpoints written with ``save_pretrained``."""
    root = tmp_path_factory.mktemp("families")
    return {f: str(save_tiny_family(f, root / f)) for f in ("llava_next", "gemma3")}


CASES = ("mha", "gqa", "digits", "llava_next", "gemma3")


@pytest.fixture(scope="module", params=CASES)
def case(request, tiny_paths, family_paths, digit_images):
    """``(model, independent HF copy, a padded batch of 2 inputs)`` per model kind."""
    kind = request.param
    if kind == "digits":
        path = zoo.resolve(DIGITS)
        images, questions = digit_images[0][3:5], [DIGIT_QUESTION, "Which digit?"]
    else:
        path = {**tiny_paths, **family_paths}[kind]
        images, questions = random_images(2, 28, seed=0), TEST_QUESTIONS
    model = HookedLVLM.from_pretrained(path, device="cpu")
    inputs = model.prepare(images, questions)
    assert inputs.attention_mask[:, 0].tolist() != [1, 1], "the batch should need padding"
    return model, hf_copy(path), inputs
