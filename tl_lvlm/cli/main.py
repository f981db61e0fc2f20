"""``tl-lvlm``: head attribution, reports, token flow and a demo from the command line.

    tl-lvlm attribute --model llava-hf/llava-1.5-7b-hf --images photos/ --out out/coco \\
        [--question ...] [--n-masks 10000|auto] [--p-ablate 0.75] [--baseline mean|zero] \\
        [--reference-images DIR|random|digits] [--n-samples N] [--seed 0] \\
        [--batch-size auto|N] [--shard I --n-shards N]
    tl-lvlm report out/coco        # merge shards, redraw summary.json, figures, report.html
    tl-lvlm demo [--out out/demo]  # the study on the bundled model and digits as COCO
    tl-lvlm flow ...               # token-flow knockout (tl_lvlm.cli.flow)
    tl-lvlm study ...              # the whole study: findings.json, report.html (cli.study)

Global options, before or after the command: ``--threads``, ``--quiet``, ``--device``,
``--dtype``. A user mistake is one line on stderr and exit status 2, found before the model
loads wherever it can be; Ctrl-C exits with status 130 and says how far the run got.

``attribute`` writes into ``--out``:

- ``samples.json``: the run's samples (image names, labels, question) and settings
  (:mod:`tl_lvlm.cli.run_dir`); a rerun with other settings is refused before anything is
  written, one with more samples extends the run;
- ``store/``: the collected logits, so that a rerun resumes;
- ``results.safetensors`` (``results-shard-{i}-of-{n}.safetensors`` per shard): every
  sample's attribution, fit, outputs, baseline scores and curves
  (:meth:`~tl_lvlm.analysis.heads.HeadAttributionResult.save`);
- unsharded: ``summary.json``, the figures and ``report.html`` of :mod:`tl_lvlm.cli.report`
  (the figures carry the model, question, settings and heads needed). Sharded runs
  leave them to ``tl-lvlm report DIR`` once every shard is done.

No torch / transformers import at module level: ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from tl_lvlm.cli.common import (
    CliError,
    Parser,
    add_baseline_options,
    add_global_options,
    add_image_size_option,
    add_images_option,
    add_mask_options,
    add_metric_options,
    add_samples_option,
    add_shard_options,
    auto_or_positive_int,
    check_metric_options,
    one_line,
    resolve_device,
    setup_runtime,
)
from tl_lvlm.cli.flow import DEFAULT_QUESTION, add_flow_parser
from tl_lvlm.cli.study import STUDY_NAME, add_study_parser

DEMO_MODEL = "tl-lvlm/tiny-digits"
#: What the CLI prints as one line (exit status 2) instead of a traceback.
USER_ERRORS = (CliError, ValueError, OSError, NotImplementedError)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tl-lvlm", description="Mechanistic interpretability of LLaVA-style models."
    )
    add_global_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "attribute",
        help="head attribution: which attention heads carry the image to the answer",
        description="Head attribution over image-K/V head ablations (arXiv 2509.17588).",
    )
    p.add_argument("--model", required=True, help="hub name, local directory or zoo name")
    add_images_option(p)
    p.add_argument("--question", default=DEFAULT_QUESTION, help="question asked about each image")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    add_samples_option(p, default=None, what="all images")
    add_mask_options(p)
    add_baseline_options(p)
    add_image_size_option(p)
    add_metric_options(p)
    add_shard_options(p)
    p.add_argument(
        "--no-evaluate", action="store_true", help="skip baselines and faithfulness curves"
    )
    p.add_argument("--no-store", action="store_true", help="do not keep logits for resuming")
    add_global_options(p, top_level=False)
    p.set_defaults(func=attribute_command)

    p = sub.add_parser(
        "report",
        help="merge result shards and redraw summary.json, figures and report.html",
        description="Merge the results files in DIR; write summary.json, figures and the "
        "interactive report.html there.",
    )
    p.add_argument("dir", type=Path, help="output directory of tl-lvlm attribute")
    add_global_options(p, top_level=False)
    p.set_defaults(func=report_command)

    p = sub.add_parser(
        "demo",
        help="the study on the bundled tiny model and digits as COCO (about a minute on CPU)",
        description=f"tl-lvlm study on {DEMO_MODEL} and its held-out digits written as a COCO "
        "data set (OUT/data), two questions, the zero baseline. Ends by printing where "
        "report.html is.",
    )
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory")
    add_samples_option(p, default=8, what="")
    p.add_argument(
        "--n-masks", type=auto_or_positive_int, default=400, help="random masks per sample"
    )
    add_global_options(p, top_level=False)
    p.set_defaults(func=demo_command)

    add_flow_parser(sub)
    add_study_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tl-lvlm``; returns the exit status."""
    args = build_parser().parse_args(argv)
    prog = f"tl-lvlm {args.command}"
    try:
        setup_runtime(args)
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(prog)
            return args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2


