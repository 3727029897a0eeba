"""Atomic file writes: a temp file in the same directory, fsync, rename, fsync the directory.

Readers (kubelet, etcd, nginx, RKE's ``docker cp``) see the old file or the new one, never a
half-written one. The temp file is created with its final mode (``O_EXCL``, never chmod-ed
afterwards), and ``O_NOFOLLOW`` so a planted symlink cannot redirect the write.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".sidekick-tmp-"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(
    path: Path, *, mode: int = 0o600, uid: int | None = None, gid: int | None = None
) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` only if the block completes."""
    path = Path(path)
    directory = path.parent
    temp = directory / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not weaken or widen the contract's mode
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        with os.fdopen(fd, "wb", closefd=True) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_dir(directory)


def atomic_write(
    path: Path,
    data: bytes | str | Iterable[bytes],
    *,
    mode: int = 0o600,
    uid: int | None = None,
    gid: int | None = None,
) -> None:
    with atomic_output(path, mode=mode, uid=uid, gid=gid) as out:
        if isinstance(data, str):
            out.write(data.encode())
        elif isinstance(data, bytes | bytearray | memoryview):
            out.write(data)
        else:
            for chunk in data:
                out.write(chunk)


def atomic_copy(src: Path, dst: Path, *, mode: int, chunk_size: int = 1 << 20) -> None:
    with open(src, "rb") as source, atomic_output(dst, mode=mode) as out:
        while chunk := source.read(chunk_size):
            out.write(chunk)


def remove_leftovers(directory: Path) -> list[Path]:
    """Delete temp files an interrupted run left behind; return what was removed."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in directory.iterdir():
            if entry.name.startswith(TEMP_PREFIX) and not entry.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(entry)
    return removed
