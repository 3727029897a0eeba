"""Small TCP servers of the tests' own: stand-ins for kube-apiservers behind nginx-proxy."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from dataclasses import dataclass, field


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.request.recv(65536)
            if not chunk:
                break
            data += chunk
        with server.lock:
            server.connections += 1
            server.bytes_in += len(data)
        self.request.sendall(server.name.encode() + b":" + data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    name = ""
    connections = 0
    bytes_in = 0
    lock: threading.Lock


@dataclass
class TcpBackend:
    """Answers ``<name>:<line>`` to one line per connection, on 127.0.0.1 (or ::1)."""

    name: str
    host: str = "127.0.0.1"
    _server: _Server | None = field(default=None, repr=False)

    def start(self) -> TcpBackend:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_class = type("_BackendServer", (_Server,), {"address_family": family})
        self._server = server_class((self.host, 0), _Handler)
        self._server.name = self.name
        self._server.lock = threading.Lock()
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def connections(self) -> int:
        return self._server.connections if self._server else 0

    @property
    def bytes_in(self) -> int:
        return self._server.bytes_in if self._server else 0

    def stop(self) -> None:
        """Close the listening socket: new connections are refused, like a dead node."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def request(port: int, payload: bytes = b"ping\n", *, host: str = "127.0.0.1", timeout: float = 10) -> bytes:
    """One connection through the proxy: send a line, read the answer to EOF."""
    with contextlib.closing(socket.create_connection((host, port), timeout=timeout)) as sock:
        sock.sendall(payload)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer
