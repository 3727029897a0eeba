"""``etcd-backup serve``: hand the local snapshot to the other etcd nodes (CONTRACT 3.4, 3.6).

RKE stops etcd on a node, starts this in container ``etcd-Serve-backup`` and, if it is still
running 5 s later, makes that node the restore source: every other node then runs
``download --local-endpoint <this node>``. ``/backup/<name>`` is extracted from
``/backup/<name>.zip`` when the archive exists (unless a file already verified against the same
entry is there), then served over HTTPS on ``0.0.0.0:2379`` (free because etcd is stopped):
TLS >= 1.2, a client certificate signed by ``--cacert`` required, ``GET``/``HEAD /<name>`` the
only route (404 elsewhere, 405 for other methods), one ``Range`` with ``If-Range``, and
``ETag``, ``Content-Length`` and ``Repr-Digest`` (RFC 9530) so a downloader can resume and
verify. HTTP parsing and framing are ``http.server``'s.

Who gets served, and how many:

- TLS handshakes run non-blocking on the accept thread, each within :data:`HANDSHAKE` seconds,
  at most :data:`MAX_PENDING` at once and :data:`MAX_PENDING_PER_SOURCE` from one address;
  past a cap the OLDEST pending handshake is dropped, so idle or reconnecting connections
  without a certificate can never keep a real peer out (it finishes in milliseconds);
- a peer slot (:data:`MAX_CLIENTS` transfers at once, each a thread streaming through one
  :data:`CHUNK` buffer: ``MAX_CLIENTS * CHUNK`` bytes at worst) is taken only once the client
  certificate is verified; a verified client finding every slot busy gets ``503``.

SIGTERM stops it within a second (exit 0). ``SIDEKICK_SERVE_ADDRESS`` and
``SIDEKICK_SERVE_PORT`` (see :mod:`sidekick.etcd.options`) change where it listens.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import email.utils
import io
import logging
import selectors
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidekick.errors import SidekickError, UsageError
from sidekick.etcd import layout, verified
from sidekick.etcd.budgets import HANDSHAKE, PEER_IO, Budgets
from sidekick.etcd.options import Options, serve_address, serve_port
from sidekick.etcd.progress import Progress, mb_per_s
from sidekick.etcd.stopping import stoppable
from sidekick.host.signals import StopRequest
from sidekick.log import kv
from sidekick.paths import host_path

if TYPE_CHECKING:
    from sidekick.etcd import crypto

log = logging.getLogger(__name__)

MAX_CLIENTS = 16
MAX_PENDING = 512
MAX_PENDING_PER_SOURCE = 128
CHUNK = 256 << 10  # per transfer: read from the page cache, then encrypted in 16 KiB records
MAX_PATH = 4096
LINGER = 1.0  # seconds a refused handshake may still drain, so the client reads the alert
SERVER_NAME = "sidekick"


class HttpError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers or {}


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


# --- one verified client ----------------------------------------------------------------
class SnapshotHandler(BaseHTTPRequestHandler):
    """The one route, on a verified TLS connection (``http.server`` reads and frames)."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # no HTTP/0.9: every answer has a status line
    resource: Resource
    subject: str
    client: str

    def __init__(self, tls: ssl.SSLSocket, client: str, server: SnapshotServer) -> None:
        self.resource = server.resource
        self.subject = subject_text(tls.getpeercert())
        self.client = client
        self.stopping = server.stopping
        super().__init__(tls, (client, 0), server)  # type: ignore[arg-type]

    def version_string(self) -> str:
        return SERVER_NAME

    def log_message(self, format: str, *args: Any) -> None:  # http.server's own access lines
        log.debug("http: " + format, *args)

    def _refuse(self, err: HttpError, path: str) -> None:
        body = f"{err.status} {err.reason}\n".encode()
        self.send_response(err.status, err.reason)
        for key, value in err.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True
        log.info("request refused", extra=kv(client=self.client, subject=self.subject, path=path, status=err.status))

    def handle_one_request(self) -> None:
        if self.stopping.is_set():
            self.close_connection = True
            return
        super().handle_one_request()

    def do_GET(self) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        res = self.resource
        if len(self.path) > MAX_PATH:
            return self._refuse(HttpError(414, "URI Too Long"), path[:80])
        if path != f"/{res.name}":
            return self._refuse(HttpError(404, "Not Found"), path)
        if self.command not in ("GET", "HEAD"):
            return self._refuse(HttpError(405, "Method Not Allowed", {"Allow": "GET, HEAD"}), path)
        if self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers:
            return self._refuse(HttpError(400, "Bad Request"), path)  # nothing here takes a body
        try:
            wanted = parse_range(self.headers.get("Range"), res.size)
        except HttpError as err:
            return self._refuse(err, path)
        if wanted is not None and self.headers.get("If-Range", res.etag) != res.etag:
            wanted = None  # the client's partial copy is of another file: send it whole
        if wanted is None:
            status, start, length = 200, 0, res.size
        else:
            status, start, length = 206, wanted.start, wanted.length
        self.send_response(status)
        for key, value in res.headers().items():
            self.send_header(key, value)
        if wanted is not None:
            self.send_header("Content-Range", f"bytes {wanted.start}-{wanted.end}/{res.size}")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "GET":
            self._send_body(start, length, status)

    do_HEAD = do_GET
    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _send_body(self, start: int, length: int, status: int) -> None:
        progress = Progress(log, "send", total=length, client=self.client)
        sent = 0
        began = time.monotonic()
        try:
            with open(self.resource.path, "rb", buffering=0) as source:
                for view in _chunks(source, start, length):
                    self.wfile.write(view)
                    sent += len(view)
                    progress.add(len(view))
        except (OSError, ssl.SSLError) as err:
            self.close_connection = True
            log.warning("transfer failed", extra=kv(client=self.client, subject=self.subject, status=status,
                                                    bytes=sent, length=length, error=_reason(err)))
            return
        if sent != length:
            self.close_connection = True
            log.warning("file shrank while being sent", extra=kv(client=self.client, bytes=sent, length=length))
            return
        seconds = time.monotonic() - began
        log.info("snapshot sent", extra=kv(client=self.client, subject=self.subject, status=status, bytes=sent,
                                           seconds=f"{seconds:.2f}", mbps=mb_per_s(sent, seconds)))


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


