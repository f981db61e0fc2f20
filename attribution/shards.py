"""Split a run over samples into shards (torchrun / SLURM arrays) and merge their results.

Results file format (safetensors, written atomically)::

    tensor "sample"      int64 [n_samples]  ids of the samples (e.g. dataset indices), distinct
    tensor <name>        [n_samples, ...]   one row per sample, any numeric/bool dtype
    metadata "format"    "attribution.results/1"
    metadata "meta"      JSON of the run configuration; identical in every shard of a run
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from numpy.typing import ArrayLike
from safetensors import safe_open

from attribution.atomic import atomic_file

RESULTS_FORMAT = "attribution.results/1"
SAMPLE_KEY = "sample"


def resolve_shard(shard: int | None = None, n_shards: int | None = None) -> tuple[int, int]:
    """Which shard this process runs: ``(shard, n_shards)`` with ``0 <= shard < n_shards``.

    Explicit arguments win. Otherwise torchrun's ``RANK`` / ``WORLD_SIZE``, then a SLURM
    job array (``SLURM_ARRAY_TASK_ID`` relative to ``SLURM_ARRAY_TASK_MIN``, divided by
    ``SLURM_ARRAY_TASK_STEP``, out of ``SLURM_ARRAY_TASK_COUNT``), else ``(0, 1)``.
    """
    if (shard is None) != (n_shards is None):
        raise ValueError("pass both shard and n_shards, or neither (to read them from the env)")
    if shard is not None:
        source = "arguments"
    elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        shard, n_shards = _env_int("RANK"), _env_int("WORLD_SIZE")
        source = "RANK/WORLD_SIZE"
    elif "SLURM_ARRAY_TASK_ID" in os.environ:
        if "SLURM_ARRAY_TASK_COUNT" not in os.environ:
            raise ValueError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")
        offset = _env_int("SLURM_ARRAY_TASK_ID") - _env_int("SLURM_ARRAY_TASK_MIN", 0)
        shard = offset // _env_int("SLURM_ARRAY_TASK_STEP", 1)
        n_shards = _env_int("SLURM_ARRAY_TASK_COUNT")
        source = "SLURM_ARRAY_TASK_*"
    else:
        return 0, 1
    if not (n_shards >= 1 and 0 <= shard < n_shards):
        raise ValueError(
            f"invalid shard {shard} of {n_shards} (from {source}); a job array must be "
            "contiguous (e.g. --array=0-7), otherwise pass shard and n_shards explicitly"
        )
    return shard, n_shards


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def shard_indices(n_items: int, shard: int | None = None, n_shards: int | None = None) -> list[int]:
    """Indices of the items that this shard processes: a contiguous, balanced block.

    The blocks of shards ``0 .. n_shards - 1`` partition ``range(n_items)``; shard and
    n_shards are resolved by :func:`resolve_shard`.
    """
    if n_items < 0:
        raise ValueError(f"n_items must be non-negative, got {n_items}")
    shard, n_shards = resolve_shard(shard, n_shards)
    base, extra = divmod(n_items, n_shards)  # the first `extra` shards get one item more
    start = shard * base + min(shard, extra)
    return list(range(start, start + base + (shard < extra)))


@dataclass
class Results:
    """Per-sample results: row i of every array belongs to sample ``sample[i]``.

    Attributes:
        sample: int64 ``[n_samples]`` distinct sample ids.
        arrays: name -> ``[n_samples, ...]`` array.
        meta: JSON-serializable run configuration.
    """

    sample: np.ndarray
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


def save_results(
    path: str | os.PathLike,
    sample: ArrayLike,
    arrays: Mapping[str, ArrayLike],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write per-sample results atomically to a safetensors file (format in the module doc).

    Args:
        path: output file, conventionally ``*.safetensors`` (merge_shards globs that).
        sample: ``[n_samples]`` distinct integer sample ids.
        arrays: name -> ``[n_samples, ...]`` numeric or bool arrays.
        meta: run configuration (model, p_ablate, n_masks, ...); must be the same for
            every shard of a run, so do not put the shard index in it.
    """
    sample = np.asarray(sample)
    if sample.ndim != 1 or not (sample.size == 0 or np.issubdtype(sample.dtype, np.integer)):
        raise ValueError("sample must be a 1-D array of integer ids")
    if len(np.unique(sample)) != len(sample):
        raise ValueError("sample ids must be distinct")
    tensors = {SAMPLE_KEY: sample.astype(np.int64)}
    for name, value in arrays.items():
        if name == SAMPLE_KEY:
            raise ValueError(f"array name {SAMPLE_KEY!r} is reserved for the sample ids")
        value = np.ascontiguousarray(value)
        if value.ndim == 0 or len(value) != len(sample):
            raise ValueError(
                f"array {name!r} has shape {value.shape}; "
                f"expected {len(sample)} rows (one per sample)"
            )
        tensors[name] = value
    metadata = {"format": RESULTS_FORMAT, "meta": json.dumps(dict(meta or {}), sort_keys=True)}
    path = Path(path)
    with atomic_file(path) as f:
        f.write(safetensors.numpy.save(tensors, metadata=metadata))
    return path


