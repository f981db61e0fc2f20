"""Run ``fn(masks) -> outputs`` over many masks in batches, optionally into a resumable store.

With ``store``, every finished batch is appended to an :class:`~attribution.store.OutputStore`
(two files per store, see :mod:`attribution.store`); a rerun loads the stored rows and
computes only the rest, so after a crash at any point the result equals that of an
uninterrupted run. The batch size does not enter the store: a rerun may use another one.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from tqdm.auto import tqdm

from attribution.masks import as_masks
from attribution.own_checks import checks_own_arguments
from attribution.store import OutputStore


@checks_own_arguments
def collect(
    fn: Callable[[np.ndarray], Any],
    masks: ArrayLike,
    *,
    batch_size: int | np.integer,
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
        batch_size: masks per ``fn`` call.
        store: directory that keeps finished batches. If it already holds outputs of the
            same configuration for a prefix of ``masks`` (or for longer masks that start
            with ``masks``), those are loaded instead of recomputed, and the result equals
            that of an uninterrupted run.
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
    output_store = None if store is None else OutputStore.open(store, masks.shape[1], meta)
    done = np.empty(0) if output_store is None else output_store.load(masks)
    # Rows the store holds beyond `done` (masks end inside a stored chunk) are recomputed
    # here without writing: the store only ever grows at its end.
    writable = output_store is not None and len(done) == output_store.rows
    trailing = done.shape[1:] if len(done) else None
    chunks = [done] if len(done) else []

    with tqdm(
        total=n_masks, initial=len(done), desc=desc, unit="mask", disable=not progress
    ) as bar:
        for start in range(len(done), n_masks, batch_size):
            stop = min(start + batch_size, n_masks)
            out = _check_output(fn(masks[start:stop].copy()), start, stop)
            # Checked before saving so that a bad batch never enters the store.
            if trailing is not None and out.shape[1:] != trailing:
                raise ValueError(
                    f"fn returned shape {out.shape} for masks [{start}, {stop}), but "
                    f"[b{''.join(f', {d}' for d in trailing)}] for earlier batches"
                )
            trailing = out.shape[1:]
            if writable:
                output_store.append(masks[start:stop], out)
            chunks.append(out)
            bar.update(stop - start)

    return np.concatenate(chunks, axis=0)


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
