"""LLaVA-OneVision specifics: the processor without torchvision, the image group's layout
(base image, anyres tiles, newline tokens), image-token maps on the base image's grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_families import family_model, family_path, greedy_image_attribution, sized_images

from tl_lvlm.families.geometry import TiledPatchGeometry
from tl_lvlm.families.processors import torchvision_available
from tl_lvlm.testing import OV_PATCH, OV_TILE

QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]
#: Features per side of the base image and of each tile (SigLIP, no CLS token).
SIDE = OV_TILE // OV_PATCH


@pytest.fixture
def model():
    return family_model("llava_onevision")


# Worked by hand from the anyres rule: a 28 x 28 image fits the 28 x 28 pinpoint, one tile
# of 4 x 4 features + 4 newlines; a 28 x 40 image fits 28 x 56 (two tiles side by side, a
# 4 x 8 grid), unpadded to the image's aspect: 40 * 4 / 28 -> 5 columns, the padding of
# (8 - 5) // 2 = 1 column cut on each side -> 4 x 6 features + 4 newlines.
#: image (height, width) -> (tile rows, tile columns) of features after unpadding.
TILE_GRIDS = {(28, 28): (4, 4), (28, 40): (4, 6)}


@pytest.mark.skipif(torchvision_available(), reason="the standard processor is used")
def test_processor_without_torchvision_is_its_image_processor_and_tokenizer(model):
    processor = model.processor
    assert type(processor.image_processor).__name__ == "LlavaOnevisionImageProcessorPil"
    assert not hasattr(processor, "video_processor")
    assert processor.num_image_tokens == SIDE**2  # processor_config.json's settings kept
    images = sized_images(*TILE_GRIDS)
    texts = [model.template.replace("{question}", q) for q in QUESTIONS]
    enc = processor(images=images, text=texts, return_tensors="pt", padding=True)
    pixels = processor.image_processor(images=images, return_tensors="pt")
    assert torch.equal(enc["pixel_values"], pixels["pixel_values"])
    counts = [SIDE**2 + rows * cols + rows for rows, cols in TILE_GRIDS.values()]
    expanded = [t.replace("<image>", "<image>" * n) for t, n in zip(texts, counts, strict=True)]
    tokens = model.tokenizer(expanded, return_tensors="pt", padding=True)
    assert torch.equal(enc["input_ids"], tokens["input_ids"])
    config = json.loads(
        (Path(family_path("llava_onevision")) / "processor_config.json").read_text()
    )
    assert config["processor_class"] == "LlavaOnevisionProcessor"


def test_image_group_is_base_image_then_tiles_with_newlines(model):
    """The image group spans every ``<image>`` token: the base image's features, then the
    tiles' rows each followed by the model's ``image_newline`` embedding."""
    inputs = model.prepare(sized_images(*TILE_GRIDS), QUESTIONS)
    newline = model.hf_model.model.image_newline.detach()
    _, cache = model.run_with_cache(inputs, names_filter="blocks.0.hook_in")
    embeds = cache["blocks.0.hook_in"]
    for row, (rows, cols) in enumerate(TILE_GRIDS.values()):
        image = inputs.positions("image", row)
        assert image.numel() == SIDE**2 + rows * (cols + 1)
        ids = inputs.input_ids[row]
        assert bool((ids[image] == model.image_token_id).all())
        assert int((ids == model.image_token_id).sum()) == image.numel()
        tiles = image[SIDE**2 :].view(rows, cols + 1)
        is_newline = (embeds[row, image] == newline).all(-1)
        expected = torch.zeros(image.numel(), dtype=torch.bool)
        expected[tiles[:, -1] - image[0]] = True
        assert torch.equal(is_newline, expected)


def test_image_token_map_combines_the_base_image_and_the_tiles(model):
    """One map on the unpadded tile grid (4 x 6 for a 28 x 40 image, one feature column of
    the canvas's padding kept on each side), the base grid spread over it; newlines are
    ablated but left out of the map."""
    sample = model.prepare(sized_images((28, 40), seed=3), QUESTIONS[1])
    result = greedy_image_attribution(model, sample, n_masks=80)
    n_image = sample.positions("image", 0).numel()
    assert n_image == SIDE**2 + 4 * (6 + 1)
    geometry = result.geometry
    assert isinstance(geometry, TiledPatchGeometry)
    assert geometry.base_tokens == tuple(range(SIDE**2))
    assert geometry.tokens == tuple(SIDE**2 + 7 * r + c for r in range(4) for c in range(6))
    # 28 x 40 -> 28 x 40 on the 28 x 56 canvas, 8 columns of padding left; HF keeps canvas
    # feature columns 1-6, i.e. canvas pixels [7, 49) = image columns [-1, 41).
    assert geometry.extent == pytest.approx((0.0, -1 / 40, 1.0, 41 / 40))
    assert result.coef.shape == (4, 6)
    np.testing.assert_allclose(result.coef, geometry.to_map(result.fit.coef))
    # An object on the left quarter: tile columns [-1, 6) and [6, 13) are at least half object.
    mask = np.zeros((28, 40), bool)
    mask[:, :10] = True
    mass = result.object_mass(mask)
    assert (mass.n_object, mass.n_background) == (8, 16)


def test_with_torchvision_the_standard_processor_is_used(monkeypatch):
    """Where torchvision is installed, ``AutoProcessor`` loads the saved files (here it gets
    as far as needing torchvision for the video processor, so the files are complete)."""
    import tl_lvlm.families.processors as processors

    monkeypatch.setattr(processors, "torchvision_available", lambda: True)
    with pytest.raises(ImportError, match="LlavaOnevisionVideoProcessor requires the Torchvision"):
        type(family_model("llava_onevision").family).load_processor(family_path("llava_onevision"))


def test_map_of_an_interpolated_tile_grid(model, monkeypatch):
    """With ``anyres_max_1`` HF interpolates a 60 x 60 image's 8 x 8 tile features down to
    4 x 4 (and the processor counts as many tokens): the map is that grid, same extent."""
    monkeypatch.setattr(model.config, "vision_aspect_ratio", "anyres_max_1")
    monkeypatch.setattr(model.processor, "vision_aspect_ratio", "anyres_max_1")
    sample = model.prepare(sized_images((60, 60), seed=0), QUESTIONS[0])
    assert sample.positions("image", 0).numel() == SIDE**2 + 4 * (4 + 1)
    geometry = model.family.patch_geometry(model.processor, sample)
    assert geometry.shape == (4, 4) and geometry.base_tokens == tuple(range(SIDE**2))
    assert geometry.extent == pytest.approx((0.0, 0.0, 1.0, 1.0))
    assert model.family.image_token_sources(sample)[SIDE**2, 1] % 1 != 0  # blended rows
