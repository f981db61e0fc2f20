"""Hugging Face datasets read as image files are (EXIF, transparency), with their columns
checked; ``image_size`` resizes as the image processors do."""

from __future__ import annotations

import io
import sys

import datasets
import numpy as np
import pytest
from PIL import Image
from test_images import picture, save_rotated_with_exif

from tl_lvlm.inputs.hf_datasets import DatasetColumns, DatasetImages, is_dataset
from tl_lvlm.inputs.images import check_image_size, read_image, to_rgb_images

NAMES = ["cat", "dog"]


def image_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def dataset(tmp_path) -> tuple[datasets.Dataset, list[Image.Image]]:
    """A phone JPEG stored turned (EXIF orientation 6) and a black-on-transparent PNG."""
    save_rotated_with_exif(picture(), tmp_path / "phone.jpg")
    ink = np.zeros((10, 14, 4), np.uint8)
    ink[2:8, 3:9, 3] = 255  # an opaque black square on a transparent ground
    stored = [
        (tmp_path / "phone.jpg").read_bytes(),
        image_bytes(Image.fromarray(ink, "RGBA"), "PNG"),
    ]
    (tmp_path / "ink.png").write_bytes(stored[1])
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES),
         "name": datasets.Value("string"), "score": datasets.Value("int64")}
    )  # fmt: skip
    rows = {
        "image": [{"bytes": b, "path": None} for b in stored],
        "label": [1, 0],
        "name": ["tabby cat", None],
        "score": [3, 4],
    }
    files = [read_image(tmp_path / "phone.jpg"), read_image(tmp_path / "ink.png")]
    return datasets.Dataset.from_dict(rows, features=features), files


def test_rows_are_read_as_the_files_are(tmp_path):
    ds, files = dataset(tmp_path)
    rows = DatasetImages.open(ds)
    for row, file in zip(rows.images(), files, strict=True):
        np.testing.assert_array_equal(np.asarray(row), np.asarray(file))
    raw = Image.open(
        io.BytesIO(ds.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"])
    )
    assert raw.size == (12, 20) and rows.image(0).size == (20, 12)  # the orientation applied
    assert np.asarray(rows.image(1))[0, 0].tolist() == [255, 255, 255]  # transparency: white
    assert rows.labels == ["dog", "cat"]  # ClassLabel.int2str
    assert DatasetImages.open(ds, DatasetColumns(label="name")).labels == ["tabby cat", None]
    assert DatasetImages.open(ds, DatasetColumns(label=None)).labels is None


def test_bad_columns_name_the_columns_and_the_argument(tmp_path):
    ds, _ = dataset(tmp_path)
    have = "its columns are 'image', 'label', 'name', 'score'"
    with pytest.raises(ValueError) as err:
        DatasetImages.open(ds, DatasetColumns(image="img"))
    assert str(err.value) == (
        f"the dataset has no column 'img'; {have}: set image_column= to the one with the images"
    )
    with pytest.raises(ValueError) as err:
        DatasetImages.open(ds.remove_columns("label"))
    assert "no column 'label'; its columns are 'image', 'name', 'score': set label_column= to " \
        "the one with the labels (None for no labels)" in str(err.value)  # fmt: skip
    with pytest.raises(ValueError, match="column 'name' of the dataset is .*, not images; .*set "
                       r"image_column= to its image column, or cast this one with "
                       r"dataset.cast_column\('name', datasets.Image\(\)\)"):  # fmt: skip
        DatasetImages.open(ds, DatasetColumns(image="name"))
    with pytest.raises(ValueError, match="column 'score' of the dataset is .*neither a ClassLabel "
                       "nor strings, .*set label_column= to its label column"):  # fmt: skip
        DatasetImages.open(ds, DatasetColumns(label="score"))
    broken = ds.cast_column("image", datasets.Image(decode=False)).map(
        lambda r: {"image": {"bytes": r["image"]["bytes"][:40], "path": None}}
    )
    with pytest.raises(ValueError, match=r"^row 0 is not a readable image file \("):
        DatasetImages.open(broken.cast_column("image", datasets.Image())).image(0)


def test_is_dataset_never_imports_datasets(monkeypatch):
    monkeypatch.delitem(sys.modules, "datasets")
    assert not is_dataset([("image", "question")])
    assert "datasets" not in sys.modules


def test_image_size_resizes_bicubic_and_refuses_bad_sizes():
    image = picture()
    (resized,) = to_rgb_images(np.asarray(image), (7, 5))
    np.testing.assert_array_equal(
        np.asarray(resized), np.asarray(image.resize((7, 5), Image.BICUBIC))
    )
    assert to_rgb_images(image, 9)[0].size == (9, 9)
    assert check_image_size(None) is None
    with pytest.raises(
        ValueError, match=r"^image_size sides must be positive pixel counts, got \(0, 4\)$"
    ):
        to_rgb_images(image, (0, 4))
    for bad in ("336", (3.5, 2), (1, 2, 3), True):
        with pytest.raises(
            TypeError, match="^image_size must be an int .* or a .width, height. pair"
        ):
            check_image_size(bad)
