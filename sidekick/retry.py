"""The one retry and deadline policy: attempts, capped exponential waits, and a total budget.

A :class:`Policy` states every bound of a retried step in one place (like urllib3's ``Retry``):
at most ``attempts`` calls, waits ``first_wait, 2*first_wait, ...`` capped at ``max_wait``, and
no attempt or wait past ``budget`` seconds from the start. Each attempt runs under its own
:class:`Deadline` (``attempt_budget``, cut to what is left of the budget unless
``attempts_within_budget`` is false: then the budget only bounds when attempts start, for a
step such as an etcd snapshot whose length depends on the data, not the network) inside a
:class:`sidekick.host.guard.Guard`, which cancels the attempt's sockets and child processes
when the deadline passes or a stop is requested, so a peer that accepts and never answers, or
answers one byte at a time, cannot stretch a step past its budget. Library retries are turned
off under this policy (botocore, s3transfer), so the requests of one step are bounded by
``attempts`` times the requests of one attempt.

Worst-case duration of :meth:`Policy.run`: ``budget`` (or, when attempts may outlive it, the
budget plus one ``attempt_budget``) plus the time an attempt needs to notice its cancellation
(a shut-down socket fails at once; a killed child is reaped at once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from sidekick.deadline import Deadline, DeadlineExceeded, Stopped
from sidekick.host.guard import Guard

if TYPE_CHECKING:
    from sidekick.host.signals import StopRequest

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ATTEMPTS = 100  # a sane bound for user-given retry counts


@dataclass(frozen=True)
class Policy:
    """How often and for how long a step is tried (see the module docstring for the bound)."""

    attempts: int
    first_wait: float
    max_wait: float
    budget: float
    attempt_budget: float
    attempts_within_budget: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= MAX_ATTEMPTS + 1:
            raise ValueError(f"attempts must be 1..{MAX_ATTEMPTS + 1}, not {self.attempts}")

    def waits(self) -> Iterator[float]:
        """The wait before each retry: ``attempts - 1`` of them, doubling up to ``max_wait``."""
        wait = self.first_wait
        for _ in range(self.attempts - 1):
            yield min(wait, self.max_wait)
            wait *= 2

    def run(
        self,
        step: Callable[[Deadline], T],
        *,
        what: str,
        stop: StopRequest,
        retryable: Callable[[Exception], bool],
        budget: Deadline | None = None,
        on_retry: Callable[[int, Exception, float], None] | None = None,
    ) -> T:
        """Call ``step(deadline)`` until it returns, its error is not ``retryable``, the
        attempts are spent or the budget is; raise the last error (or :class:`Stopped`).

        ``budget`` lets several steps share one total deadline (the S3 phase of a save).
        """
        total = budget or Deadline(self.budget, what=what)
        waits = self.waits()
        attempt = 0
        while True:
            attempt += 1
            deadline = (total.within(self.attempt_budget, what=what) if self.attempts_within_budget
                        else Deadline(self.attempt_budget, what=what))
            try:
                with Guard(deadline, stop):
                    return step(deadline)
            except Stopped:
                raise
            except Exception as err:
                if stop.is_set():
                    raise Stopped(f"{what} interrupted by a stop request") from None
                wait = next(waits, None)
                if not retryable(err) or wait is None:
                    raise
                if total.remaining() <= wait:
                    raise _spent(err, what, attempt, total) from None
                if on_retry is not None:
                    on_retry(attempt, err, wait)
                else:
                    log.warning("%s failed, retrying in %.1fs: %s", what, wait, err)
                if stop.wait(wait):
                    raise Stopped(f"{what} interrupted by a stop request") from None


class BudgetSpent(DeadlineExceeded):
    """The budget left no room for another attempt; ``last`` is the last attempt's error."""

    def __init__(self, message: str, last: Exception) -> None:
        super().__init__(message)
        self.last = last


def _spent(err: Exception, what: str, attempts: int, total: Deadline) -> BudgetSpent:
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    return BudgetSpent(f"{what} did not succeed within {total.seconds:g}s ({tries}): {err}", err)
