"""nginx-proxy with active health checks: nginx supervised as a child, the checker beside it.

At start every IP address and every host name that resolves is in the upstream (nginx's own
passive checks cover the first interval); a name that does not resolve yet is left out,
because nginx refuses a config naming it, and joins once its probes pass. From then on the
checker (:mod:`sidekick.nginx.checker`) decides, and each change is rendered, checked by
``nginx -t`` on the pending file and loaded with SIGHUP.
"""

from __future__ import annotations

import functools
import logging
import signal
import ssl
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sidekick.errors import SidekickError
from sidekick.log import kv
from sidekick.nginx import probe
from sidekick.nginx.checker import MAX_WORKERS, Checker
from sidekick.nginx.config import Settings, Upstream, render
from sidekick.nginx.health import HealthSettings
from sidekick.nginx.launcher import NginxProxy, prepare
from sidekick.nginx.supervisor import NginxChild, block_signals
from sidekick.paths import host_path

log = logging.getLogger(__name__)

KUBE_CA_PATH = "/etc/kubernetes/ssl/kube-ca.pem"
READY_TIMEOUT = 30.0  # nginx writes its pid file within milliseconds of starting


def resolve_at_start(upstreams: Sequence[Upstream], timeout: float) -> dict[Upstream, bool]:
    """Which hosts resolve now (IP addresses always do); each name gets ``timeout``."""

    def resolves(upstream: Upstream) -> bool:
        return bool(probe.resolve(upstream, time.monotonic() + timeout))

    with ThreadPoolExecutor(min(len(upstreams), MAX_WORKERS)) as pool:
        resolved = dict(zip(upstreams, pool.map(resolves, upstreams), strict=True))
    missing = [u.address for u in upstreams if not resolved[u]]
    if len(missing) == len(upstreams):
        raise SidekickError(f"no host in CP_HOSTS resolves ({','.join(missing)}): nothing to proxy to")
    for address in missing:
        log.warning("control-plane host name does not resolve; out of the upstream until its health check passes",
                    extra=kv(host=address))
    return resolved


def probe_tls(mode: str) -> ssl.SSLContext | None:
    if mode != "readyz":
        return None
    ca_file = host_path(KUBE_CA_PATH)
    context, verified = probe.tls_context(ca_file)
    if not verified:
        log.info("kube-ca not found: /readyz probes do not verify the apiserver certificate",
                 extra=kv(path=ca_file))
    return context


def run_checked(proxy: NginxProxy, upstreams: list[Upstream], settings: Settings, health: HealthSettings) -> int:
    """nginx as a child with the checker beside it; nginx's exit code."""
    block_signals()  # first: every thread started from here on inherits the mask
    tls = probe_tls(health.mode)
    resolved = resolve_at_start(upstreams, health.timeout)
    first = tuple(u for u in upstreams if resolved[u])
    prepare(proxy, first, settings, host_count=len(upstreams))
    child = NginxChild(proxy.argv, proxy.pid_path)

    def apply(members: tuple[Upstream, ...]) -> None:
        """Check the new upstream with ``nginx -t``, put it in place, reload nginx."""
        proxy.install(render(members, settings, pid_path=proxy.pid_path, stream_module=proxy.stream_module,
                             host_count=len(upstreams)))
        if not child.send(signal.SIGHUP):
            raise SidekickError("nginx has exited")

    checker = Checker(upstreams, health, probe=functools.partial(probe.probe, timeout=health.timeout, tls=tls),
                      apply=apply, resolved=resolved, applied=first)
    child.start()
    if child.wait_ready(READY_TIMEOUT):
        checker.start()
    code = child.wait()
    checker.stop()
    return code
