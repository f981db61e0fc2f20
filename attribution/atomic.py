"""Crash-safe file writes: a reader sees either the old file or the complete new one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

#: Glob matching the temporary files :func:`atomic_file` creates (left behind only by a kill).
TEMP_GLOB = ".*.tmp"


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary temp file next to ``path``; on clean exit it replaces ``path``.

    The temp file lives in the same directory so that ``os.replace`` is an atomic
    rename, and it is fsynced before the rename (and the directory after it) so a
    power loss or ``kill -9`` cannot leave a truncated ``path``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Persist the rename itself; without this the new directory entry can be lost on power failure.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
