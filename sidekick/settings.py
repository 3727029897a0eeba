"""Numeric settings from the environment: a finite number within its range, or one clear error.

``float()`` alone accepts ``inf``, ``nan`` and ``-5``, and a wait bounded by ``inf`` is no bound
at all, so every number a tool reads from the environment goes through :func:`number`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from sidekick.errors import UsageError

SCALE_ENV = "SIDEKICK_BUDGET_SCALE"


def number(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    """``env[name]`` as a number in ``[low, high]``; unset or blank is ``default``."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{name}={text!r} is not a number") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise UsageError(f"{name} must be a number from {low:g} to {high:g} (got {text!r})")
    return value


def budget_scale(env: Mapping[str, str]) -> float:
    """``SIDEKICK_BUDGET_SCALE``: multiplies every time budget (tests run the same logic in seconds)."""
    return number(env, SCALE_ENV, 1.0, low=0.001, high=100)
