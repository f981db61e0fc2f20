"""Image sets for the CLI: a directory of image files, or a builtin set by name.

Builtins:

``random``  deterministic random RGB images at the model's image size
            (:func:`tl_lvlm.zoo.tiny_llava.random_images`); no labels.
``digits``  held-out handwritten digits in the ``original`` style
            (:func:`tl_lvlm.zoo.digits.load_digit_images`), labelled with the digit's
            word (``"seven"``), the answer the bundled ``tl-lvlm/tiny-digits`` model gives.

A directory is read as a researcher keeps one: every file of
:data:`~tl_lvlm.inputs.images.IMAGE_SUFFIXES` (png, jpg, webp, bmp, tiff, gif), each through
:func:`~tl_lvlm.inputs.images.read_image`, the reader of ``model.prepare`` (EXIF orientation
applied, transparency composited onto white, a gif's first frame). The folder is listed
and every image decoded by :func:`check_image_source`, before the model loads, and each
problem is one warning naming the file:

- an unreadable image (corrupt, truncated) is skipped (``--strict``: refused);
- another file (``notes.txt``) is ignored; hidden files and subdirectories are passed over;
- a ``labels.json`` entry naming no image of the folder is ignored (``--strict``: refused).

A directory may hold a ``labels.json`` mapping file names to expected answers
(``{"cat.png": "cat"}``); images without an entry are unlabelled (their target is the
model's own answer). :func:`check_labels` checks every label against the tokenizer at once,
once the model is loaded and before the run writes anything.

A directory written by ``datasets.Dataset.save_to_disk`` (its ``state.json`` and
``dataset_info.json``) is read with ``datasets.load_from_disk`` as a :class:`SavedDataset`:
the images of its ``--image-column`` (default ``image``), labelled by its ``--label-column``
(default ``label``: a ``ClassLabel``'s names or strings; ``none``: unlabelled), through
:mod:`tl_lvlm.inputs.hf_datasets` and the same :func:`~tl_lvlm.inputs.images.read_image`.
Every row's image is decoded when the dataset is listed, an unreadable one skipped with a
warning naming its row (``--strict``: refused); rows are named ``row-{i}``.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from tl_lvlm.cli.coco import CocoSelection, SelectionRule, select_coco

#: Names accepted by :func:`load_image_set` instead of a directory.
BUILTIN_IMAGE_SETS = ("random", "digits")
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
    #: where the labels come from, for messages.
    label_source: str = LABELS_FILE

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class ImageFolder:
    """A listed image directory: what :func:`check_image_source` found readable.

    Attributes:
        path: the directory.
        files: the readable image files, sorted by name.
        labels: ``labels.json`` (file name -> answer or None), or None without one.
    """

    path: Path
    files: tuple[Path, ...]
    labels: dict[str, str | None] | None
    #: The ``--coco-annotations`` selection (labels and object masks), or None.
    coco: CocoSelection | None = None
    #: Image names, one per file (``--styles``: ``style/class/file``); None = file names.
    names: tuple[str, ...] | None = None
    #: ``--styles``: image name -> its style; None otherwise.
    styles: dict[str, str] | None = None


@dataclass(frozen=True)
class SavedDataset:
    """A listed ``save_to_disk`` directory: what :func:`check_image_source` found readable.

    Attributes:
        path: the directory.
        rows: the rows whose image is readable.
        data: its images and labels, a :class:`~tl_lvlm.inputs.hf_datasets.DatasetImages`.
        label_source: where the labels come from, for messages.
    """

    path: Path
    rows: tuple[int, ...]
    data: object
    label_source: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"row-{row}" for row in self.rows)


#: The files ``Dataset.save_to_disk`` writes next to its arrow shards.
SAVED_DATASET_FILES = ("state.json", "dataset_info.json")


def load_image_set(
    source: str | os.PathLike | ImageFolder | SavedDataset,
    *,
    n: int | None = None,
    image_size: int = 224,
    seed: int = 0,
) -> ImageSet:
    """Load a directory of images, a saved dataset or a builtin set (see the module doc).

    Args:
        source: a directory (listed by :func:`check_image_source` when it is not an
            :class:`ImageFolder` or :class:`SavedDataset` already), or one of
            :data:`BUILTIN_IMAGE_SETS`.
        n: keep the first ``n`` images (``random``: how many to draw, default 8).
        image_size: side of the ``random`` images; use the model's ``image_size``.
        seed: seed of the ``random`` images.

    Raises:
        ValueError: an unknown name, a directory without images, a bad ``labels.json``,
            or ``n < 1`` (see :func:`check_image_source`).
    """
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    if not isinstance(source, (ImageFolder, SavedDataset)):
        source = check_image_source(source)
    if isinstance(source, ImageFolder):
        return _load_folder(source, n)
    if isinstance(source, SavedDataset):
        rows = source.rows[:n]
        labels = source.data.labels
        return ImageSet(
            [source.data.image(row) for row in rows],  # decoded once already when listed
            list(source.names[: len(rows)]),
            None if labels is None else [labels[row] for row in rows],
            source.label_source,
        )
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


def check_image_source(
    source: str | os.PathLike,
    flag: str = "--images",
    *,
    strict: bool = False,
    coco: str | os.PathLike | None = None,
    rule: SelectionRule | None = None,
    columns: tuple[str | None, str | None] = (None, None),
) -> ImageFolder | SavedDataset | str:
    """List and decode an image set before any model loads; warn about what is left out.

    Returns:
        The :class:`ImageFolder` of a directory (see the module doc for what is skipped,
        each with a warning), the :class:`SavedDataset` of a ``save_to_disk`` directory
        (``columns``: its image and label columns, None = ``image`` / ``label``, a label
        column ``""`` = unlabelled), or the name of a builtin set.

    Raises:
        ValueError: ``source`` is neither a directory nor a builtin set (with a "did you
            mean"), a directory without readable image files, a ``labels.json`` that is not
            a JSON object of file names to answers; with ``strict``, an unreadable image or a
            label naming no image. ``flag`` names the argument in the message. A saved
            dataset without the columns, or with columns of another kind (the message names
            its columns, ``--image-column`` and ``--label-column``); a saved ``DatasetDict``
            (naming its splits).

    With ``coco`` (a COCO instances file, ``--coco-annotations``), the folder's images are
    those :func:`~tl_lvlm.cli.coco.select_coco` keeps under ``rule`` (default
    :class:`~tl_lvlm.cli.coco.SelectionRule`'s), labelled by it (its
    ``labels.json``, if any, is not read); readable images it does not list are excluded.
    """
    # Deferred: tl_lvlm.inputs imports torch, and --help must not.
    from tl_lvlm.inputs.images import IMAGE_SUFFIXES, read_image

    suffixes = "/".join(IMAGE_SUFFIXES)
    path = Path(source).expanduser()
    name = os.fspath(source)
    if not path.is_dir():
        if name in BUILTIN_IMAGE_SETS:
            if coco is not None:
                raise ValueError(
                    f"--coco-annotations needs {flag} to be the directory of its images, not "
                    f"the builtin set {name!r}"
                )
            return name
        what = "a file, not a directory" if path.exists() else "neither a directory nor"
        builtins = ", ".join(BUILTIN_IMAGE_SETS)
        raise ValueError(
            f"{flag} {name!r} is {what} a builtin image set{_did_you_mean(path)}; pass a "
            f"directory of {suffixes} files or one of {builtins}"
        )
    if (
        all((path / f).is_file() for f in SAVED_DATASET_FILES)
        or (path / "dataset_dict.json").is_file()
    ):
        if coco is not None:
            raise ValueError(
                f"--coco-annotations needs {flag} to be the directory of its image files, not a "
                "saved dataset"
            )
        return _check_saved_dataset(path, flag, strict, columns)
    labels = None if coco is not None else _read_labels(path / LABELS_FILE)
    entries = sorted(f for f in path.iterdir() if not f.name.startswith("."))
    candidates = [f for f in entries if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    others = [f.name for f in entries if f.is_file() and f not in candidates]
    others = [o for o in others if o != LABELS_FILE]
    if others:
        warnings.warn(
            f"{flag} {name}: ignored {_names(others)} (not image files; read: {suffixes})",
            stacklevel=2,
        )
    files = _readable(
        candidates, read_image, f"{flag} {name}", lambda f: f.name, "remove or replace it",
        "folder", strict, stacklevel=3,
    )  # fmt: skip
    if not files:
        found = " readable" if candidates else ""
        raise ValueError(f"{flag} {name}: no{found} {suffixes} images in this directory")
    if labels is not None:
        present = {f.name for f in candidates}
        unknown = [k for k in labels if k not in present]
        if unknown:
            message = f"{flag} {name}: {LABELS_FILE} names {_names(unknown)}, not images here"
            if strict:
                raise ValueError(f"{message}; fix the names, or leave out --strict to ignore them")
            warnings.warn(f"{message}; ignored (--strict refuses them)", stacklevel=2)
    if coco is None:
        return ImageFolder(path, tuple(files), labels)
    selection = select_coco(coco, path, rule or SelectionRule())
    readable = set(files)
    listed = {*selection.files, *(path / image for image, _ in selection.excluded)}
    unlisted = [(f.name, "not in --coco-annotations") for f in files if f not in listed]
    unreadable = [
        (f.name, "not a readable image file") for f in selection.files if f not in readable
    ]
    selection = replace(
        selection,
        files=tuple(f for f in selection.files if f in readable),
        excluded=(*selection.excluded, *unreadable, *unlisted),
    )
    return ImageFolder(path, selection.files, dict(selection.labels), selection)


def _check_saved_dataset(
    path: Path, flag: str, strict: bool, columns: tuple[str | None, str | None]
) -> SavedDataset:
    """List a ``save_to_disk`` directory: check its columns, decode every row's image."""
    from tl_lvlm.inputs.hf_datasets import (
        IMAGE_COLUMN,
        LABEL_COLUMN,
        DatasetColumns,
        DatasetImages,
    )

    where = f"{flag} {path}"
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"{where} is a dataset saved with save_to_disk; reading it needs the datasets "
            "package (pip install datasets)"
        ) from None
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise ValueError(
            f"{where} is a DatasetDict saved with save_to_disk (splits: {', '.join(splits)}); "
            f"pass one split's directory, e.g. {flag} {path / (splits or ['train'])[0]}"
        )
    image_column, label_column = columns
    chosen = DatasetColumns(
        image_column or IMAGE_COLUMN,
        LABEL_COLUMN if label_column is None else (label_column or None),
        image_arg="--image-column",
        label_arg="--label-column",
    )
    try:
        dataset = datasets.load_from_disk(str(path))
        data = DatasetImages.open(dataset, chosen)
    except (OSError, ValueError) as err:
        # The API's "None for no labels" is "none" on the command line.
        message = str(err).replace("(None for no labels)", "(none for no labels)")
        raise ValueError(f"{where}: {message}") from None
    rows = _readable(
        range(len(data)), data.image, where, lambda row: f"row {row}", "fix the dataset",
        "dataset", strict, stacklevel=4,
    )  # fmt: skip
    if not rows:
        raise ValueError(f"{where}: no readable image in column {chosen.image!r}")
    return SavedDataset(path, tuple(rows), data, f"the dataset's column {chosen.label!r}")


