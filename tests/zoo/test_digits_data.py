"""The digits data: fixed split, deterministic renderings that really change the pixels,
and the full-frame rendering is exactly what the processor makes of a user's 8x8 array."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tl_lvlm.zoo.digits import (
    CANVAS_SIZE,
    DIGIT_SIZE,
    MIN_DIGIT_SIZE,
    STYLES,
    Appearance,
    as_rgb_uint8,
    digit_arrays,
    load_digit_images,
    load_digit_set,
    render_digit,
    sample_appearance,
    split_indices,
    user_arrays,
)
from tl_lvlm.zoo.questions import COLORS, PALETTE
from tl_lvlm.zoo.tiny_llava import build_processor, build_tokenizer
from tl_lvlm.zoo.train_digits import default_model_config


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images]).astype(np.int16)


def test_split_is_fixed_disjoint_and_stratified():
    train, test = split_indices("train"), split_indices("test")
    assert len(train) == 1437 and len(test) == 360
    assert not set(train) & set(test)
    assert len(set(train) | set(test)) == 1797
    np.testing.assert_array_equal(split_indices("all"), np.arange(1797))
    _, y_test, _ = digit_arrays("test")
    counts = np.bincount(y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of ~180 per class
    with pytest.raises(ValueError, match="split must be"):
        split_indices("validation")


@pytest.mark.parametrize("style", STYLES)
def test_style_is_deterministic_rgb(style):
    a, b = load_digit_set("test", style, seed=0), load_digit_set("test", style, seed=0)
    assert a.images[0].mode == "RGB" and a.images[0].size == (CANVAS_SIZE, CANVAS_SIZE)
    np.testing.assert_array_equal(_pixels(a.images), _pixels(b.images))
    assert a.appearances == b.appearances
    _, y_orig = load_digit_images("test", "original")
    np.testing.assert_array_equal(a.labels, y_orig)  # styles never change the class


@pytest.mark.parametrize("style", [s for s in STYLES if s != "original"])
def test_style_differs_from_original(style):
    orig = _pixels(load_digit_images("test", "original")[0])
    styled = _pixels(load_digit_images("test", style)[0])
    per_image = np.abs(styled - orig).mean(axis=(1, 2, 3))
    # random sizes may redraw a few digits nearly as the original
    assert np.mean(per_image > 5) >= 0.9, f"{style}: {np.mean(per_image > 5):.2f} changed"


def test_style_semantics():
    orig = _pixels(load_digit_images("test", "original")[0])
    inv = _pixels(load_digit_images("test", "inverted")[0])
    thick = _pixels(load_digit_images("test", "thick")[0])
    outline = _pixels(load_digit_images("test", "outline")[0])
    # inverted is the photographic negative (up to rounding at 8x8 and after resizing)
    assert np.abs(inv + orig - 255).max() <= 2
    # thick has more ink (darker) everywhere the original has ink, never less
    assert (thick <= orig + 1).all()
    assert (thick.mean(axis=(1, 2, 3)) < orig.mean(axis=(1, 2, 3)) - 5).all()
    # an outline leaves the middle of a thick stroke blank: somewhere the original is
    # fully inked the outline is background
    assert ((orig < 30) & (outline > 200)).any(axis=(1, 2, 3)).mean() > 0.9


def test_coloured_uses_the_palette():
    d = load_digit_set("test", "coloured")
    pairs = set(zip(d.inks, d.backgrounds, strict=True))
    assert all(i != b for i, b in pairs) and len(pairs) >= 25
    for im, a in zip(d.images[:50], d.appearances[:50], strict=True):
        px = np.asarray(im)
        # the corner farthest from the digit is background, and the ink colour is drawn
        corners = [px[0, 0], px[0, -1], px[-1, 0], px[-1, -1]]
        if a.size < CANVAS_SIZE:
            assert any((c == PALETTE[a.background]).all() for c in corners)
        ink, bg = np.asarray(PALETTE[a.ink]), np.asarray(PALETTE[a.background])
        nearest = np.abs(px.astype(int) - ink).sum(-1).min()
        assert nearest < np.abs(ink - bg).sum() / 2


@pytest.mark.parametrize("style", ["shifted", "coloured", "noisy"])
def test_random_styles_depend_on_seed(style):
    a = _pixels(load_digit_images("test", style, seed=0)[0])
    b = _pixels(load_digit_images("test", style, seed=1)[0])
    assert not np.array_equal(a, b)


def test_sample_appearance_covers_the_distribution():
    rng = np.random.default_rng(0)
    draws = [sample_appearance(rng) for _ in range(3000)]
    sizes = np.array([a.size for a in draws])
    assert sizes.min() == MIN_DIGIT_SIZE and sizes.max() == CANVAS_SIZE
    assert MIN_DIGIT_SIZE / CANVAS_SIZE >= 0.4 - 0.02
    assert 0.25 < np.mean(sizes == CANVAS_SIZE) < 0.35
    small = [a for a in draws if a.size < CANVAS_SIZE - 4]
    assert {a.top for a in small} >= {0} and any(a.top + a.size == CANVAS_SIZE for a in small)
    assert any(0 < a.left and a.left + a.size < CANVAS_SIZE for a in small)  # with margin
    pairs = {(a.ink, a.background) for a in draws}
    assert pairs == {(i, b) for i, b in itertools.permutations(COLORS, 2)}
    assert {a.resample for a in draws} == {"nearest", "bilinear", "bicubic"}
    assert {a.style for a in draws} == {"plain"}


def test_appearance_rejects_bad_values():
    with pytest.raises(ValueError, match="ink and background are both 'red'"):
        Appearance(ink="red", background="red")
    with pytest.raises(ValueError, match="size must be in"):
        Appearance(size=MIN_DIGIT_SIZE - 1)
    with pytest.raises(ValueError, match="leaves the"):
        Appearance(size=DIGIT_SIZE, top=CANVAS_SIZE - DIGIT_SIZE + 1)
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        Appearance(ink="purple")
    with pytest.raises(ValueError, match="noisy style needs an rng"):
        render_digit(digit_arrays("test")[0][0], Appearance(style="noisy"))
    with pytest.raises(ValueError, match="unknown style"):
        load_digit_images("test", "sketch")


def test_user_arrays_formats_agree():
    ref, labels = user_arrays("uint8", "white-on-black", "rgb")
    assert ref.shape == (1797, 8, 8, 3) and ref.dtype == np.uint8 and ref.max() == 255
    np.testing.assert_array_equal(labels, digit_arrays("all")[1])
    for dtype, channels in itertools.product(("uint8", "float"), ("grey", "rgb")):
        arrays, _ = user_arrays(dtype, "white-on-black", channels)
        assert arrays.ndim == (3 if channels == "grey" else 4)
        if dtype == "float":
            assert arrays.dtype == np.float32 and 0 <= arrays.min() and arrays.max() <= 1
        np.testing.assert_array_equal(np.stack([as_rgb_uint8(a) for a in arrays]), ref)
    neg, _ = user_arrays("uint8", "black-on-white", "rgb")
    assert np.abs(neg.astype(int) + ref - 255).max() <= 1  # ties round up both ways


@pytest.mark.parametrize("polarity", ["white-on-black", "black-on-white"])
def test_full_frame_rendering_is_what_the_processor_makes_of_a_user_array(polarity):
    """Training's full-frame digits are the pixels the model gets from a bare 8x8 scan."""
    cfg = default_model_config()
    assert cfg.image_size == CANVAS_SIZE
    processor = build_processor(build_tokenizer(), cfg.image_size, cfg.patch_size)
    arrays, _ = user_arrays("uint8", polarity, "rgb")
    ink, background = polarity.split("-on-")
    ink8 = digit_arrays("all")[0]
    full = Appearance(size=CANVAS_SIZE, top=0, left=0, ink=ink, background=background)
    rendered = [render_digit(a, full) for a in ink8[:200]]
    pv_user = processor.image_processor(images=list(arrays[:200]), return_tensors="pt")
    pv_rendered = processor.image_processor(images=rendered, return_tensors="pt")
    np.testing.assert_array_equal(pv_user["pixel_values"], pv_rendered["pixel_values"])
