"""Handwritten digits as small RGB images, in several appearance styles.

The data are scikit-learn's ``load_digits`` (1,797 scans of 8x8 pixels, ink
values 0..16; they ship inside scikit-learn, nothing is downloaded). Each digit is
upsampled bilinearly to 24x24, placed in the middle of a 32x32 white canvas and
drawn in black ink, giving an RGB ``PIL.Image``. With ``patch_size=4`` the image
span of the bundled model is (32 / 4) ** 2 = 64 tokens.

Styles change the appearance, never the class:

``original``  black ink on white, centred.
``inverted``  white ink on black.
``thick``     strokes dilated (3x3 grey dilation on the 24x24 ink map).
``shifted``   the digit moved by 2..4 pixels (per image, seeded) inside the canvas.
``noisy``     Gaussian pixel noise (std 0.25 of the range, per image, seeded) added.

Every style is a deterministic function of the 8x8 array, the style name, the
``seed`` and the image's index in the dataset, so two calls return identical
pixels. The train / held-out split is fixed (stratified 80/20 with
``random_state=0``) and does not depend on ``seed``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

#: Appearance styles, ``original`` first.
STYLES = ("original", "inverted", "thick", "shifted", "noisy")

CANVAS_SIZE = 32
DIGIT_SIZE = 24
_MARGIN = (CANVAS_SIZE - DIGIT_SIZE) // 2
_MAX_SHIFT = _MARGIN
_NOISE_STD = 0.25
_SPLIT_SEED = 0
_TEST_FRACTION = 0.2


@lru_cache(maxsize=1)
def _dataset() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)  # (1797, 8, 8), ink in [0, 1]
    images.setflags(write=False)
    labels = d.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


@lru_cache(maxsize=1)
def _split_indices() -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, labels = _dataset()
    idx = np.arange(len(labels))
    train, test = train_test_split(
        idx, test_size=_TEST_FRACTION, stratify=labels, random_state=_SPLIT_SEED
    )
    train, test = np.sort(train), np.sort(test)
    train.setflags(write=False)
    test.setflags(write=False)
    return {"train": train, "test": test}


def split_indices(split: str) -> np.ndarray:
    """Dataset indices (into ``load_digits``) of ``"train"`` or ``"test"``, sorted."""
    splits = _split_indices()
    if split not in splits:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return splits[split]


def digit_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ink, labels, indices)``: 8x8 ink maps in [0, 1], labels 0..9, dataset indices."""
    images, labels = _dataset()
    idx = split_indices(split)
    return images[idx], labels[idx], idx


def _upsample(ink8: np.ndarray) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(ink8, dtype=np.float32), mode="F")
    big = np.asarray(img.resize((DIGIT_SIZE, DIGIT_SIZE), Image.BILINEAR), dtype=np.float32)
    return np.clip(big, 0.0, 1.0)


def _dilate3(a: np.ndarray) -> np.ndarray:
    p = np.pad(a, 1)
    h, w = a.shape
    return np.max([p[i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)


def _rng(seed: int, style: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), STYLES.index(style), int(index)])


def render(ink8: np.ndarray, style: str = "original", seed: int = 0, index: int = 0) -> np.ndarray:
    """Render one 8x8 ink map (values in [0, 1]) as a ``(32, 32, 3)`` uint8 array.

    ``seed`` and ``index`` seed the per-image randomness of ``shifted`` and
    ``noisy``; the other styles ignore them.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {STYLES}")
    ink = _upsample(ink8)
    if style == "thick":
        ink = _dilate3(ink)
    canvas = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=np.float32)
    top = left = _MARGIN
    if style == "shifted":
        rng = _rng(seed, style, index)
        while True:
            dy, dx = rng.integers(-_MAX_SHIFT, _MAX_SHIFT + 1, size=2)
            if max(abs(dy), abs(dx)) >= 2:
                break
        top, left = top + int(dy), left + int(dx)
    canvas[top : top + DIGIT_SIZE, left : left + DIGIT_SIZE] = ink
    if style == "inverted":
        gray = canvas
    else:
        gray = 1.0 - canvas
    if style == "noisy":
        rng = _rng(seed, style, index)
        gray = gray + rng.normal(0.0, _NOISE_STD, size=gray.shape).astype(np.float32)
    gray = np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def render_images(
    ink: np.ndarray, indices: np.ndarray, style: str = "original", seed: int = 0
) -> list[Image.Image]:
    """Render a stack of 8x8 ink maps as RGB PIL images (see :func:`render`)."""
    return [
        Image.fromarray(render(a, style, seed, int(i)), mode="RGB")
        for a, i in zip(ink, indices, strict=True)
    ]


def load_digit_images(
    split: str = "train", style: str = "original", seed: int = 0
) -> tuple[list[Image.Image], np.ndarray]:
    """Digits of ``split`` (``"train"``: 1,437, ``"test"``: 360) rendered in ``style``.

    Returns ``(images, labels)``: 32x32 RGB PIL images and an int array of digits
    0..9. Deterministic given ``(split, style, seed)``; ``seed`` only affects the
    random styles (``shifted``, ``noisy``).
    """
    ink, labels, idx = digit_arrays(split)
    return render_images(ink, idx, style, seed), labels.copy()
