"""What nginx-proxy renders: pure decisions, no host access.

The original rendered ``server <item>:6443;`` for whatever ``CP_HOSTS`` held, so an empty
value became ``server :6443;`` and an IPv6 address became ``server fd00::1:6443;`` (CONTRACT
10.2). Here every item is parsed first and a bad one is named in a one-line error, before
anything is written.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2

from sidekick.errors import UsageError

APISERVER_PORT = 6443
# The original listened on every interface on 6443 (rke-tools PR #87 to narrow it was not merged).
DEFAULT_LISTEN_PORT = 6443
# nginx's own defaults are max_fails=1 fail_timeout=10s; they are spelled out so the rendered
# file says how quickly a dead control-plane node is skipped.
DEFAULT_MAX_FAILS = 1
DEFAULT_FAIL_TIMEOUT = "10s"

ENV_LISTEN_ADDRESS = "NGINX_PROXY_LISTEN_ADDRESS"
ENV_LISTEN_PORT = "NGINX_PROXY_LISTEN_PORT"
ENV_MAX_FAILS = "NGINX_PROXY_MAX_FAILS"
ENV_FAIL_TIMEOUT = "NGINX_PROXY_FAIL_TIMEOUT"

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# fail_timeout is read in whole seconds: nginx refuses "ms" there ("invalid parameter").
_DURATION = re.compile(r"^[0-9]+(s|m|h)?$")
# A bare IPv6 item whose last group reads as a port: 4 or 5 decimal digits, no leading zero.
_PORT_LIKE = re.compile(r"^[1-9][0-9]{3,4}$")

# Shared memory for the upstream zone. nginx 1.22 fits 63 IPv4 peers in 64k and about 1.2
# KiB per peer beyond (measured: 1311 in 1m; long IPv6 forms 1231); a host name adds its
# text to each of its addresses' peers. 4 KiB per host leaves room for names and dual-stack.
ZONE_MIN_KIB = 64
ZONE_BASE_KIB = 32
ZONE_PER_HOST_KIB = 4


@dataclass(frozen=True)
class Upstream:
    host: str  # as nginx wants it: IPv6 in brackets
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    listen_address: str = ""  # empty: every interface, like the original's "listen 6443;"
    listen_port: int = DEFAULT_LISTEN_PORT
    max_fails: int = DEFAULT_MAX_FAILS
    fail_timeout: str = DEFAULT_FAIL_TIMEOUT

    @property
    def listen(self) -> str:
        if not self.listen_address:
            return str(self.listen_port)
        host = self.listen_address
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.listen_port}"


def _port(text: str, item: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"CP_HOSTS item {item!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def _hostname(text: str, item: str) -> str:
    labels = text.rstrip(".").split(".")
    if all(label.isdigit() for label in labels):
        # All-numeric is an IPv4 address that did not parse, not a host name.
        raise UsageError(f"CP_HOSTS item {item!r}: {text!r} is not a valid IPv4 address")
    if len(text) > 253 or not all(_LABEL.match(label) for label in labels):
        raise UsageError(f"CP_HOSTS item {item!r}: {text!r} is not an IP address or host name")
    return text.lower()


def port_like_tail(item: str) -> bool:
    """True when a bare IPv6 item reads as ``address:port`` (``fd00::1:6443``).

    That reading needs the rest to be an address with its ``::`` (eight groups leave no room
    for a port); the tail looks like a port when it is a 4 or 5 digit decimal number up to
    65535 (apiserver ports are 6443, 8443, 16443...). The item may be a valid address as well
    (``fd00::1:6443`` is one); short groups such as ``fd00::1:2`` or ``fd00::10`` stay
    addresses, as RKE sends them.
    """
    head, _, tail = item.rpartition(":")
    if "::" not in head or head.endswith("::") or not _PORT_LIKE.match(tail) or int(tail) > 65535:
        return False
    try:
        ipaddress.IPv6Address(head)
    except ValueError:
        return False
    return True


def _bracketed(item: str) -> Upstream:
    inside, sep, rest = item[1:].partition("]")
    if not sep:
        raise UsageError(f"CP_HOSTS item {item!r}: missing ']' after the IPv6 address")
    try:
        address = ipaddress.IPv6Address(inside)
    except ValueError:
        raise UsageError(f"CP_HOSTS item {item!r}: {inside!r} is not an IPv6 address") from None
    if rest and not rest.startswith(":"):
        raise UsageError(f"CP_HOSTS item {item!r}: unexpected text after ']'")
    port = _port(rest[1:], item) if rest else APISERVER_PORT
    return Upstream(f"[{address.compressed}]", port)


def _bare_ipv6(item: str) -> Upstream:
    """RKE sends a node's InternalAddress as is: a bare IPv6 address carries no port."""
    try:
        address: ipaddress.IPv6Address | None = ipaddress.IPv6Address(item)
    except ValueError:
        address = None
    if port_like_tail(item):
        head, _, tail = item.rpartition(":")
        if address is None:
            raise UsageError(f"CP_HOSTS item {item!r} reads as IPv6 address {head} with port {tail}: "
                             f"write [{head}]:{tail} for a port")
        raise UsageError(f"CP_HOSTS item {item!r} reads as IPv6 address {head} with port {tail} or the "
                         f"address {address.compressed}: write [{head}]:{tail} for a port or [{item}] for the address")
    if address is None:
        raise UsageError(f"CP_HOSTS item {item!r} is not an IPv6 address (write [address]:port for a port)")
    return Upstream(f"[{address.compressed}]", APISERVER_PORT)


