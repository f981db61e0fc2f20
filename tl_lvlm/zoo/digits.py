"""Handwritten digits as small RGB images: the input ``tl-lvlm/tiny-digits`` expects.

The data are scikit-learn's ``load_digits`` (1,797 scans of 8x8 pixels, ink values
0..16; they ship inside scikit-learn, nothing is downloaded). :func:`render_digit` draws
one scan on a ``24 x 24`` canvas (the model's ``image_size``) from an
:class:`Appearance`:

- the digit resized to ``size`` pixels square (40-100% of the frame, 10..24 px) with a
  PIL resampling filter, pasted with its top-left corner at ``(top, left)`` (anywhere
  that keeps it inside the frame: touching the border or with a margin);
- ink and background colours from :data:`~tl_lvlm.zoo.questions.PALETTE` (black, white,
  red, green, blue, yellow; ink != background), mixed by the scan's ink value;
- an appearance ``style``: ``plain``, or one of the held-out ``thick`` (strokes
  dilated), ``outline`` (a line around the strokes, the strokes themselves left blank)
  and ``noisy`` (Gaussian pixel noise), which the model never saw in training.

A full-frame plain appearance with bicubic resampling is exactly what the model's
processor makes of the bare 8x8 scan as a user would pass it (an ``8 x 8`` array,
:func:`user_arrays`), since the processor resizes with bicubic too.

Named styles of :func:`load_digit_images` (:data:`STYLES`) fix or draw the appearance:

``original``  black ink on white, 16 px, centred.
``inverted``  white ink on black, otherwise as ``original``.
``shifted``   black on white, random size and position.
``coloured``  random size, position and colours: the training distribution.
``thick``, ``outline``, ``noisy``  the held-out styles, drawn as ``original``.

Everything is a deterministic function of the scan, the style, the ``seed`` and the
image's dataset index. The train / held-out split is fixed (stratified 80/20 with
``random_state=0``) and does not depend on ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from tl_lvlm.zoo.questions import COLORS, PALETTE

CANVAS_SIZE = 24
#: Side of the digit in the ``original`` rendering, centred on the canvas (2 px per scan pixel).
DIGIT_SIZE = 16
#: Smallest digit side: 40% of the frame.
MIN_DIGIT_SIZE = 10
#: Appearance styles of :func:`render_digit`; ``plain`` is the only one trained on.
APPEARANCE_STYLES = ("plain", "thick", "outline", "noisy")
HELD_OUT_STYLES = ("thick", "outline", "noisy")
#: Named renderings of :func:`load_digit_images`, ``original`` first.
STYLES = ("original", "inverted", "shifted", "coloured", *HELD_OUT_STYLES)
#: Named renderings inside the training distribution.
TRAIN_STYLES = ("original", "inverted", "shifted", "coloured")
#: PIL filters a digit may be resized with.
RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}

_NOISE_STD = 0.2
_SPLIT_SEED = 0
_TEST_FRACTION = 0.2
#: Default probability that a drawn appearance fills the whole frame (the user's 8x8 input).
P_FULL_FRAME = 0.3
#: Default probability that a drawn appearance is black/white (grey input, either polarity).
P_GREY = 0.3


@dataclass(frozen=True)
class Appearance:
    """How one digit is drawn on the canvas (see the module doc)."""

    size: int = DIGIT_SIZE
    top: int = (CANVAS_SIZE - DIGIT_SIZE) // 2
    left: int = (CANVAS_SIZE - DIGIT_SIZE) // 2
    ink: str = "black"
    background: str = "white"
    resample: str = "bicubic"
    style: str = "plain"

    def __post_init__(self):
        if not MIN_DIGIT_SIZE <= self.size <= CANVAS_SIZE:
            raise ValueError(f"size must be in {MIN_DIGIT_SIZE}..{CANVAS_SIZE}, got {self.size}")
        if not (
            0 <= self.top <= CANVAS_SIZE - self.size and 0 <= self.left <= CANVAS_SIZE - self.size
        ):
            raise ValueError(
                f"a {self.size}-px digit at (top={self.top}, left={self.left}) leaves the "
                f"{CANVAS_SIZE}-px canvas"
            )
        for c in (self.ink, self.background):
            if c not in PALETTE:
                raise ValueError(f"unknown colour {c!r}; choose from {COLORS}")
        if self.ink == self.background:
            raise ValueError(f"ink and background are both {self.ink!r}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {tuple(RESAMPLE)}, got {self.resample!r}")
        if self.style not in APPEARANCE_STYLES:
            raise ValueError(f"style must be one of {APPEARANCE_STYLES}, got {self.style!r}")


def sample_appearance(
    rng: np.random.Generator,
    style: str = "plain",
    p_full_frame: float = P_FULL_FRAME,
    p_grey: float = P_GREY,
    min_size: int = MIN_DIGIT_SIZE,
) -> Appearance:
    """One appearance from the training distribution (``style`` aside).

    Full frame with probability ``p_full_frame``, else a size uniform in
    ``min_size``..23 px (default 10) at a
    uniform position; colours a random black/white pair with probability ``p_grey``,
    else any two distinct palette colours; the resampling filter uniform.
    """
    if rng.random() < p_full_frame:
        size = CANVAS_SIZE
    else:
        size = int(rng.integers(min_size, CANVAS_SIZE))
    top, left = (int(v) for v in rng.integers(0, CANVAS_SIZE - size + 1, size=2))
    if rng.random() < p_grey:
        ink, background = ("black", "white") if rng.random() < 0.5 else ("white", "black")
    else:
        i, j = rng.choice(len(COLORS), size=2, replace=False)
        ink, background = COLORS[i], COLORS[j]
    resample = tuple(RESAMPLE)[int(rng.integers(len(RESAMPLE)))]
    return Appearance(size, top, left, ink, background, resample, style)


def _colourize(alpha: np.ndarray, ink: str, background: str) -> np.ndarray:
    """``alpha`` (ink amount in [0, 1]) -> uint8 RGB mixing the two palette colours."""
    ink_rgb = np.asarray(PALETTE[ink], dtype=np.float32)
    bg_rgb = np.asarray(PALETTE[background], dtype=np.float32)
    rgb = bg_rgb + alpha[..., None] * (ink_rgb - bg_rgb)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _dilate3(a: np.ndarray) -> np.ndarray:
    p = np.pad(a, 1)
    h, w = a.shape
    return np.max([p[i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)


def _alpha_at(ink8: np.ndarray, size: int, resample: str) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(ink8, dtype=np.float32), mode="F")
    return np.clip(np.asarray(img.resize((size, size), RESAMPLE[resample])), 0.0, 1.0)


def render_digit(
    ink8: np.ndarray, appearance: Appearance = Appearance(), rng: np.random.Generator | None = None
) -> np.ndarray:
    """Draw one 8x8 scan (ink values in [0, 1]) as a ``(24, 24, 3)`` uint8 array.

    ``plain``: the scan is coloured at 8x8 (uint8, as a user's array would be) and
    resized to ``appearance.size``; the other styles change the resized ink map before
    it is coloured. ``rng`` draws the ``noisy`` style's noise (required for it).
    """
    a = appearance
    canvas = np.empty((CANVAS_SIZE, CANVAS_SIZE, 3), dtype=np.uint8)
    canvas[:] = PALETTE[a.background]
    if a.style == "plain":
        small = Image.fromarray(_colourize(np.asarray(ink8, dtype=np.float32), a.ink, a.background))
        digit = np.asarray(small.resize((a.size, a.size), RESAMPLE[a.resample]))
    else:
        alpha = _alpha_at(ink8, a.size, a.resample)
        if a.style == "thick":
            alpha = _dilate3(alpha)
        elif a.style == "outline":
            alpha = np.clip(_dilate3(alpha) - alpha, 0.0, 1.0)
        digit = _colourize(alpha, a.ink, a.background)
    canvas[a.top : a.top + a.size, a.left : a.left + a.size] = digit
    if a.style == "noisy":
        if rng is None:
            raise ValueError("the noisy style needs an rng")
        noise = rng.normal(0.0, _NOISE_STD * 255.0, size=canvas.shape)
        canvas = np.clip(np.rint(canvas + noise), 0, 255).astype(np.uint8)
    return canvas


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
    """Dataset indices (into ``load_digits``) of ``"train"``, ``"test"`` or ``"all"``, sorted."""
    if split == "all":
        return np.arange(len(_dataset()[1]))
    splits = _split_indices()
    if split not in splits:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return splits[split]


def digit_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ink, labels, indices)``: 8x8 ink maps in [0, 1], labels 0..9, dataset indices."""
    images, labels = _dataset()
    idx = split_indices(split)
    return images[idx], labels[idx], idx


def user_arrays(
    dtype: str = "uint8", polarity: str = "white-on-black", channels: str = "rgb"
) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scans as a user would pass them: ``(arrays, labels)``.

    ``dtype``: ``"uint8"`` (ink 0..16 scaled to 0..255, rounded) or ``"float"`` (in
    [0, 1]); ``polarity``: ``"white-on-black"`` (ink bright, as scikit-learn stores it)
    or ``"black-on-white"``; ``channels``: ``"grey"`` (``[n, 8, 8]``) or ``"rgb"``
    (``[n, 8, 8, 3]``). The frame is the scan itself: the digit fills it.
    """
    images, labels = _dataset()
    if polarity not in ("white-on-black", "black-on-white"):
        raise ValueError(f"polarity must be 'white-on-black' or 'black-on-white', got {polarity!r}")
    a = images if polarity == "white-on-black" else 1.0 - images
    if channels == "rgb":
        a = np.repeat(a[..., None], 3, axis=-1)
    elif channels != "grey":
        raise ValueError(f"channels must be 'grey' or 'rgb', got {channels!r}")
    if dtype == "uint8":
        a = np.rint(a * 255.0).astype(np.uint8)
    elif dtype == "float":
        a = a.astype(np.float32)
    else:
        raise ValueError(f"dtype must be 'uint8' or 'float', got {dtype!r}")
    return a, labels.copy()


def as_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """A grey or RGB, uint8 or [0, 1] float image array as ``HxWx3`` uint8.

    Grey is repeated over the three channels and floats are scaled by 255 and rounded:
    the conversion a user's array undergoes before the processor sees it.
    """
    a = np.asarray(array)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return a


def _rng(seed: int, style: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), STYLES.index(style), int(index)])


def style_appearance(
    style: str, seed: int = 0, index: int = 0
) -> tuple[Appearance, np.random.Generator]:
    """The appearance of the named ``style`` for dataset image ``index``, and its rng."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {STYLES}")
    rng = _rng(seed, style, index)
    if style == "coloured":
        return sample_appearance(rng), rng
    if style == "shifted":
        a = sample_appearance(rng)
        return Appearance(a.size, a.top, a.left, "black", "white", a.resample), rng
    if style == "inverted":
        return Appearance(ink="white", background="black"), rng
    if style in HELD_OUT_STYLES:
        return Appearance(style=style), rng
    return Appearance(), rng


