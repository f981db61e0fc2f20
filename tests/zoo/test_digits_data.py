"""The digits data: fixed split, deterministic styles that really change the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from tl_lvlm.zoo.digits import STYLES, digit_arrays, load_digit_images, split_indices


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images]).astype(np.int16)


def test_split_is_fixed_disjoint_and_stratified():
    train, test = split_indices("train"), split_indices("test")
    assert len(train) == 1437 and len(test) == 360
    assert not set(train) & set(test)
    assert len(set(train) | set(test)) == 1797
    _, y_test, _ = digit_arrays("test")
    counts = np.bincount(y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of ~180 per class
    with pytest.raises(ValueError):
        split_indices("validation")


@pytest.mark.parametrize("style", STYLES)
def test_style_is_deterministic_rgb_32px(style):
    a, ya = load_digit_images("test", style, seed=0)
    b, yb = load_digit_images("test", style, seed=0)
    assert a[0].mode == "RGB" and a[0].size == (32, 32)
    np.testing.assert_array_equal(_pixels(a), _pixels(b))
    np.testing.assert_array_equal(ya, yb)
    _, y_orig = load_digit_images("test", "original")
    np.testing.assert_array_equal(ya, y_orig)  # styles never change the class


@pytest.mark.parametrize("style", [s for s in STYLES if s != "original"])
def test_style_differs_from_original(style):
    orig = _pixels(load_digit_images("test", "original")[0])
    styled = _pixels(load_digit_images("test", style)[0])
    per_image = np.abs(styled - orig).mean(axis=(1, 2, 3))
    assert (per_image > 5).all(), f"{style}: some images barely change ({per_image.min():.2f})"


def test_style_semantics():
    orig = _pixels(load_digit_images("test", "original")[0])
    inv = _pixels(load_digit_images("test", "inverted")[0])
    thick = _pixels(load_digit_images("test", "thick")[0])
    # inverted is the photographic negative (up to rounding)
    assert np.abs(inv + orig - 255).max() <= 1
    # thick has more ink (darker) everywhere the original has ink, and never less
    assert (thick <= orig).all()
    assert (thick.mean(axis=(1, 2, 3)) < orig.mean(axis=(1, 2, 3)) - 5).all()


@pytest.mark.parametrize("style", ["shifted", "noisy"])
def test_random_styles_depend_on_seed(style):
    a = _pixels(load_digit_images("test", style, seed=0)[0])
    b = _pixels(load_digit_images("test", style, seed=1)[0])
    assert not np.array_equal(a, b)


def test_unknown_style_rejected():
    with pytest.raises(ValueError):
        load_digit_images("test", "sketch")
