"""``tl-lvlm``: head attribution, reports, token flow and a demo from the command line.

    tl-lvlm attribute --model llava-hf/llava-1.5-7b-hf --images photos/ --out out/coco \\
        [--question ...] [--n-masks 10000] [--p-ablate 0.75] [--baseline mean|zero] \\
        [--n-samples N] [--seed 0] [--batch-size 64] [--device cuda] [--shard I --n-shards N]
    tl-lvlm report out/coco        # merge shards, redraw summary.json and figures
    tl-lvlm demo [--out out/demo]  # small run on the bundled tiny-digits model
    tl-lvlm flow ...               # token-flow knockout (tl_lvlm.flow_cli)

``attribute`` writes into ``--out``:

- ``results.safetensors`` (``results-shard-{i}-of-{n}.safetensors`` per shard): every
  sample's attribution, fit, outputs, baseline scores and curves
  (:meth:`~tl_lvlm.head_attribution.HeadAttributionResult.save`);
- ``samples.json``: image names, labels and question of all samples;
- ``store/sample-{id}/``: the collected logits, so that a rerun resumes;
- unsharded: ``summary.json`` and the figures of :mod:`tl_lvlm.report`. Sharded runs
  leave them to ``tl-lvlm report DIR`` once every shard is done.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer

from attribution import resolve_shard
from tl_lvlm import zoo
from tl_lvlm.flow_cli import DEFAULT_QUESTION, add_flow_parser
from tl_lvlm.head_attribution import HeadAttributionResult, head_attribution
from tl_lvlm.images import BUILTIN_IMAGE_SETS, load_image_set
from tl_lvlm.model import HookedLVLM
from tl_lvlm.report import format_summary, write_json, write_report
from tl_lvlm.tiny_llava import save_tiny_llava

SAMPLES_NAME = "samples.json"
RESULTS_GLOB = "results*.safetensors"
DEMO_MODEL = "tl-lvlm/tiny-digits"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tl-lvlm", description="Mechanistic interpretability of LLaVA-style models."
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is often fastest for small models "
        "or on a busy machine)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "attribute",
        help="head attribution: which attention heads carry the image to the answer",
        description="Head attribution over image-K/V head ablations (arXiv 2509.17588).",
    )
    p.add_argument("--model", required=True, help="hub name, local directory or zoo name")
    p.add_argument(
        "--images",
        required=True,
        help="directory of png/jpg images (optional labels.json: file name -> expected "
        f"answer), or a builtin set: {', '.join(BUILTIN_IMAGE_SETS)}",
    )
    p.add_argument("--question", default=DEFAULT_QUESTION, help="question asked about each image")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--n-masks", type=int, default=10_000, help="random masks per sample")
    p.add_argument("--p-ablate", type=float, default=0.75, help="probability a head is ablated")
    p.add_argument(
        "--baseline",
        choices=("mean", "zero"),
        default="mean",
        help="image K/V of ablated heads: mean over the images, or zeros",
    )
    p.add_argument("--n-samples", type=int, default=None, help="use the first N images")
    p.add_argument("--seed", type=int, default=0, help="seed of masks, fits and random images")
    p.add_argument("--batch-size", type=int, default=64, help="masks per engine call")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--shard", type=int, default=None, help="this process's shard index")
    p.add_argument(
        "--n-shards",
        type=int,
        default=None,
        help="number of shards (default: from RANK/WORLD_SIZE or a SLURM array, else 1)",
    )
    p.add_argument("--scope", choices=("text", "all"), default="text", help="who sees ablations")
    p.add_argument(
        "--min-logit-gap",
        type=float,
        default=0.5,
        help="exclude samples whose clean and all-ablated target logits differ by less",
    )
    p.add_argument(
        "--no-evaluate", action="store_true", help="skip baselines and faithfulness curves"
    )
    p.add_argument("--no-store", action="store_true", help="do not keep logits for resuming")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=attribute_command)

    p = sub.add_parser(
        "report",
        help="merge result shards and redraw summary.json and figures",
        description="Merge results*.safetensors in DIR; write summary.json and figures there.",
    )
    p.add_argument("dir", type=Path, help="output directory of tl-lvlm attribute")
    p.set_defaults(func=report_command)

    p = sub.add_parser(
        "demo",
        help="small head attribution on the bundled tiny model (a few minutes on CPU)",
        description=f"Head attribution on {DEMO_MODEL} and its held-out digits, or on a "
        "random tiny model when the bundled checkpoint is missing.",
    )
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory")
    p.add_argument("--n-samples", type=int, default=8, help="images to attribute")
    p.add_argument("--n-masks", type=int, default=800, help="random masks per sample")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=demo_command)

    add_flow_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tl-lvlm``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        # User errors (bad arguments, missing files) read better without a traceback.
        print(f"tl-lvlm {args.command}: error: {err}", file=sys.stderr)
        return 2


def attribute_command(args: argparse.Namespace) -> int:
    """Run ``tl-lvlm attribute`` (see the module doc)."""
    shard, n_shards = resolve_shard(args.shard, args.n_shards)
    model = HookedLVLM.from_pretrained(args.model, device=args.device)
    images = load_image_set(
        args.images, n=args.n_samples, image_size=model.image_size, seed=args.seed
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # The same for every shard, so concurrent shards may all write it.
    write_json(
        out / SAMPLES_NAME,
        {
            "images": str(args.images),
            "question": args.question,
            "names": images.names,
            "labels": images.labels,
        },
    )
    result = head_attribution(
        model,
        [(image, args.question) for image in images.images],
        labels=images.labels,
        n_masks=args.n_masks,
        p_ablate=args.p_ablate,
        baseline=args.baseline,
        scope=args.scope,
        min_logit_gap=args.min_logit_gap,
        seed=args.seed,
        batch_size=args.batch_size,
        store_dir=None if args.no_store else out / "store",
        shard=shard,
        n_shards=n_shards,
        evaluate=not args.no_evaluate,
        progress=not args.quiet,
    )
    if n_shards > 1:
        path = result.save(out / f"results-shard-{shard:03d}-of-{n_shards:03d}.safetensors")
        print(f"wrote {path}; once all {n_shards} shards are done run: tl-lvlm report {out}")
        return 0
    result.save(out / "results.safetensors")
    summary = write_report(result, out, tokenizer=model.tokenizer, names=images.names)
    print(format_summary(summary))
    print(f"results, summary.json and figures in {out}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    """Run ``tl-lvlm report DIR``: merge the results files there and redraw everything."""
    files = sorted(args.dir.glob(RESULTS_GLOB))
    if not files:
        raise FileNotFoundError(f"no {RESULTS_GLOB} files in {args.dir}; run tl-lvlm attribute")
    result = HeadAttributionResult.merge(files)
    samples_path = args.dir / SAMPLES_NAME
    names = json.loads(samples_path.read_text())["names"] if samples_path.exists() else None
    summary = write_report(
        result, args.dir, tokenizer=_local_tokenizer(result.config["model"]), names=names
    )
    print(format_summary(summary))
    print(f"summary.json and figures in {args.dir}")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    """Run ``tl-lvlm demo``: ``attribute`` on the bundled model with small settings."""
    try:
        zoo.resolve(DEMO_MODEL)
        model, images, question = DEMO_MODEL, "digits", zoo.DIGITS_QUESTION
    except FileNotFoundError:
        model = args.out / "tiny-random-llava"
        if not model.exists():
            save_tiny_llava(model)
        images, question = "random", DEFAULT_QUESTION
        print(f"{DEMO_MODEL} is not installed: running on a random tiny model ({model})")
    argv = [
        "attribute", "--model", str(model), "--images", images, "--question", question,
        "--out", str(args.out), "--n-samples", str(args.n_samples),
        "--n-masks", str(args.n_masks),
    ]  # fmt: skip
    if args.quiet:
        argv.append("--quiet")
    return attribute_command(build_parser().parse_args(argv))


def _local_tokenizer(name_or_path: str):
    """The run's tokenizer when it is on this machine (never downloads), else None."""
    try:
        return AutoTokenizer.from_pretrained(zoo.resolve(name_or_path), local_files_only=True)
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
