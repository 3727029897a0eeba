"""Faults on loopback: servers that misbehave the way real networks and stores do.

``BlackHole``: accepts TCP connections (or, with ``accept=False``, lets the kernel queue them
without ever accepting: a slow accept) and never answers. ``FaultyHttp``: an HTTP proxy in
front of a real server (moto) that applies a :class:`Fault` to chosen requests: hold them for
ever (a black hole for one method), answer with a status (500/503 bursts), forward the answer
one byte every ``drip`` seconds, or reset the connection half-way through the body. It counts
every request it sees, by method, which is how tests bound the requests of an operation, and
records each one's request target and headers (``seen``), which is how tests see what a client
sent (SSE headers, checksums, the session token). It also works as a forward proxy: a request
in absolute form (``GET http://host/path``, as clients send to an HTTP proxy) is forwarded to
the target by its path.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import socket
import struct
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class BlackHole:
    """A TCP listener that never answers."""

    def __init__(self, *, accept: bool = True) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        if accept:
            threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)  # held open, never read, never answered

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.close()


@dataclass(frozen=True)
class Fault:
    """What to do with one request: ``hold`` it, answer ``status``, ``drip`` the answer one
    byte every so many seconds, or ``reset`` after that many bytes of the answer."""

    hold: bool = False
    status: int = 0
    drip: float = 0.0
    reset: int = -1


Rule = Callable[[str, str], Fault | None]  # (method, path) -> the fault, or None to forward


@dataclass(frozen=True)
class Seen:
    """One request as it arrived: method, request target (absolute when proxied), headers
    with lower-case names."""

    method: str
    target: str
    headers: dict[str, str]


class FaultyHttp:
    """An HTTP/1.1 proxy to ``target_port`` on loopback applying ``rule`` to each request."""

    def __init__(self, target_port: int, rule: Rule) -> None:
        owner = self
        self.rule = rule
        self.requests: collections.Counter[str] = collections.Counter()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self.released = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with owner._lock:
                    owner.requests[self.command] += 1
                    owner.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                path = self.path
                if path.startswith(("http://", "https://")):  # proxied: forward by path
                    parts = urllib.parse.urlsplit(path)
                    path = parts.path + (f"?{parts.query}" if parts.query else "")
                fault = owner.rule(self.command, path) or Fault()
                if fault.hold:
                    owner.released.wait()
                    self.close_connection = True
                    return
                if fault.status:
                    payload = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
                    self.send_response(fault.status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"127.0.0.1:{target_port}"
                conn.request(self.command, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                head = [f"HTTP/1.1 {resp.status} {resp.reason}"]
                head += [f"{k}: {v}" for k, v in resp.getheaders()
                         if k.lower() not in {"content-length", "transfer-encoding", "connection"}]
                sent = resp.getheader("Content-Length") or "0" if self.command == "HEAD" else str(len(data))
                head.append(f"Content-Length: {sent}")
                raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (data if self.command != "HEAD" else b"")
                if fault.reset >= 0:
                    self.wfile.write(raw[: fault.reset])
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if fault.drip:
                    for i in range(len(raw)):
                        if owner.released.wait(fault.drip):
                            break
                        self.wfile.write(raw[i : i + 1])
                    self.close_connection = True
                    return
                self.wfile.write(raw)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that gave up on a faulty answer is the point, not an error

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def total(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


