"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): LLaVA with dynamic high-resolution tiling.

The image is split into tiles on one of ``image_grid_pinpoints`` (the number of
image tokens follows its size): a downscaled base image, then the tiles' features
unpadded with one newline feature per row. That is no single patch grid of one
image region, so image-token maps are refused.
"""

from __future__ import annotations

from tl_lvlm.families.base import LVLMFamily


class LlavaNextFamily(LVLMFamily):
    name = "LLaVA-NeXT"
    architecture = "LlavaNextForConditionalGeneration"
    fixed_resolution = False
    refused_analyses = {
        "image_attribution": (
            "its image tokens are a base image followed by anyres tiles with a newline token "
            "per row, not one patch grid of one image region, so an image-token map has no "
            "single layout on the image"
        )
    }
