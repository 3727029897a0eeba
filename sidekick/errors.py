"""The one error family every tool raises for an expected failure.

The dispatcher alone turns these into a one-line log and an exit code; tools never call
``sys.exit`` themselves.
"""

from __future__ import annotations


class SidekickError(Exception):
    """An expected failure: its message is the one line the user (or RKE) reads."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(SidekickError):
    """Bad command line or bad input value (exit 2, like click and getopt)."""

    exit_code = 2
