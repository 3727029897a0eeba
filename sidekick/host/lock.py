"""One run at a time on a node: an exclusive ``flock`` on a file, waited for within a bound.

``flock`` belongs to the open file, so a holder killed by SIGKILL (or ``docker rm -f``)
releases it with its last descriptor: a stale lock can never block. The lock file itself is
never removed (removing it would let two runs lock two different files).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from sidekick.errors import SidekickError
from sidekick.host.signals import StopRequest

POLL = 0.1


class LockBusy(SidekickError):
    """Another run held the lock for longer than we may wait."""


@contextlib.contextmanager
def exclusive(path: Path, *, wait: float, stop: StopRequest, what: str, note: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created 0600) for the block.

    Waits up to ``wait`` seconds for another holder, then raises :class:`LockBusy` naming
    ``what``; a stop request ends the wait at once. ``note`` (e.g. the command and pid) is
    written into the file for whoever finds it locked.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another run"
            if time.monotonic() >= deadline:
                raise LockBusy(f"{what}: {holder} is still running after {wait:g}s (lock {path.name})")
            if stop.wait(POLL):
                raise LockBusy(f"{what}: stopped while waiting for {holder}")
        if note:
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