# --- the listener -------------------------------------------------------------------------
@dataclass
class _Pending:
    """A connection still in its TLS handshake (or draining after a refused one)."""

    tls: ssl.SSLSocket
    source: str
    client: str
    until: float
    draining: bool = False


class SnapshotServer:
    """The listening socket, the handshake stage and the peer slots; :meth:`serve` runs until
    :meth:`stop`."""

    def __init__(self, resource: Resource, context: ssl.SSLContext, address: str, port: int,
                 *, budgets: Budgets | None = None) -> None:
        self.resource = resource
        self.context = context
        self.budgets = budgets or Budgets()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((address, port))
            self._listener.listen(128)
        except OSError as err:
            self._listener.close()
            raise SidekickError(f"cannot listen on {address}:{port}: {err.strerror or err}") from None
        self._listener.setblocking(False)
        self.address = self._listener.getsockname()
        self.stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._pending: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        self._clients: dict[threading.Thread, ssl.SSLSocket] = {}
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()

    @property
    def port(self) -> int:
        return int(self.address[1])

    def stop(self) -> None:
        """Safe from another thread: wakes the accept loop."""
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def serve(self, stop: StopRequest | None = None) -> None:
        """Run until :meth:`stop` (or ``stop`` is set: it is polled every 0.2 s)."""
        sel = self._selector
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self.stopping.is_set():
                if stop is not None and stop.is_set():
                    break
                for key, events in sel.select(timeout=0.2):
                    if key.fileobj is self._listener:
                        self._accept_all()
                    elif key.fileobj is not self._wake_r:
                        self._progress(key.fd, events)
                self._expire()
        finally:
            self.stopping.set()
            self._shutdown()

    # --- the handshake stage -------------------------------------------------------------
    def _accept_all(self) -> None:
        for _ in range(64):  # a burst at a time, then the others get their turn
            try:
                conn, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                log.debug("accept failed: %s", err)
                return
            conn.setblocking(False)
            tls = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            pending = _Pending(tls, str(peer[0]), _addr(peer), time.monotonic() + self.budgets.seconds(HANDSHAKE))
            self._make_room(pending.source)
            self._pending[tls.fileno()] = pending
            self._selector.register(tls, selectors.EVENT_READ)
            self._progress(tls.fileno(), selectors.EVENT_READ)

    def _make_room(self, source: str) -> None:
        """Past a cap, drop the oldest pending handshake (of that source first)."""
        same = [fd for fd, p in self._pending.items() if p.source == source]
        if len(same) >= MAX_PENDING_PER_SOURCE:
            self._drop(same[0], "too many handshakes from one address")
        elif len(self._pending) >= MAX_PENDING:
            self._drop(next(iter(self._pending)), "too many handshakes")

    def _progress(self, fd: int, _events: int) -> None:
        pending = self._pending.get(fd)
        if pending is None:
            return
        if pending.draining:
            try:
                more = pending.tls.recv(16384)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            except OSError:
                more = b""
            if not more:
                self._close(fd)
            return
        try:
            pending.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(pending.tls, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(pending.tls, selectors.EVENT_WRITE)
            return
        except (OSError, ssl.SSLError) as err:
            log.warning("TLS handshake refused", extra=kv(client=pending.client, error=_reason(err)))
            self._linger(fd)
            return
        self._selector.unregister(pending.tls)
        del self._pending[fd]
        self._admit(pending)

    def _linger(self, fd: int) -> None:
        """Close a refused handshake without a reset: with TLS 1.3 the client has already
        sent its request, and closing with it unread would make the kernel send RST, which can
        destroy the alert that tells the client WHY (e.g. its certificate is not trusted)."""
        pending = self._pending[fd]
        try:
            pending.tls.shutdown(socket.SHUT_WR)  # also drops the TLS layer: what follows is raw
        except OSError:
            self._close(fd)
            return
        pending.draining = True
        pending.until = time.monotonic() + LINGER
        self._selector.modify(pending.tls, selectors.EVENT_READ)

    def _expire(self) -> None:
        now = time.monotonic()
        for fd, pending in list(self._pending.items()):
            if pending.until <= now:
                self._drop(fd, "" if pending.draining else "TLS handshake timed out")

    def _drop(self, fd: int, why: str) -> None:
        pending = self._pending.get(fd)
        if pending is not None and why:
            log.info("connection dropped", extra=kv(client=pending.client, reason=why))
        self._close(fd)

    def _close(self, fd: int) -> None:
        pending = self._pending.pop(fd, None)
        if pending is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(pending.tls)
        with contextlib.suppress(OSError):
            pending.tls.close()

    # --- peer slots ----------------------------------------------------------------------
    def _admit(self, pending: _Pending) -> None:
        tls = pending.tls
        tls.setblocking(True)
        tls.settimeout(self.budgets.seconds(PEER_IO))
        if not self._slots.acquire(blocking=False):
            log.warning("every peer slot is busy: asked the client to retry",
                        extra=kv(client=pending.client, limit=MAX_CLIENTS))
            try:
                tls.settimeout(1.0)
                tls.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
                            b"Connection: close\r\n\r\n")
                tls.setblocking(False)
            except OSError:
                tls.close()
                return
            self._pending[tls.fileno()] = pending
            self._selector.register(tls, selectors.EVENT_READ)
            self._linger(tls.fileno())
            return
        thread = threading.Thread(target=self._client, args=(tls, pending.client), name=f"client-{pending.client}",
                                  daemon=True)
        with self._lock:
            self._clients[thread] = tls
        thread.start()

    def _client(self, tls: ssl.SSLSocket, client: str) -> None:
        try:
            SnapshotHandler(tls, client, self)
        except (OSError, ssl.SSLError) as err:
            log.debug("client %s ended: %s", client, _reason(err))
        finally:
            with contextlib.suppress(OSError):
                tls.close()
            with self._lock:
                self._clients.pop(threading.current_thread(), None)
            self._slots.release()

    def _shutdown(self) -> None:
        for fd in list(self._pending):
            self._close(fd)
        self._selector.close()
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


