"""nginx as our child instead of our replacement, for when a health checker runs beside it.

nginx runs in the foreground (``daemon off``); SIGTERM, SIGINT, SIGQUIT and SIGHUP reach it
as if it were the container's main process, and its exit code becomes ours, so Docker's
restart policy sees what it saw when nginx was the process.

Signals to the child are race-free against pid reuse: the exit is first observed without
reaping (``waitid`` with ``WNOWAIT``), and the pid is reaped only under the lock that every
sender holds, so a pid we signal is always still ours (a zombie at worst).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from sidekick.errors import SidekickError
from sidekick.host.supervise import exit_code
from sidekick.log import kv

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


class NginxChild:
    def __init__(self, argv: Sequence[str], pid_path: Path) -> None:
        self.argv = list(argv)
        self.pid_path = pid_path
        self.pid: int | None = None
        self.code: int | None = None
        self._early: list[int] = []  # signals that came before nginx did: sent once it starts
        self._lock = threading.RLock()  # RLock: a forwarded signal may arrive while we reap

    def start(self) -> None:
        with self._lock:
            try:
                self.pid = os.posix_spawnp(self.argv[0], self.argv, os.environ)
            except OSError as err:
                raise SidekickError(f"cannot start {self.argv[0]}: {err.strerror}", exit_code=127) from None
            log.info("nginx started", extra=kv(pid=self.pid))
            for signum in self._early:
                os.kill(self.pid, signum)

    def send(self, signum: int) -> bool:
        """Signal nginx; False when it has already exited."""
        with self._lock:
            if self.pid is None:
                self._early.append(signum)
                return True
            if self.code is not None:
                return False
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)
            return True

    def _exited(self, *, block: bool) -> bool:
        """Whether nginx has exited (and then its code is set), without racing :meth:`send`."""
        assert self.pid is not None
        if self.code is not None:
            return True
        flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
        if os.waitid(os.P_PID, self.pid, flags) is None:
            return False
        with self._lock:
            _, status = os.waitpid(self.pid, 0)
            self.code = exit_code(status)
        return True

    def wait_ready(self, timeout: float) -> bool:
        """Until nginx has written its pid file (its signal handlers are set by then: a SIGHUP
        earlier would end it); False when it exited or did not get there within ``timeout``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._exited(block=False):
                return False
            with contextlib.suppress(OSError, ValueError):
                if int(self.pid_path.read_text().strip() or 0) == self.pid:
                    return True
            time.sleep(0.02)
        log.warning("nginx did not write its pid file in time; no reloads, so no health checks",
                    extra=kv(path=self.pid_path, waited=timeout))
        return False

    def wait(self) -> int:
        """Block until nginx exits; its exit code (128+N for signal N)."""
        self._exited(block=True)
        assert self.code is not None
        log.info("nginx exited", extra=kv(pid=self.pid, code=self.code))
        return self.code

    @contextlib.contextmanager
    def forwarding(self) -> Iterator[None]:
        """Hand SIGTERM, SIGINT, SIGQUIT and SIGHUP on to nginx while the block runs."""

        def forward(signum: int, _frame: FrameType | None) -> None:
            log.info("forwarding signal to nginx", extra=kv(signal=signal.Signals(signum).name))
            self.send(signum)

        previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
