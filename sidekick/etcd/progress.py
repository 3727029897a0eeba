"""Progress lines for long steps (snapshot, archive, upload, download).

A slow S3 or a full disk must not look like a hang (rancher/rancher#21675, #30662): a
:class:`Progress` logs at most one line every
``interval`` seconds with bytes done, the total when known and the rate, and a final line with
size, duration and (when given) the SHA-256. It is thread-safe: s3transfer calls back from its
transfer threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sidekick.log import kv

DEFAULT_INTERVAL = 5.0
_MB = 1_000_000


def mb_per_s(size: int, seconds: float) -> str:
    return f"{size / _MB / seconds:.1f}" if seconds > 0 else "inf"


class Progress:
    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        total: int | None = None,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        **fields: object,
    ) -> None:
        self._log = logger
        self._what = what
        self.total = total
        self._interval = interval
        self._clock = clock
        self._fields = fields
        self._lock = threading.Lock()
        self.done = 0
        self.started = clock()
        self._last = self.started

    def add(self, count: int) -> None:
        """Count ``count`` more bytes; log a line when the interval has passed."""
        with self._lock:
            self.done += count
            now = self._clock()
            if now - self._last < self._interval:
                return
            self._last = now
            done, elapsed = self.done, now - self.started
        extra: dict[str, object] = {"done": done}
        if self.total:
            extra["total"] = self.total
            extra["percent"] = f"{100 * done / self.total:.0f}"
        extra["mbps"] = mb_per_s(done, elapsed)
        self._log.info("%s in progress", self._what, extra=kv(**self._fields, **extra))

    def elapsed(self) -> float:
        return self._clock() - self.started

    def finish(self, *, size: int | None = None, sha256: str | None = None, **fields: object) -> float:
        """Log the final line; return the duration in seconds."""
        elapsed = self.elapsed()
        size = self.done if size is None else size
        extra: dict[str, object] = {"size": size, "seconds": f"{elapsed:.2f}", "mbps": mb_per_s(size, elapsed)}
        if sha256:
            extra["sha256"] = sha256
        self._log.info("%s done", self._what, extra=kv(**self._fields, **fields, **extra))
        return elapsed
