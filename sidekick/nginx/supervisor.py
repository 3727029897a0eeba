"""nginx as our child instead of our replacement, for when a health checker runs beside it.

nginx runs in the foreground (``daemon off``); SIGTERM, SIGINT, SIGQUIT and SIGHUP reach it
as if it were the container's main process, and its exit code becomes ours, so Docker's
restart policy sees what it saw when nginx was the process.

The signals are blocked in every thread (:func:`block_signals`, before any thread starts, so
all inherit it) and taken by the main thread with ``sigwaitinfo``, together with SIGCHLD. A
Python signal handler would not do: the kernel gives a process's signal to any thread that
does not block it, and the handler runs only when the main thread next executes bytecode,
which it never does while it waits for nginx. Blocked signals also reach PID 1, which
otherwise drops those it has no handler for. nginx itself starts with an empty mask.

Signals to the child are race-free against pid reuse: its exit is first observed without
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
from collections.abc import Sequence
from pathlib import Path

from sidekick.errors import SidekickError
from sidekick.host.supervise import exit_code
from sidekick.log import kv

log = logging.getLogger(__name__)

FORWARDED = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP}
_WAITED = {*FORWARDED, signal.SIGCHLD}


def block_signals() -> None:
    """Hold the forwarded signals and SIGCHLD for :meth:`NginxChild.wait`; call it before any
    thread starts. The mask stays: this process ends when nginx does."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)


class NginxChild:
    def __init__(self, argv: Sequence[str], pid_path: Path) -> None:
        self.argv = list(argv)
        self.pid_path = pid_path
        self.pid: int | None = None
        self.code: int | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        try:
            self.pid = os.posix_spawnp(self.argv[0], self.argv, os.environ, setsigmask=())
        except OSError as err:
            raise SidekickError(f"cannot start {self.argv[0]}: {err.strerror}", exit_code=127) from None
        log.info("nginx started", extra=kv(pid=self.pid))

    def send(self, signum: int) -> bool:
        """Signal nginx; False when it has exited (or never started)."""
        with self._lock:
            if self.pid is None or self.code is not None:
                return False
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)
            return True

    def _exited(self) -> bool:
        """Whether nginx has exited (its code is then set), without racing :meth:`send`."""
        assert self.pid is not None
        if self.code is not None:
            return True
        if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
            return False
        with self._lock:
            _, status = os.waitpid(self.pid, 0)
            self.code = exit_code(status)
        return True

    def wait_ready(self, timeout: float) -> bool:
        """Until nginx has written its pid file (its signal handlers are set by then: a SIGHUP
        earlier would end it); False when it exited or did not get there within ``timeout``.
        Signals that arrive meanwhile wait (blocked) for :meth:`wait`."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._exited():
                return False
            with contextlib.suppress(OSError, ValueError):
                if int(self.pid_path.read_text().strip() or 0) == self.pid:
                    return True
            time.sleep(0.02)
        log.warning("nginx did not write its pid file in time; no reloads, so no health checks",
                    extra=kv(path=self.pid_path, waited=timeout))
        return False

    def wait(self) -> int:
        """Forward signals until nginx exits; its exit code (128+N for signal N)."""
        while not self._exited():
            received = signal.sigwaitinfo(_WAITED).si_signo
            if received != signal.SIGCHLD:  # SIGCHLD: some child ended; the loop checks nginx
                log.info("forwarding signal to nginx", extra=kv(signal=signal.Signals(received).name))
                self.send(received)
        log.info("nginx exited", extra=kv(pid=self.pid, code=self.code))
        assert self.code is not None
        return self.code
