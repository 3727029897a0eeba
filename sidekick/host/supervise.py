"""Run two processes as one: the helper first, then the main one; when either ends, both end.

This replaces the original's ``cri-dockerd & sleep 10; kubelet & wait -n``. That shell form
once fell through to a second ``exec kubelet`` without its flags when one process died
(rancher-archives/rke#3292); here the supervisor always returns the exit code of the first
process to end, after stopping the other, so Docker's restart policy starts both afresh.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

from sidekick.deadline import Deadline
from sidekick.errors import SidekickError
from sidekick.log import kv

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def exit_code(status: int) -> int:
    """A wait status as a shell reports it (128+N for a signal)."""
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def socket_answers(path: Path) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(0.5)
    try:
        sock.connect(str(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


class Pair:
    """The two children and the signal forwarding between them and Docker."""

    def __init__(self, env: Mapping[str, str] | None = None, *, stop_timeout: float = 10.0) -> None:
        self.env = dict(os.environ if env is None else env)
        self.stop_timeout = stop_timeout
        self.children: dict[int, str] = {}
        self._previous: dict[int, object] = {}

    def _spawn(self, name: str, argv: Sequence[str]) -> int:
        try:
            pid = os.posix_spawnp(argv[0], list(argv), self.env)
        except OSError as err:
            raise SidekickError(f"cannot start {argv[0]}: {err.strerror}", exit_code=127) from None
        self.children[pid] = name
        log.info("started", extra=kv(process=name, pid=pid))
        return pid

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self, pid: int, flags: int = 0) -> int | None:
        try:
            done, status = os.waitpid(pid, flags)
        except ChildProcessError:
            self.children.pop(pid, None)
            return 0
        if done == 0:
            return None
        self.children.pop(pid, None)
        return exit_code(status)

    def _stop_rest(self) -> None:
        """SIGTERM whoever is left, then SIGKILL after ``stop_timeout``."""
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = Deadline(self.stop_timeout, what="stopping the other process")
        while self.children and not deadline.expired():
            for pid in list(self.children):
                self._reap(pid, os.WNOHANG)
            time.sleep(0.05)
        for pid, name in list(self.children.items()):
            log.warning("did not stop in time, killing it", extra=kv(process=name, pid=pid))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._reap(pid)

    def run(
        self,
        helper: Sequence[str],
        main: Sequence[str],
        *,
        ready: Callable[[], bool],
        ready_timeout: float,
    ) -> int:
        """Start ``helper``, wait (bounded) until ``ready()``, start ``main``, supervise both."""
        if not (math.isfinite(ready_timeout) and ready_timeout >= 0):  # inf would wait for ever
            raise ValueError(f"ready_timeout must be a finite number of seconds, not {ready_timeout!r}")
        for signum in FORWARDED:
            self._previous[signum] = signal.signal(signum, self._forward)
        try:
            helper_pid = self._spawn(os.path.basename(helper[0]), helper)
            code = self._wait_ready(helper_pid, os.path.basename(helper[0]), ready, ready_timeout)
            if code is not None:
                return code
            self._spawn(os.path.basename(main[0]), main)
            pid, status = os.wait()
            first = self.children.pop(pid, str(pid))
            code = exit_code(status)
            log.info("exited, stopping the other", extra=kv(process=first, pid=pid, code=code))
            return code
        finally:
            self._stop_rest()
            for number, handler in self._previous.items():
                signal.signal(number, handler)  # type: ignore[arg-type]

    def _wait_ready(self, pid: int, name: str, ready: Callable[[], bool], timeout: float) -> int | None:
        """None once ready (or after the bound); the helper's exit code if it ended first."""
        deadline = Deadline(timeout, what=f"{name} to be ready")
        while True:
            code = self._reap(pid, os.WNOHANG)
            if code is not None:
                log.error("exited before it was ready", extra=kv(process=name, code=code))
                return code
            if ready():
                log.info("ready", extra=kv(process=name))
                return None
            if deadline.expired():
                log.warning("not ready in time, starting the next process anyway", extra=kv(process=name, waited=timeout))
                return None
            time.sleep(0.05)
