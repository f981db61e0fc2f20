"""Run ``fn(masks) -> outputs`` over many masks in batches, optionally into a resumable store.

Store layout (one directory per run)::

    config.json          {"format", "n_masks", "n_components", "batch_size", "masks_sha256", "meta"}
    chunk-000000.npy     outputs for masks[0:batch_size], float64 [b] or [b, k]
    chunk-000001.npy     outputs for masks[batch_size:2*batch_size], ...

Every file is written atomically (temp file + fsync + rename), so after a crash at any
point each chunk is either absent or complete; a re-run recomputes only absent chunks.
The config is created exclusively before any chunk, so every chunk belongs to it. Two
processes running the same configuration on one store are safe (they write identical
chunks), merely wasteful.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from tqdm.auto import tqdm

from attribution.atomic import atomic_file
from attribution.masks import as_masks, masks_hash

STORE_FORMAT = "attribution.collect/1"
CONFIG_NAME = "config.json"


def collect(
    fn: Callable[[np.ndarray], Any],
    masks: ArrayLike,
    *,
    batch_size: int,
    store: str | os.PathLike | None = None,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
    desc: str = "collect",
) -> np.ndarray:
    """Evaluate ``fn`` on every mask, ``batch_size`` masks per call.

    Args:
        fn: called as ``fn(mask_batch)`` with a fresh bool array ``[b, n_components]``
            (True = kept); returns array-like ``[b]`` or ``[b, k]`` (numpy, lists, or
            torch tensors of any float dtype, converted with ``.detach().cpu()``).
        masks: ``[n_masks, n_components]`` bool (or 0/1) masks.
        batch_size: masks per ``fn`` call; also the store's chunk size.
        store: directory that keeps finished batches. If it already holds a run of the
            same configuration, finished batches are loaded instead of recomputed, and
            the result equals that of an uninterrupted run.
        meta: JSON-serializable description of what ``fn`` computes (model, sample,
            target, ...). Part of the store's configuration, so that a store is never
            reused for another sample by mistake. Ignored without ``store``.
        progress: show a tqdm progress bar.
        desc: progress bar label.

    Returns:
        float64 array ``[n_masks]`` or ``[n_masks, k]``; row i is ``fn``'s output for
        ``masks[i]``.

    Raises:
        ValueError: bad arguments; ``fn`` outputs of the wrong length or shape, or with
            NaN/inf; a store written by a different configuration.
    """
    masks = as_masks(masks)
    if (
        not isinstance(batch_size, numbers.Integral)
        or isinstance(batch_size, bool)
        or batch_size <= 0
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)  # numpy integers are not JSON-serializable in the store config
    n_masks = len(masks)
    if n_masks == 0:
        raise ValueError("masks is empty: nothing to collect")
    bounds = [(s, min(s + batch_size, n_masks)) for s in range(0, n_masks, batch_size)]
    chunk_store = None if store is None else _ChunkStore.open(store, masks, batch_size, meta)
    chunks = {} if chunk_store is None else chunk_store.load(bounds)
    trailing = next((c.shape[1:] for c in chunks.values()), None)
    done = sum(len(c) for c in chunks.values())

    with tqdm(total=n_masks, initial=done, desc=desc, unit="mask", disable=not progress) as bar:
        for index, (start, stop) in enumerate(bounds):
            if index in chunks:
                continue
            out = _check_output(fn(masks[start:stop].copy()), start, stop)
            # Checked before saving so that a bad batch never enters the store.
            if trailing is not None and out.shape[1:] != trailing:
                raise ValueError(
                    f"fn returned shape {out.shape} for masks [{start}, {stop}), but "
                    f"[b{''.join(f', {d}' for d in trailing)}] for earlier batches"
                )
            trailing = out.shape[1:]
            if chunk_store is not None:
                chunk_store.save(index, out)
            chunks[index] = out
            bar.update(stop - start)

    return np.concatenate([chunks[i] for i in range(len(bounds))], axis=0)


def _check_output(out: Any, start: int, stop: int) -> np.ndarray:
    if hasattr(out, "detach"):  # a torch tensor; duck-typed so that torch is not a dependency
        # .double() first: numpy has no bfloat16, and float64 holds every float16/32 exactly.
        out = out.detach().cpu().double().numpy()
    out = np.asarray(out, dtype=np.float64)
    where = f"masks [{start}, {stop})"
    if out.ndim not in (1, 2) or out.shape[0] != stop - start:
        raise ValueError(
            f"fn must return [{stop - start}] or [{stop - start}, k] outputs for {where}, "
            f"got shape {out.shape}"
        )
    finite = np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    if not finite.all():
        bad = (start + np.flatnonzero(~finite))[:5].tolist()
        raise ValueError(f"fn returned NaN/inf for {where}; first bad mask rows: {bad}")
    return out


class _ChunkStore:
    """Finished batches of one ``collect`` run, one ``.npy`` file per batch."""

    def __init__(self, root: Path):
        self.root = root

    @classmethod
    def open(
        cls,
        store: str | os.PathLike,
        masks: np.ndarray,
        batch_size: int,
        meta: Mapping[str, Any] | None,
    ) -> _ChunkStore:
        """Create the store, or check that an existing one holds this configuration."""
        root = Path(store)
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "format": STORE_FORMAT,
            "n_masks": len(masks),
            "n_components": masks.shape[1],
            "batch_size": batch_size,
            "masks_sha256": masks_hash(masks),
            # Round-trip through JSON so that tuples and lists compare equal to the stored copy.
            "meta": json.loads(json.dumps(dict(meta or {}), sort_keys=True)),
        }
        path = root / CONFIG_NAME
        if not path.exists() and any(root.glob("chunk-*.npy")):
            raise ValueError(
                f"store {root} has chunk files but no {CONFIG_NAME}, so it was not written by "
                "collect: use a new store directory"
            )
        try:
            # Exclusive create: of two runs starting on one new store, only one config wins,
            # and the other run compares against it below.
            with atomic_file(path, exclusive=True) as f:
                f.write(json.dumps(config, indent=2, sort_keys=True).encode())
        except FileExistsError:
            pass
        stored = json.loads(path.read_text())
        diffs = [
            f"{key}: stored {stored.get(key)!r}, now {value!r}"
            for key, value in config.items()
            if stored.get(key) != value
        ]
        if diffs:
            raise ValueError(
                f"store {root} was written by a different configuration ({'; '.join(diffs)}). "
                "Its results are only valid for that configuration: use a new store directory "
                "(or delete this one to recompute)."
            )
        return cls(root)

    def path(self, index: int) -> Path:
        return self.root / f"chunk-{index:06d}.npy"

    def load(self, bounds: list[tuple[int, int]]) -> dict[int, np.ndarray]:
        """Finished chunks by batch index; ``bounds[i]`` is batch i's ``(start, stop)``."""
        finished = {}
        for index, (start, stop) in enumerate(bounds):
            path = self.path(index)
            if not path.exists():
                continue
            chunk = np.load(path, allow_pickle=False)
            if chunk.ndim not in (1, 2) or len(chunk) != stop - start:
                raise ValueError(
                    f"store chunk {path} has shape {chunk.shape}, expected {stop - start} rows; "
                    "the store is damaged: use a new store directory"
                )
            finished[index] = chunk
        shapes = {c.shape[1:] for c in finished.values()}
        if len(shapes) > 1:
            raise ValueError(f"store {self.root} holds chunks of inconsistent shapes {shapes}")
        return finished

    def save(self, index: int, chunk: np.ndarray) -> None:
        with atomic_file(self.path(index)) as f:
            np.save(f, chunk, allow_pickle=False)
