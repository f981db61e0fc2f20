"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP, a two-layer projector, a Llama decoder.

One image is resized on its shorter side and centre-cropped to the CLIP tower's
square input; its ``(image_size / patch_size)**2`` patches (576 for 336 / 14) are
the image tokens, row by row.
"""

from __future__ import annotations

import math

from tl_lvlm.families.base import LVLMFamily
from tl_lvlm.families.geometry import PatchGeometry
from tl_lvlm.inputs import LVLMInputs
from tl_lvlm.inputs.templates import LLAVA_15_TEMPLATE


class Llava15Family(LVLMFamily):
    name = "LLaVA-1.5"
    architecture = "LlavaForConditionalGeneration"
    template = LLAVA_15_TEMPLATE

    def patch_geometry(self, processor, sample: LVLMInputs) -> PatchGeometry:
        """The CLIP patch grid, over the centre crop (or the whole image without a crop)."""
        self.require("image_attribution")
        n_image = sample.positions("image", 0).numel()
        grid = math.isqrt(n_image)
        if grid * grid != n_image:
            raise ValueError(
                f"{self.name}: {n_image} image tokens do not form the square CLIP patch grid"
            )
        crops = getattr(processor.image_processor, "do_center_crop", True)
        return PatchGeometry(grid, grid, "center" if crops else "stretch")
