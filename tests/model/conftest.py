"""Fixtures of tests/model: the bundled tiny-digits model, its digit images, family models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lvlm_cases import DIGITS, hf_copy

from tl_lvlm import HookedLVLM, zoo
from tl_lvlm.testing import DIGIT_WORDS
from tl_lvlm.testing_families import save_tiny_family
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