def _age_settings(opts: Options) -> crypto.AgeSettings:
    from sidekick.etcd import crypto

    return crypto.AgeSettings.load(identity_file=opts.age_identity_file)


def snapshot_to_serve(opts: Options, age: crypto.AgeSettings | None, stop: StopRequest) -> verified.SnapshotFile:
    """``/backup/<name>``, extracted from ``<name>.zip`` (or its age-encrypted copy) when there is
    one; a file already verified against the same entry is kept as it is, which lets a second
    start listen within a second. The archive reader is imported only when there is an archive
    to read: not when the file was extracted from this very archive file (see
    :mod:`sidekick.etcd.verified`)."""
    name = opts.name
    archive = layout.archive_path(name)
    known = verified.recall(layout.snapshot_path(name), source=archive)
    if known is not None:
        return verified.already_verified(layout.snapshot_path(name), known)
    if not archive.exists():
        from sidekick.etcd import crypto  # age only where the plain archive is missing

        sealed = archive.with_name(crypto.encrypted_name(archive.name))
        if sealed.exists():
            from sidekick.etcd.extract import extract_snapshot

            # --age-encrypt-local: the snapshot comes from a decrypted copy, removed at once
            identities = (age or _age_settings(opts)).require_identities(f"snapshot {sealed.name}")
            with crypto.decrypted_copy(sealed, identities, stop=stop) as copy:
                return extract_snapshot(name, copy, stop=stop)
        plain = layout.snapshot_path(name)
        if plain.is_file():
            return verified.SnapshotFile(plain, verified.recall(plain), "uncompressed file")
        raise SidekickError(
            f"snapshot {name} not found: neither {layout.archive_entry(name)} nor {layout.snapshot_entry(name)} exists"
        )
    from sidekick.etcd.extract import extract_snapshot

    return extract_snapshot(name, archive, stop=stop)


