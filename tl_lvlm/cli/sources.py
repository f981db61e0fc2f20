"""What every model-and-images command does first: check the sources, then load them.

:func:`check_sources` finds every mistake it can without the model (a missing model, an
image folder with unreadable files or stray labels, an output directory in the way) before
the slow imports; :func:`load_sources` then loads the model, the images (their labels
checked against its vocabulary, all at once) and the reference images, the same way for
every command.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from tl_lvlm.cli.common import check_out_dir, dataset_columns, images_from_args, load_model
from tl_lvlm.cli.image_sources import (
    ImageFolder,
    ImageSet,
    SavedDataset,
    check_image_source,
    check_labels,
    load_image_set,
)
from tl_lvlm.cli.model_source import check_model_source


@dataclass(frozen=True)
class Sources:
    """The checked sources of a command line.

    Attributes:
        images: the listed ``--images`` (or ``--styles``) set.
        images_id: how the run records it.
        reference: the listed ``--reference-images``, or None.
    """

    images: ImageFolder | SavedDataset | str
    images_id: str
    reference: ImageFolder | SavedDataset | str | None


def check_sources(args: argparse.Namespace) -> Sources:
    """Refuse a bad ``--model``, ``--images`` / ``--styles``, ``--reference-images`` or
    ``--out``; unreadable files and stray labels are warned about (``--strict``: refused).

    Raises:
        CliError / ValueError: naming the flag and what is wrong, before anything loads.
    """
    check_model_source(args.model)
    images, images_id = images_from_args(args)
    reference = None
    if args.reference_images is not None:
        reference = check_image_source(
            args.reference_images,
            "--reference-images",
            strict=args.strict,
            columns=dataset_columns(args, labels=False),
        )
    check_out_dir(args.out)
    return Sources(images, images_id, reference)


def load_sources(
    args: argparse.Namespace, device: str, sources: Sources, *, reference: bool = True
) -> tuple[Any, ImageSet, list | None]:
    """``(model, images, reference images or None)`` of a checked command line.

    ``--n-samples`` limits the images; random images are drawn from ``--seed`` at the
    model's image size; every bad label is reported at once before anything is written.
    ``reference=False`` skips ``--reference-images`` (a command that needs no baseline).
    """
    model = load_model(args.model, device, args.dtype, quiet=args.quiet)
    images = load_image_set(
        sources.images, n=args.n_samples, image_size=model.image_size, seed=args.seed
    )
    check_labels(model, images)
    reference_images = None
    if reference and sources.reference is not None:
        reference_images = load_image_set(
            sources.reference, image_size=model.image_size, seed=args.seed
        ).images
    return model, images, reference_images
