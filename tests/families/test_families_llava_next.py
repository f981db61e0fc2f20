"""LLaVA-NeXT's dynamic tiling: image tokens follow each image's size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_families import family_model

from tl_lvlm.ablation import image_kv_baseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.testing import random_images

QUESTION = "Which number is written here?"


def _image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def model():
    return family_model("llava_next")


def test_image_tokens_follow_the_image_size(model):
    square, wide = _image(28, 28, 0), _image(28, 56, 1)
    batch = model.prepare([square, wide], QUESTION)
    assert batch.extra["image_sizes"].tolist() == [[28, 28], [28, 56]]
    n_square, n_wide = (batch.positions("image", r).numel() for r in range(2))
    assert n_square != n_wide
    # Each padded row equals its own unpadded run, wherever its image span ends.
    with torch.no_grad():
        logits = model(batch)
        for row, image in enumerate([square, wide]):
            alone = model.prepare(image, QUESTION)
            assert alone.positions("image", 0).numel() == (n_square, n_wide)[row]
            n = alone.seq_len
            assert torch.allclose(logits[row, -n:], model(alone)[0], atol=1e-4)


def test_pixel_values_tensor_is_refused(model):
    with pytest.raises(ValueError, match="LLaVA-NeXT tiles each image by its size"):
        model.prepare(torch.zeros(1, 3, 28, 28), QUESTION)


def test_baseline_of_another_tiling_is_refused(model):
    baseline = image_kv_baseline(model, model.prepare(random_images(2, 28, seed=2), QUESTION))
    wide = model.prepare(_image(28, 56, 3), QUESTION)
    with pytest.raises(ValueError, match="image span"):
        AblationEngine(model, wide, baseline)
