"""``nginx-proxy``: render and check the config, then run nginx (CONTRACT section 6).

Without health checks nginx replaces this process (exec), as today; with
``NGINX_PROXY_HEALTH_CHECK`` set, :mod:`sidekick.nginx.checked` supervises it.
"""

from __future__ import annotations

import os

from sidekick.host.proc import Runner
from sidekick.nginx.config import parse_cp_hosts, settings_from_env
from sidekick.nginx.health import health_from_env
from sidekick.nginx.launcher import NginxProxy, cp_hosts_value, prepare

USAGE = """\
usage: nginx-proxy [CP_HOSTS=HOST[,HOST...]]

Proxy TCP on port 6443 to the control planes in CP_HOSTS (the environment wins over the
argument). HOST is an IPv4 address, a host name or [IPv6], each with an optional :PORT
(default 6443); a bare IPv6 address (no port) is accepted too.

environment (all optional):
  NGINX_PROXY_LISTEN_ADDRESS    IP to listen on (every interface)
  NGINX_PROXY_LISTEN_PORT       port to listen on (6443)
  NGINX_PROXY_MAX_FAILS         failed connects that mark a host down, passively (1)
  NGINX_PROXY_FAIL_TIMEOUT      how long it stays down, in seconds (10s)
  NGINX_PROXY_HEALTH_CHECK      active checks: readyz (HTTPS GET /readyz), tcp, or off (off)
  NGINX_PROXY_HEALTH_INTERVAL   time between check rounds (5s)
  NGINX_PROXY_HEALTH_TIMEOUT    bound on one probe, answer included (2s, at most the interval)
  NGINX_PROXY_HEALTH_FALL       failures in a row that take a host out (3)
  NGINX_PROXY_HEALTH_RISE       passes in a row that put it back (2)
"""


def main(argv: list[str]) -> int:
    upstreams = parse_cp_hosts(cp_hosts_value(argv, os.environ))
    settings = settings_from_env(os.environ)
    health = health_from_env(os.environ)
    proxy = NginxProxy(Runner())
    if health.enabled:
        from sidekick.nginx.checked import run_checked  # threads, TLS, HTTP: only when asked for

        return run_checked(proxy, upstreams, settings, health)
    prepare(proxy, upstreams, settings)
    proxy.exec()
