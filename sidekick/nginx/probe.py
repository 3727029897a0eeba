"""One health probe of one control plane, bounded by a total deadline.

``readyz`` is an anonymous HTTPS ``GET /readyz`` (Kubernetes lets anyone read it by default)
that passes on status 200; ``tcp`` passes when a TCP connection opens. The deadline covers
everything: name resolution, connect, the TLS handshake, the request and the whole answer, so
a server that drips its answer one byte at a time fails at the deadline like a silent one.
http.client frames the request and parses the answer; every read it makes is given only
the time left (:class:`_DeadlineSocket`), and the body is read up to ``BODY_CAP`` bytes.

Name resolution has no timeout in the C library's API: it runs in a daemon thread that the
probe stops waiting for at the deadline (the thread itself ends when the resolver gives up,
after its own ``timeout * attempts`` per name server from resolv.conf).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sidekick.errors import SidekickError
from sidekick.nginx.config import Upstream

BODY_CAP = 64 * 1024  # /readyz answers "ok", or a few KiB with ?verbose
USER_AGENT = "sidekick-nginx-proxy"
READYZ_PATH = "/readyz"

SockAddr = tuple[socket.AddressFamily, tuple[str, int] | tuple[str, int, int, int]]


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    resolved: bool  # False: the host name did not resolve (nginx would refuse it too)
    detail: str  # why it failed, for the log ("HTTP 500", "connection refused", ...)


class DeadlineExceeded(TimeoutError):
    pass


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("deadline reached")
    return left


def host_name(upstream: Upstream) -> str:
    """The host as a socket or TLS library wants it: IPv6 without brackets."""
    return upstream.host.strip("[]")


def resolve(upstream: Upstream, deadline: float) -> list[SockAddr]:
    """Addresses to try, in the resolver's order; empty when the name does not resolve in time."""
    host = host_name(upstream)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        return [(family, (host, upstream.port))]
    found: list[SockAddr] = []

    def lookup() -> None:
        with contextlib.suppress(OSError):
            for family, _, _, _, sockaddr in socket.getaddrinfo(
                host, upstream.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            ):
                found.append((family, sockaddr))  # type: ignore[arg-type]

    worker = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    return [] if worker.is_alive() else list(found)


def connect(addresses: list[SockAddr], deadline: float) -> socket.socket:
    """A connected socket to the first address that accepts before the deadline."""
    error: OSError = DeadlineExceeded("no address")
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(sockaddr)
            return sock
        except OSError as err:
            sock.close()
            error = err
            if isinstance(err, DeadlineExceeded):
                break
    raise error


def _wait(sock: socket.socket, event: int, deadline: float) -> None:
    """Until ``sock`` is ready for ``event`` (poll: any descriptor number, unlike select)."""
    poller = select.poll()
    poller.register(sock, event)
    if not poller.poll(_remaining(deadline) * 1000):
        raise DeadlineExceeded("TLS handshake")


def tls_handshake(sock: socket.socket, context: ssl.SSLContext, server_name: str, deadline: float) -> ssl.SSLSocket:
    """The TLS handshake, bounded as a whole (a socket timeout bounds each wait, not the sum).

    ``sock`` is taken over: the returned socket owns it, and it is closed on failure.
    """
    sock.setblocking(False)
    tls = context.wrap_socket(sock, server_hostname=server_name, do_handshake_on_connect=False)
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                _wait(tls, select.POLLIN, deadline)
            except ssl.SSLWantWriteError:
                _wait(tls, select.POLLOUT, deadline)
    except BaseException:
        tls.close()
        raise


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self.sock.settimeout(_remaining(self.deadline))
        return self.sock.recv_into(buffer)


class _DeadlineSocket:
    """What http.client needs of a socket, with every wait bounded by the time left."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def sendall(self, data: bytes) -> None:
        self.sock.settimeout(_remaining(self.deadline))
        self.sock.sendall(data)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self.sock, self.deadline))

    def close(self) -> None:
        self.sock.close()


def readyz_status(sock: socket.socket, host: str, port: int, deadline: float) -> tuple[int, bytes]:
    """``GET /readyz`` over a connected (TLS) socket, which it closes: the status and up to
    ``BODY_CAP + 1`` bytes of the body."""
    conn = http.client.HTTPConnection(host, port)
    conn.sock = _DeadlineSocket(sock, deadline)
    try:  # from here conn.close() closes sock
        conn.request("GET", READYZ_PATH, headers={"User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read(BODY_CAP + 1)
    finally:
        conn.close()


def _failure(err: BaseException, timeout: float) -> str:
    if isinstance(err, TimeoutError | DeadlineExceeded):
        return f"no complete answer within {timeout:g}s"
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS: {err.verify_message}"
    if isinstance(err, ssl.SSLError):
        return f"TLS: {err.reason or err}"
    if isinstance(err, http.client.HTTPException):
        return f"not an HTTP answer ({type(err).__name__})"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err) or type(err).__name__


def probe(upstream: Upstream, *, timeout: float, tls: ssl.SSLContext | None) -> ProbeResult:
    """One probe: TCP connect when ``tls`` is None, else ``GET /readyz`` over TLS."""
    deadline = time.monotonic() + timeout
    addresses = resolve(upstream, deadline)
    if not addresses:
        return ProbeResult(False, False, "host name does not resolve")
    try:
        sock = connect(addresses, deadline)
        if tls is None:
            sock.close()
            return ProbeResult(True, True, "")
        host = host_name(upstream)
        status, body = readyz_status(tls_handshake(sock, tls, host, deadline), host, upstream.port, deadline)
    except (OSError, http.client.HTTPException) as err:
        return ProbeResult(False, True, _failure(err, timeout))
    if status != 200:
        return ProbeResult(False, True, f"HTTP {status}")
    if len(body) > BODY_CAP:
        return ProbeResult(False, True, f"answer longer than {BODY_CAP} bytes")
    return ProbeResult(True, True, "")


def tls_context(ca_file: Path) -> tuple[ssl.SSLContext, bool]:
    """The context for ``readyz``: verified against ``ca_file`` when it exists (and whether it is)."""
    if ca_file.exists():
        try:
            return ssl.create_default_context(cafile=str(ca_file)), True
        except (OSError, ssl.SSLError) as err:
            raise SidekickError(f"cannot load {ca_file} to verify /readyz: {err}") from None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context, False

