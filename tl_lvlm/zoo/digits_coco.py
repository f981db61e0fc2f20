"""A COCO-format data set of the bundled digits, for ``--coco-annotations`` (tests, ``tl-lvlm
demo``); the testing kit exports it as :mod:`tl_lvlm.testing.coco`.

:func:`write_digit_coco` renders held-out digits (:mod:`tl_lvlm.zoo.digits`, ``original``
style) onto 64x64 white canvases and writes an ``instances_digits.json`` beside them, with
the digit words as categories:

- *single* images: one large main digit and, on every other one, a small distractor digit
  in the corner (a fifth of the main one's side), so the selection must keep them;
- *multi* images: two digits of the same size side by side, which the selection must leave
  out;
- one *tiny* image: a single small digit, covering too little of the image.

:func:`write_digit_styles` writes style folders with class subfolders for ``--styles``.

Segmentations cycle through the three forms pycocotools reads: a polygon (the digit's
bounding box), an uncompressed RLE (``counts`` a list) and a compressed RLE (``counts`` a
string), the RLEs of the digit's ink thickened by two pixels.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.ndimage import binary_dilation

from tl_lvlm.zoo.digits import load_digit_images
from tl_lvlm.zoo.questions import DIGIT_WORDS

CANVAS = 64
#: (left, top, side) of the main digit, its distractor, the two digits of a multi image and
#: the tiny image's digit.
MAIN = (2, 2, 44)
DISTRACTOR = (52, 52, 9)
PAIR = ((1, 17, 30), (33, 17, 30))
TINY = (26, 26, 12)
#: Darker than this (0-255) is ink.
INK = 128


@dataclass(frozen=True)
class DigitCoco:
    """What :func:`write_digit_coco` wrote.

    Attributes:
        images: the image directory.
        annotations: the ``instances_digits.json`` file.
        single: file name -> the main digit's word, for the images the selection must keep.
        multi: the file names it must leave out (multi-object and tiny images).
    """

    images: Path
    annotations: Path
    single: dict[str, str]
    multi: tuple[str, ...]


def write_digit_coco(root: str | os.PathLike, n_single: int = 6, n_multi: int = 2) -> DigitCoco:
    """Write the digits COCO set under ``root`` (``images/`` and ``instances_digits.json``)."""
    root = Path(root)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    digits, values = load_digit_images(split="test", style="original")
    cursor = iter(range(len(digits)))
    data = {
        "images": [],
        "annotations": [],
        "categories": [{"id": d + 1, "name": word} for d, word in enumerate(DIGIT_WORDS)],
    }
    single, multi = {}, []

    def add_image(name: str, placements: list[tuple[int, int, int]]) -> list[int]:
        canvas = Image.new("RGB", (CANVAS, CANVAS), (255, 255, 255))
        drawn = []
        for left, top, side in placements:
            i = next(cursor)
            canvas.paste(digits[i].resize((side, side), Image.BICUBIC), (left, top))
            drawn.append((i, left, top, side))
        canvas.save(images_dir / name)
        image_id = len(data["images"]) + 1
        data["images"].append(
            {"id": image_id, "file_name": name, "width": CANVAS, "height": CANVAS}
        )
        pixels = np.asarray(canvas.convert("L"))
        for i, left, top, side in drawn:
            box = np.zeros((CANVAS, CANVAS), bool)
            box[top : top + side, left : left + side] = True
            # The object is its ink thickened a little, as an annotator's outline would be.
            ink = binary_dilation((pixels < INK) & box, iterations=2) & box
            data["annotations"].append(
                _annotation(len(data["annotations"]) + 1, image_id, int(values[i]) + 1, ink)
            )
        return [int(values[i]) for i, *_ in drawn]

    for k in range(n_single):
        name = f"single-{k}.png"
        placements = [MAIN, DISTRACTOR] if k % 2 else [MAIN]
        single[name] = DIGIT_WORDS[add_image(name, placements)[0]]
    for k in range(n_multi):
        name = f"multi-{k}.png"
        add_image(name, list(PAIR))
        multi.append(name)
    add_image("tiny.png", [TINY])
    multi.append("tiny.png")
    annotations = root / "instances_digits.json"
    annotations.write_text(json.dumps(data))
    return DigitCoco(images_dir, annotations, single, tuple(multi))


def _annotation(ann_id: int, image_id: int, category: int, ink: np.ndarray) -> dict:
    """A COCO instance for the ``ink`` mask, in the segmentation form ``ann_id`` picks."""
    ys, xs = np.nonzero(ink)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    form = ann_id % 3
    if form == 0:  # polygon: the ink's bounding box
        segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        area = float(
            mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(segmentation, *ink.shape)))
        )
    else:
        rle = mask_utils.encode(np.asfortranarray(ink.astype(np.uint8)))
        area = float(mask_utils.area(rle))
        if form == 1:  # uncompressed: run lengths, column-major, starting with background
            flat = ink.flatten(order="F").astype(np.int8)
            changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
            counts = np.diff(np.concatenate([[0], changes])).tolist()
            segmentation = {"size": list(ink.shape), "counts": counts}
        else:
            segmentation = {"size": list(ink.shape), "counts": rle["counts"].decode()}
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "segmentation": segmentation,
        "area": area,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "iscrowd": 0,
    }


def write_digit_styles(
    root: str | os.PathLike,
    styles: tuple[str, ...] = ("original", "inverted"),
    digits: tuple[int, ...] = (1, 4, 7),
    n_per_class: int = 1,
) -> dict[str, Path]:
    """Write held-out digits as style folders with class subfolders (the DomainNet layout).

    ``root/{style}/{word}/{k}.png`` for every style of :data:`tl_lvlm.zoo.digits.STYLES`
    given, digit and ``k < n_per_class``; the same digit scans in every style, so that the
    styles differ in appearance only.

    Returns:
        style -> its directory, as ``--styles style=DIR`` takes them.
    """
    root = Path(root)
    dirs = {}
    for style in styles:
        images, values = load_digit_images(split="test", style=style)
        dirs[style] = root / style
        for digit in digits:
            folder = dirs[style] / DIGIT_WORDS[digit]
            folder.mkdir(parents=True, exist_ok=True)
            for k, i in enumerate(np.flatnonzero(values == digit)[:n_per_class]):
                images[i].save(folder / f"{k}.png")
    return dirs
