"""The restore side's stop: ``docker stop`` ends the step and says nothing was replaced.

Its own module so that the peer download, which extracts nothing, does not load the zip
machinery of :mod:`sidekick.etcd.extract` (2 MiB of resident memory) to get it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sidekick.deadline import Stopped
from sidekick.errors import SidekickError
from sidekick.host.signals import StopRequest, stop_on_signals


@contextlib.contextmanager
def stoppable() -> Iterator[StopRequest]:
    """SIGTERM (``docker stop``) during restore-side work: the step ends, its temp files go,
    nothing is replaced, and the last line says so."""
    with stop_on_signals() as stop:
        try:
            yield stop
        except Stopped:
            raise SidekickError(f"stopped by {stop.signal_name or 'a stop request'} before finishing; "
                                "nothing was replaced", exit_code=143) from None
