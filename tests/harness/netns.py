"""Machines on one host: network namespaces on a private switch, reachable from the host.

Topology (all names carry a per-run prefix so parallel runs never collide):

- a "switch" namespace holding a bridge; it has its own (empty, accept-all) netfilter, so the
  host's firewall (Docker sets ``FORWARD DROP`` and ``bridge-nf-call-iptables=1``) never
  sees the nodes' traffic;
- one namespace per node, ``eth0`` on the bridge with ``10.213.<n>.<11+i>/24``;
- a veth from the host's namespace to the bridge with ``10.213.<n>.1/24``: the tests (and a
  moto S3 bound to that address) talk to the nodes and the nodes to it, as local traffic.

``10.213.0.0/16`` is an unusual private range; the third octet comes from the process id and
a probe skips any /24 already routed on the host. Only addresses created here are used.
:meth:`Network.close` deletes everything and is safe to call after a partial setup.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
from dataclasses import dataclass, field

IP = "ip"


class NamespaceError(RuntimeError):
    """The machine cannot build network namespaces (not root, no iproute2, no veth)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NamespaceError(f"'ip {' '.join(args)}' failed: {done.stderr.strip() or done.returncode}")
    return done


def _routed_subnets() -> list[ipaddress.IPv4Network]:
    out = _ip("-4", "route", "show", "table", "all", check=False).stdout
    nets = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(first, strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


@dataclass
class Node:
    name: str  # namespace name
    address: str

    def prefix(self) -> list[str]:
        """Run a command "on" this node: ``[*node.prefix(), argv...]``."""
        return [IP, "netns", "exec", self.name]


@dataclass
class Network:
    count: int
    tag: str = field(default_factory=lambda: f"sk{os.getpid() % 100000}")
    nodes: list[Node] = field(default_factory=list)
    host_address: str = ""
    subnet: ipaddress.IPv4Network | None = None
    _namespaces: list[str] = field(default_factory=list)
    _host_link: str = ""

    @property
    def switch(self) -> str:
        return f"{self.tag}sw"

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        taken = _routed_subnets()
        base = os.getpid() % 200 + 20
        for offset in range(200):
            candidate = ipaddress.ip_network(f"10.213.{(base + offset) % 250 + 1}.0/24")
            if not any(candidate.overlaps(net) for net in taken if net.prefixlen > 0):
                return candidate
        raise NamespaceError("no free /24 in 10.213.0.0/16 on this host")

    def create(self) -> Network:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def _netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _create(self) -> None:
        self.subnet = self._pick_subnet()
        hosts = list(self.subnet.hosts())
        self._netns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        # The host's leg: created in the host namespace, its peer moved into the switch.
        self._host_link = f"{self.tag}h"
        _ip("link", "add", self._host_link, "type", "veth", "peer", "name", "uplink", "netns", self.switch)
        self.host_address = str(hosts[0])
        _ip("addr", "add", f"{self.host_address}/{self.subnet.prefixlen}", "dev", self._host_link)
        _ip("link", "set", self._host_link, "up")
        _ip("-n", self.switch, "link", "set", "uplink", "master", "br0", "up")
        for i in range(self.count):
            name = f"{self.tag}n{i + 1}"
            self._netns(name)
            port = f"p{i + 1}"
            _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            address = str(hosts[10 + i])
            _ip("-n", name, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            self.nodes.append(Node(name, address))

    def close(self) -> None:
        """Delete the namespaces (their veths go with them) and the host's leg."""
        if self._host_link:
            _ip("link", "del", self._host_link, check=False)
            self._host_link = ""
        for name in reversed(self._namespaces):
            _ip("netns", "del", name, check=False)
        self._namespaces.clear()
        self.nodes.clear()


def leftover_namespaces(tag: str) -> list[str]:
    """Namespaces of ours still present (for the teardown check)."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(tag)]
