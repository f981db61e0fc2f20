"""Image sets for the CLI: a directory of image files, or a builtin set by name.

Builtins:

``random``  deterministic random RGB images at the model's image size
            (:func:`tl_lvlm.zoo.tiny_llava.random_images`); no labels.
``digits``  held-out handwritten digits in the ``original`` style
            (:func:`tl_lvlm.zoo.digits.load_digit_images`), labelled with the digit's
            word (``"seven"``), the answer the bundled ``tl-lvlm/tiny-digits`` model gives.

A directory may hold a ``labels.json`` mapping file names to expected answers
(``{"cat.png": "cat"}``); images without an entry are unlabelled.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

#: Names accepted by :func:`load_image_set` instead of a directory.
BUILTIN_IMAGE_SETS = ("random", "digits")
#: File suffixes read from an image directory (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABELS_FILE = "labels.json"


@dataclass
class ImageSet:
    """Images with their names and optional expected answers.

    Attributes:
        images: RGB PIL images.
        names: one name per image (file name, or ``"{builtin}-{index}"``).
        labels: expected answer per image (a word, or None where unknown), or None
            when no image has one.
    """

    images: list[Image.Image]
    names: list[str]
    labels: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.images)


def load_image_set(
    source: str | os.PathLike,
    *,
    n: int | None = None,
    image_size: int = 224,
    seed: int = 0,
) -> ImageSet:
    """Load a directory of images or a builtin set (see the module doc).

    Args:
        source: a directory, or one of :data:`BUILTIN_IMAGE_SETS`.
        n: keep the first ``n`` images (``random``: how many to draw, default 8).
        image_size: side of the ``random`` images; use the model's ``image_size``.
        seed: seed of the ``random`` images.

    Raises:
        ValueError: an unknown name, a directory without images, a bad ``labels.json``,
            or ``n < 1`` (see :func:`check_image_source`).
    """
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    check_image_source(source)
    path = Path(source).expanduser()
    if path.is_dir():
        return _first(_load_dir(path), n)
    name = os.fspath(source)
    if name == "random":
        from tl_lvlm.zoo.tiny_llava import random_images

        count = 8 if n is None else n
        return ImageSet(
            random_images(count, image_size, seed), [f"random-{i}" for i in range(count)]
        )
    from tl_lvlm.zoo.digits import load_digit_images
    from tl_lvlm.zoo.questions import DIGIT_WORDS

    images, labels = load_digit_images(split="test", style="original")
    names = [f"digits-test-{i}" for i in range(len(images))]
    return _first(ImageSet(images, names, [DIGIT_WORDS[d] for d in labels]), n)


def check_image_source(source: str | os.PathLike, flag: str = "--images") -> None:
    """Check, without reading any image, that ``source`` is an image set.

    Raises:
        ValueError: ``source`` is neither a directory nor a builtin set (with a "did you
            mean"), or a directory without image files, or its ``labels.json`` is not a JSON
            object of file names to answers. ``flag`` names the argument in the message.
    """
    path = Path(source).expanduser()
    name = os.fspath(source)
    if not path.is_dir():
        if name in BUILTIN_IMAGE_SETS:
            return
        what = "a file, not a directory" if path.exists() else "neither a directory nor"
        builtins = ", ".join(BUILTIN_IMAGE_SETS)
        raise ValueError(
            f"{flag} {name!r} is {what} a builtin image set{_did_you_mean(path)}; pass a "
            f"directory of {'/'.join(IMAGE_SUFFIXES)} files or one of {builtins}"
        )
    if not _image_files(path):
        raise ValueError(f"{flag} {name}: no {'/'.join(IMAGE_SUFFIXES)} images in this directory")
    labels_path = path / LABELS_FILE
    if labels_path.exists():
        try:
            table = json.loads(labels_path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{labels_path} is not valid JSON: {err}") from None
        if not isinstance(table, dict) or not all(
            isinstance(v, str) or v is None for v in table.values()
        ):
            raise ValueError(
                f'{labels_path} must map image file names to answers, e.g. {{"cat.png": "cat"}}'
            )


def _did_you_mean(path: Path) -> str:
    """``"; did you mean X?"`` over the builtin sets and the directories next to ``path``."""
    parent = path.parent if str(path.parent) else Path(".")
    siblings = [p.name for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else []
    close = difflib.get_close_matches(path.name, [*siblings, *BUILTIN_IMAGE_SETS], n=1)
    if not close:
        return ""
    guess = close[0] if close[0] in BUILTIN_IMAGE_SETS and close[0] not in siblings else None
    return f"; did you mean {guess or parent / close[0]}?"


def _image_files(path: Path) -> list[Path]:
    return sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _load_dir(path: Path) -> ImageSet:
    files = _image_files(path)
    images = []
    for f in files:
        with Image.open(f) as img:
            images.append(img.convert("RGB"))
    names = [f.name for f in files]
    labels_path = path / LABELS_FILE
    if not labels_path.exists():
        return ImageSet(images, names)
    table = json.loads(labels_path.read_text())  # checked by check_image_source
    return ImageSet(images, names, [table.get(name) for name in names])


def _first(image_set: ImageSet, n: int | None) -> ImageSet:
    if n is None:
        return image_set
    labels = None if image_set.labels is None else image_set.labels[:n]
    return ImageSet(image_set.images[:n], image_set.names[:n], labels)
