"""Active health checks of the control planes: the settings and the decisions (pure).

Each host is up or down. An up host that fails ``fall`` probes in a row goes down; a down host
that passes ``rise`` probes in a row comes back. The upstream is the up hosts, in
``CP_HOSTS`` order; when none is up, every host stays in (fail open): a proxy with an empty
upstream refuses every connection, while one that keeps the hosts lets nginx's passive
checks and retries find whichever answers (k3s's load balancer learned the same,
k3s-io/k3s#10240).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sidekick.errors import UsageError
from sidekick.nginx.config import Upstream

Mode = Literal["off", "readyz", "tcp"]
MODES: tuple[Mode, ...] = ("off", "readyz", "tcp")

ENV_CHECK = "NGINX_PROXY_HEALTH_CHECK"
ENV_INTERVAL = "NGINX_PROXY_HEALTH_INTERVAL"
ENV_TIMEOUT = "NGINX_PROXY_HEALTH_TIMEOUT"
ENV_FALL = "NGINX_PROXY_HEALTH_FALL"
ENV_RISE = "NGINX_PROXY_HEALTH_RISE"

DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 2.0  # capped at the interval
DEFAULT_FALL = 3
DEFAULT_RISE = 2
MIN_INTERVAL = 0.1
MAX_INTERVAL = 3600.0
MAX_COUNT = 100

_SECONDS = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


@dataclass(frozen=True)
class HealthSettings:
    mode: Mode = "off"
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    fall: int = DEFAULT_FALL
    rise: int = DEFAULT_RISE

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


def _seconds(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    match = _SECONDS.match(text)
    value = float(match["number"]) * _UNIT[match["unit"]] if match else math.nan
    if not low <= value <= high:  # also refuses nan: no match, "inf", "1e9"
        raise UsageError(f"{name}={text!r} is not a duration from {low:g}s to {high:g}s (e.g. 5s, 500ms, 1m, 2.5)")
    return value


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_COUNT:
        raise UsageError(f"{name}={text!r} is not a whole number from 1 to {MAX_COUNT}")
    return int(text)


def health_from_env(env: Mapping[str, str]) -> HealthSettings:
    """The checker's settings; every value is validated even when the check is off."""
    mode = env.get(ENV_CHECK, "").strip().lower() or "off"
    if mode not in MODES:
        raise UsageError(f"{ENV_CHECK}={mode!r} is not one of {', '.join(MODES)}")
    interval = _seconds(env, ENV_INTERVAL, DEFAULT_INTERVAL, low=MIN_INTERVAL, high=MAX_INTERVAL)
    timeout = _seconds(env, ENV_TIMEOUT, min(DEFAULT_TIMEOUT, interval), low=0.05, high=MAX_INTERVAL)
    if timeout > interval:
        raise UsageError(f"{ENV_TIMEOUT}={timeout:g}s is longer than {ENV_INTERVAL}={interval:g}s")
    return HealthSettings(
        mode, interval, timeout, _count(env, ENV_FALL, DEFAULT_FALL), _count(env, ENV_RISE, DEFAULT_RISE)
    )


@dataclass(frozen=True)
class HostState:
    up: bool
    streak: int = 0  # consecutive results against ``up`` (failures while up, passes while down)


def observe(state: HostState, ok: bool, *, fall: int, rise: int) -> HostState:
    """One probe result: a streak against the current state flips it at its threshold."""
    if ok == state.up:
        return HostState(state.up)
    streak = state.streak + 1
    if streak >= (rise if ok else fall):
        return HostState(ok)
    return HostState(state.up, streak)


@dataclass(frozen=True)
class Membership:
    members: tuple[Upstream, ...]
    fail_open: bool


def membership(upstreams: Sequence[Upstream], states: Mapping[Upstream, HostState]) -> Membership:
    """The hosts that belong in the upstream: the up ones, or all of them when none is up."""
    up = tuple(u for u in upstreams if states[u].up)
    return Membership(up, False) if up else Membership(tuple(upstreams), True)


def renderable(members: Sequence[Upstream], resolved: Mapping[Upstream, bool]) -> tuple[Upstream, ...]:
    """The members nginx can load: a host name that does not resolve makes it refuse the file."""
    return tuple(u for u in members if resolved.get(u, True))
