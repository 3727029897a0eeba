"""``etcd-backup serve``: hand the local snapshot to the other etcd nodes (CONTRACT 3.4, 3.6).

RKE stops etcd on a node, starts this in container ``etcd-Serve-backup`` and, if it is still
running 5 s later, makes that node the restore source: every other node then runs
``download --local-endpoint <this node>``. As the original: ``/backup/<name>`` is extracted
from ``/backup/<name>.zip`` when the archive exists, HTTPS on ``0.0.0.0:2379`` (port 2379 is
free because etcd is stopped), TLS >= 1.2, a client certificate signed by ``--cacert`` is
required, and ``GET /<name>`` is the only route; anything else is 404 (405 for other
methods on that path).

Better than the original:

- a file already extracted and verified against the same archive entry is not extracted
  again (:func:`sidekick.etcd.extract.ensure_snapshot`), so a second start listens within a
  second instead of after a full re-extraction;
- ``Range`` (one range, ``If-Range``) lets a downloader resume; ``ETag``, ``Content-Length``
  and, when the SHA-256 is known, ``Repr-Digest`` (RFC 9530) let it verify what it got;
- each client is logged with its address, certificate subject, bytes sent and result, and
  long transfers log progress lines; SIGTERM stops it cleanly (exit 0);
- memory is bounded: at most :data:`MAX_CLIENTS` transfers at once, each streaming through
  one :data:`CHUNK` buffer (``MAX_CLIENTS * CHUNK`` bytes at worst), whatever the file size.

For tests and the bench (not flags of the original): ``SIDEKICK_SERVE_ADDRESS`` (default
``0.0.0.0``) and ``SIDEKICK_SERVE_PORT`` (default 2379; ``download`` dials the same port).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import io
import logging
import os
import selectors
import signal
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from sidekick.errors import SidekickError, UsageError
from sidekick.etcd.extract import ensure_snapshot, stop_on_signal
from sidekick.etcd.options import Options
from sidekick.etcd.progress import Progress, mb_per_s
from sidekick.log import kv
from sidekick.paths import host_path

log = logging.getLogger(__name__)

ADDRESS_ENV = "SIDEKICK_SERVE_ADDRESS"
PORT_ENV = "SIDEKICK_SERVE_PORT"
DEFAULT_ADDRESS = "0.0.0.0"
DEFAULT_PORT = 2379
MAX_CLIENTS = 16
CHUNK = 1 << 20
HANDSHAKE_TIMEOUT = 10.0  # a client that cannot finish TLS in 10 s only holds a slot
IO_TIMEOUT = 60.0
MAX_HEADER_LINE = 8192
MAX_HEADERS = 100
SERVER_NAME = "sidekick"


def serve_port() -> int:
    text = os.environ.get(PORT_ENV, "").strip()
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{PORT_ENV}={text!r} is not a TCP port")
    return int(text)


def serve_address() -> str:
    return os.environ.get(ADDRESS_ENV, "").strip() or DEFAULT_ADDRESS


# --- HTTP, the small part we need -----------------------------------------------------
class HttpError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers or {}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    version: str
    headers: dict[str, str]  # lower-cased names

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


def read_request(rfile: BinaryIO) -> Request | None:
    """Parse one request head; None when the client closed the connection between requests."""
    line = rfile.readline(MAX_HEADER_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_HEADER_LINE:
        raise HttpError(414, "URI Too Long")
    parts = line.decode("latin-1").rstrip("\r\n").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "Bad Request")
    method, target, version = parts
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        raw = rfile.readline(MAX_HEADER_LINE + 1)
        if len(raw) > MAX_HEADER_LINE:
            raise HttpError(431, "Request Header Fields Too Large")
        text = raw.decode("latin-1").rstrip("\r\n")
        if not text:
            break
        name, sep, value = text.partition(":")
        if not sep:
            raise HttpError(400, "Bad Request")
        headers[name.strip().lower()] = value.strip()
    else:
        raise HttpError(431, "Request Header Fields Too Large")
    if ("content-length" in headers and headers["content-length"] != "0") or "transfer-encoding" in headers:
        raise HttpError(400, "Bad Request")  # nothing here takes a body; refuse to guess its end
    path = urllib.parse.urlsplit(target).path
    return Request(method, urllib.parse.unquote(path), version, headers)


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One ``bytes=`` range of RFC 9110 14.1.2, or None for the whole file.

    Several ranges are answered with the whole file (allowed, and no client of ours asks);
    a syntactically invalid header is ignored, as the RFC says.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or (not first and last.isdigit())) or (last and not last.isdigit()):
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise HttpError(416, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        raise HttpError(416, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
    return ByteRange(start, end)


# --- what is served ---------------------------------------------------------------------
@dataclass(frozen=True)
class Resource:
    name: str
    path: Path
    size: int
    mtime: float
    etag: str
    sha256: str | None

    @classmethod
    def of(cls, name: str, path: Path, sha256: str | None) -> Resource:
        st = path.stat()
        etag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
        return cls(name, path, st.st_size, st.st_mtime, etag, sha256)

    def headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": self.etag,
            "Last-Modified": email.utils.formatdate(self.mtime, usegmt=True),
        }
        if self.sha256:
            digest = base64.b64encode(bytes.fromhex(self.sha256)).decode()
            headers["Repr-Digest"] = f"sha-256=:{digest}:"
        return headers


def _head(status: int, reason: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Date: {email.utils.formatdate(usegmt=True)}", f"Server: {SERVER_NAME}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def subject_text(peercert: Any) -> str:
    """``CN=system:node,O=system:nodes`` from ``getpeercert()``."""
    if not peercert:
        return ""
    names = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU"}
    parts = []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            parts.append(f"{names.get(key, key)}={value}")
    return ",".join(parts)


class SnapshotServer:
    """The listening socket and its client threads; :meth:`serve` runs until :meth:`stop`."""

    def __init__(self, resource: Resource, context: ssl.SSLContext, address: str, port: int) -> None:
        self.resource = resource
        self.context = context
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((address, port))
            self._listener.listen(64)
        except OSError as err:
            self._listener.close()
            raise SidekickError(f"cannot listen on {address}:{port}: {err.strerror or err}") from None
        self.address = self._listener.getsockname()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._clients: dict[threading.Thread, socket.socket] = {}
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.address[1])

    def stop(self) -> None:
        """Safe from a signal handler or another thread: wakes the accept loop."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._listener and not self._stopping.is_set():
                        self._accept()
        self._shutdown()

    def _accept(self) -> None:
        try:
            conn, peer = self._listener.accept()
        except OSError:
            return
        if not self._slots.acquire(blocking=False):
            log.warning("too many clients, connection refused", extra=kv(client=_addr(peer), limit=MAX_CLIENTS))
            conn.close()
            return
        thread = threading.Thread(target=self._client, args=(conn, peer), name=f"client-{_addr(peer)}", daemon=True)
        with self._lock:
            self._clients[thread] = conn
        thread.start()

    def _shutdown(self) -> None:
        self._listener.close()
        with self._lock:
            clients = dict(self._clients)
        for conn in clients.values():
            # The plain socket's shutdown: SSLSocket.shutdown would also drop the TLS object
            # under the client thread's feet; this only makes its blocked read or write fail.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
        for thread in clients:
            thread.join(timeout=5)
        self._wake_r.close()
        self._wake_w.close()

    # --- one client ------------------------------------------------------------------
    def _client(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        client = _addr(peer)
        conn.settimeout(HANDSHAKE_TIMEOUT)
        # The TLS socket takes over conn's descriptor: register it, so a stop can shut it down.
        tls = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        with self._lock:
            self._clients[threading.current_thread()] = tls
        try:
            try:
                tls.do_handshake()
            except (OSError, ssl.SSLError) as err:
                log.warning("TLS handshake refused", extra=kv(client=client, error=_reason(err)))
                _linger_close(tls)
                return
            tls.settimeout(IO_TIMEOUT)
            self._converse(tls, client, subject_text(tls.getpeercert()))
        finally:
            with contextlib.suppress(OSError):
                tls.close()
            with self._lock:
                self._clients.pop(threading.current_thread(), None)
            self._slots.release()

    def _converse(self, tls: ssl.SSLSocket, client: str, subject: str) -> None:
        rfile = tls.makefile("rb")
        try:
            while not self._stopping.is_set():
                try:
                    request = read_request(rfile)
                except HttpError as err:
                    self._send_error(tls, err, client, subject, "?")
                    return
                except (OSError, ssl.SSLError):
                    return
                if request is None:
                    return
                if not self._respond(tls, request, client, subject) or not request.keep_alive:
                    return
        finally:
            rfile.close()

    def _send_error(self, tls: ssl.SSLSocket, err: HttpError, client: str, subject: str, path: str) -> None:
        body = f"{err.status} {err.reason}\n".encode()
        headers = {**err.headers, "Content-Type": "text/plain", "Content-Length": str(len(body)), "Connection": "close"}
        with contextlib.suppress(OSError, ssl.SSLError):
            tls.sendall(_head(err.status, err.reason, headers) + body)
        log.info("request refused", extra=kv(client=client, subject=subject, path=path, status=err.status))

    def _respond(self, tls: ssl.SSLSocket, request: Request, client: str, subject: str) -> bool:
        """Answer one request; False when the connection must end."""
        res = self.resource
        if request.path != f"/{res.name}":
            self._send_error(tls, HttpError(404, "Not Found"), client, subject, request.path)
            return False
        if request.method not in ("GET", "HEAD"):
            self._send_error(tls, HttpError(405, "Method Not Allowed", {"Allow": "GET, HEAD"}), client, subject, request.path)
            return False
        try:
            wanted = parse_range(request.headers.get("range"), res.size)
        except HttpError as err:
            self._send_error(tls, err, client, subject, request.path)
            return False
        if wanted is not None and request.headers.get("if-range", res.etag) != res.etag:
            wanted = None  # the client's partial copy is of another file: send it whole
        headers = res.headers()
        if wanted is None:
            status, reason, start, length = 200, "OK", 0, res.size
        else:
            status, reason, start, length = 206, "Partial Content", wanted.start, wanted.length
            headers["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{res.size}"
        headers["Content-Length"] = str(length)
        if not request.keep_alive:
            headers["Connection"] = "close"
        tls.sendall(_head(status, reason, headers))
        if request.method == "HEAD":
            return True
        return self._send_body(tls, start, length, client, subject, status)

    def _send_body(self, tls: ssl.SSLSocket, start: int, length: int, client: str, subject: str, status: int) -> bool:
        progress = Progress(log, "send", total=length, client=client)
        sent = 0
        began = time.monotonic()
        try:
            with open(self.resource.path, "rb", buffering=0) as source:
                for view in _chunks(source, start, length):
                    tls.sendall(view)
                    sent += len(view)
                    progress.add(len(view))
        except (OSError, ssl.SSLError) as err:
            log.warning(
                "transfer failed",
                extra=kv(client=client, subject=subject, status=status, bytes=sent, length=length, error=_reason(err)),
            )
            return False
        if sent != length:
            log.warning("file shrank while being sent", extra=kv(client=client, bytes=sent, length=length))
            return False
        seconds = time.monotonic() - began
        log.info(
            "snapshot sent",
            extra=kv(client=client, subject=subject, status=status, bytes=sent, seconds=f"{seconds:.2f}",
                     mbps=mb_per_s(sent, seconds)),
        )
        return True


def _chunks(source: io.RawIOBase, start: int, length: int) -> Iterator[memoryview]:
    buffer = bytearray(min(CHUNK, max(length, 1)))
    view = memoryview(buffer)
    source.seek(start)
    left = length
    while left > 0:
        count = source.readinto(view[: min(len(buffer), left)])
        if not count:
            return
        left -= count
        yield view[:count]


def _linger_close(conn: ssl.SSLSocket) -> None:
    """Close after a refused handshake without a reset: with TLS 1.3 the client has already
    sent its request, and closing with it unread would make the kernel send RST, which can
    destroy the alert that tells the client WHY (e.g. its certificate is not trusted)."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)  # also drops the TLS layer: what follows reads raw bytes
        conn.settimeout(1.0)
        for _ in range(16):  # at most 256 KiB or 1 s per read
            if not conn.recv(16384):
                break


def _addr(peer: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(err: BaseException) -> str:
    if isinstance(err, ssl.SSLError) and err.reason:
        return str(err.reason)
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def server_context(cacert: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS >= 1.2, a client certificate signed by ``cacert`` required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cafile=str(cacert))
    except (OSError, ssl.SSLError) as err:
        raise SidekickError(f"cannot load CA certificate {cacert}: {_reason(err)}") from None
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise SidekickError(f"cannot load server certificate {cert} / key {key}: {_reason(err)}") from None
    return context


def run_serve(opts: Options) -> int:
    """Prepare the file, listen, serve until SIGTERM; every failure is one last line."""
    if not opts.name:
        raise UsageError("--name is required: the snapshot to serve")
    for flag, value in (("--cacert", opts.cacert), ("--cert", opts.cert), ("--key", opts.key)):
        if not value:
            raise UsageError(f"{flag} is required to serve over mutual TLS")
    address, port = serve_address(), serve_port()
    context = server_context(host_path(opts.cacert), host_path(opts.cert), host_path(opts.key))
    server: SnapshotServer | None = None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if server is None:  # still extracting: unwind, so the temp file is removed
            stop_on_signal(signum, _frame)
        log.info("stopping on signal", extra=kv(signal=signal.Signals(signum).name))
        server.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        snapshot = ensure_snapshot(opts.name)
        resource = Resource.of(opts.name, snapshot.path, snapshot.digest.sha256 if snapshot.digest else None)
        server = SnapshotServer(resource, context, address, port)
        log.info(
            "serving snapshot",
            extra=kv(name=opts.name, address=f"{address}:{server.port}", size=resource.size,
                     sha256=resource.sha256 or "unknown", source=snapshot.origin),
        )
        server.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("serve stopped", extra=kv(name=opts.name))
    return 0
