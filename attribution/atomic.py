"""Crash-safe file writes: a reader sees either the old file or the complete new one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: str | os.PathLike, *, exclusive: bool = False) -> Iterator[BinaryIO]:
    """Open a binary temp file next to ``path``; on clean exit it becomes ``path``.

    The temp file (``.{name}.*.tmp``) lives in the same directory so that the final
    rename is atomic, and it is fsynced before the rename (and the directory after it)
    so that a power loss or ``kill -9`` cannot leave a truncated ``path``. It is created
    with mode ``0o666`` less the umask, as ``open`` creates files (``tempfile.mkstemp``
    would make it ``0600``, unreadable for a group on a shared cluster). A kill while
    writing can leave the temp file behind; nothing reads it.

    Args:
        exclusive: create ``path`` only if it does not exist yet, atomically even
            against concurrent writers (a hard link instead of a rename); raises
            ``FileExistsError`` otherwise.
    """
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _create_temp(path: Path) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # a name another writer drew; draw again
            continue


def _fsync_dir(directory: Path) -> None:
    # Persist the rename itself; without this the new directory entry can be lost on power failure.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
