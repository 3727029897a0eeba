"""The checker thread: probe every control plane each interval, apply membership changes.

A round starts every ``interval`` seconds (at once when the previous one overran). It probes
every host concurrently, ``MAX_WORKERS`` at a time, each probe bounded by ``timeout``, so a
round lasts at most ``ceil(hosts / MAX_WORKERS) * timeout`` (plus nginx's config check). A
membership change is applied in the round that decides it, before the next one starts:
re-rendered, checked by ``nginx -t`` and loaded by a reload (SIGHUP), which keeps every
established connection. A change nginx refuses is tried again the next round. So while a
round fits in an interval, a host that starts failing (or passing) is out (or back) within
``fall`` (or ``rise``) + 1 intervals: with thresholds of 1, within 2.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from sidekick.errors import SidekickError
from sidekick.log import kv
from sidekick.nginx.config import Upstream
from sidekick.nginx.health import HealthSettings, HostState, membership, observe, renderable
from sidekick.nginx.probe import ProbeResult

log = logging.getLogger(__name__)

MAX_WORKERS = 64
# apply(members) renders, checks and loads the upstream; raises SidekickError when refused.
Apply = Callable[[tuple[Upstream, ...]], None]
Prober = Callable[[Upstream], ProbeResult]


def _hosts(upstreams: Sequence[Upstream]) -> str:
    return ",".join(u.address for u in upstreams)


class Checker:
    def __init__(
        self,
        upstreams: Sequence[Upstream],
        settings: HealthSettings,
        *,
        probe: Prober,
        apply: Apply,
        resolved: dict[Upstream, bool],
        applied: tuple[Upstream, ...],
    ) -> None:
        self.upstreams = tuple(upstreams)
        self.settings = settings
        self.probe = probe
        self.apply = apply
        self.resolved = dict(resolved)
        self.states = {u: HostState(resolved[u]) for u in self.upstreams}
        self.applied = applied
        self.fail_open = False
        self.unresolved = False  # no member resolves: nothing nginx would load
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(min(len(self.upstreams), MAX_WORKERS), thread_name_prefix="probe")
        self._thread = threading.Thread(target=self._loop, name="health-checker", daemon=True)

    def start(self) -> None:
        log.info("health checks started", extra=kv(
            check=self.settings.mode, interval=f"{self.settings.interval:g}s",
            timeout=f"{self.settings.timeout:g}s", fall=self.settings.fall, rise=self.settings.rise,
            hosts=len(self.upstreams)))
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to end and wait up to ``timeout`` (it is a daemon: exit never waits on it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        next_start = time.monotonic()
        while not self._stop.is_set():
            try:
                self.round()
            except Exception as err:  # a bug here must not take the proxy down: log, go on
                log.error("health check round failed", extra=kv(error=f"{type(err).__name__}: {err}"))
                log.debug("traceback", exc_info=True)
            next_start = max(next_start + self.settings.interval, time.monotonic())
            self._stop.wait(next_start - time.monotonic())

    def round(self) -> None:
        """Probe every host once, update the states, and apply the membership if it changed."""
        results = dict(zip(self.upstreams, self._pool.map(self.probe, self.upstreams), strict=True))
        for upstream, result in results.items():
            self.resolved[upstream] = result.resolved
            self._observe(upstream, result)
        decided = membership(self.upstreams, self.states)
        if decided.fail_open != self.fail_open:
            self.fail_open = decided.fail_open
            if decided.fail_open:
                log.warning("every control-plane host fails its health check; all stay in the upstream (fail open)",
                            extra=kv(hosts=len(self.upstreams)))
            else:
                log.warning("a control-plane host passes its health check again; fail open ends",
                            extra=kv(up=_hosts(decided.members)))
        members = renderable(decided.members, self.resolved)
        if not members:
            if not self.unresolved:
                log.warning("no control-plane host name resolves; the upstream stays as it is",
                            extra=kv(upstream=_hosts(self.applied)))
            self.unresolved = True
            return
        self.unresolved = False
        if members != self.applied:
            self._apply(members)

    def _observe(self, upstream: Upstream, result: ProbeResult) -> None:
        before = self.states[upstream]
        after = observe(before, result.ok, fall=self.settings.fall, rise=self.settings.rise)
        self.states[upstream] = after
        if not result.ok:
            log.debug("health check failed", extra=kv(host=upstream.address, reason=result.detail))
        if after.up and not before.up:
            log.info("control-plane host passes its health check; back in the upstream",
                     extra=kv(host=upstream.address, passes=self.settings.rise))
        elif before.up and not after.up:
            log.warning("control-plane host fails its health check; out of the upstream",
                        extra=kv(host=upstream.address, failures=self.settings.fall, reason=result.detail))

    def _apply(self, members: tuple[Upstream, ...]) -> None:
        started = time.monotonic()
        try:
            self.apply(members)
        except SidekickError as err:
            log.warning("upstream change not applied; trying again next round",
                        extra=kv(upstream=_hosts(members), error=str(err)))
            return
        self.applied = members
        log.info("upstream changed, nginx reloaded", extra=kv(
            upstream=_hosts(members), members=len(members), hosts=len(self.upstreams),
            took=f"{time.monotonic() - started:.3f}s"))
