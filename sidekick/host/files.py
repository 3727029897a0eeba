"""Atomic file writes: a temp file in the same directory, fsync, rename, fsync the directory.

Readers (kubelet, etcd, nginx, RKE's ``docker cp``) see the old file or the new one, never a
half-written one. The temp file is created with its final mode (``O_EXCL``, never chmod-ed
afterwards), and ``O_NOFOLLOW`` so a planted symlink cannot redirect the write.

Every temp file is named ``.sidekick-tmp-<final name>.<8 hex>`` (:func:`temp_path`), so
:func:`remove_leftovers` can tell our leftovers from anything else, and one writer's leftovers
from another's: it matches the final name exactly and, by default, only removes files old
enough not to be another process's work in flight (a writer keeps touching its temp file).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".sidekick-tmp-"
LEFTOVER_AGE = 15 * 60.0  # seconds: an in-flight temp file of another process is younger
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"(?P<final>.+)\.[0-9a-f]{4,16}(?:\.part)?")
# The longest suffix a temp name adds to its final name: prefix, ".<8 hex>", etcdctl's ".part".
TEMP_OVERHEAD = len(TEMP_PREFIX) + 9 + len(".part")


def temp_path(path: Path) -> Path:
    """A fresh temp name beside ``path`` that :func:`remove_leftovers` recognises."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{os.urandom(4).hex()}")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Pending:
    """An atomic write in progress: ``file`` writes to ``temp``, which becomes the final path
    when the ``with`` block ends cleanly. Callers may read, check or hash ``temp`` first
    (``nginx -t``, a download's SHA-256)."""

    temp: Path
    file: BinaryIO


@contextlib.contextmanager
def atomic_output(
    path: Path, *, mode: int = 0o600, uid: int | None = None, gid: int | None = None
) -> Iterator[Pending]:
    """Yield a :class:`Pending` whose temp file becomes ``path`` only if the block completes."""
    path = Path(path)
    temp = temp_path(path)
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not weaken or widen the contract's mode
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        with os.fdopen(fd, "r+b", closefd=True) as out:
            yield Pending(temp, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def atomic_write(
    path: Path,
    data: bytes | str | Iterable[bytes],
    *,
    mode: int = 0o600,
    uid: int | None = None,
    gid: int | None = None,
) -> None:
    with atomic_output(path, mode=mode, uid=uid, gid=gid) as pending:
        out = pending.file
        if isinstance(data, str):
            out.write(data.encode())
        elif isinstance(data, bytes | bytearray | memoryview):
            out.write(data)
        else:
            for chunk in data:
                out.write(chunk)


def atomic_copy(src: Path, dst: Path, *, mode: int, chunk_size: int = 1 << 20) -> None:
    with open(src, "rb") as source, atomic_output(dst, mode=mode) as pending:
        while chunk := source.read(chunk_size):
            pending.file.write(chunk)


def atomic_symlink(target: Path, link: Path) -> None:
    """``ln -sf target link`` done atomically: a new link under a temp name, renamed over."""
    link.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(link)
    os.symlink(target, temp)
    try:
        os.replace(temp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(link.parent)


def leftover_of(entry_name: str) -> str | None:
    """The final name a temp file was for, or None when ``entry_name`` is not one of ours."""
    match = _TEMP_NAME.fullmatch(entry_name)
    return match.group("final") if match else None


def remove_leftovers(
    directory: Path, *, names: Iterable[str] | None = None, min_age: float = LEFTOVER_AGE
) -> list[Path]:
    """Delete temp files an interrupted run left in ``directory``; return what was removed.

    Only our own temp names, only those for one of ``names`` (exact final names; None: any),
    and only those untouched for ``min_age`` seconds.
    """
    wanted = None if names is None else set(names)
    now = time.time()
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(directory) as entries:
        for entry in entries:
            final = leftover_of(entry.name)
            if final is None or (wanted is not None and final not in wanted):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False) or now - st.st_mtime < min_age:
                    continue
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def describe_os_error(err: OSError, path: str) -> str:
    """One line naming ``path`` (as the user knows it) and the cause, for filesystem errors."""
    causes = {
        errno.ENAMETOOLONG: "file name too long",
        errno.EROFS: "read-only file system",
        errno.ENOTDIR: "not a directory",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large",
        errno.EISDIR: "is a directory",
        errno.ENOENT: "no such file or directory",
    }
    cause = causes.get(err.errno or 0) or err.strerror or str(err)
    return f"{path}: {cause}"