def _one_line_warning(prog: str):
    """``warnings.showwarning`` for users: one line, no source location."""

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{prog}: warning: {one_line(message)}", file=file or sys.stderr)

    return showwarning


def attribute_command(args: argparse.Namespace) -> int:
    """Run ``tl-lvlm attribute`` (see the module doc)."""
    from tl_lvlm.cli.attribute import AttributionRun
    from tl_lvlm.cli.sources import check_sources, load_sources

    # Everything that can be checked without the model, first, and before the slow imports.
    sources = check_sources(args)
    check_metric_options(args)
    out: Path = args.out

    from attribution import resolve_shard

    shard, n_shards = resolve_shard(args.shard, args.n_shards)
    device = resolve_device(args.device)
    run = AttributionRun.from_args(args, out, args.question, sources.images_id, n_shards, device)
    run.check()

    model, images, reference = load_sources(args, device, sources)
    try:
        result = run.run(
            model,
            images,
            reference,
            baseline=args.baseline,
            shard=shard,
            n_shards=n_shards,
            quiet=args.quiet,
            store=not args.no_store,
            source=sources.images,
        )
    except KeyboardInterrupt:
        return 130
    if n_shards > 1:
        path = run.results_file(shard, n_shards)
        print(f"wrote {path}; once all {n_shards} shards are done run: tl-lvlm report {out}")
        return 0
    from tl_lvlm.cli.report import format_summary, write_report

    summary = write_report(
        result, out, tokenizer=model.tokenizer, names=images.names, question=args.question
    )
    print(format_summary(summary))
    print(f"results, summary.json, figures and report.html in {out}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    """Run ``tl-lvlm report DIR``: merge the results files there and redraw everything,
    ``report.html`` included."""
    from tl_lvlm.cli.report import format_summary, load_run, write_report

    if (args.dir / STUDY_NAME).exists():
        # Its report needs the images and masks the study command names; rerunning it
        # redoes no finished work.
        raise CliError(
            f"{args.dir} is a tl-lvlm study directory: rerun the same tl-lvlm study command "
            "to rewrite its findings.json and report.html (finished work is not redone), or "
            f"report one of its runs: tl-lvlm report {args.dir / 'heads' / '<question>'}"
        )
    result, names = load_run(args.dir)
    summary = write_report(
        result, args.dir, tokenizer=_local_tokenizer(result.config["model"]), names=names
    )
    print(format_summary(summary))
    print(f"summary.json, figures and report.html in {args.dir}")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    """Run ``tl-lvlm demo``: ``study`` on the bundled model and the digits as a COCO set.

    Writes the data set into ``OUT/data`` (:func:`tl_lvlm.zoo.digits_coco.write_digit_coco`:
    single-digit images with distractors, multi-digit images the selection leaves out) and
    runs the study there with two questions (the digit and its ink colour) and small
    settings; it ends by printing where ``report.html`` is. The baseline is zeros: every
    digit here is black on white, so a mean image would carry the ink colour too and leave
    the colour question nothing to attribute.
    """
    from tl_lvlm.cli.study import study_command
    from tl_lvlm.zoo.digits_coco import write_digit_coco
    from tl_lvlm.zoo.questions import TASKS

    data = write_digit_coco(args.out / "data", n_single=args.n_samples)
    argv = [
        "study", "--model", DEMO_MODEL, "--images", str(data.images),
        "--coco-annotations", str(data.annotations), "--baseline", "zero",
        "--question", TASKS["object"].question, "--question", TASKS["ink"].question,
        "--out", str(args.out / "study"), "--n-masks", str(args.n_masks),
        "--image-masks", "200", "--window", "6", "--n-permutations", "1000",
    ]  # fmt: skip
    study_args = build_parser().parse_args(argv)
    for option in ("threads", "quiet", "device", "dtype"):
        setattr(study_args, option, getattr(args, option))
    return study_command(study_args)


def _local_tokenizer(name_or_path: str):
    """The run's tokenizer when it is on this machine (never downloads), else None."""
    from transformers import AutoTokenizer

    from tl_lvlm import zoo

    try:
        return AutoTokenizer.from_pretrained(zoo.resolve(name_or_path), local_files_only=True)
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
