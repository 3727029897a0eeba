"""Make a blocking step end at its deadline or at a stop request, whatever library runs it.

Per-read timeouts do not bound a step: a server that answers one byte every few seconds
never trips them, and botocore, s3transfer, requests and http.client each block in their
own threads and loops. A :class:`Guard` bounds the step from outside instead: a watchdog
waits for the deadline or the stop event and then shuts down every client socket of the
process (the blocked reads and writes fail at once, in every thread) and kills the child
processes started under the guard. The step's error becomes :class:`DeadlineExceeded` or
:class:`Stopped`, which say why.

Client sockets are found through the interpreter's audit hook for ``socket.connect`` (the
standard, library-independent way to observe connections), installed once when this module
is imported. Each record
keeps the descriptor and the peer address, and a descriptor is shut down only while it still
refers to a socket connected to that same peer, so a reused descriptor is left alone. Only
one guarded step runs at a time in these tools, so "every client socket" is that step's
(and idle pooled connections, which their pools then discard).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sidekick.deadline import Deadline, DeadlineExceeded, Stopped
from sidekick.host.signals import StopRequest

if TYPE_CHECKING:
    import subprocess  # only its type: a tool that starts no process need not load it

T = TypeVar("T")
POLL = 0.05  # seconds between looks at the stop event
GRACE = 2.0  # seconds a cancelled step gets to notice before :meth:`Guard.call` gives up on it

_lock = threading.Lock()
_sockets: dict[int, tuple[object, ...]] = {}  # fd -> peer address at connect time
_active: list[Guard] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event != "socket.connect":
        return
    sock, address = args[0], args[1]
    if isinstance(sock, socket.socket) and isinstance(address, tuple) and sock.family != socket.AF_UNIX:
        with contextlib.suppress(OSError, ValueError), _lock:
            _sockets[sock.fileno()] = tuple(address[:2])


sys.addaudithook(_audit)  # once, at import: every later client socket is recorded


def _shutdown_client_sockets() -> int:
    """Shut down every recorded client socket still connected to its recorded peer."""
    with _lock:
        records = list(_sockets.items())
    count = 0
    for fd, peer in records:
        try:
            probe = socket.socket(fileno=fd)
        except OSError:
            with _lock:
                _sockets.pop(fd, None)
            continue
        try:
            if tuple(probe.getpeername()[:2]) == peer:
                probe.shutdown(socket.SHUT_RDWR)
                count += 1
        except OSError:
            pass  # connecting, already closed by the peer, or no longer a socket of ours
        finally:
            probe.detach()
    return count


def track_process(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` if a guard active now trips (called by the process runner)."""
    with _lock:
        for guard in _active:
            guard.processes.append(process)


def bounded(fn: Callable[[], T]) -> T:
    """``fn()`` under the innermost active guard's :meth:`Guard.call` (or plainly, if none)."""
    with _lock:
        guard = _active[-1] if _active else None
    return fn() if guard is None else guard.call(fn)


class Guard:
    """``with Guard(deadline, stop): step()`` -- see the module docstring."""

    def __init__(self, deadline: Deadline, stop: StopRequest) -> None:
        self.deadline = deadline
        self.stop = stop
        self.tripped: str | None = None  # "deadline" or "stop"
        self.processes: list[subprocess.Popen[bytes]] = []
        self._done = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="guard", daemon=True)

    def __enter__(self) -> Guard:
        with _lock:
            _active.append(self)
        self._watchdog.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        self._watchdog.join()
        with _lock:
            _active.remove(self)
        if err is None or not isinstance(err, Exception):
            return
        if self.tripped == "stop" or (self.stop.is_set() and not isinstance(err, Stopped)):
            raise Stopped(f"{self.deadline.what} interrupted by a stop request") from None
        if self.tripped == "deadline" and not isinstance(err, DeadlineExceeded | Stopped):
            raise self.deadline.exceeded() from None

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a worker thread and give up on it :data:`GRACE` seconds after a trip.

        For library calls that may wait on their own threads rather than on a socket (an
        s3transfer transfer whose worker failed oddly): cancelled sockets end most steps at
        once, and this bounds the rest. An abandoned worker is a daemon thread whose sockets
        are already shut down.
        """
        done = threading.Event()
        outcome: list[Any] = []

        def work() -> None:
            try:
                outcome.append((True, fn()))
            except BaseException as err:  # handed to the caller below
                outcome.append((False, err))
            finally:
                done.set()

        threading.Thread(target=work, name="guarded", daemon=True).start()
        tripped_at: float | None = None
        while not done.wait(POLL):
            if self.tripped and tripped_at is None:
                tripped_at = time.monotonic()
            if tripped_at is not None and time.monotonic() - tripped_at > GRACE:
                if self.tripped == "stop":
                    raise Stopped(f"{self.deadline.what} interrupted by a stop request")
                raise self.deadline.exceeded()
        ok, value = outcome[0]
        if not ok:
            raise value
        return cast(T, value)

    def _watch(self) -> None:
        while not self._done.is_set():
            if self.stop.is_set():
                return self._trip("stop")
            left = self.deadline.remaining()
            if left <= 0:
                return self._trip("deadline")
            self._done.wait(min(POLL, left))

    def _trip(self, why: str) -> None:
        """Cancel, and keep cancelling what the step still opens until it gives up."""
        self.tripped = why
        while True:
            for process in self.processes:
                with contextlib.suppress(OSError):
                    process.kill()
            _shutdown_client_sockets()
            if self._done.wait(POLL):
                return
