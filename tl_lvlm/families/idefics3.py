"""Idefics3 (``Idefics3ForConditionalGeneration``): a SigLIP-style tower on image tiles, a
pixel-shuffle connector, a Llama decoder at ``model.text_model``.

Quirks:

- the processor resizes an image to its longest edge, stretches it to whole tiles
  (``max_image_size``) and splits it into a grid of tiles plus a global image (the
  whole image resized to one tile); a tile's patches are pixel-shuffled by
  ``scale_factor`` into ``image_seq_len`` tokens. The prompt holds each tile as
  ``<fake_token_around_image><row_r_col_c>`` and its ``<image>`` tokens, a newline
  after each row of tiles, then ``\\n<fake_token_around_image><global-img>``, the global
  image's tokens and a closing ``<fake_token_around_image>``;
- image group: the ``<image>`` tokens only, the positions the connector's features
  fill. The fake, row/column, global and newline tokens are text embeddings the model
  reads as it reads any text, so image-K/V ablation leaves them alone, and token groups
  leave the markers between tiles in no group (``interleaved_image``). The marker
  before the first tile belongs to the prefix, the closing one to the question group.
  With scope ``"text"`` the markers between tiles are image-side queries (they come
  before the last image token) and see the clean image; scope ``"all"`` ablates what
  they see as it does for the image tokens;
- ``pixel_values`` are ``[batch, n_tiles, 3, tile, tile]`` with a
  ``pixel_attention_mask``; rows with fewer tiles are padded with all-zero tiles,
  which the model drops;
- the decoder is Llama with ordinary RoPE, which TransformerBridge reimplements
  (TransformerLens 4.3's ``Idefics3ArchitectureAdapter``), so the default hooks, the
  engine and knockout apply.

Image-token maps place every tile's tokens where the tile lies in the (stretched)
image, row-major within a tile as the pixel shuffle orders them; the global image's
tokens are ablated with the rest in image-token attribution but left out of the map.
"""

from __future__ import annotations

import re

import torch
from jaxtyping import Int
from torch import Tensor

from tl_lvlm.families.base import LVLMFamily
from tl_lvlm.families.geometry import PatchGeometry
from tl_lvlm.inputs import LVLMInputs

_TILE_TOKEN = re.compile(r"<row_(\d+)_col_(\d+)>")


class Idefics3Family(LVLMFamily):
    name = "Idefics3"
    architecture = "Idefics3ForConditionalGeneration"
    fixed_resolution = False
    interleaved_image = True

    @classmethod
    def image_text(cls, processor, ids: Int[Tensor, " pos"], image: Int[Tensor, " n_image"]) -> str:
        """The tiles' and global image's text: from the ``<fake_token_around_image>`` and the
        tile or global tag before the first image token to the one after the last."""
        return processor.tokenizer.decode(ids[int(image[0]) - 2 : int(image[-1]) + 2])

    @property
    def decoder(self) -> torch.nn.Module:
        return self.hf_model.model.text_model

    @property
    def tile_side(self) -> int:
        """Side of a tile's grid of image tokens: patches per side over the pixel shuffle."""
        vision = self.config.vision_config
        return int(vision.image_size) // int(vision.patch_size) // int(self.config.scale_factor)

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens per tile (and for the global image): the processor's ``image_seq_len``."""
        return self.tile_side**2

    def tile_grid(self, processor, sample: LVLMInputs) -> tuple[int, int]:
        """``(rows, cols)`` of row 0's tiles, read from its last ``<row_r_col_c>`` token;
        ``(0, 0)`` when the image was not split (the global image alone)."""
        image = sample.positions("image", 0)
        n_tiles = image.numel() // self.tokens_per_tile - 1
        if n_tiles == 0:
            return 0, 0
        last_tile = int(image[(n_tiles - 1) * self.tokens_per_tile])
        tag = processor.tokenizer.decode(sample.input_ids[0, last_tile - 1 : last_tile])
        match = _TILE_TOKEN.fullmatch(tag)
        if match is None or int(match[1]) * int(match[2]) != n_tiles:
            raise ValueError(
                f"{self.name}: the token before the last tile's image tokens is {tag!r}, not the "
                f"<row_r_col_c> tag of a grid of {n_tiles} tiles"
            )
        return int(match[1]), int(match[2])

    def patch_geometry(self, processor, sample: LVLMInputs) -> PatchGeometry:
        """The tiles' token grids side by side as the tiles lie in the image (stretched to
        whole tiles, not cropped); the global image's tokens are left out. An image that was
        not split is its global image alone, one grid over the whole image."""
        self.require("image_attribution")
        side = self.tile_side
        n_image = sample.positions("image", 0).numel()
        if n_image % self.tokens_per_tile:
            raise ValueError(
                f"{self.name}: {n_image} image tokens are not whole tiles of {self.tokens_per_tile}"
            )
        rows, cols = self.tile_grid(processor, sample)
        if rows == 0:
            return PatchGeometry(side, side, "stretch")
        tokens = [
            ((r * cols + c) * side + i) * side + j
            for r in range(rows)
            for i in range(side)
            for c in range(cols)
            for j in range(side)
        ]
        return PatchGeometry(rows * side, cols * side, "stretch", tokens=tuple(tokens))