def coco_rule(args) -> SelectionRule:
    """The selection rule of ``--coco-min-share`` / ``--coco-max-other``."""
    return SelectionRule(args.coco_min_share, args.coco_max_other)


def write_selection(out: Path, source: ImageFolder | SavedDataset | str) -> None:
    """Write ``selection.json`` into ``out`` when ``source`` came with ``--coco-annotations``."""
    if isinstance(source, ImageFolder) and source.coco is not None:
        from tl_lvlm._utils.files import write_json

        write_json(out / "selection.json", source.coco.to_json())


def check_labels(model, image_set: ImageSet, flag: str = "--images") -> None:
    """Check every label of ``image_set`` against ``model``'s tokenizer, all at once.

    Called once the model is loaded and before a run writes anything, so that a fixed
    ``labels.json`` can be rerun on the same ``--out``.

    Raises:
        ValueError: one message listing every image whose label cannot be attributed (a
            word that is not one token, :func:`~tl_lvlm.analysis.heads.label_tokens`), with
            its reason.
    """
    from tl_lvlm.analysis.heads import label_tokens

    if image_set.labels is None:
        return
    bad = []
    for name, label in zip(image_set.names, image_set.labels, strict=True):
        if label is None:
            continue
        try:
            label_tokens(model, label)
        except (TypeError, ValueError) as err:
            bad.append(f"{name}: {err}")
    if bad:
        raise ValueError(
            f"{flag}: {len(bad)} of the labels in {image_set.label_source} cannot be attributed; "
            f"fix them and rerun: " + " | ".join(bad)
        )


