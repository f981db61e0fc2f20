"""Idefics3 and SmolVLM (the same layout) specifics: tiles plus a global image with marker
tokens between them, exactly the ``<image>`` positions ablated, pixel padding of rows with
fewer tiles, generate, the cache's logit attributions, gradient head attribution, and the
tile map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_families import (
    check_exactly_the_image_tokens_are_ablated,
    check_generate_matches_hf,
    check_gradient_head_attribution_runs,
    check_logit_attrs_add_up,
    family_model,
    greedy_image_attribution,
    hf_copy,
    processor_outputs,
    sized_images,
)

from tl_lvlm.ablation import image_kv_baseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.families import PatchGeometry
from tl_lvlm.testing import IDEFICS3_PATCH, IDEFICS3_SCALE, IDEFICS3_TILE

QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]
#: Image shape -> its tile grid: resized to a longest edge of 32 and stretched to whole
#: 16-pixel tiles.
TILE_GRIDS = {(28, 28): (2, 2), (16, 40): (1, 2)}
SIDE = IDEFICS3_TILE // IDEFICS3_PATCH // IDEFICS3_SCALE  # a tile's token grid side


@pytest.fixture(params=["idefics3", "smolvlm"])
def family(request) -> str:
    return request.param


@pytest.fixture
def model(family):
    return family_model(family)


def test_image_group_is_the_image_tokens_and_markers_are_in_no_group(model):
    """Per tile: ``<fake_token_around_image><row_r_col_c>`` then 4 ``<image>`` tokens; a
    newline per row of tiles; the global image. Only the ``<image>`` tokens are the image
    group; the markers between the first and the last are in no group."""
    inputs = model.prepare(sized_images(*TILE_GRIDS), QUESTIONS)
    tok = model.tokenizer
    for row, (rows, cols) in enumerate(TILE_GRIDS.values()):
        ids = inputs.input_ids[row]
        image = inputs.positions("image", row)
        assert torch.equal(image, (ids == model.image_token_id).nonzero().flatten())
        assert image.numel() == SIDE**2 * (rows * cols + 1)
        start, end = inputs.image_span(row)
        grouped = torch.cat([inputs.positions(g, row) for g in ("prefix", "question", "role")])
        markers = sorted(set(range(start, end)) - set(image.tolist()))
        assert not set(markers) & set(grouped.tolist())
        fake = "<fake_token_around_image>"
        expected = ""
        for r in range(rows):
            for c in range(cols):
                if (r, c) != (0, 0):
                    expected += f"{fake}<row_{r + 1}_col_{c + 1}>"
            expected += "\n"
        assert tok.decode(ids[markers]) == expected + f"\n{fake}<global-img>"
        assert tok.decode(ids[inputs.positions("prefix", row)[-2:]]) == (
            "<fake_token_around_image><row_1_col_1>"
        )


def test_pixel_values_of_a_row_with_fewer_tiles_are_padded_and_logits_match(model, family):
    """Rows of 2 x 2 and 1 x 2 tiles: the second row's pixel_values end with an all-zero tile
    (which the model drops); logits equal HF's on the processor's own outputs."""
    images = sized_images(*TILE_GRIDS, seed=1)
    inputs = model.prepare(images, QUESTIONS)
    assert inputs.pixel_values.shape == (2, 5, 3, IDEFICS3_TILE, IDEFICS3_TILE)
    assert bool((inputs.pixel_values[1, 3:] == 0).all())
    assert not bool((inputs.pixel_values[1, 2] == 0).all())
    enc = processor_outputs(model, images, QUESTIONS)
    assert torch.equal(enc["input_ids"], inputs.input_ids)
    with torch.no_grad():
        ref = hf_copy(family, attn_implementation="eager")(**enc).logits
        ours = model(inputs)
        row = model(inputs[1])
    assert (ours - ref).abs().max().item() <= 1e-4
    assert (row[0] - ref[1]).abs().max().item() <= 1e-4


def test_exactly_the_image_token_positions_are_ablated(model, family):
    """Not the fake, row/column, global or newline tokens between the tiles."""
    check_exactly_the_image_tokens_are_ablated(
        model, family, sized_images((28, 28), seed=4)[0], QUESTIONS[0]
    )


def test_baseline_of_another_tile_grid_is_refused(model):
    baseline = image_kv_baseline(model, model.prepare(sized_images((28, 28)), QUESTIONS[0]))
    other = model.prepare(sized_images((16, 40)), QUESTIONS[0])
    with pytest.raises(ValueError, match=r"\(20 image tokens\).*\(12 image tokens\)"):
        AblationEngine(model, other, baseline)


@pytest.mark.parametrize("shapes", [[(28, 28)], list(TILE_GRIDS)], ids=["single", "two_sizes"])
def test_generate_matches_hugging_face_generate(model, family, shapes):
    images = sized_images(*shapes, seed=2)
    check_generate_matches_hf(model, family, images, QUESTIONS[: len(images)])


def test_logit_attrs_of_decompose_resid_add_up_to_the_final_logit(model):
    check_logit_attrs_add_up(model, model.prepare(sized_images(*TILE_GRIDS, seed=3), QUESTIONS))


def test_gradient_head_attribution_runs(model):
    check_gradient_head_attribution_runs(model, QUESTIONS[0])


def test_pixel_shuffle_orders_a_tiles_tokens_row_major(model):
    """The connector's pixel shuffle makes token ``i * SIDE + j`` of the patches in rows
    ``i * scale ...`` and columns ``j * scale ...``, the order the map assumes."""
    patches = IDEFICS3_TILE // IDEFICS3_PATCH
    # Each patch's feature is its (row, col); shuffled, a token holds its block's patches.
    rows, cols = torch.meshgrid(torch.arange(patches), torch.arange(patches), indexing="ij")
    x = torch.stack([rows, cols], -1).reshape(1, patches * patches, 2).float()
    shuffled = model.hf_model.model.connector.pixel_shuffle(x, IDEFICS3_SCALE)[0]
    for token in range(SIDE**2):
        i, j = divmod(token, SIDE)
        held = shuffled[token].view(-1, 2)
        assert set(held[:, 0].tolist()) == set(range(i * IDEFICS3_SCALE, (i + 1) * IDEFICS3_SCALE))
        assert set(held[:, 1].tolist()) == set(range(j * IDEFICS3_SCALE, (j + 1) * IDEFICS3_SCALE))


def _image_features(model, sample) -> torch.Tensor:
    """``[n_image, d_model]``: what enters the residual stream at row 0's image tokens."""
    with torch.no_grad():
        _, cache = model.run_with_cache(sample, names_filter="hook_embed")
    return cache["hook_embed"][0, sample.positions("image", 0)]


