"""The one stop model: SIGTERM or SIGINT sets an event; work checks it and ends.

``docker stop`` sends SIGTERM and kills 10 s later. A handler installed once for the run
(and restored after) only sets a :class:`StopRequest`; waits end early through it, long
loops check it, and blocking network or process steps end through
:class:`sidekick.host.guard.Guard`, which watches it. Nothing is raised from inside the
handler, so no cleanup is ever interrupted half-way. Installed handlers also work as PID 1
in a container, where a signal left at its default action would be discarded.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
POLL = 0.05


class StopRequest:
    """A stop flag that a signal handler may set.

    Not a ``threading.Event``: ``Event.set`` takes a non-reentrant lock, and a handler runs in
    the main thread, possibly while that thread holds the same lock inside ``Event.wait``
    (a deadlock). Setting a plain attribute is safe anywhere; waiters poll it every
    :data:`POLL` seconds, which is also how fast every wait ends after a signal.
    """

    def __init__(self) -> None:
        self._set = False
        self.signal_name = ""

    def request(self, name: str) -> None:
        if not self._set:
            self.signal_name = name
        self._set = True

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True (at once) when a stop is requested."""
        end = time.monotonic() + max(0.0, timeout)
        while not self._set:
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL, left))
        return True


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest | None = None) -> Iterator[StopRequest]:
    """Set the yielded :class:`StopRequest` on SIGTERM/SIGINT while the block runs."""
    stop = stop or StopRequest()

    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.request(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def wait_for_termination() -> str:
    """Block until SIGTERM or SIGINT (helpers that only keep their container up)."""
    with stop_on_signals() as stop:
        while not stop.wait(3600):
            pass
    return stop.signal_name
