"""The output directory of ``tl-lvlm attribute``: what describes it, and whether a rerun fits.

``samples.json`` records a run: its samples (image names, labels, question) and the settings
their results depend on (:class:`RunRecord`). A rerun into the same directory is checked
against it before anything there is written (:func:`check_rerun`):

- same settings and samples: it resumes (finished logits are read from ``store/``);
- same settings, and the old samples are the first samples of the new ones: it extends the
  run, unless the baseline is the mean over the attributed images (it would change, and
  every stored logit with it);
- anything else is refused, naming what differs.

:func:`report_files` checks what ``tl-lvlm report`` reads: the results files of one complete
layout (unsharded, or every shard of one count) and names that cover their samples.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tl_lvlm._utils.files import write_json
from tl_lvlm.cli.common import CliError

SAMPLES_NAME = "samples.json"
RESULTS_NAME = "results.safetensors"
_SHARD_FILE = re.compile(r"^results-shard-(\d+)-of-(\d+)\.safetensors$")


def shard_file_name(shard: int, n_shards: int) -> str:
    return f"results-shard-{shard:03d}-of-{n_shards:03d}.safetensors"


@dataclass
class RunRecord:
    """What ``samples.json`` holds.

    Attributes:
        images: the ``--images`` source (absolute path of a directory, or a builtin name).
        question: the question asked about every image.
        names: image name per sample, indexed by sample id.
        labels: expected answer per sample (None where unknown), or None.
        settings: the run's settings that its results depend on (model, dtype, masks,
            baseline, seed, ...); compared key by key on a rerun.
    """

    images: str
    question: str
    names: list[str]
    labels: list[str | None] | None
    settings: dict[str, Any]

    @property
    def baseline_over_samples(self) -> bool:
        """The mean baseline is taken over the attributed images themselves."""
        return self.settings["baseline"] == "mean" and self.settings["reference_images"] is None


def read_record(out: Path) -> RunRecord | None:
    """The record of the run in ``out``, or None when there is none."""
    path = Path(out) / SAMPLES_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return RunRecord(
            images=data["images"],
            question=data["question"],
            names=list(data["names"]),
            labels=data["labels"],
            settings=dict(data.get("settings", {})),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise CliError(
            f"{path} is not a tl-lvlm run record ({type(err).__name__}: {err}); use a new --out"
        ) from None


def write_record(out: Path, record: RunRecord) -> None:
    write_json(Path(out) / SAMPLES_NAME, asdict(record))


def check_settings(out: Path, settings: dict[str, Any], question: str, images: str) -> None:
    """Refuse a rerun whose settings differ from the run in ``out`` (before the model loads)."""
    previous = read_record(out)
    if previous is None:
        return
    now = {"images": images, "question": question, **settings}
    before = {"images": previous.images, "question": previous.question, **previous.settings}
    diffs = [
        f"{key} {before[key]!r} -> {now.get(key)!r}"
        for key in before
        if key in now and before[key] != now[key]
    ]
    diffs += [f"{key} (not recorded) -> {now[key]!r}" for key in now if key not in before]
    if previous.settings and diffs:
        raise CliError(
            f"--out {out} holds a run with other settings ({'; '.join(diffs)}); nothing was "
            "changed: rerun with the old settings to resume it, or choose a new --out"
        )


def check_rerun(out: Path, record: RunRecord) -> str:
    """``"new"``, ``"resume"`` or ``"extend"`` for ``record`` in ``out``; refuses the rest.

    Raises:
        CliError: the run in ``out`` has other settings or other samples (see module doc).
    """
    check_settings(out, record.settings, record.question, record.images)
    previous = read_record(out)
    if previous is None:
        return "new"
    if previous.names == record.names and previous.labels == record.labels:
        return "resume"
    n_old = len(previous.names)
    old_labels = previous.labels or [None] * n_old
    new_labels = (record.labels or [None] * len(record.names))[:n_old]
    is_prefix = record.names[:n_old] == previous.names and new_labels == old_labels
    where = f"--out {out} holds a run of {n_old} samples"
    n_new = len(record.names)
    old_start = (previous.names[:n_new], (previous.labels or [None] * n_old)[:n_new])
    if previous.settings and n_new < n_old and old_start == (record.names, new_labels):
        raise CliError(
            f"{where}; this command has its first {n_new}, and a run does not shrink; nothing "
            f"was changed: rerun with --n-samples {n_old} to resume it, or choose a new --out"
        )
    if not previous.settings or not is_prefix or n_new < n_old:
        raise CliError(
            f"{where}; this command has {len(record.names)} samples that do not start with "
            "those (same names and labels), so it can neither resume nor extend it; nothing was "
            "changed: choose a new --out"
        )
    if record.baseline_over_samples:
        raise CliError(
            f"{where}; this command has {len(record.names)}, and the mean baseline is taken over "
            "the attributed images, so it would change every stored result; nothing was "
            "changed: pass --reference-images (a fixed baseline) to both runs, or choose a new "
            "--out"
        )
    return "extend"


def report_files(out: Path) -> tuple[list[Path], list[str] | None]:
    """The results files ``tl-lvlm report`` merges in ``out``, and the sample names.

    Raises:
        CliError: no results; results of two layouts (unsharded and sharded, or two shard
            counts) with no ``samples.json`` saying which is current; missing shards.
    """
    out = Path(out)
    if not out.is_dir():
        raise CliError(f"{out} is not a directory; pass the --out of tl-lvlm attribute")
    record = read_record(out)
    shards: dict[int, dict[int, Path]] = {}
    for path in out.glob("results-shard-*.safetensors"):
        match = _SHARD_FILE.match(path.name)
        if match:
            shards.setdefault(int(match[2]), {})[int(match[1])] = path
    layouts = set(shards) | ({1} if (out / RESULTS_NAME).exists() else set())
    if not layouts:
        raise CliError(f"no results*.safetensors files in {out}; run tl-lvlm attribute first")
    n_shards = record.settings.get("n_shards") if record is not None else None
    if n_shards is None:
        if len(layouts) > 1:
            raise CliError(
                f"{out} holds results of several layouts ({_layouts(layouts)}) and no "
                f"{SAMPLES_NAME} says which is current; move the stale ones away"
            )
        (n_shards,) = layouts
    if n_shards == 1:
        if not (out / RESULTS_NAME).exists():
            raise CliError(f"{out} has no {RESULTS_NAME}; the run is not finished: rerun it")
        files = [out / RESULTS_NAME]
    else:
        found = shards.get(n_shards, {})
        missing = [i for i in range(n_shards) if i not in found]
        if missing:
            raise CliError(
                f"{out}: shards {_ranges(missing)} of {n_shards} have no results file yet; "
                "run them (same command with --shard I --n-shards N), then report again"
            )
        files = [found[i] for i in range(n_shards)]
    return files, None if record is None else record.names


def _layouts(layouts: set[int]) -> str:
    return ", ".join("unsharded" if n == 1 else f"{n} shards" for n in sorted(layouts))


def _ranges(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")
