"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): SigLIP, a 2-layer projector,
a Qwen2 decoder, anyres tiling.

Quirks: the image is a base image (the SigLIP square, ``(image_size / patch)**2``
tokens) followed by the anyres tiles' features, unpadded to the image's aspect, with
one newline token after each row of tile features; all of them are ``<image>``
tokens, so the image group holds the base image, the tiles and the newlines. The
decoder is Qwen2 with ordinary RoPE, which TransformerBridge reimplements (as on
LLaVA), so the default hooks, engine and knockout apply. Without torchvision the
processor is built without its video processor (:mod:`tl_lvlm.families.processors`).

Image-token maps are LLaVA-NeXT's (:class:`~tl_lvlm.families.llava_next.LlavaNextFamily`,
of which this is a variant): the base grid and the unpadded tiles as one map in the
image's coordinates, newlines ablated but left out; where HF interpolates the tiles' grid
down (``vision_aspect_ratio = "anyres_max_N"``), the map has the interpolated grid over the
same extent.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tl_lvlm.families.llava_next import LlavaNextFamily
from tl_lvlm.families.processors import (
    llava_onevision_processor_class,
    load_image_processor_only,
)


class LlavaOnevisionFamily(LlavaNextFamily):
    name = "LLaVA-OneVision"
    architecture = "LlavaOnevisionForConditionalGeneration"
    fixed_resolution = False

    @classmethod
    def load_processor(cls, path: str | Path):
        return load_image_processor_only(llava_onevision_processor_class(), path)

    def pack_kwargs(self) -> Mapping[str, Any]:
        return {"vision_aspect_ratio": self.config.vision_aspect_ratio}