@dataclass
class DigitImages:
    """Rendered digits with everything their questions ask about."""

    images: list[Image.Image]
    labels: np.ndarray
    appearances: list[Appearance]
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @property
    def inks(self) -> list[str]:
        return [a.ink for a in self.appearances]

    @property
    def backgrounds(self) -> list[str]:
        return [a.background for a in self.appearances]


def render_images(
    ink: np.ndarray, indices: np.ndarray, style: str = "original", seed: int = 0
) -> tuple[list[Image.Image], list[Appearance]]:
    """Render a stack of 8x8 ink maps in the named ``style``: ``(images, appearances)``."""
    images, appearances = [], []
    for a8, i in zip(ink, indices, strict=True):
        appearance, rng = style_appearance(style, seed, int(i))
        images.append(Image.fromarray(render_digit(a8, appearance, rng), mode="RGB"))
        appearances.append(appearance)
    return images, appearances


def load_digit_set(split: str = "train", style: str = "original", seed: int = 0) -> DigitImages:
    """Digits of ``split`` (train 1,437, test 360, all 1,797) rendered in ``style``."""
    ink, labels, idx = digit_arrays(split)
    images, appearances = render_images(ink, idx, style, seed)
    return DigitImages(images, labels.copy(), appearances, idx.copy())


def load_digit_images(
    split: str = "train", style: str = "original", seed: int = 0
) -> tuple[list[Image.Image], np.ndarray]:
    """``(images, labels)``: :func:`load_digit_set`'s 24x24 RGB PIL images and digits 0..9."""
    d = load_digit_set(split, style, seed)
    return d.images, d.labels
