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
import json
from pathlib import Path

import numpy as np
from PIL import Image

from tl_lvlm.ablation import image_kv_baseline
from tl_lvlm.flow import PAPER_EDGE_SETS, flow_sweep, plot_flow_sweep
from tl_lvlm.head_attribution import answer_token_id
from tl_lvlm.image_attribution import (
    NoImageEffectError,
    image_token_attribution,
    plot_image_attribution,
)
from tl_lvlm.images import load_image_set
from tl_lvlm.model import HookedLVLM

#: The paper's object-identification question.
DEFAULT_QUESTION = "What is the main object in this image? Answer in a single word."


def add_flow_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``flow`` command to ``subparsers`` (from ``parser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "flow",
        help="attention-knockout sweeps between token groups (+ image-token attribution)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--model", required=True, help="hub name, local directory or zoo name")
    p.add_argument(
        "--images",
        required=True,
        help="directory of images (optional labels.json), or a builtin set: random, digits",
    )
    p.add_argument("--question", default=DEFAULT_QUESTION, help="question asked about each image")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--n-images", type=int, default=8, help="images to use (default 8)")
    p.add_argument(
        "--window", type=int, default=None, help="layers per knockout window (default n_layers//8)"
    )
    p.add_argument(
        "--experiments",
        nargs="+",
        choices=list(PAPER_EDGE_SETS),
        default=list(PAPER_EDGE_SETS),
        help="which of the paper's edge-set experiments to sweep (default: all)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="samples per forward pass")
    p.add_argument(
        "--image-attribution",
        type=int,
        default=0,
        metavar="N",
        help="also attribute the answer to image patches for the first N images (default 0)",
    )
    p.add_argument("--n-masks", type=int, default=10_000, help="masks per image-token attribution")
    p.add_argument(
        "--baseline",
        choices=("mean", "zero"),
        default="mean",
        help="image K/V baseline for attribution: mean over the images, or zeros",
    )
    p.add_argument(
        "--object-masks",
        type=Path,
        default=None,
        help="directory of binary object masks named like the images (nonzero = object)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="seed of random images and masks")
    p.set_defaults(func=flow_command)
    return p


def flow_command(args: argparse.Namespace) -> int:
    """Run ``tl-lvlm flow`` (see the module doc); returns the exit status."""
    model = HookedLVLM.from_pretrained(args.model, device=args.device)
    image_set = load_image_set(
        args.images, n=args.n_images, image_size=model.image_size, seed=args.seed
    )
    n_attributed = min(args.image_attribution, len(image_set))
    # Checked before any model run, so that a missing mask fails fast.
    masks = [_object_mask(args.object_masks, name) for name in image_set.names[:n_attributed]]
    samples = model.prepare(image_set.images, args.question)
    targets = None
    if image_set.labels is not None:
        if any(label is None for label in image_set.labels):
            raise SystemExit("some images have a label and some not: label all or none")
        targets = [answer_token_id(model, label) for label in image_set.labels]
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
        )
        report["experiments"][experiment] = sweep.to_dict()
        if len(sweep.kept):
            plot_flow_sweep(sweep, args.out / f"flow_{experiment}.png", title=experiment)
        print(f"{experiment}: {len(sweep.kept)} samples, {len(sweep.excluded)} excluded")

    report["image_attribution"] = {}
    baseline = image_kv_baseline(model, samples, args.baseline) if masks else None
    for i, mask in enumerate(masks):
        name = image_set.names[i]
        answer = int(model.answer(samples[i])[0][0])
        if targets is not None and answer != targets[i]:
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
            title=f"{name}: R² {result.fit.r2:.2f}",
        )

    (args.out / "flow.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


def _object_mask(directory: Path | None, image_name: str) -> np.ndarray | None:
    """The object mask of ``image_name`` in ``directory`` (same file name, or same stem)."""
    if directory is None:
        return None
    candidates = [directory / image_name, *sorted(directory.glob(f"{Path(image_name).stem}.*"))]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise SystemExit(f"--object-masks: no mask for image {image_name} in {directory}")
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 0
