"""The Docker Engine API over its unix socket, without the docker CLI.

The original shipped a 2016 docker client just to read three lines of ``docker info``;
``GET /info`` on ``/var/run/docker.sock`` gives the same fields as JSON.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

from sidekick.errors import SidekickError


@dataclass(frozen=True)
class DockerInfo:
    """The fields of ``GET /info`` the kubelet preparation needs."""

    cgroup_driver: str
    root_dir: str
    cgroup_version: str = ""  # "1" or "2"; absent before API 1.40
    security_options: tuple[str, ...] = field(default=())

    @classmethod
    def from_json(cls, data: dict[str, object]) -> DockerInfo:
        options = data.get("SecurityOptions") or ()
        return cls(
            cgroup_driver=str(data.get("CgroupDriver") or ""),
            root_dir=str(data.get("DockerRootDir") or ""),
            cgroup_version=str(data.get("CgroupVersion") or ""),
            security_options=tuple(str(o) for o in options) if isinstance(options, list) else (),
        )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)  # Host: docker, as the Go client sends
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerEngine:
    """A client of the engine listening on ``socket_path``."""

    def __init__(self, socket_path: Path, *, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def get_json(self, path: str) -> object:
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as err:
            raise SidekickError(f"cannot reach the Docker engine at {self.socket_path}: {err}") from None
        finally:
            conn.close()
        if response.status != 200:
            detail = body.decode(errors="replace").strip()[:200]
            raise SidekickError(f"Docker engine answered {path} with {response.status}: {detail}")
        try:
            return json.loads(body)
        except ValueError:
            raise SidekickError(f"Docker engine sent invalid JSON for {path}") from None

    def info(self) -> DockerInfo:
        data = self.get_json("/info")
        if not isinstance(data, dict):
            raise SidekickError("Docker engine sent an unexpected /info document")
        return DockerInfo.from_json(data)