def run_serve(opts: Options) -> int:
    """Prepare the file, listen, serve until SIGTERM; every failure is one last line."""
    if not opts.name:
        raise UsageError("--name is required: the snapshot to serve")
    for flag, value in (("--cacert", opts.cacert), ("--cert", opts.cert), ("--key", opts.key)):
        if not value:
            raise UsageError(f"{flag} is required to serve over mutual TLS")
    address, port = serve_address(), serve_port()
    context = server_context(host_path(opts.cacert), host_path(opts.cert), host_path(opts.key))
    age = _age_settings(opts) if opts.age_identity_file else None  # read and checked before anything else
    with stoppable() as stop:
        snapshot = snapshot_to_serve(opts, age, stop)
        resource = Resource.of(opts.name, snapshot.path, snapshot.digest.sha256 if snapshot.digest else None)
        server = SnapshotServer(resource, context, address, port, budgets=Budgets.from_options(opts))
        log.info("serving snapshot", extra=kv(name=opts.name, address=f"{address}:{server.port}", size=resource.size,
                                              sha256=resource.sha256 or "unknown", source=snapshot.origin))
        server.serve(stop)
        if stop.is_set():
            log.info("stopping on signal", extra=kv(signal=stop.signal_name))
    log.info("serve stopped", extra=kv(name=opts.name))
    return 0
