"""Patch geometry: where each family's image tokens lie on the image.

Image-token maps and object masks use the family's geometry: LLaVA-1.5 maps the
centre crop CLIP's processor keeps, Gemma 3 the whole image SigLIP's processor
stretches to its square; LLaVA-NeXT's base image and tiles are one map in the image's
coordinates (:class:`TiledPatchGeometry`).
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny_families import family_model, greedy_image_attribution

from tl_lvlm.analysis.image_tokens import object_mass, patch_mask, plot_image_attribution
from tl_lvlm.families import PatchGeometry
from tl_lvlm.families.geometry import TiledPatchGeometry
from tl_lvlm.testing import random_images

QUESTION = "Which number is written here?"


def _left_strip(height: int = 28, width: int = 56) -> np.ndarray:
    """An object covering the left eighth of a wide image."""
    mask = np.zeros((height, width), bool)
    mask[:, : width // 8] = True
    return mask


def test_center_crop_drops_what_the_processor_crops_away():
    # The central 28 x 28 square of a 28 x 56 image starts at column 14: no object.
    assert not PatchGeometry(4, 4, "center").patch_mask(_left_strip()).any()
    assert np.array_equal(patch_mask(_left_strip(), 4), np.zeros((4, 4), bool))


def test_stretch_maps_the_whole_image():
    mask = PatchGeometry(4, 4, "stretch").patch_mask(_left_strip())
    # The left eighth is half of the first patch column: exactly the 0.5 threshold.
    assert mask[:, 0].all() and not mask[:, 1:].any()


def test_region_and_token_subset():
    assert PatchGeometry(2, 4, "center").region(100, 100) == (25, 0, 50, 100)
    geometry = PatchGeometry(2, 2, "stretch", tokens=(1, 2, 3, 4))
    np.testing.assert_array_equal(geometry.to_map(np.arange(6.0)), [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="4 tokens for a 1 x 2 grid"):
        PatchGeometry(1, 2, tokens=(0, 1, 2, 3))


@pytest.mark.parametrize(
    "family, want",
    [("llava", PatchGeometry(4, 4, "center")), ("gemma3", PatchGeometry(4, 4, "stretch"))],
    ids=["llava", "gemma3"],
)
def test_family_geometry(family, want):
    model = family_model(family)
    sample = model.prepare(random_images(1, 28, seed=0), QUESTION)
    assert model.family.patch_geometry(model.processor, sample) == want


def _tiled() -> TiledPatchGeometry:
    """A 2 x 2 base grid (tokens 0-3) and a 2 x 4 tile grid (tokens 4-7, newline 8, tokens
    9-12, newline 13) whose extent reaches a quarter of a row past the top and bottom."""
    return TiledPatchGeometry(
        2, 4, "stretch", tokens=(4, 5, 6, 7, 9, 10, 11, 12),
        base_rows=2, base_cols=2, base_tokens=(0, 1, 2, 3), extent=(-0.25, 0.0, 1.25, 1.0),
    )  # fmt: skip


def test_tiled_map_spreads_the_base_tokens_by_area_and_leaves_newlines_out():
    geometry = _tiled()
    values = np.zeros(14)
    values[[8, 13]] = 1e6  # newlines: ablated, never drawn
    values[5] = 1.0  # tile row 0, column 1
    values[2] = 8.0  # base token (1, 0): image rows [0.5, 1), columns [0, 0.5)
    got = geometry.to_map(values)
    # Tile rows cover [-0.25, 0.5) and [0.5, 1.25): the base token's rows lie in row 1,
    # its columns [0, 0.5) are tile columns 0 and 1 (a quarter each): 4 per cell.
    want = np.zeros((2, 4))
    want[0, 1] = 1.0
    want[1, :2] = 4.0
    np.testing.assert_allclose(got, want)
    assert got.sum() == pytest.approx(9.0)  # the map adds up to its tokens' values
    values[0] = 2.0  # base (0, 0): image rows [0, 0.5), all in tile row 0, columns 0 and 1
    np.testing.assert_allclose(geometry.to_map(values)[:, :2], want[:, :2] + [[1, 1], [0, 0]])


def test_tiled_token_boxes_in_image_pixels():
    boxes = _tiled().token_boxes(40, 80)
    assert set(boxes) == set(range(14)) - {8, 13}
    assert boxes[2] == pytest.approx((20, 0, 40, 40))  # base (1, 0)
    assert boxes[4] == pytest.approx((-10, 0, 20, 20))  # tile (0, 0): reaches past the top
    assert boxes[12] == pytest.approx((20, 60, 50, 80))  # tile (1, 3)


def test_tiled_patch_mask_counts_only_the_image_part_of_a_cell():
    mask = np.zeros((40, 80), bool)
    mask[:12] = True  # rows 0-11: 12 of the 20 image rows of tile row 0 (30 with padding)
    assert _tiled().patch_mask(mask).tolist() == [[True] * 4, [False] * 4]
    assert _tiled().region(40, 80) == (0, 0, 40, 80)
    assert _tiled().map_extent(40, 80) == pytest.approx((-10, 0, 50, 80))
    assert PatchGeometry(4, 4, "center").map_extent(28, 56) == (0, 14, 28, 42)


def test_tiled_map_is_drawn_on_its_extent(tmp_path):
    """The overlay spans the grid's extent (past the image here), the axes the image."""
    import matplotlib

    matplotlib.use("Agg")
    mask = np.zeros((40, 80), bool)
    mask[:12] = True
    path = tmp_path / "map.png"
    image = np.zeros((40, 80, 3), np.uint8)
    coef = np.arange(8.0).reshape(2, 4)
    plot_image_attribution(coef, image, path, geometry=_tiled(), object_mask=mask)
    assert path.stat().st_size > 0


