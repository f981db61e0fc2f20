"""LLaVA-NeXT's dynamic tiling: image tokens follow each image's size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_families import family_model, family_path

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


def test_geometry_of_a_padded_image_by_hand(model):
    """A 28 x 70 image on the 28 x 56 pinpoint: resized to 23 x 56 (aspect kept, height
    rounded up), padded by 2 rows on top; HF's unpadding keeps all 4 feature rows of the
    canvas, so the tile grid (4 x 8, 7 canvas pixels per feature) reaches 2 rows past the
    top and 3 past the bottom, in 28 / 23 image pixels per canvas pixel."""
    sample = model.prepare(_image(28, 70, 0), QUESTION)
    geometry = model.family.patch_geometry(model.processor, sample)
    # Base 4 x 4 (tokens 0-15), then 4 rows of 8 tile tokens and a newline.
    assert (geometry.base_rows, geometry.base_cols) == (4, 4)
    assert geometry.base_tokens == tuple(range(16))
    assert geometry.tokens == tuple(16 + 9 * r + c for r in range(4) for c in range(8))
    assert (geometry.rows, geometry.cols) == (4, 8)
    assert geometry.extent == pytest.approx((-2 / 23, 0.0, 26 / 23, 1.0))
    boxes = geometry.token_boxes(28, 70)
    assert set(boxes) == set(range(52)) - {16 + 9 * r + 8 for r in range(4)}
    assert boxes[5] == pytest.approx((7, 17.5, 14, 35))  # base (1, 1): the image stretched
    # Tile token (2, 3): canvas rows [14, 21), columns [21, 28); 56 canvas columns span 70.
    scale = 28 / 23
    assert boxes[16 + 9 * 2 + 3] == pytest.approx(
        ((14 - 2) * scale, 21 * 1.25, (21 - 2) * scale, 28 * 1.25)
    )


def test_a_planted_region_moves_the_map_there(model):
    """Independent of the geometry code: with the vision tower's attention outputs zeroed
    (each image feature then sees only its own patch), the HF model's image embeddings of
    two images that differ only in the top right corner differ exactly at the tokens whose
    boxes reach that corner, and their map lies there."""
    from transformers import LlavaNextForConditionalGeneration

    hf = LlavaNextForConditionalGeneration.from_pretrained(family_path("llava_next")).eval()
    with torch.no_grad():
        for layer in hf.model.vision_tower.encoder.layers:
            layer.self_attn.out_proj.weight.zero_()
            layer.self_attn.out_proj.bias.zero_()
    pixels = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    planted = pixels.copy()
    planted[:14, 42:] = 255 - planted[:14, 42:]  # rows [0, 14), columns [42, 70)
    batch = model.prepare([Image.fromarray(pixels), Image.fromarray(planted)], [QUESTION] * 2)
    with torch.no_grad():
        embeds = hf(
            input_ids=batch.input_ids, **batch.model_kwargs(), output_hidden_states=True
        ).hidden_states[0]
    image = batch.positions("image", 0)
    assert torch.equal(image, batch.positions("image", 1))
    changed = (embeds[0, image] - embeds[1, image]).abs().amax(-1) > 1e-5
    geometry = model.family.patch_geometry(model.processor, batch[0])
    boxes = geometry.token_boxes(40, 70)
    # Bicubic resampling spreads the edit by at most 5 image pixels (the 70 -> 28 base).
    margin = 6
    for token in range(image.numel()):
        if token not in boxes:
            assert not changed[token], "a newline token changed"
            continue
        top, left, bottom, right = boxes[token]
        reaches = top < 14 + margin and right > 42 - margin
        inside = bottom <= 14 and left >= 42
        assert reaches or not changed[token], (token, boxes[token])
        assert changed[token] or not inside, (token, boxes[token])
    assert (
        changed[list(geometry.tokens)].sum() > 2 and changed[list(geometry.base_tokens)].sum() > 0
    )
    # The map of the changed tokens lies in the top right and adds up to their number.
    drawn = geometry.to_map(changed.double().numpy())
    cells = [boxes[t] for t in geometry.tokens]  # row-major, as the map
    far = np.array([b[0] >= 20 or b[3] <= 35 for b in cells]).reshape(geometry.shape)
    assert far.sum() > geometry.n_tokens / 2 and (drawn[far] == 0).all()
    assert drawn.sum() == pytest.approx(float(changed.sum()))
