"""A resumable store of ``fn(masks)`` outputs: two files per run, however many masks.

Layout (one directory per run)::

    store.json     {"format", "n_components", "meta", "rows", "shape", "complete", "prefixes"}
    outputs.f64    float64 rows, row i = the output for masks[i] (``shape`` values per row)

``rows`` outputs are valid. New rows are written in place after them (``pwrite`` at their
offset) and fsynced, and only then is ``store.json`` replaced atomically with the larger
``rows``; after a crash at any point ``store.json`` describes rows that are all on disk, and
bytes beyond them are overwritten by the next run. ``prefixes`` holds, at the end of every
appended chunk, the SHA-256 of the masks up to there: a rerun checks its masks against
them, so a store is only ever extended by the same mask sequence (a longer run of the
same seed extends a shorter one; a shorter run reads a prefix). ``complete`` is the number
of rows the caller declared final with :meth:`OutputStore.mark_complete` (None until then).

Two processes running one configuration on one store are safe: they write identical bytes
at identical offsets, and each only ever claims rows it has written or verified.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from attribution.atomic import atomic_file

STORE_FORMAT = "attribution.store/1"
STATE_NAME = "store.json"
OUTPUTS_NAME = "outputs.f64"
#: Configuration fields: a store is reused only when all of them are equal.
CONFIG_KEYS = ("format", "n_components", "meta")


def read_state(root: str | os.PathLike) -> dict[str, Any] | None:
    """The ``store.json`` of a store directory, or None when there is none."""
    path = Path(root) / STATE_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class _PrefixHash:
    """SHA-256 of a growing mask matrix, row by row (independent of how it is chunked)."""

    def __init__(self, n_components: int):
        self._h = hashlib.sha256(np.int64(n_components).tobytes())

    def update(self, masks: np.ndarray) -> str:
        self._h.update(np.packbits(masks, axis=1).tobytes())
        return self._h.hexdigest()


class OutputStore:
    """The rows of one store directory; open with :meth:`open`."""

    def __init__(self, root: Path, state: dict[str, Any]):
        self.root = root
        self.state = state
        self._hash = _PrefixHash(state["n_components"])
        self._verified = 0  # rows whose masks were checked against (or written by) this run

    @property
    def rows(self) -> int:
        return int(self.state["rows"])

    @property
    def complete(self) -> int | None:
        return self.state["complete"]

    @classmethod
    def open(
        cls, root: str | os.PathLike, n_components: int, meta: Mapping[str, Any] | None
    ) -> OutputStore:
        """Create the store, or check that an existing one holds this configuration.

        Raises:
            ValueError: a directory with files that are not a store, or a store written
                by a different configuration; nothing is written then.
        """
        root = Path(root)
        config = {
            "format": STORE_FORMAT,
            "n_components": int(n_components),
            # Round-trip through JSON so that tuples and lists compare equal to the stored copy.
            "meta": json.loads(json.dumps(dict(meta or {}), sort_keys=True)),
        }
        stored = read_state(root)
        if stored is None:
            # Temp files of a write that was killed are not the store's.
            found = sorted(p.name for p in root.glob("*") if not p.name.endswith(".tmp"))[:3]
            if found:
                raise ValueError(
                    f"store {root} holds files ({', '.join(found)}, ...) but no {STATE_NAME}, so "
                    "it was not written by this version of attribution: use a new store directory"
                )
            root.mkdir(parents=True, exist_ok=True)
            state = {**config, "rows": 0, "shape": None, "complete": None, "prefixes": []}
            try:
                # Exclusive create: of two runs starting on one new store, one state wins and
                # the other run compares against it below.
                with atomic_file(root / STATE_NAME, exclusive=True) as f:
                    f.write(json.dumps(state, indent=1, sort_keys=True).encode())
            except FileExistsError:
                pass
            stored = read_state(root)
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
        return cls(root, stored)

    # ------------------------------------------------------------------ reading
    def load(self, masks: np.ndarray) -> np.ndarray:
        """The stored outputs of the longest stored prefix of ``masks`` that can be checked.

        Returns float64 ``[r, ...]`` for ``masks[:r]``: r is the store's ``rows`` when
        ``masks`` has at least that many rows, else the last chunk end within ``masks``.

        Raises:
            ValueError: the stored masks differ from ``masks`` (another mask sequence), or
                the outputs file is shorter than ``rows`` (a damaged store).
        """
        self._hash = _PrefixHash(self.state["n_components"])
        verified = 0
        for stop, digest in self.state["prefixes"]:
            if stop > len(masks):
                break
            if self._hash.update(masks[verified:stop]) != digest:
                raise ValueError(
                    f"store {self.root} holds outputs of other masks (they differ within rows "
                    f"[{verified}, {stop})): use a new store directory for another mask sequence"
                )
            verified = stop
        self._verified = verified
        return self._read(verified)

    def _read(self, n_rows: int) -> np.ndarray:
        shape = tuple(self.state["shape"] or ())
        width = int(np.prod(shape, dtype=np.int64))
        if n_rows == 0:
            return np.empty((0, *shape))
        path = self.root / OUTPUTS_NAME
        want = n_rows * width
        data = np.fromfile(path, dtype="<f8", count=want) if path.exists() else np.empty(0)
        if data.size != want:
            raise ValueError(
                f"store {path} holds {data.size // width} rows but {STATE_NAME} claims "
                f"{self.rows}; the store is damaged: use a new store directory"
            )
        return data.reshape(n_rows, *shape)

    # ------------------------------------------------------------------ writing
    def append(self, masks: np.ndarray, outputs: np.ndarray) -> None:
        """Write the outputs of the next ``len(masks)`` rows (after :meth:`load`)."""
        if self._verified != self.rows:
            raise ValueError("append only extends a store after load() verified all its rows")
        shape = list(outputs.shape[1:])
        if self.state["shape"] is not None and self.state["shape"] != shape:
            raise ValueError(
                f"outputs of shape {shape} per row, but store {self.root} holds rows of shape "
                f"{self.state['shape']}"
            )
        start = self.rows
        data = np.ascontiguousarray(outputs, dtype="<f8").tobytes()
        fd = os.open(self.root / OUTPUTS_NAME, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            os.pwrite(fd, data, start * len(data) // len(outputs))
            os.fsync(fd)
        finally:
            os.close(fd)
        stop = start + len(outputs)
        prefixes = [*self.state["prefixes"], [stop, self._hash.update(masks)]]
        self._write({**self.state, "rows": stop, "shape": shape, "prefixes": prefixes})
        self._verified = stop

    def mark_complete(self, n_rows: int) -> None:
        """Record that the caller needs exactly the first ``n_rows`` rows (:func:`read_state`)."""
        if not 0 < n_rows <= self.rows:
            raise ValueError(f"cannot mark {n_rows} rows complete in a store of {self.rows}")
        if self.complete != n_rows:
            self._write({**self.state, "complete": int(n_rows)})

    def _write(self, state: dict[str, Any]) -> None:
        with atomic_file(self.root / STATE_NAME) as f:
            f.write(json.dumps(state, indent=1, sort_keys=True).encode())
        self.state = state
