"""What :meth:`HookedLVLM.prepare` accepts as images and questions.

Images become RGB ``PIL.Image`` objects before they reach the processor, so every
accepted form of one picture gives the same ``pixel_values``:

- a ``PIL.Image`` (any mode; transparency is composited onto white, as the Hugging
  Face image processors do; an EXIF orientation tag, as phone cameras write it, is
  applied, so the model sees the picture the way a viewer shows it),
- a ``uint8`` array ``HxWx3`` (RGB) or ``HxW`` (grayscale, repeated into RGB),
- a float array in ``[0, 1]``, ``HxWx3`` or ``HxW``, read as intensities (0 = black,
  1 = white) and quantized to 8 bits (``round(255 * x)``) like an image file,
- a ``str`` or ``pathlib.Path`` to an image file of one of :data:`IMAGE_SUFFIXES`
  (png, jpg, webp, bmp, tiff; a gif's first frame), read by :func:`read_image`.

The CLI reads image folders (and the image bytes of a saved Hugging Face dataset) with the
same :func:`read_image`, so a file gives the same picture through ``tl-lvlm --images DIR``
as through ``model.prepare(path)``.

``image_size`` (``prepare(..., image_size=)``, :func:`check_image_size`) resizes every
converted image to one ``W x H`` (bicubic, as the image processors resize), the alternative to
the per-geometry mean baseline of mixed sizes (:mod:`tl_lvlm.ablation.baseline`).

Anything else raises before the processor sees it, with a message naming the
accepted forms (never the array's values).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from attribution.own_checks import checks_own_arguments

#: Image file suffixes read (case-insensitive); a gif or multi-page tiff gives its first frame.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")

ACCEPTED_IMAGES = (
    "a PIL image, a uint8 array HxWx3 or HxW (grayscale), a float array in [0, 1] "
    "HxWx3 or HxW, or a str/pathlib.Path to an image file"
)


def to_rgb_images(images, image_size: int | tuple[int, int] | None = None) -> list[Image.Image]:
    """One image or a list/tuple of images, each in an accepted form, as RGB PIL images.

    ``image_size``: resize each to ``W x H`` (an int: a square), see :func:`check_image_size`.

    Raises:
        TypeError: an object of another type, or an array of another dtype; an
            ``image_size`` that is not an int or a ``(width, height)`` pair.
        ValueError: an array of another shape, a float array outside ``[0, 1]`` (or
            with NaN), a path that is not a readable image file, an empty list, an
            ``image_size`` below 1.
    """
    size = check_image_size(image_size)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError(f"prepare needs at least one image: {ACCEPTED_IMAGES}")
    rgb = [_to_rgb(image, i) for i, image in enumerate(items)]
    if size is None:
        return rgb
    return [image if image.size == size else image.resize(size, Image.BICUBIC) for image in rgb]


@checks_own_arguments
def check_image_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``image_size`` as a ``(width, height)`` pair: an int ``S`` is ``(S, S)``; None stays None.

    Raises:
        TypeError: neither None, an int nor a pair of ints.
        ValueError: a side below 1.
    """
    if image_size is None:
        return None
    pair = (image_size, image_size) if _is_int(image_size) else image_size
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(map(_is_int, pair)):
        raise TypeError(
            f"image_size must be an int (a square) or a (width, height) pair of ints, "
            f"got {image_size!r}"
        )
    if min(pair) < 1:
        raise ValueError(f"image_size sides must be positive pixel counts, got {image_size!r}")
    return int(pair[0]), int(pair[1])


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _to_rgb(image, index: int) -> Image.Image:
    which = f"image {index}"
    if isinstance(image, Image.Image):
        return _rgb(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"{which}: no image file at {str(path)!r}; pass {ACCEPTED_IMAGES}")
        return read_image(path, which)
    if isinstance(image, np.ndarray):
        return Image.fromarray(_as_uint8_rgb(image, which), mode="RGB")
    raise TypeError(f"{which} is of type {type(image).__name__}; pass {ACCEPTED_IMAGES}")


def read_image(path: str | os.PathLike | io.IOBase, which: str | None = None) -> Image.Image:
    """The image file at ``path`` (or an open binary file) as an RGB PIL image, decoded in full.

    A gif or multi-page tiff gives its first frame; EXIF orientation is applied and
    transparency composited onto white (see the module doc).

    Raises:
        ValueError: the file cannot be opened or decoded (unknown format, truncated or
            corrupt data); the message names ``which`` (default: the path) and the cause.
    """
    path = Path(path) if isinstance(path, (str, os.PathLike)) else path
    try:
        with Image.open(path) as img:
            img.seek(0)
            img.load()  # decode now: a truncated file fails here, not in the processor
            return _rgb(img.copy())  # a copy outlives the closed file
    except (UnidentifiedImageError, OSError, ValueError, EOFError) as e:
        if isinstance(path, Path):
            where = f"{which}: {str(path)!r}" if which else repr(str(path))
        else:
            where = which or "the image data"
        raise ValueError(f"{where} is not a readable image file ({e})") from None


def _rgb(image: Image.Image) -> Image.Image:
    # exif_transpose returns a transposed copy without the tag, so applying it twice is a no-op.
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or "transparency" in image.info:
        # transformers' convert_to_rgb: transparent pixels become white.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _as_uint8_rgb(a: np.ndarray, which: str) -> np.ndarray:
    described = f"{which} is an array of shape {tuple(a.shape)} and dtype {a.dtype}"
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3) or 0 in a.shape:
        hint = (
            " (channels first? use a.transpose(1, 2, 0))" if a.ndim == 3 and a.shape[0] == 3 else ""
        )
        raise ValueError(f"{described}{hint}; pass {ACCEPTED_IMAGES}")
    if a.dtype == np.uint8:
        out = a
    elif np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        if not finite.all() or a.min() < 0.0 or a.max() > 1.0:
            values = a[finite]
            span = f" with values in [{values.min():g}, {values.max():g}]" if values.size else ""
            raise ValueError(
                f"{described}{span}{'' if finite.all() else ' and NaN/inf'}; float images must "
                "be intensities in [0, 1] (for 0-255 values use a.astype(np.uint8)); "
                f"pass {ACCEPTED_IMAGES}"
            )
        out = np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise TypeError(
            f"{described}; pass {ACCEPTED_IMAGES} (for 0-255 integers use a.astype(np.uint8))"
        )
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out)


@checks_own_arguments
def check_questions(questions: Sequence[str], markers: Sequence[str]) -> None:
    """Refuse questions that contain an image marker: the template places the one image.

    Raises:
        TypeError: a question that is not a string.
        ValueError: a question containing one of ``markers`` (e.g. ``"<image>"``).
    """
    for i, question in enumerate(questions):
        if not isinstance(question, str):
            raise TypeError(
                f"question {i} is of type {type(question).__name__}; questions are strings"
            )
        found = [m for m in markers if m and m in question]
        if found:
            raise ValueError(
                f"question {i} contains {found[0]!r}, but the template already places the "
                "image; pass the question text alone (prepare puts it after the image)"
            )