@pytest.mark.parametrize("shape", list(TILE_GRIDS))
def test_tile_map_places_each_tile_where_it_lies_in_the_image(model, shape):
    """The map puts tile (r, c) at rows r * SIDE ... and columns c * SIDE ...; changing the
    pixels of one tile's region changes exactly that tile's features and the global image's,
    which is left out of the map."""
    tile_rows, tile_cols = TILE_GRIDS[shape]
    image = sized_images(shape, seed=5)[0]
    sample = model.prepare(image, QUESTIONS[1])
    geometry = model.family.patch_geometry(model.processor, sample)
    assert geometry.shape == (tile_rows * SIDE, tile_cols * SIDE)
    assert geometry.crop == "stretch"
    n_tiles = tile_rows * tile_cols
    global_tokens = set(range(n_tiles * SIDE**2, (n_tiles + 1) * SIDE**2))
    assert not set(geometry.tokens) & global_tokens
    token_map = geometry.to_map(np.arange(sample.positions("image", 0).numel()))
    clean = _image_features(model, sample)
    h, w = shape
    for r in range(tile_rows):
        for c in range(tile_cols):
            pixels = np.asarray(image).copy()
            top, left = r * h // tile_rows, c * w // tile_cols
            pixels[top + h // tile_rows // 2, left + w // tile_cols // 2] = (
                255 - pixels[top + h // tile_rows // 2, left + w // tile_cols // 2]
            )
            changed = _image_features(model, model.prepare(pixels, QUESTIONS[1]))
            moved = ((clean - changed).abs().amax(-1) > 1e-6).nonzero()
            tile = token_map[r * SIDE : (r + 1) * SIDE, c * SIDE : (c + 1) * SIDE]
            assert set(moved.flatten().tolist()) <= set(tile.flatten().tolist()) | global_tokens
            assert set(moved.flatten().tolist()) & set(tile.flatten().tolist())


def test_image_token_attribution_draws_the_tile_map(model):
    sample = model.prepare(sized_images((16, 40), seed=3), QUESTIONS[1])
    result = greedy_image_attribution(model, sample, n_masks=40)
    assert result.coef.shape == (SIDE, 2 * SIDE)
    assert result.geometry == model.family.patch_geometry(model.processor, sample)


def test_an_image_that_is_not_split_maps_its_global_image(model):
    image_processor = model.processor.image_processor
    image_processor.do_image_splitting = False
    try:
        sample = model.prepare(sized_images((28, 40), seed=3), QUESTIONS[1])
        geometry = model.family.patch_geometry(model.processor, sample)
    finally:
        image_processor.do_image_splitting = True
    assert sample.positions("image", 0).numel() == SIDE**2
    assert geometry == PatchGeometry(SIDE, SIDE, "stretch")
