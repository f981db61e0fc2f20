"""LLaVA-OneVision specifics: the processor without torchvision, the image group's layout
(base image, anyres tiles, newline tokens), image-token maps on the base image's grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_families import family_model, family_path, greedy_image_attribution, sized_images

from tl_lvlm.families import PatchGeometry
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


def test_image_token_map_is_the_base_image_grid(model):
    """The map is the base image's 4 x 4 grid over the whole (stretched) image; the tiles'
    and newlines' tokens are ablated too but left out of the map."""
    sample = model.prepare(sized_images((28, 40), seed=3), QUESTIONS[1])
    result = greedy_image_attribution(model, sample, n_masks=80)
    n_image = sample.positions("image", 0).numel()
    assert n_image == SIDE**2 + 4 * (6 + 1)
    assert result.geometry == PatchGeometry(SIDE, SIDE, "stretch", tokens=tuple(range(SIDE**2)))
    assert result.coef.shape == (SIDE, SIDE)
    # An object on the left quarter of the image covers the base grid's first column.
    mask = np.zeros((28, 40), bool)
    mask[:, :10] = True
    mass = result.object_mass(mask)
    assert (mass.n_object, mass.n_background) == (SIDE, SIDE * (SIDE - 1))


def test_with_torchvision_the_standard_processor_is_used(monkeypatch):
    """Where torchvision is installed, ``AutoProcessor`` loads the saved files (here it gets
    as far as needing torchvision for the video processor, so the files are complete)."""
    import tl_lvlm.families.processors as processors

    monkeypatch.setattr(processors, "torchvision_available", lambda: True)
    with pytest.raises(ImportError, match="LlavaOnevisionVideoProcessor requires the Torchvision"):
        type(family_model("llava_onevision").family).load_processor(family_path("llava_onevision"))
