"""``tl-lvlm``: head attribution, reports, token flow and a demo from the command line.

    tl-lvlm attribute --model llava-hf/llava-1.5-7b-hf --images photos/ --out out/coco \\
        [--question ...] [--n-masks 10000|auto] [--p-ablate 0.75] [--baseline mean|zero] \\
        [--reference-images DIR|random|digits] [--n-samples N] [--seed 0] \\
        [--batch-size auto|N] [--shard I --n-shards N]
    tl-lvlm report out/coco        # merge shards, redraw summary.json, figures, report.html
    tl-lvlm demo [--out out/demo]  # small run on the bundled tiny-digits model
    tl-lvlm flow ...               # token-flow knockout (tl_lvlm.cli.flow)

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
    add_metric_options,
    add_samples_option,
    auto_or_positive_int,
    check_metric_options,
    non_negative_float,
    non_negative_int,
    one_line,
    positive_int,
    probability,
    resolve_device,
    resolve_dtype,
    setup_runtime,
    source_id,
)
from tl_lvlm.cli.flow import DEFAULT_QUESTION, add_flow_parser

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
    p.add_argument(
        "--n-masks",
        type=auto_or_positive_int,
        default=10_000,
        help="random masks per sample, or auto: in rounds until the fit has converged",
    )
    p.add_argument(
        "--p-ablate", type=probability, default=0.75, help="probability a head is ablated"
    )
    add_baseline_options(p)
    add_image_size_option(p)
    add_metric_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of masks, fits and random images")
    p.add_argument(
        "--batch-size",
        type=auto_or_positive_int,
        default="auto",
        help="masks per engine call; auto = the most that fit in memory",
    )
    p.add_argument(
        "--shard", type=non_negative_int, default=None, help="this process's shard index"
    )
    p.add_argument(
        "--n-shards",
        type=positive_int,
        default=None,
        help="number of shards; None = from RANK/WORLD_SIZE or a SLURM array, else 1",
    )
    p.add_argument("--scope", choices=("text", "all"), default="text", help="who sees ablations")
    p.add_argument(
        "--min-logit-gap",
        type=non_negative_float,
        default=0.5,
        help="exclude samples whose clean and all-ablated target logits differ by less",
    )
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
        help="small head attribution on the bundled tiny model (a few minutes on CPU)",
        description=f"Head attribution on {DEMO_MODEL} and its held-out digits; the mean "
        "baseline is over all 360 held-out digits.",
    )
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory")
    add_samples_option(p, default=8, what="")
    p.add_argument(
        "--n-masks", type=auto_or_positive_int, default=800, help="random masks per sample"
    )
    add_global_options(p, top_level=False)
    p.set_defaults(func=demo_command)

    add_flow_parser(sub)
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
    from tl_lvlm.cli.sources import check_sources, load_sources

    # Everything that can be checked without the model, first, and before the slow imports.
    sources = check_sources(args)
    check_metric_options(args)
    out: Path = args.out

    from attribution import resolve_shard, shard_indices
    from tl_lvlm.analysis.heads import HeadAttributionConfig, head_attribution, stored_samples
    from tl_lvlm.cli.image_sources import write_selection
    from tl_lvlm.cli.run_dir import (
        RESULTS_NAME,
        RunRecord,
        check_rerun,
        check_settings,
        shard_file_name,
        write_record,
    )

    shard, n_shards = resolve_shard(args.shard, args.n_shards)
    device = resolve_device(args.device)
    config = HeadAttributionConfig(
        n_masks=args.n_masks,
        p_ablate=args.p_ablate,
        scope=args.scope,
        min_logit_gap=args.min_logit_gap,
        seed=args.seed,
        evaluate=not args.no_evaluate,
        batch_size=None if args.batch_size == "auto" else args.batch_size,
        metric=args.metric,
    )
    # What the results depend on: the run's sources and its HeadAttributionConfig.
    settings = {
        "model": source_id(args.model),
        "dtype": str(resolve_dtype(args.dtype, device)).removeprefix("torch."),
        "baseline": args.baseline,
        "reference_images": None
        if args.reference_images is None
        else source_id(args.reference_images),
        "n_shards": n_shards,
        "foil": args.foil,
        **config.result_settings(),
        # Recorded when given, so that the runs of before --image-size existed still resume.
        **({} if args.image_size is None else {"image_size": list(args.image_size)}),
    }
    check_settings(out, settings, args.question, sources.images_id)

    model, images, reference = load_sources(args, device, sources)
    record = RunRecord(sources.images_id, args.question, images.names, images.labels, settings)
    state = check_rerun(out, record)

    # From here on the run directory is written.
    out.mkdir(parents=True, exist_ok=True)
    write_record(out, record)
    write_selection(out, sources.images)
    store = None if args.no_store else out / "store"
    ids = shard_indices(len(images), shard, n_shards)
    n_total = len(ids)
    if state != "new" and store is not None:
        # The same count as the interrupt message's: this shard's samples stored in full.
        n_stored = stored_samples(store, ids)
        what = "extending" if state == "extend" else "resuming"
        print(
            f"{what} the run in {out}: {n_stored} of {n_total} samples already collected",
            file=sys.stderr,
        )
    progress = {"done": 0}

    def on_sample_done(n_done: int, total: int) -> None:
        progress["done"] = n_done

    try:
        result = head_attribution(
            model,
            [(image, args.question) for image in images.images],
            config,
            labels=images.labels,
            foil=args.foil,
            baseline=args.baseline,
            reference=reference,
            image_size=args.image_size,
            store_dir=store,
            shard=shard,
            n_shards=n_shards,
            progress=not args.quiet,
            on_sample_done=on_sample_done,
        )
    except KeyboardInterrupt:
        if store is not None:
            # Counted as the resumed run counts them: a sample done but excluded (wrong
            # answer, small gap) has no stored logits and is checked again on resume.
            done, then = stored_samples(store, ids), "rerun the same command to resume"
        else:
            done, then = progress["done"], "--no-store kept nothing: a rerun starts again"
        print(
            f"interrupted: {done} of {n_total} samples collected; {then}",
            file=sys.stderr,
        )
        return 130
    if n_shards > 1:
        path = result.save(out / shard_file_name(shard, n_shards))
        print(f"wrote {path}; once all {n_shards} shards are done run: tl-lvlm report {out}")
        return 0
    from tl_lvlm.cli.report import format_summary, write_report

    result.save(out / RESULTS_NAME)
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

    # A `tl-lvlm study` directory is reported by the study (tl_lvlm.study): dispatch on it
    # here, before load_run, which reads an `attribute` run directory.
    result, names = load_run(args.dir)
    summary = write_report(
        result, args.dir, tokenizer=_local_tokenizer(result.config["model"]), names=names
    )
    print(format_summary(summary))
    print(f"summary.json, figures and report.html in {args.dir}")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    """Run ``tl-lvlm demo``: ``attribute`` on the bundled model with small settings."""
    from tl_lvlm import zoo

    argv = [
        "attribute", "--model", DEMO_MODEL, "--images", "digits", "--reference-images", "digits",
        "--question", zoo.DIGITS_QUESTION, "--out", str(args.out),
        "--n-samples", str(args.n_samples), "--n-masks", str(args.n_masks),
    ]  # fmt: skip
    attribute_args = build_parser().parse_args(argv)
    for option in ("threads", "quiet", "device", "dtype"):
        setattr(attribute_args, option, getattr(args, option))
    return attribute_command(attribute_args)


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
