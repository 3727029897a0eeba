"""Exponential backoff with a cap, and a sleep that a stop request cuts short.

The original slept a flat 15 s between attempts and retried S3 at once (rancher/rancher#37639:
far too many retries close together when etcd was down). Here each wait doubles from ``first``
up to ``cap``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    first: float
    cap: float

    def delays(self, retries: int) -> Iterator[float]:
        """The ``retries`` waits before each retry: first, 2*first, ... capped."""
        delay = self.first
        for _ in range(retries):
            yield min(delay, self.cap)
            delay *= 2


def etcd_backoff(retry_wait: float) -> Backoff:
    """Half the configured wait first, doubling to twice it: 7.5, 15, 30, 30 s at 15 s."""
    return Backoff(first=retry_wait / 2, cap=retry_wait * 2)


def s3_backoff(retry_wait: float) -> Backoff:
    """1, 2, 4 ... s at the default 15 s wait, capped at the wait itself."""
    return Backoff(first=retry_wait / 15, cap=retry_wait)


class StopFlag:
    """Set by SIGTERM in rolling mode; waits end early when it is set."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if stopped meanwhile."""
        if seconds <= 0:
            return self._event.is_set()
        return self._event.wait(seconds)
