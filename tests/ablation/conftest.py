"""Fixtures for image-K/V ablation tests: prepared inputs and mean baselines per tiny model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tl_lvlm import HookedLVLM, LVLMInputs
from tl_lvlm.ablation import ImageKVBaseline, image_kv_baseline
from tl_lvlm.testing import random_images

QUESTION = "What is the main object in this image? Answer in a single word."


@dataclass
class Setup:
    model: HookedLVLM
    #: Two rows, different images and questions; row 1 is left-padded.
    inputs: LVLMInputs
    #: Mean over four other images.
    baseline: ImageKVBaseline


@pytest.fixture(scope="session")
def make_setup():
    """``make_setup(model) -> Setup``, built once per model."""
    cache: dict[int, Setup] = {}

    def make(model: HookedLVLM) -> Setup:
        if id(model) not in cache:
            size = model.image_size
            inputs = model.prepare(random_images(2, size, seed=0), [QUESTION, "Which number?"])
            reference = model.prepare(random_images(4, size, seed=5), QUESTION)
            cache[id(model)] = Setup(model, inputs, image_kv_baseline(model, reference))
        return cache[id(model)]

    return make
