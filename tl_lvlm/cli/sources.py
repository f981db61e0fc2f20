"""What every model-and-images command does first: check the sources, then load them.

:func:`check_sources` finds every mistake it can without the model (a missing model or image
folder, an output directory in the way), before the slow imports; :func:`load_sources` then
loads the model, the images and the reference images, the same way for every command.
"""

from __future__ import annotations

import argparse
from typing import Any

from tl_lvlm.cli.common import check_out_dir, load_model
from tl_lvlm.cli.image_sources import ImageSet, check_image_source, load_image_set
from tl_lvlm.cli.model_source import check_model_source


def check_sources(args: argparse.Namespace) -> None:
    """Refuse a bad ``--model``, ``--images``, ``--reference-images`` or ``--out``.

    Raises:
        CliError: naming the flag and what is wrong, before anything loads.
    """
    check_model_source(args.model)
    check_image_source(args.images)
    if args.reference_images is not None:
        check_image_source(args.reference_images, "--reference-images")
    check_out_dir(args.out)


def load_sources(
    args: argparse.Namespace, device: str, *, reference: bool = True
) -> tuple[Any, ImageSet, list | None]:
    """``(model, images, reference images or None)`` of a checked command line.

    ``--n-samples`` limits the images; random images are drawn from ``--seed`` at the
    model's image size. ``reference=False`` skips ``--reference-images`` (a command that
    will not need a baseline).
    """
    model = load_model(args.model, device, args.dtype, quiet=args.quiet)
    images = load_image_set(
        args.images, n=args.n_samples, image_size=model.image_size, seed=args.seed
    )
    reference_images = None
    if reference and args.reference_images is not None:
        reference_images = load_image_set(
            args.reference_images, image_size=model.image_size, seed=args.seed
        ).images
    return model, images, reference_images