def parse_item(item: str) -> Upstream:
    """One ``CP_HOSTS`` item: IPv4, IPv6 (bare or in brackets), or a host name; optional ``:port``."""
    if item != item.strip() or any(ch.isspace() for ch in item):
        raise UsageError(f"CP_HOSTS item {item!r} contains spaces")
    if item.startswith("["):
        return _bracketed(item)
    if item.count(":") > 1:
        return _bare_ipv6(item)
    host, sep, port_text = item.partition(":")
    port = _port(port_text, item) if sep else APISERVER_PORT
    if not host:
        raise UsageError(f"CP_HOSTS item {item!r} has no host")
    try:
        return Upstream(str(ipaddress.IPv4Address(host)), port)
    except ValueError:
        return Upstream(_hostname(host, item), port)


def parse_cp_hosts(value: str) -> list[Upstream]:
    """The comma-separated control-plane list, in order, or a UsageError naming the bad item."""
    if not value.strip():
        raise UsageError("CP_HOSTS is empty: no control-plane host to proxy to")
    upstreams: list[Upstream] = []
    seen: dict[Upstream, str] = {}
    for position, item in enumerate(value.split(","), start=1):
        if not item:
            raise UsageError(f"CP_HOSTS item {position} is empty in {value!r}")
        upstream = parse_item(item)
        if upstream in seen:
            raise UsageError(f"CP_HOSTS item {item!r} duplicates {seen[upstream]!r}")
        seen[upstream] = item
        upstreams.append(upstream)
    return upstreams


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Listen address/port and passive health settings; unset means the original's behaviour."""
    address = env.get(ENV_LISTEN_ADDRESS, "").strip()
    if address:
        try:
            address = ipaddress.ip_address(address.strip("[]")).compressed
        except ValueError:
            raise UsageError(f"{ENV_LISTEN_ADDRESS}={address!r} is not an IP address") from None
    port_text = env.get(ENV_LISTEN_PORT, "").strip() or str(DEFAULT_LISTEN_PORT)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"{ENV_LISTEN_PORT}={port_text!r} is not a port from 1 to 65535")
    fails_text = env.get(ENV_MAX_FAILS, "").strip() or str(DEFAULT_MAX_FAILS)
    if not fails_text.isdigit():
        raise UsageError(f"{ENV_MAX_FAILS}={fails_text!r} is not a non-negative integer")
    timeout = env.get(ENV_FAIL_TIMEOUT, "").strip() or DEFAULT_FAIL_TIMEOUT
    if not _DURATION.match(timeout):
        raise UsageError(f"{ENV_FAIL_TIMEOUT}={timeout!r} is not an nginx time in seconds (e.g. 10s, 10, 1m)")
    return Settings(address, int(port_text), int(fails_text), timeout)


_environment = jinja2.Environment(
    loader=jinja2.PackageLoader("sidekick.nginx", ""),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,  # nginx syntax, not HTML; every value is validated above
)


def zone_size(hosts: int) -> str:
    """The upstream zone for ``hosts`` control planes; 64k (the original's) up to 8 hosts."""
    return f"{max(ZONE_MIN_KIB, ZONE_BASE_KIB + ZONE_PER_HOST_KIB * hosts)}k"


def render(
    upstreams: Sequence[Upstream],
    settings: Settings,
    *,
    pid_path: Path,
    stream_module: Path | None,
    host_count: int | None = None,
) -> str:
    """The nginx config proxying to ``upstreams``.

    ``host_count`` sizes the zone when ``upstreams`` is a subset of the hosts (health checks
    took some out), so the zone, and the file around the server lines, do not change with it.
    """
    return _environment.get_template("nginx.conf.j2").render(
        servers=upstreams,
        zone=zone_size(max(len(upstreams), host_count or 0)),
        listen=settings.listen,
        max_fails=settings.max_fails,
        fail_timeout=settings.fail_timeout,
        pid_path=pid_path,
        stream_module=stream_module,
    )
