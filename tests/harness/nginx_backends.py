"""kube-apiserver stand-ins behind nginx-proxy: HTTPS on loopback with a ``/readyz`` you switch.

Each backend listens on its own 127.0.0.x address (all of 127/8 is loopback) with a server
certificate from the tests' kube-ca for that address. ``/readyz`` answers 200 ``ok`` while the
backend is ready and 500 while it is not, as an apiserver whose etcd is gone does: it still
accepts TCP and TLS. Any other path answers the backend's name (503 while not ready), so a
client going through the proxy can tell who served it. Connections stay open (HTTP/1.1).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.harness.pki import CertificateAuthority


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        backend = self.server.backend
        if self.path == "/readyz":
            with backend.lock:
                backend.readyz_hits += 1
            status, body = (200, b"ok") if backend.ready else (500, b"[-]etcd failed: reason withheld\nreadyz check failed\n")
            if backend.readyz_body is not None:
                body = backend.readyz_body
        else:
            with backend.lock:
                backend.served += 1
            status, body = (200, backend.name.encode()) if backend.ready else (503, b"not ready")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/readyz" and backend.drip:
            for byte in body:  # one byte at a time: each read completes, the answer never does
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(backend.drip)
        else:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    backend: ReadyzBackend
    context: ssl.SSLContext

    def finish_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        # The handshake in the connection's own thread: a bare TCP probe must not stall accept().
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        with contextlib.closing(tls):
            _Handler(tls, client_address, self)


@dataclass
class ReadyzBackend:
    name: str
    host: str
    ca: CertificateAuthority  # signs the server certificate
    ready: bool = True
    readyz_body: bytes | None = None  # instead of "ok" (a huge answer)
    drip: float = 0.0  # seconds between the bytes of the /readyz body
    served: int = 0
    readyz_hits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _server: _Server | None = field(default=None, repr=False)

    def start(self, port: int = 0) -> ReadyzBackend:
        pair = self.ca.issue(self.name, server=True, client=False, dns=("localhost",), ips=(self.host, "127.0.0.1"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with _key_files(pair.cert_pem, pair.key_pem) as (cert, key):
            context.load_cert_chain(cert, key)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server = type("_BackendServer", (_Server,), {"address_family": family})((self.host, port), _Handler)
        server.backend = self
        server.context = context
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextlib.contextmanager
def _key_files(cert_pem: bytes, key_pem: bytes) -> Iterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="readyz-backend-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        yield str(cert), str(key)


def client_context(ca: CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca.cert_pem.decode())


def who(port: int, context: ssl.SSLContext, *, timeout: float = 10) -> tuple[int, str]:
    """One new connection through the proxy: ``GET /who``; the status and the body (a name)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=timeout)
    try:
        conn.request("GET", "/who")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()
