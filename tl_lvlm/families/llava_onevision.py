"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): SigLIP, a 2-layer projector,
a Qwen2 decoder, anyres tiling.

Quirks: the image is a base image (the SigLIP square, ``(image_size / patch)**2``
tokens) followed by the anyres tiles' features, unpadded to the image's aspect, with
one newline token after each row of tile features; all of them are ``<image>``
tokens, so the image group holds the base image, the tiles and the newlines. The
decoder is Qwen2 with ordinary RoPE, which TransformerBridge reimplements (as on
LLaVA), so the default hooks, engine and knockout apply. Without torchvision the
processor is built without its video processor (:mod:`tl_lvlm.families.processors`).
"""

from __future__ import annotations

from pathlib import Path

from tl_lvlm.families.base import LVLMFamily
from tl_lvlm.families.processors import (
    llava_onevision_processor_class,
    load_image_processor_only,
)


class LlavaOnevisionFamily(LVLMFamily):
    name = "LLaVA-OneVision"
    architecture = "LlavaOnevisionForConditionalGeneration"
    fixed_resolution = False
    refused_analyses = {
        "image_attribution": (
            "its image tokens are a base image followed by anyres tiles with a newline token "
            "per row of tile features, two grids of the same image rather than one patch grid "
            "of one image region, so an image-token map has no single layout on the image"
        )
    }

    @classmethod
    def load_processor(cls, path: str | Path):
        return load_image_processor_only(llava_onevision_processor_class(), path)
