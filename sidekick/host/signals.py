"""Stay alive until the container runtime asks us to stop.

The long-running helpers (weave's plugin installer, share-root.sh) have nothing to do after
their setup but must keep their container up. The original slept in a shell loop, so
``docker stop`` waited out its 10 s and then killed it. Here SIGTERM (or SIGINT) ends the wait
at once. The signals are blocked and taken with ``sigwait``: that works as PID 1 in a
container too, where a signal with the default action is discarded before it arrives.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def wait_for_termination() -> str:
    """Block until SIGTERM or SIGINT; return the signal's name."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    received = signal.sigwait(STOP_SIGNALS)
    return signal.Signals(received).name