def load_results(path: str | os.PathLike) -> Results:
    """Read a file written by :func:`save_results`."""
    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != RESULTS_FORMAT:
            raise ValueError(f"{path} is not an attribution results file ({RESULTS_FORMAT})")
        arrays = {name: f.get_tensor(name) for name in f.keys()}
    sample = arrays.pop(SAMPLE_KEY)
    return Results(sample=sample, arrays=arrays, meta=json.loads(metadata["meta"]))


def merge_shards(paths: Iterable[str | os.PathLike]) -> Results:
    """Concatenate the results of several shards, sorted by sample id.

    Args:
        paths: results files, or directories whose ``*.safetensors`` files are all taken.

    Raises:
        ValueError: no files; shards with different ``meta``, array names, dtypes or
            per-sample shapes; or a sample id present in more than one shard.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        found = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
        if not found:
            raise ValueError(f"no *.safetensors results files in directory {p}")
        files += found
    if not files:
        raise ValueError("merge_shards needs at least one results file")

    parts = [load_results(f) for f in files]
    first, ref = files[0], parts[0]
    for f, part in zip(files[1:], parts[1:], strict=True):
        if part.meta != ref.meta:
            keys = sorted(
                k for k in ref.meta.keys() | part.meta.keys() if ref.meta.get(k) != part.meta.get(k)
            )
            raise ValueError(
                f"{f} and {first} come from different configurations (meta differs in {keys})"
            )
        if part.arrays.keys() != ref.arrays.keys():
            raise ValueError(
                f"{f} has arrays {sorted(part.arrays)} but {first} has {sorted(ref.arrays)}"
            )
        for name, value in part.arrays.items():
            want = ref.arrays[name]
            if value.dtype != want.dtype or value.shape[1:] != want.shape[1:]:
                raise ValueError(
                    f"array {name!r}: {f} has {value.dtype} rows of shape {value.shape[1:]}, "
                    f"{first} has {want.dtype} rows of shape {want.shape[1:]}"
                )

    sample = np.concatenate([p.sample for p in parts])
    ids, counts = np.unique(sample, return_counts=True)
    if (counts > 1).any():
        dup = ids[counts > 1]
        owners = [str(f) for f, p in zip(files, parts, strict=True) if np.isin(p.sample, dup).any()]
        raise ValueError(
            f"{len(dup)} sample ids appear in more than one shard (first: {dup[:5].tolist()}); "
            f"files involved: {owners}"
        )
    order = np.argsort(sample, kind="stable")
    arrays = {name: np.concatenate([p.arrays[name] for p in parts])[order] for name in ref.arrays}
    return Results(sample=sample[order], arrays=arrays, meta=ref.meta)