def test_tiled_geometry_checks_its_grids():
    with pytest.raises(ValueError, match="3 base tokens for a 2 x 2 base grid"):
        TiledPatchGeometry(1, 1, "stretch", tokens=(0,), base_rows=2, base_cols=2,
                           base_tokens=(1, 2, 3))  # fmt: skip
    with pytest.raises(ValueError, match="names its tile tokens"):
        TiledPatchGeometry(1, 1, "stretch", base_tokens=(1,))
    with pytest.raises(ValueError, match="misses part of the base grid"):
        TiledPatchGeometry(1, 1, "stretch", tokens=(0,), base_tokens=(1,), base_rows=1,
                           base_cols=1, extent=(0.0, 2.0, 1.0, 3.0)).to_map(np.ones(2))  # fmt: skip


def test_llava_next_map_combines_the_base_image_and_the_tiles():
    """Image-token attribution on LLaVA-NeXT: every image token ablated, one map on the tile
    grid (a 28 x 56 image: 2 tiles of 4 x 4, base 4 x 4, 4 newlines)."""
    model = family_model("llava_next")
    sample = model.prepare(random_images(1, 28, seed=0)[0].resize((56, 28)), QUESTION)
    result = greedy_image_attribution(model, sample, n_masks=120)
    assert isinstance(result.geometry, TiledPatchGeometry)
    assert result.fit.coef.shape == (16 + 4 * 9,)
    assert result.coef.shape == (4, 8)
    np.testing.assert_allclose(result.coef, result.geometry.to_map(result.fit.coef))
    newlines = [16 + 9 * r + 8 for r in range(4)]
    drawn = result.geometry.tokens + result.geometry.base_tokens
    assert sorted(drawn + tuple(newlines)) == list(range(52))
    assert result.coef.sum() == pytest.approx(np.delete(result.fit.coef, newlines).sum())
    mass = result.object_mass(_left_strip())
    assert (mass.n_object, mass.n_background) == (4, 28)


def test_gemma3_map_uses_the_stretched_geometry():
    model = family_model("gemma3")
    sample = model.prepare(random_images(1, 28, seed=2), QUESTION)
    result = greedy_image_attribution(model, sample, n_masks=40)
    assert result.coef.shape == (4, 4)
    assert result.geometry == PatchGeometry(4, 4, "stretch")
    mass = result.object_mass(_left_strip())
    assert (mass.n_object, mass.n_background) == (4, 12)
    assert mass == object_mass(result.coef, _left_strip(), result.geometry)
