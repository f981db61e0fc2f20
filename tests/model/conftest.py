"""Fixtures of tests/model: the bundled tiny-digits model, its digit images, family models.

Every model has an independent Hugging Face copy loaded from the same checkpoint:
the bridge swaps the wrapped model's attention modules in place, so the wrapped
``hf_model`` is no reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from tl_lvlm import HookedLVLM, zoo
from tl_lvlm.testing import DIGIT_WORDS
from tl_lvlm.testing_families import save_tiny_family
from tl_lvlm.zoo.digits import load_digit_images

DIGITS = "tl-lvlm/tiny-digits"
DIGIT_QUESTION = "What is the main object in this image? Answer in a single word."


def hf_copy(path) -> torch.nn.Module:
    """An independent Hugging Face model loaded from ``path`` (eager attention, eval)."""
    config = transformers.AutoConfig.from_pretrained(path)
    cls = getattr(transformers, config.architectures[0])
    return cls.from_pretrained(path, attn_implementation="eager").eval()


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
