"""What every ``tl-lvlm`` subcommand shares: the parser, argument types, global options, setup.

Kept free of torch / transformers imports at module level, so that ``tl-lvlm --help`` and
argument errors answer at once; what needs them imports them when it runs.

- :class:`Parser`: argparse that prints a user mistake as one line (no usage block) and
  shows every default in ``--help``.
- Argument types that refuse out-of-range numbers while parsing, before any model loads.
- :func:`add_global_options`: ``--threads``, ``--quiet``, ``--device``, ``--dtype``, valid
  before and after the subcommand.
- :func:`setup_runtime`: applies them (torch threads, silenced bars, narrow warning filters).
- :func:`check_out_dir`: ``--out`` can be written, checked before the model loads.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from tl_lvlm.cli.coco import SelectionRule
from tl_lvlm.cli.image_sources import (
    BUILTIN_IMAGE_SETS,
    ImageFolder,
    SavedDataset,
    check_image_source,
    coco_rule,
)
from tl_lvlm.cli.styles import check_styles, style_spec

#: ``--dtype`` choices; ``auto`` is bf16 on CUDA and fp32 on CPU.
DTYPES = ("auto", "float32", "bfloat16", "float16")


class CliError(Exception):
    """A user mistake found by the CLI itself: printed as one line, exit status 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help; descriptions keep their line breaks.

    Required options and flags have no default worth showing.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr, exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------ argument types
