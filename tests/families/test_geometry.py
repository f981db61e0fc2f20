"""Patch geometry: where each family's image tokens lie on the image.

Image-token maps and object masks use the family's geometry: LLaVA-1.5 maps the
centre crop CLIP's processor keeps, Gemma 3 the whole image SigLIP's processor
stretches to its square; LLaVA-NeXT's tiled layout is refused by name.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny_families import family_model, greedy_image_attribution

from tl_lvlm.analysis.image_tokens import image_token_attribution, object_mass, patch_mask
from tl_lvlm.families import PatchGeometry
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


def test_tiled_family_refuses_image_attribution_by_name():
    model = family_model("llava_next")
    sample = model.prepare(random_images(1, 28, seed=0), QUESTION)
    with pytest.raises(
        NotImplementedError,
        match="LLaVA-NeXT does not support image attribution: "
        "its image tokens are a base image followed by anyres tiles",
    ):
        image_token_attribution(model, sample, baseline="zero", n_masks=20, progress=False)


def test_gemma3_map_uses_the_stretched_geometry():
    model = family_model("gemma3")
    sample = model.prepare(random_images(1, 28, seed=2), QUESTION)
    result = greedy_image_attribution(model, sample, n_masks=40)
    assert result.coef.shape == (4, 4)
    assert result.geometry == PatchGeometry(4, 4, "stretch")
    mass = result.object_mass(_left_strip())
    assert (mass.n_object, mass.n_background) == (4, 12)
    assert mass == object_mass(result.coef, _left_strip(), result.geometry)