def _read_labels(labels_path: Path) -> dict[str, str | None] | None:
    if not labels_path.exists():
        return None
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
    return table


def _names(names: list[str], at_most: int = 5) -> str:
    shown = ", ".join(names[:at_most])
    return shown + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


def _did_you_mean(path: Path) -> str:
    """``"; did you mean X?"`` over the builtin sets and the directories next to ``path``."""
    parent = path.parent if str(path.parent) else Path(".")
    siblings = [p.name for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else []
    close = difflib.get_close_matches(path.name, [*siblings, *BUILTIN_IMAGE_SETS], n=1)
    if not close:
        return ""
    guess = close[0] if close[0] in BUILTIN_IMAGE_SETS and close[0] not in siblings else None
    return f"; did you mean {guess or parent / close[0]}?"


def _load_folder(folder: ImageFolder, n: int | None) -> ImageSet:
    from tl_lvlm.inputs.images import read_image

    files = folder.files[:n]
    images = [read_image(f) for f in files]  # decoded once already by check_image_source
    names = [f.name for f in files] if folder.names is None else list(folder.names[:n])
    if folder.labels is None:
        return ImageSet(images, names)
    return ImageSet(images, names, [folder.labels.get(name) for name in names])


def _first(image_set: ImageSet, n: int | None) -> ImageSet:
    if n is None:
        return image_set
    labels = None if image_set.labels is None else image_set.labels[:n]
    return ImageSet(image_set.images[:n], image_set.names[:n], labels)


def _readable(
    items, read, where: str, label, fix: str, kind: str, strict: bool, *, stacklevel: int
) -> list:
    """The ``items`` that ``read`` reads: an unreadable one is refused with ``--strict``, else
    skipped with one warning naming it (``label(item)``) and ``fix`` / ``kind`` for the advice."""
    kept = []
    for item in items:
        try:
            read(item)
        except ValueError as err:
            cause = str(err).split(" is not a readable image file ", 1)[-1]
            if strict:
                raise ValueError(
                    f"{where}: {label(item)} is not a readable image file {cause}; {fix}, or "
                    "leave out --strict to skip it with a warning"
                ) from None
            warnings.warn(
                f"{where}: skipped {label(item)}, not a readable image file {cause}; --strict "
                f"refuses such a {kind} instead",
                stacklevel=stacklevel,  # the caller's caller, as each warned before
            )
            continue
        kept.append(item)
    return kept
