"""COCO in: ``--coco-annotations instances_*.json`` with ``--images DIR``.

The paper attributes 200 COCO images that each show a single main object. This module
reads a COCO-format instances file with pycocotools, keeps the images that pass a
documented, configurable single-main-object rule (:class:`SelectionRule`), labels each with
its main object's category name (through :data:`SYNONYMS`) and makes its object mask from
the main instance's segmentation (polygons or RLE, as pycocotools decodes them).

The rule, on COCO's ``area`` (the segmentation's pixel area) of the image's instances:

- the largest non-crowd instance is the main object; it must cover at least
  ``min_main_share`` of the image (default 0.05);
- every other instance, crowd regions included, must be at most ``max_other_ratio`` of the
  main object's area (default 0.3): small distractors are allowed, a second object of
  similar size is not.

Images that fail it, have no instance, or are not in ``--images DIR`` are excluded with
the reason; the run writes both lists to ``selection.json``:
``{"kept": [{"image": ..., "label": ...}], "excluded": [{"image": ..., "reason": ...}]}``.

:data:`SYNONYMS` maps the COCO category names that models write otherwise to the word they
write (``"tv"`` -> ``"television"``, ``"dining table"`` -> ``"table"``). Any other name is the
label as it is. A multi-word name (``"traffic light"``, ``"hot dog"``, ``"teddy bear"``) is
attributed through the first token of the answer as the tokenizer writes it after the prompt
(``' traffic'`` for most tokenizers), and an image counts as answered correctly only when the
model's greedy answer writes the whole name (``"traffic cone"`` does not pass;
:func:`~tl_lvlm.analysis.heads.label_tokens`, :func:`~tl_lvlm.analysis.heads.answers_label`).
A one-word label must be one token for the model: labels are checked before the run writes
anything, and one that is not is reported then, with its file name.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the CLI's parser imports this module, and --help stays light
    from jaxtyping import Bool

#: COCO category name -> the word models answer with, where they do not write the name.
SYNONYMS: dict[str, str] = {
    "tv": "television",
    "dining table": "table",
    "potted plant": "plant",
    "cell phone": "phone",
    "sports ball": "ball",
    "wine glass": "glass",
    "baseball glove": "glove",
    "baseball bat": "bat",
    "tennis racket": "racket",
    "fire hydrant": "hydrant",
    "hair drier": "hairdryer",
}


@dataclass(frozen=True)
class SelectionRule:
    """Which COCO images show a single main object (see the module doc).

    Attributes:
        min_main_share: the largest non-crowd instance's area over the image's area must be
            at least this.
        max_other_ratio: every other instance's area over the main object's must be at most
            this.
    """

    min_main_share: float = 0.05
    max_other_ratio: float = 0.3

    def __post_init__(self) -> None:
        for name in ("min_main_share", "max_other_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SelectionRule.{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class CocoSelection:
    """The images a COCO instances file selects in a directory.

    Attributes:
        files: the kept image files, sorted by name.
        labels: kept file name -> label (the main object's category, via :data:`SYNONYMS`).
        masks: kept file name -> ``[H, W]`` bool mask of the main object.
        excluded: ``[(file name, reason), ...]``.
    """

    files: tuple[Path, ...]
    labels: dict[str, str]
    masks: dict[str, Bool[np.ndarray, "H W"]]
    excluded: tuple[tuple[str, str], ...]

    def to_json(self) -> dict:
        """What ``selection.json`` holds."""
        return {
            "kept": [{"image": f.name, "label": self.labels[f.name]} for f in self.files],
            "excluded": [{"image": name, "reason": reason} for name, reason in self.excluded],
        }


def select_coco(
    annotations: str | os.PathLike,
    images_dir: str | os.PathLike,
    rule: SelectionRule = SelectionRule(),
    synonyms: dict[str, str] = SYNONYMS,
    flag: str = "--coco-annotations",
) -> CocoSelection:
    """Select the single-main-object images of ``annotations`` found in ``images_dir``.

    Raises:
        ValueError: ``annotations`` is not a readable COCO instances file (named with
            ``flag``), or no image passes the rule.
    """
    import json

    from pycocotools import mask as mask_utils

    path = Path(annotations).expanduser()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{flag} {path}: not a readable JSON file ({err})") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if not isinstance(data, dict) or missing:
        raise ValueError(
            f"{flag} {path}: not a COCO instances file (no {', '.join(missing)}); pass an "
            "instances_*.json"
        )
    categories = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    directory = Path(images_dir).expanduser()
    kept, labels, masks, excluded = [], {}, {}, []
    for image in sorted(data["images"], key=lambda im: im["file_name"]):
        name = image["file_name"]
        reason = _exclusion(image, by_image.get(image["id"], []), rule)
        if reason is None and not (directory / name).is_file():
            reason = f"not in --images {directory}"
        if reason is not None:
            excluded.append((name, reason))
            continue
        main = _main_instance(by_image[image["id"]])
        category = categories[main["category_id"]]
        labels[name] = synonyms.get(category, category)
        masks[name] = _decode(mask_utils, main, image["height"], image["width"])
        kept.append(directory / name)
    if not kept:
        raise ValueError(
            f"{flag} {path}: no image in --images {directory} shows a single main object "
            f"({len(excluded)} excluded, e.g. {excluded[0][0] if excluded else 'none'}: "
            f"{excluded[0][1] if excluded else 'no images'}); lower --coco-min-share or raise "
            "--coco-max-other"
        )
    return CocoSelection(tuple(kept), labels, masks, tuple(excluded))


def _main_instance(anns: list[dict]) -> dict:
    return max((a for a in anns if not a.get("iscrowd", 0)), key=lambda a: a["area"])


def _exclusion(image: dict, anns: list[dict], rule: SelectionRule) -> str | None:
    """Why ``image`` fails ``rule``, or None when it shows a single main object."""
    if not any(not a.get("iscrowd", 0) for a in anns):
        return "no non-crowd instance"
    main = _main_instance(anns)
    share = main["area"] / (image["width"] * image["height"])
    if share < rule.min_main_share:
        return f"main object covers {share:.1%} of the image < min_main_share {rule.min_main_share}"
    others = [a for a in anns if a is not main]
    if others:
        biggest = max(others, key=lambda a: a["area"])
        ratio = biggest["area"] / main["area"]
        if ratio > rule.max_other_ratio:
            crowd = " (a crowd region)" if biggest.get("iscrowd", 0) else ""
            return (
                f"{len(anns)} objects: another instance{crowd} is {ratio:.0%} of the main "
                f"object's area > max_other_ratio {rule.max_other_ratio}"
            )
    return None


def _decode(mask_utils, ann: dict, height: int, width: int) -> np.ndarray:
    """``[height, width]`` bool mask of ``ann``'s segmentation (polygons, RLE or compressed
    RLE), decoded as pycocotools' ``COCO.annToMask`` does."""
    segm = ann["segmentation"]
    if isinstance(segm, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    with warnings.catch_warnings():
        # pycocotools 2.0.x's compiled decode warns under numpy 2 on every call (its
        # __array__ takes no copy=); the mask is right, and the user can do nothing about it.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)
