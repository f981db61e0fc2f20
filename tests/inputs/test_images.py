"""Image files as researchers have them read the same by ``prepare`` and ``--images DIR``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tl_lvlm.cli.image_sources import check_image_source, load_image_set
from tl_lvlm.inputs.images import IMAGE_SUFFIXES, read_image, to_rgb_images

ORIENTATION = 0x0112


def picture(seed: int = 0, shape: tuple[int, int] = (12, 20)) -> Image.Image:
    """A random RGB picture, wider than tall so that a rotation shows."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))


def save_rotated_with_exif(image: Image.Image, path, orientation: int = 6) -> None:
    """Store ``image`` as a phone does: raw pixels turned, an EXIF tag saying how to show them.

    Orientation 6 means "rotate 90 degrees clockwise to display", so the raw pixels are
    the picture turned 90 degrees counter-clockwise.
    """
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    lossless = {"lossless": True} if str(path).endswith(".webp") else {}
    image.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, **lossless)


def test_every_suffix_is_read_and_lossless_ones_exactly(tmp_path):
    image = picture()
    lossless = {".png", ".bmp", ".tif", ".tiff", ".webp"}
    for suffix in IMAGE_SUFFIXES:
        path = tmp_path / f"a{suffix}"
        if suffix == ".webp":
            image.save(path, lossless=True)
        else:
            image.save(path)
        read = read_image(path)
        assert read.mode == "RGB" and read.size == image.size, suffix
        if suffix in lossless:
            np.testing.assert_array_equal(np.asarray(read), np.asarray(image), err_msg=suffix)


def test_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 2
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "a.gif"))[0, 0], [255, 0, 0])


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_exif_orientation_is_applied_in_prepare_and_in_folders(tmp_path, suffix):
    # Smooth, so that a jpg keeps it closely: red grows left to right, green top to bottom.
    x, y = np.meshgrid(np.linspace(0, 255, 20), np.linspace(0, 255, 12))
    image = Image.fromarray(np.stack([x, y, 0 * x], -1).astype(np.uint8))
    path = tmp_path / f"phone{suffix}"
    save_rotated_with_exif(image, path)
    with Image.open(path) as raw:
        assert raw.size == image.size[::-1]  # stored turned
        opened = raw.copy()
    from_path = to_rgb_images(path)[0]
    from_pil = to_rgb_images(opened)[0]  # a PIL image opened by the user
    from_folder = load_image_set(tmp_path).images[0]
    for read in (from_path, from_pil, from_folder):
        assert read.size == image.size
        np.testing.assert_array_equal(np.asarray(read), np.asarray(from_path))
    if suffix != ".jpg":
        np.testing.assert_array_equal(np.asarray(from_path), np.asarray(image))
    else:  # lossy: still the picture upright, not turned
        error = np.abs(np.asarray(from_path, float) - np.asarray(image, float)).mean()
        assert error < 8, error


def test_transparency_is_composited_onto_white_in_prepare_and_in_folders(tmp_path):
    rgba = np.zeros((6, 6, 4), np.uint8)  # black ink
    rgba[1:5, 2:4, 3] = 255  # opaque stroke, transparent elsewhere
    rgba[0, 0, 3] = 128  # half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ink.png")
    expected = np.full((6, 6, 3), 255, np.uint8)
    expected[1:5, 2:4] = 0
    expected[0, 0] = 127
    for read in (to_rgb_images(tmp_path / "ink.png")[0], load_image_set(tmp_path).images[0]):
        np.testing.assert_allclose(np.asarray(read), expected, atol=1)


def test_truncated_file_names_itself(tmp_path):
    picture().save(tmp_path / "a.jpg", quality=95)
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"a\.jpg' is not a readable image file"):
        to_rgb_images(tmp_path / "a.jpg")
    picture().save(tmp_path / "b.png")
    with pytest.warns(UserWarning, match=r"skipped a\.jpg, not a readable image file"):
        folder = check_image_source(tmp_path)
    assert [f.name for f in folder.files] == ["b.png"]
