"""Where an LVLM's image tokens sit on the image: the patch grid and the preprocessing crop.

Image-token maps reshape the ``n_image`` attributions to the token grid, and object
masks (drawn on the original image) are mapped to that grid through the same
crop or resize the processor applied to the image. :class:`TiledPatchGeometry` draws two
grids of one image (an anyres base image and its tiles) as one map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from jaxtyping import Bool, Float, Num
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

    def to_map(self, values: Num[np.ndarray, " n_image"]) -> Num[np.ndarray, "rows cols"]:
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

    def token_boxes(self, height: int, width: int) -> dict[int, tuple[float, float, float, float]]:
        """Image token index (into the image group) -> ``(top, left, bottom, right)`` of the
        ``height x width`` original image that the token covers; tokens not in the map
        (newlines, ...) are absent."""
        top, left, h, w = self.region(height, width)
        tokens = self.tokens if self.tokens is not None else range(self.n_tokens)
        boxes = {}
        for k, token in enumerate(tokens):
            r, c = divmod(k, self.cols)
            boxes[token] = (
                top + r * h / self.rows,
                left + c * w / self.cols,
                top + (r + 1) * h / self.rows,
                left + (c + 1) * w / self.cols,
            )
        return boxes

    def map_extent(self, height: int, width: int) -> tuple[float, float, float, float]:
        """``(top, left, bottom, right)`` of the map's grid in the original image's pixels."""
        top, left, h, w = self.region(height, width)
        return top, left, top + h, left + w

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


@dataclass(frozen=True)
class TiledPatchGeometry(PatchGeometry):
    """An anyres image's two grids drawn as one map in the image's coordinates.

    The image tokens are a base grid (``base_rows x base_cols``, the whole image resized
    to the tower's square) and a finer tile grid (``rows x cols``, the tiles' features
    after HF's unpadding) over ``extent``, which may reach past the image's edges where
    the unpadding kept part of the processor's padding. The map is on the tile grid: a
    cell holds its tile token's value plus the base tokens' values, each spread over the
    cells in proportion to the area of the base token that falls in them, so the map adds
    up to the sum over the map's tokens. Newline tokens are ablated but not in the map.

    Attributes:
        rows, cols, tokens: the tile grid and its tokens, row-major (as in
            :class:`PatchGeometry`; ``crop`` is ``"stretch"``).
        base_rows, base_cols, base_tokens: the base grid over the whole image, row-major.
        extent: ``(top, left, bottom, right)`` of the tile grid as fractions of the
            image's height and width (``(0, 0, 1, 1)``: exactly the image).
    """

    base_rows: int = 1
    base_cols: int = 1
    base_tokens: tuple[int, ...] = ()
    extent: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokens is None or self.crop != "stretch":
            raise ValueError("a tiled geometry names its tile tokens and stretches its grids")
        if len(self.base_tokens) != self.base_rows * self.base_cols:
            raise ValueError(
                f"{len(self.base_tokens)} base tokens for a {self.base_rows} x "
                f"{self.base_cols} base grid"
            )
        top, left, bottom, right = self.extent
        if not (top < bottom and left < right):
            raise ValueError(f"extent {self.extent} is not (top, left, bottom, right)")

    def _spread(
        self,
    ) -> tuple[Float[np.ndarray, "rows base_rows"], Float[np.ndarray, "cols base_cols"]]:
        """Which share of each base row (column) falls in each tile-grid row (column)."""
        top, left, bottom, right = self.extent
        return (
            _interval_shares(self.base_rows, self.rows, top, bottom),
            _interval_shares(self.base_cols, self.cols, left, right),
        )

    def to_map(self, values: Num[np.ndarray, " n_image"]) -> Num[np.ndarray, "rows cols"]:
        """Per-image-token values -> the ``[rows, cols]`` map on the tile grid (the base
        tokens' values spread over it by area)."""
        values = np.asarray(values)
        fine = super().to_map(values)
        base = values[list(self.base_tokens)].reshape(self.base_rows, self.base_cols)
        rows, cols = self._spread()
        return fine + rows @ base @ cols.T

    def _cell_edges(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        top, left, bottom, right = self.extent
        return (
            np.linspace(top * height, bottom * height, self.rows + 1),
            np.linspace(left * width, right * width, self.cols + 1),
        )

    def token_boxes(self, height: int, width: int) -> dict[int, tuple[float, float, float, float]]:
        ys, xs = self._cell_edges(height, width)
        boxes = {}
        for k, token in enumerate(self.tokens):
            r, c = divmod(k, self.cols)
            boxes[token] = (ys[r], xs[c], ys[r + 1], xs[c + 1])
        for k, token in enumerate(self.base_tokens):
            r, c = divmod(k, self.base_cols)
            boxes[token] = (
                r * height / self.base_rows,
                c * width / self.base_cols,
                (r + 1) * height / self.base_rows,
                (c + 1) * width / self.base_cols,
            )
        return boxes

    def map_extent(self, height: int, width: int) -> tuple[float, float, float, float]:
        top, left, bottom, right = self.extent
        return top * height, left * width, bottom * height, right * width

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The tile grid's extent, rounded and clipped to the image (the part drawn)."""
        top, left, bottom, right = self.extent
        t, lf = max(0, round(top * height)), max(0, round(left * width))
        b, r = min(height, round(bottom * height)), min(width, round(right * width))
        return t, lf, b - t, r - lf

    def patch_mask(self, object_mask: ArrayLike) -> Bool[np.ndarray, "rows cols"]:
        """Object mask ``[height, width]`` -> object cells ``[rows, cols]`` of the tile grid:
        at least half of the cell's part inside the image is object (cells that lie only
        on padding are background)."""
        mask = np.asarray(object_mask)
        if mask.ndim != 2 or min(mask.shape) < 1:
            raise ValueError(f"object_mask must be a 2-D [height, width] array, got {mask.shape}")
        height, width = mask.shape
        ys, xs = self._cell_edges(height, width)
        ys = np.clip(np.round(ys), 0, height).astype(int)
        xs = np.clip(np.round(xs), 0, width).astype(int)
        out = np.zeros((self.rows, self.cols), dtype=bool)
        for r in range(self.rows):
            for c in range(self.cols):
                inside = mask[ys[r] : ys[r + 1], xs[c] : xs[c + 1]]
                out[r, c] = inside.size > 0 and np.count_nonzero(inside) >= 0.5 * inside.size
        return out


def _interval_shares(n_base: int, n_fine: int, start: float, stop: float) -> np.ndarray:
    """``[n_fine, n_base]``: the share of each of ``n_base`` equal intervals of [0, 1] that
    lies in each of ``n_fine`` equal intervals of [start, stop]; each column sums to 1 (a
    base interval's part outside [start, stop] goes to its fine intervals in proportion)."""
    base = np.linspace(0.0, 1.0, n_base + 1)
    fine = np.linspace(start, stop, n_fine + 1)
    lo = np.maximum(fine[:-1, None], base[None, :-1])
    hi = np.minimum(fine[1:, None], base[None, 1:])
    overlap = np.clip(hi - lo, 0.0, None)
    total = overlap.sum(0, keepdims=True)
    if (total <= 0).any():
        raise ValueError(f"the tile grid over [{start}, {stop}] misses part of the base grid")
    return overlap / total
