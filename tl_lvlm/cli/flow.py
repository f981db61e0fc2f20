"""``tl-lvlm flow``: token-flow knockout sweeps, and optionally image-token attribution maps.

Register it on the ``tl-lvlm`` parser with :func:`add_flow_parser`::

    tl-lvlm flow --model tl-lvlm/tiny-digits --images digits --out out/flow
    tl-lvlm flow --model llava-hf/llava-1.5-7b-hf --images photos/ \\
        --question "What is the main object in this image? Answer in a single word." \\
        --out out/flow --image-attribution 2 --object-masks photos/masks/

writes into ``--out``:

- ``flow_{experiment}.png``: one curve per edge set of the paper's experiment
  (:data:`tl_lvlm.flow.PAPER_EDGE_SETS`), normalized target logit vs. the first
  layer of the knockout window;
- ``image_attribution_{image}.png`` per attributed image: the patch map over it;
- ``flow.json``: the sweeps (raw and normalized logits, excluded samples) and the
  image-token attributions (maps, held-out R² / ρ, object vs background mass).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_lvlm.cli.common import (
    CliError,
    DeprecatedAlias,
    add_baseline_options,
    add_global_options,
    add_images_option,
    add_samples_option,
    non_negative_int,
    positive_int,
    resolve_device,
)

#: The paper's object-identification question.
DEFAULT_QUESTION = "What is the main object in this image? Answer in a single word."
#: The paper's experiments (keys of :data:`tl_lvlm.flow.PAPER_EDGE_SETS`), named here so that
#: building the parser does not import torch; a test checks that the two agree.
EXPERIMENTS = ("text_flow", "image_flow")


def add_flow_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``flow`` command to ``subparsers`` (from ``parser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "flow",
        help="attention-knockout sweeps between token groups (+ image-token attribution)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--model", required=True, help="hub name, local directory or zoo name")
    add_images_option(p)
    p.add_argument("--question", default=DEFAULT_QUESTION, help="question asked about each image")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    add_samples_option(p, default=8, what="")
    p.add_argument(
        "--n-images",
        dest="n_samples",
        type=positive_int,
        action=DeprecatedAlias,
        new="--n-samples",
        default=argparse.SUPPRESS,
        help="deprecated alias of --n-samples",
    )
    p.add_argument(
        "--window",
        type=positive_int,
        default=None,
        help="layers per knockout window; None = n_layers // 8",
    )
    p.add_argument(
        "--experiments",
        nargs="+",
        choices=EXPERIMENTS,
        default=list(EXPERIMENTS),
        help="which of the paper's edge-set experiments to sweep",
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="samples per forward pass")
    p.add_argument(
        "--image-attribution",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="also attribute the answer to image patches for the first N images",
    )
    p.add_argument(
        "--n-masks", type=positive_int, default=10_000, help="masks per image-token attribution"
    )
    add_baseline_options(p)
    p.add_argument(
        "--object-masks",
        type=Path,
        default=None,
        help="directory of binary object masks named like the images (nonzero = object)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random images and masks")
    add_global_options(p, top_level=False)
    p.set_defaults(func=flow_command)
    return p


def flow_command(args: argparse.Namespace) -> int:
    """Run ``tl-lvlm flow`` (see the module doc); returns the exit status."""
    from tl_lvlm.cli.image_sources import write_selection
    from tl_lvlm.cli.sources import check_sources, load_sources

    # Everything that can be checked without the model, first.
    sources = check_sources(args)
    if args.object_masks is not None and not args.object_masks.is_dir():
        raise CliError(f"--object-masks {args.object_masks} is not a directory")
    device = resolve_device(args.device)

    model, image_set, reference = load_sources(
        args, device, sources, reference=args.image_attribution > 0
    )
    n_attributed = min(args.image_attribution, len(image_set))
    # Checked before any model run, so that a missing mask fails fast.
    coco = getattr(sources.images, "coco", None)
    if args.object_masks is None and coco is not None:  # the main objects' segmentations
        masks = [coco.masks[name] for name in image_set.names[:n_attributed]]
    else:
        masks = [_object_mask(args.object_masks, n) for n in image_set.names[:n_attributed]]
    if not masks:
        reference = None
    args.out.mkdir(parents=True, exist_ok=True)
    write_selection(args.out, sources.images)
    return _run_flow(args, model, image_set, masks, reference)


def _run_flow(args, model, image_set, masks, reference) -> int:
    from tl_lvlm.ablation import resolve_baseline
    from tl_lvlm.analysis.heads import answer_token_id
    from tl_lvlm.analysis.image_tokens import (
        NoImageEffectError,
        image_token_attribution,
        plot_image_attribution,
    )
    from tl_lvlm.flow import PAPER_EDGE_SETS, flow_sweep, plot_flow_sweep, window_words
    from tl_lvlm.report.data import FigureContext

    samples = model.prepare(image_set.images, args.question)
    targets = None
    if image_set.labels is not None:
        # An unlabelled image's target is the model's own answer, as in attribute.
        targets = [
            None if label is None else answer_token_id(model, label) for label in image_set.labels
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"model": str(args.model), "question": args.question, "images": image_set.names}

    report["experiments"] = {}
    for experiment in args.experiments:
        sweep = flow_sweep(
            model,
            samples,
            PAPER_EDGE_SETS[experiment],
            args.window,
            targets=targets,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
        report["experiments"][experiment] = sweep.to_dict()
        if len(sweep.kept):
            settings = f"{window_words(sweep.window)}, {len(sweep.kept)} samples"
            plot_flow_sweep(
                sweep,
                args.out / f"flow_{experiment}.png",
                title=experiment,
                caption=FigureContext(str(args.model), args.question, settings).caption(),
            )
        print(f"{experiment}: {len(sweep.kept)} samples, {len(sweep.excluded)} excluded")

    report["image_attribution"] = {}
    baseline = None
    if masks:
        baseline = resolve_baseline(model, args.baseline, reference, samples)
    context = FigureContext(
        str(args.model),
        args.question,
        f"{args.n_masks} masks, {args.baseline} baseline, seed {args.seed}",
    )
    for i, mask in enumerate(masks):
        name = image_set.names[i]
        answer = int(model.answer(samples[i])[0][0])
        if targets is not None and targets[i] is not None and answer != targets[i]:
            report["image_attribution"][name] = {"excluded": f"wrong answer: token {answer}"}
            print(f"image attribution of {name}: excluded (wrong answer)")
            continue
        try:
            result = image_token_attribution(
                model,
                samples[i],
                baseline=baseline,
                target=None if targets is None else targets[i],
                n_masks=args.n_masks,
                seed=args.seed,
                progress=not args.quiet,
            )
        except NoImageEffectError as err:
            report["image_attribution"][name] = {"excluded": str(err)}
            print(f"image attribution of {name}: excluded ({err})")
            continue
        entry = {
            "target": result.target,
            "clean_logit": result.clean_logit,
            "ablated_logit": result.ablated_logit,
            "r2": result.fit.r2,
            "pearson": result.fit.pearson,
            "coef": result.coef.tolist(),
        }
        if mask is not None:
            entry["object_mass"] = vars(result.object_mass(mask))
        report["image_attribution"][name] = entry
        plot_image_attribution(
            result.coef,
            image_set.images[i],
            args.out / f"image_attribution_{Path(name).stem}.png",
            object_mask=mask,
            geometry=result.geometry,
            title=f"{name}: R² {result.fit.r2:.2f}",
            caption=context.caption(),
        )

    from tl_lvlm._utils.files import write_json

    write_json(args.out / "flow.json", report)
    print(f"wrote {args.out}")
    return 0


def _object_mask(directory: Path | None, image_name: str):
    """The object mask of ``image_name`` in ``directory`` (same file name, or same stem).

    Returns a bool ``[H, W]`` array (True = object), or None without ``directory``.
    """
    import numpy as np
    from PIL import Image

    if directory is None:
        return None
    candidates = [directory / image_name, *sorted(directory.glob(f"{Path(image_name).stem}.*"))]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise CliError(f"--object-masks: no mask for image {image_name} in {directory}")
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 0