def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _parse(int, text, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _parse(int, text, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite float >= 0."""
    value = _parse(float, text, "a number")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def probability(text: str) -> float:
    """A float strictly between 0 and 1."""
    value = _parse(float, text, "a number")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def auto_or_positive_int(text: str) -> int | str:
    """``"auto"`` or an integer >= 1."""
    return "auto" if text == "auto" else positive_int(text)


def image_size(text: str) -> tuple[int, int]:
    """``W`` (a square) or ``WxH``, in pixels, each >= 1: ``(width, height)``."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"must be W or WxH in pixels (e.g. 336 or 640x480), got {text!r}"
        )
    width, height = (int(parts[0]),) * 2 if len(parts) == 1 else map(int, parts)
    if min(width, height) < 1:
        raise argparse.ArgumentTypeError(f"sides must be >= 1 pixel, got {text}")
    return width, height


def _parse(kind, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


class DeprecatedAlias(argparse.Action):
    """An old option name that still works, stores into the new one's dest and says so."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


# ------------------------------------------------------------------ global options
def add_global_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """Add ``--threads``, ``--quiet``, ``--device`` and ``--dtype`` to ``parser``.

    The top-level parser holds the defaults. A subcommand's copy has none
    (``argparse.SUPPRESS``), so that an option given before the subcommand is not reset by
    the subcommand's parser, and one given after it wins; its help states the default.
    """
    group = parser.add_argument_group("global options (before or after the command)")
    for flags, kwargs in _GLOBAL_OPTIONS:
        kwargs = dict(kwargs)
        if not top_level:
            if kwargs.get("action") != "store_true":
                kwargs["help"] += f" (default: {kwargs['default']})"
            kwargs["default"] = argparse.SUPPRESS
        group.add_argument(*flags, **kwargs)


_GLOBAL_OPTIONS = (
    (
        ("--threads",),
        {
            "type": positive_int,
            "default": None,
            "help": "torch CPU threads; None = torch's choice (1 is often fastest for small "
            "models or on a busy machine)",
        },
    ),
    (
        ("--quiet",),
        {
            "action": "store_true",
            "default": False,
            "help": "no progress bars (ours, model loading, downloads)",
        },
    ),
    (
        ("--device",),
        {"default": None, "help": "cpu, cuda, cuda:1, ...; None = cuda if available, else cpu"},
    ),
    (
        ("--dtype",),
        {
            "choices": DTYPES,
            "default": "auto",
            "help": "dtype of the model's weights; auto = bfloat16 on CUDA, float32 on CPU",
        },
    ),
)


# ------------------------------------------------------------------ shared options
def add_images_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--images",
        default=None,
        help="directory of png/jpg/webp/bmp/tiff/gif images (optional labels.json: file name "
        "-> expected answer), a Hugging Face dataset saved with save_to_disk, or a builtin "
        f"set: {', '.join(BUILTIN_IMAGE_SETS)}",
    )
    p.add_argument(
        "--image-column",
        default=None,
        help="with --images of a saved dataset: its column of images (None = image)",
    )
    p.add_argument(
        "--label-column",
        default=None,
        help="with --images of a saved dataset: its column of labels, a ClassLabel or strings "
        "(None = label; none = unlabelled, each image's target is the model's own answer)",
    )
    p.add_argument(
        "--styles",
        nargs="+",
        type=style_spec,
        default=None,
        metavar="STYLE=DIR",
        help="instead of --images: one directory per style, each with one subfolder per "
        "class (DomainNet / PACS / ImageNet-R layout); labels are the class names",
    )
    p.add_argument(
        "--coco-annotations",
        type=Path,
        default=None,
        metavar="instances_*.json",
        help="COCO instances file for the --images directory: attribute the images with a "
        "single main object (labelled with its category, masked by its segmentation); "
        "selection.json in --out lists what was kept and excluded, and why",
    )
    p.add_argument(
        "--coco-min-share",
        type=probability,
        default=SelectionRule.min_main_share,
        help="with --coco-annotations: least share of the image the main object covers",
    )
    p.add_argument(
        "--coco-max-other",
        type=probability,
        default=SelectionRule.max_other_ratio,
        help="with --coco-annotations: largest area of any other instance, as a fraction of "
        "the main object's",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse an image folder with an unreadable image or a labels.json entry naming "
        "no image, instead of skipping them with a warning",
    )


def images_from_args(args) -> tuple[ImageFolder | SavedDataset | str, str]:
    """The image set of ``--images`` (with ``--coco-annotations``; a saved dataset with its
    ``--image-column`` / ``--label-column``) or ``--styles``, listed by
    :func:`check_image_source` / :func:`~tl_lvlm.cli.styles.check_styles`, and its id as the
    run records it.

    Raises:
        ValueError: neither or both of ``--images`` and ``--styles``; ``--coco-annotations``
            with ``--styles``; a column option without a saved dataset; what the listing
            refuses.
    """
    if (args.images is None) == (args.styles is None):
        raise ValueError(
            "pass --images DIR (or a builtin set) or --styles STYLE=DIR ..., one of the two"
        )
    columns_given = [
        flag
        for flag, value in (
            ("--image-column", args.image_column),
            ("--label-column", args.label_column),
        )
        if value is not None
    ]
    if args.styles is not None and columns_given:
        raise ValueError(f"{columns_given[0]} goes with --images of a saved dataset, not --styles")
    if args.styles is not None:
        if args.coco_annotations is not None:
            raise ValueError("--coco-annotations goes with --images DIR, not with --styles")
        folder = check_styles(args.styles, strict=args.strict)
        ids = ",".join(f"{style}={source_id(str(d))}" for style, d in args.styles)
        return folder, f"styles:{ids}"
    source = check_image_source(
        args.images,
        strict=args.strict,
        coco=args.coco_annotations,
        rule=coco_rule(args),
        columns=dataset_columns(args),
    )
    if columns_given and not isinstance(source, SavedDataset):
        raise ValueError(
            f"{columns_given[0]} chooses a column of a dataset saved with save_to_disk, but "
            f"--images {args.images} is not one; leave it out"
        )
    return source, source_id(args.images)


def dataset_columns(args, *, labels: bool = True) -> tuple[str | None, str | None]:
    """``(--image-column, --label-column)`` as given (None = not given); ``--label-column
    none`` (or ``labels=False``, for reference images) is ``""``: no label column."""
    label = args.label_column
    if not labels or (label is not None and label.lower() == "none"):
        label = ""
    return args.image_column, label


def add_image_size_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image-size",
        type=image_size,
        default=None,
        metavar="W|WxH",
        help="resize every image (and reference image) to W x H pixels first, so that a set "
        "of mixed sizes has one image geometry; None = keep each image's size (the mean "
        "baseline is then computed per image geometry)",
    )


def add_samples_option(p: argparse.ArgumentParser, *, default: int | None, what: str) -> None:
    p.add_argument(
        "--n-samples",
        type=positive_int,
        default=default,
        help="use the first N images" + (f"; None = {what}" if what else ""),
    )


def add_baseline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--baseline",
        choices=("mean", "zero"),
        default="mean",
        help="image K/V of ablated heads: the mean over the reference images, or zeros",
    )
    p.add_argument(
        "--reference-images",
        default=None,
        metavar="DIR|" + "|".join(BUILTIN_IMAGE_SETS),
        help="images whose mean image K/V is the baseline (a directory or a builtin set); "
        "None = the attributed images (use 16 or more)",
    )


#: ``--metric`` choices: the named metrics of :mod:`tl_lvlm.ablation.metric` (a test checks
#: that the two agree; named here so that building the parser does not import torch).
METRIC_CHOICES = ("logit", "logit_diff", "logprob")


def add_metric_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metric",
        choices=METRIC_CHOICES,
        default="logit",
        help="what is measured of the final-position logits: the target's logit, its lead "
        "over the --foil token (logit_diff), or its log-probability (logprob)",
    )
    p.add_argument(
        "--foil",
        default=None,
        metavar="WORD",
        help="with --metric logit_diff: the one-token word whose logit is subtracted from the "
        "target's, for every image (spelled as labels are)",
    )


def check_metric_options(args: argparse.Namespace) -> None:
    """Refuse ``--foil`` without ``--metric logit_diff`` and the reverse, before the model loads."""
    if args.metric == "logit_diff" and args.foil is None:
        raise CliError("--metric logit_diff needs --foil WORD (the token subtracted)")
    if args.metric != "logit_diff" and args.foil is not None:
        raise CliError(f"--foil goes with --metric logit_diff, not --metric {args.metric}")


def add_mask_options(p: argparse.ArgumentParser) -> None:
    """Head attribution's masks: ``--n-masks``, ``--p-ablate``, ``--seed``, ``--batch-size``,
    ``--scope``, ``--min-logit-gap`` (``attribute`` and ``study``)."""
    p.add_argument(
        "--n-masks",
        type=auto_or_positive_int,
        default=10_000,
        help="random masks per sample, or auto: in rounds until the fit has converged",
    )
    p.add_argument(
        "--p-ablate", type=probability, default=0.75, help="probability a head is ablated"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of masks, fits and random images")
    p.add_argument(
        "--batch-size",
        type=auto_or_positive_int,
        default="auto",
        help="masks per engine call; auto = the most that fit in memory",
    )
    p.add_argument("--scope", choices=("text", "all"), default="text", help="who sees ablations")
    p.add_argument(
        "--min-logit-gap",
        type=non_negative_float,
        default=0.5,
        help="exclude samples whose clean and all-ablated target logits differ by less",
    )


def add_shard_options(p: argparse.ArgumentParser) -> None:
    """``--shard I --n-shards N``: this process runs one block of the samples."""
    p.add_argument(
        "--shard", type=non_negative_int, default=None, help="this process's shard index"
    )
    p.add_argument(
        "--n-shards",
        type=positive_int,
        default=None,
        help="number of shards; None = from RANK/WORLD_SIZE or a SLURM array, else 1",
    )


def setup_runtime(args: argparse.Namespace) -> None:
    """Apply the global options and silence what does not concern the user."""
    logging.getLogger("transformers.utils.import_utils").addFilter(_torchvision_fallback_filter)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def silence_loaded_bars() -> None:
    """Turn off the bars of transformers and huggingface_hub (``--quiet``).

    Through their own switches rather than ``TQDM_DISABLE`` in ``os.environ``, which would
    outlive :func:`tl_lvlm.cli.main` in a caller's process and reach its child processes;
    our own bars follow ``progress=not quiet``.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _torchvision_fallback_filter(record: logging.LogRecord) -> bool:
    # transformers warns on every load that it uses the PIL image processor because
    # torchvision is missing; the results are the same, so the user has nothing to do.
    return "requires torchvision (not installed); falling back to" not in record.getMessage()


def resolve_device(device: str | None) -> str:
    """``--device``, checked: None = cuda when available, else cpu."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise CliError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {device}: no CUDA device is available; use --device cpu")
    return device


def resolve_dtype(dtype: str, device: str):
    """``--dtype`` as a torch dtype, by :func:`tl_lvlm.model.resolve_dtype`'s rule."""
    from tl_lvlm.model import resolve_dtype as model_dtype

    return model_dtype(dtype, device)


# ------------------------------------------------------------------ output directory
def check_out_dir(out: Path, flag: str = "--out") -> None:
    """Refuse an ``--out`` that cannot be created or written, before the model loads.

    An existing directory is checked with ``os.access`` and its mount's read-only flag, so
    that nothing in it changes. For a new one, the nearest existing parent is probed by
    creating and removing a temporary directory there: that also catches what ``os.access``
    cannot see (root on a read-only mount, ``/proc``).
    """
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise CliError(f"{flag} {out} exists and is not a directory")
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"{flag} {out}: {existing} is a file, not a directory")
    denied = f"{flag} {out}: cannot write in {existing}"
    if not os.access(existing, os.W_OK | os.X_OK) or os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise CliError(f"{denied} (permission denied or read-only); choose another directory")
    if existing != path:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".tl-lvlm-probe-", dir=existing))
        except OSError as err:
            raise CliError(f"{denied} ({err.strerror}); choose another directory") from None


def one_line(err: BaseException) -> str:
    """An exception's message on one line (HF errors span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def load_model(name: str, device: str, dtype: str, *, quiet: bool):
    """``HookedLVLM.from_pretrained`` with the global options.

    Commands check ``name`` first (:func:`tl_lvlm.cli.model_source.check_model_source`) and
    ``device`` (:func:`resolve_device`), with their other checks, before this slow step.
    """
    from tl_lvlm.model import HookedLVLM

    if quiet:
        silence_loaded_bars()
    return HookedLVLM.from_pretrained(name, device=device, dtype=dtype)


def source_id(source: str) -> str:
    """A ``--model`` / ``--images`` argument as recorded in a run: local paths made absolute."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source
