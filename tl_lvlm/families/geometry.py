"""Where an LVLM's image tokens sit on the image: the patch grid and the preprocessing crop.

Image-token maps reshape the ``n_image`` attributions to the token grid, and object
masks (drawn on the original image) are mapped to that grid through the same
crop or resize the processor applied to the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from jaxtyping import Bool, Float
from numpy.typing import ArrayLike
from PIL import Image

#: ``"center"``: the processor resizes the shorter side and crops the central square
#: (CLIP's processor, LLaVA-1.5); ``"stretch"``: it resizes the whole image to the
#: grid's aspect without cropping (SigLIP's processor, Gemma 3).
Crop = Literal["center", "stretch"]
CROPS = ("center", "stretch")


@dataclass(frozen=True)
class PatchGeometry:
    """Image tokens laid out row by row over a ``rows x cols`` grid of one image region.

    Attributes:
        rows, cols: the token grid; ``rows * cols`` equals the number of image tokens.
        crop: which part of the original image the grid covers (see :data:`Crop`).
    """

    rows: int
    cols: int
    crop: Crop = "center"
    #: Indices into the image tokens of the grid's tokens, row-major; None = all of
    #: them in order. Image tokens outside the grid (tiles, newlines) are still
    #: ablated, but left out of the map.
    tokens: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"a patch grid needs rows, cols >= 1, got {self.rows} x {self.cols}")
        if self.tokens is not None and len(self.tokens) != self.rows * self.cols:
            raise ValueError(f"{len(self.tokens)} tokens for a {self.rows} x {self.cols} grid")
        if self.crop not in CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; expected one of {CROPS}")

    def to_map(self, values: Float[np.ndarray, " n_image"]) -> Float[np.ndarray, "rows cols"]:
        """Per-image-token values (e.g. coefficients) -> the ``[rows, cols]`` map."""
        values = np.asarray(values)
        if self.tokens is not None:
            values = values[list(self.tokens)]
        if values.shape != (self.n_tokens,):
            raise ValueError(
                f"{values.shape} values do not fill the {self.rows} x {self.cols} patch grid"
            )
        return values.reshape(self.rows, self.cols)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def n_tokens(self) -> int:
        return self.rows * self.cols

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of the original image that the grid covers."""
        if self.crop == "stretch":
            return 0, 0, height, width
        # The processor resizes the shorter side to the crop size, so the crop
        # is the central region with the grid's aspect ratio.
        scale = min(height / self.rows, width / self.cols)
        h, w = round(self.rows * scale), round(self.cols * scale)
        return (height - h) // 2, (width - w) // 2, h, w

    def patch_mask(self, object_mask: ArrayLike) -> Bool[np.ndarray, "rows cols"]:
        """Object mask ``[height, width]`` of the original image -> object patches ``[rows, cols]``.

        A patch is an object patch when at least half of its area is object.
        """
        mask = np.asarray(object_mask)
        if mask.ndim != 2 or min(mask.shape) < 1:
            raise ValueError(f"object_mask must be a 2-D [height, width] array, got {mask.shape}")
        top, left, h, w = self.region(*mask.shape)
        region = mask[top : top + h, left : left + w].astype(np.float32)
        area = Image.fromarray(region, mode="F").resize(
            (self.cols, self.rows), Image.Resampling.BOX
        )
        return np.asarray(area) >= 0.5
