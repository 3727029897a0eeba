"""A stop request for tests: waits return at once, are recorded, and may run a callback."""

from __future__ import annotations

from collections.abc import Callable

from sidekick.host.signals import StopRequest
from sidekick.retry import Policy


class RecordingStop(StopRequest):
    def __init__(self, on_wait: Callable[[float], None] | None = None) -> None:
        super().__init__()
        self.waits: list[float] = []
        self._on_wait = on_wait

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        if self._on_wait is not None:
            self._on_wait(timeout)
        return self.is_set()


def fast_policy(retries: int = 4, *, first: float = 0.01, cap: float = 0.02, budget: float = 60) -> Policy:
    """The peer policy's shape with tiny waits."""
    return Policy(attempts=retries + 1, first_wait=first, max_wait=cap, budget=budget, attempt_budget=budget)
