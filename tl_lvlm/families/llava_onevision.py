"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): SigLIP, a 2-layer projector,
a Qwen2 decoder, anyres tiling.

Quirks: the image is a base image (the SigLIP square, ``(image_size / patch)**2``
tokens) followed by the anyres tiles' features, unpadded to the image's aspect, with
one newline token after each row of tile features; all of them are ``<image>``
tokens, so the image group holds the base image, the tiles and the newlines. The
decoder is Qwen2 with ordinary RoPE, which TransformerBridge reimplements (as on
LLaVA), so the default hooks, engine and knockout apply. Without torchvision the
processor is built without its video processor (:mod:`tl_lvlm.families.processors`).

Image-token maps are drawn on the base image's grid, which covers the whole image
(resized to the square, not cropped); the tile and newline tokens are ablated with
the rest in image-token attribution but are not drawn.
"""

from __future__ import annotations

from pathlib import Path

from tl_lvlm.families.base import LVLMFamily
from tl_lvlm.families.geometry import PatchGeometry
from tl_lvlm.families.processors import (
    llava_onevision_processor_class,
    load_image_processor_only,
)
from tl_lvlm.inputs import LVLMInputs


class LlavaOnevisionFamily(LVLMFamily):
    name = "LLaVA-OneVision"
    architecture = "LlavaOnevisionForConditionalGeneration"
    fixed_resolution = False

    @classmethod
    def load_processor(cls, path: str | Path):
        return load_image_processor_only(llava_onevision_processor_class(), path)

    def patch_geometry(self, processor, sample: LVLMInputs) -> PatchGeometry:
        """The base image's grid: the first ``(image_size / patch)**2`` image tokens, over the
        whole image (tiles and newlines are left out of the map)."""
        self.require("image_attribution")
        vision = self.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        n_image = sample.positions("image", 0).numel()
        if n_image < side * side:
            raise ValueError(
                f"{self.name}: the prompt has {n_image} image tokens, fewer than the base "
                f"image's {side} x {side}"
            )
        return PatchGeometry(side, side, "stretch", tokens=tuple(range(side * side)))
