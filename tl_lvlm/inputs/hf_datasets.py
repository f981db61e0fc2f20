"""Hugging Face ``datasets`` as image sets: an image column and a label column.

A :class:`datasets.Dataset` (in memory, or saved with ``save_to_disk`` and read back with
``load_from_disk``) is read as the analyses read images:

- the image column (default ``"image"``) must be a :class:`datasets.Image` feature; its
  stored bytes (or file path) go through :func:`~tl_lvlm.inputs.images.read_image`, the
  reader of ``model.prepare`` and of the CLI's folders (EXIF orientation, transparency onto
  white, a gif's first frame), so a picture is the same whichever way it comes;
- the label column (default ``"label"``; None = unlabelled) is a
  :class:`datasets.ClassLabel` (names through its ``int2str``, -1 = no label) or a string
  column (the names themselves, None = no label).

A missing column, or a column of another kind, raises a ``ValueError`` naming the columns
the dataset has and the argument that chooses another (``image_column=`` in the API,
``--image-column`` on the command line).

``datasets`` is imported only once a dataset is in hand: :func:`is_dataset` recognises one
without importing the package (an object cannot be a ``datasets.Dataset`` unless
``datasets`` was imported to make it), so tl-lvlm runs without ``datasets`` installed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from tl_lvlm.inputs.images import read_image

#: Default column names.
IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"


def is_dataset(obj: Any) -> bool:
    """Whether ``obj`` is a ``datasets.Dataset`` (imports ``datasets`` only for its objects)."""
    if not type(obj).__module__.startswith("datasets."):
        return False
    import datasets

    return isinstance(obj, datasets.Dataset)


@dataclass(frozen=True)
class DatasetColumns:
    """Which columns of a dataset hold the images and the labels (checked by :meth:`check`).

    Attributes:
        image: the image column's name.
        label: the label column's name, or None (unlabelled).
        image_arg, label_arg: how the caller names the arguments that choose them, for
            messages (``"image_column="`` in the API, ``"--image-column"`` in the CLI).
    """

    image: str = IMAGE_COLUMN
    label: str | None = LABEL_COLUMN
    image_arg: str = "image_column="
    label_arg: str = "label_column="

    def check(self, dataset) -> Callable[[Any], str | None]:
        """Check the columns of ``dataset``; return the label column's value -> name.

        Raises:
            ValueError: a missing column, an image column that is not an ``Image``
                feature, a label column that is neither a ``ClassLabel`` nor strings.
        """
        import datasets

        features = dataset.features
        have = ", ".join(repr(c) for c in dataset.column_names)
        for column, arg in ((self.image, self.image_arg), (self.label, self.label_arg)):
            if column is not None and column not in features:
                unlabelled = " (None for no labels)" if arg == self.label_arg else ""
                raise ValueError(
                    f"the dataset has no column {column!r}; its columns are {have}: set "
                    f"{arg} to the one with the {'images' if arg == self.image_arg else 'labels'}"
                    f"{unlabelled}"
                )
        if not isinstance(features[self.image], datasets.Image):
            raise ValueError(
                f"column {self.image!r} of the dataset is {features[self.image]}, not images; "
                f"its columns are {have}: set {self.image_arg} to its image column, or cast "
                f"this one with dataset.cast_column({self.image!r}, datasets.Image())"
            )
        if self.label is None:
            return lambda value: None
        feature = features[self.label]
        if isinstance(feature, datasets.ClassLabel):
            return lambda value: None if value is None or value < 0 else feature.int2str(value)
        if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            return lambda value: value
        raise ValueError(
            f"column {self.label!r} of the dataset is {feature}, neither a ClassLabel nor "
            f"strings, so it names no answers; its columns are {have}: set {self.label_arg} "
            "to its label column (None for no labels), or cast this one to a ClassLabel "
            f"(dataset.cast_column({self.label!r}, datasets.ClassLabel(names=[...])))"
        )


@dataclass(frozen=True)
class DatasetImages:
    """A dataset's images read row by row (see the module doc).

    Attributes:
        dataset: the dataset, its image column left undecoded (bytes or path per row).
        columns: the checked columns.
        labels: one label name per row (None where unlabelled), or None without a label
            column.
    """

    dataset: Any
    columns: DatasetColumns
    labels: list[str | None] | None

    @classmethod
    def open(cls, dataset, columns: DatasetColumns = DatasetColumns()) -> DatasetImages:
        """Check ``dataset``'s columns and read its labels (no image is decoded yet)."""
        import datasets

        name = columns.check(dataset)
        labels = None
        if columns.label is not None:
            labels = [name(value) for value in dataset[columns.label]]
        raw = dataset.cast_column(columns.image, datasets.Image(decode=False))
        return cls(raw, columns, labels)

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, row: int, which: str | None = None) -> Image.Image:
        """Row ``row``'s image as an RGB PIL image, by :func:`read_image`.

        Raises:
            ValueError: the row's image cannot be decoded (named ``which``, default
                ``"row {row}"``).
        """
        which = which or f"row {row}"
        stored = self.dataset[row][self.columns.image]
        if stored is None:
            raise ValueError(f"{which} is not a readable image file (the row has no image)")
        if stored.get("bytes") is not None:
            return read_image(io.BytesIO(stored["bytes"]), which)
        return read_image(stored["path"], which)

    def images(self) -> list[Image.Image]:
        """Every row's image (see :meth:`image`)."""
        return [self.image(row) for row in range(len(self))]
