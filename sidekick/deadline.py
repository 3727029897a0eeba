"""Deadlines on the monotonic clock, and the two ways a bounded step can end early."""

from __future__ import annotations

import time
from collections.abc import Callable

from sidekick.errors import SidekickError


class DeadlineExceeded(SidekickError):
    """A step did not end within its deadline."""


class Stopped(SidekickError):
    """A stop (SIGTERM, SIGINT) was requested while a step ran."""

    exit_code = 143


class Deadline:
    """A point on the monotonic clock by which ``what`` must be done."""

    def __init__(self, seconds: float, *, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.seconds = seconds
        self._clock = clock
        self.at = clock() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - self._clock())

    def extend(self, seconds: float) -> None:
        """Allow ``seconds`` more (a transfer whose size became known)."""
        self.at += seconds
        self.seconds += seconds

    def restart(self) -> None:
        """Give the full ``seconds`` again from now (a stall rule: progress resets it)."""
        self.at = self._clock() + self.seconds

    def expired(self) -> bool:
        return self._clock() >= self.at

    def within(self, seconds: float, *, what: str | None = None) -> Deadline:
        """A deadline ``seconds`` from now, never later than this one."""
        inner = Deadline(min(seconds, self.remaining()), what=what or self.what, clock=self._clock)
        return inner

    def exceeded(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"{self.what} did not finish within {self.seconds:g}s")
