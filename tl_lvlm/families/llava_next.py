"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): LLaVA with dynamic high-resolution tiling.

The image is split into tiles on one of ``image_grid_pinpoints`` (the number of
image tokens follows its size): a base image (the whole image resized to the tower's
square), then the tiles' features, unpadded to the image's aspect, with one newline
feature per row.

Image-token maps (:meth:`LlavaNextFamily.patch_geometry`) are one map in the image's
coordinates, a :class:`~tl_lvlm.families.geometry.TiledPatchGeometry`: the tile grid,
with the base grid's values spread over it by area; newline tokens are ablated but left
out of the map. The layout is read from HF itself, not re-derived: the model's own
``pack_image_features`` is run on features that hold their source (base or tile-canvas
row and column), and HF's image-processing helpers (``select_best_resolution``,
``get_patch_output_size``) give the resize and padding that put the tile canvas on the
image.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tl_lvlm.families.base import LVLMFamily
from tl_lvlm.families.geometry import TiledPatchGeometry
from tl_lvlm.inputs import LVLMInputs

#: The ``kind`` channel of :meth:`LlavaNextFamily.image_token_sources`.
BASE, TILE, NEWLINE = 0, 1, -1


class LlavaNextFamily(LVLMFamily):
    name = "LLaVA-NeXT"
    architecture = "LlavaNextForConditionalGeneration"
    fixed_resolution = False

    def pack_kwargs(self) -> Mapping[str, Any]:
        """The arguments of HF's ``pack_image_features`` besides features, sizes, newline."""
        return {"vision_feature_select_strategy": self.config.vision_feature_select_strategy}

    def image_token_sources(self, sample: LVLMInputs) -> torch.Tensor:
        """Where each of ``sample``'s image tokens comes from: ``[n_image, 3]`` rows of
        ``(kind, row, col)``: ``(BASE, i, j)`` a base-grid token, ``(TILE, R, C)`` a token at
        row ``R``, column ``C`` of the tile canvas's feature grid (all tiles side by side,
        before unpadding; fractional where HF interpolates the tiles' grid down), and
        ``(NEWLINE, -1, -1)``.

        HF's ``pack_image_features`` runs on features that are their own indices, so the
        order (base, unpadded rows, newlines) is HF's.
        """
        vision = self.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        size = sample.extra["image_sizes"][0]
        modeling = sys.modules[type(self.hf_model).__module__]
        n_rows, n_cols = modeling.get_anyres_image_grid_shape(
            size, self.config.image_grid_pinpoints, int(vision.image_size)
        )
        i, j = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        base = torch.stack([torch.full_like(i, BASE), i, j], -1).reshape(1, side * side, 3)
        # Tile (tr, tc) holds canvas rows tr * side + i and columns tc * side + j.
        tr, tc = torch.meshgrid(torch.arange(n_rows), torch.arange(n_cols), indexing="ij")
        rows = (tr.reshape(-1, 1, 1) * side + i).reshape(-1, side * side)
        cols = (tc.reshape(-1, 1, 1) * side + j).reshape(-1, side * side)
        tiles = torch.stack([torch.full_like(rows, TILE), rows, cols], -1)
        features = torch.cat([base, tiles]).float()
        newline = torch.tensor([NEWLINE, -1.0, -1.0])
        packed, _ = self.hf_model.model.pack_image_features(
            image_features=[features], image_sizes=size[None], image_newline=newline,
            **self.pack_kwargs(),
        )  # fmt: skip
        return packed[0]

    def patch_geometry(self, processor, sample: LVLMInputs) -> TiledPatchGeometry:
        """The base grid and the unpadded tile grid of ``sample``'s image as one map in the
        image's coordinates (:class:`~tl_lvlm.families.geometry.TiledPatchGeometry`).

        Raises:
            ValueError: the prompt's image tokens are not those HF packs for its image.
        """
        from transformers.image_processing_utils import (
            get_patch_output_size,
            select_best_resolution,
        )
        from transformers.image_utils import ChannelDimension

        self.require("image_attribution")
        sources = self.image_token_sources(sample)
        n_image = sample.positions("image", 0).numel()
        if sources.shape[0] != n_image:
            raise ValueError(
                f"{self.name}: the prompt has {n_image} image tokens, HF packs "
                f"{sources.shape[0]} for an image of size {sample.extra['image_sizes'][0].tolist()}"
            )
        kind = sources[:, 0]
        base = torch.nonzero(kind == BASE).flatten()
        tile = torch.nonzero(kind == TILE).flatten()
        n_lines = int((kind == NEWLINE).sum())
        side = int(round(len(base) ** 0.5))
        # Base tokens ordered by their grid position, row-major.
        order = (sources[base, 1] * side + sources[base, 2]).argsort()
        # The tile canvas's feature rows / columns that HF's unpadding kept, in canvas pixels.
        vision = self.config.vision_config
        patch = int(vision.image_size) / (int(vision.image_size) // int(vision.patch_size))
        height, width = (int(x) for x in sample.extra["image_sizes"][0])
        best = select_best_resolution((height, width), self.config.image_grid_pinpoints)
        modeling = sys.modules[type(self.hf_model).__module__]
        canvas = torch.arange(best[0] // patch * best[1] // patch).reshape(
            1, int(best[0] // patch), int(best[1] // patch)
        )
        kept = modeling.unpad_image(canvas, (height, width))[0]
        r0, c0 = divmod(int(kept[0, 0]), canvas.shape[2])
        r1, c1 = r0 + kept.shape[0], c0 + kept.shape[1]
        # The processor resized the image to (new_h, new_w) and padded it centrally.
        image = np.broadcast_to(np.zeros(()), (height, width, 1))
        new_h, new_w = get_patch_output_size(image, best, ChannelDimension.LAST)
        pad_top, pad_left = (best[0] - new_h) // 2, (best[1] - new_w) // 2
        extent = (
            (r0 * patch - pad_top) / new_h,
            (c0 * patch - pad_left) / new_w,
            (r1 * patch - pad_top) / new_h,
            (c1 * patch - pad_left) / new_w,
        )
        return TiledPatchGeometry(
            n_lines,
            len(tile) // n_lines,
            "stretch",
            tokens=tuple(tile.tolist()),
            base_rows=side,
            base_cols=side,
            base_tokens=tuple(base[order].tolist()),
            extent=extent,
        )
