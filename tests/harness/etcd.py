"""A real etcd member (Debian's etcd-server) on free loopback ports, client TLS required."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.harness.pki import RkeSsl
from tests.harness.ports import free_port, stop_process, wait_for

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


@dataclass
class EtcdServer:
    """One member. ``initial_cluster`` lets several of them form a cluster (the restore drill)."""

    workdir: Path
    ssl: RkeSsl
    name: str = "etcd0"
    host: str = "127.0.0.1"
    client_port: int = 0
    peer_port: int = 0
    initial_cluster: str | None = None
    data_dir: Path | None = None
    netns: str | None = None
    extra_args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.client_port = self.client_port or free_port()
        self.peer_port = self.peer_port or free_port()
        self.data_dir = self.data_dir or self.workdir / f"{self.name}.data"

    @property
    def endpoint(self) -> str:
        """The ``--endpoints`` value RKE passes: ``<ip>:2379`` without a scheme."""
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"https://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.host}:{self.peer_port}"

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def start(self, *, wait: bool = True) -> EtcdServer:
        etcd_cert = self.ssl.directory / f"kube-etcd-{self.host.replace('.', '-')}.pem"
        if not etcd_cert.exists():
            etcd_cert = next(self.ssl.directory.glob("kube-etcd-*[0-9].pem"))
        etcd_key = etcd_cert.with_name(etcd_cert.stem + "-key.pem")
        cmd = [
            *self._prefix(), ETCD,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster or f'{self.name}={self.peer_url}'}",
            "--initial-cluster-token=etcd-cluster-1",
            "--initial-cluster-state=new",
            f"--cert-file={etcd_cert}", f"--key-file={etcd_key}",
            "--client-cert-auth", f"--trusted-ca-file={self.ssl.cacert}",
            f"--peer-cert-file={etcd_cert}", f"--peer-key-file={etcd_key}",
            "--peer-client-cert-auth", f"--peer-trusted-ca-file={self.ssl.cacert}",
            "--logger=zap", "--log-outputs=stderr",
            *self.extra_args,
        ]
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 - owned by the process
        env = {**os.environ, "ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", "")}
        self.process = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        log.close()
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"etcd exited: {self.log_tail()}")
            return self.ctl("endpoint", "health", check=False).returncode == 0

        wait_for(healthy, timeout=timeout, what=f"etcd {self.name} healthy")

    def log_tail(self, lines: int = 5) -> str:
        path = self.workdir / f"{self.name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def ctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [
            *self._prefix(), ETCDCTL, f"--endpoints={self.url}",
            f"--cacert={self.ssl.cacert}", f"--cert={self.ssl.node_cert}", f"--key={self.ssl.node_key}",
            *args,
        ]
        env = {**os.environ, "ETCDCTL_API": "3"}
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout, env=env)

    def put(self, key: str, value: str) -> None:
        self.ctl("put", key, value)

    def get(self, key: str) -> str | None:
        out = self.ctl("get", key, "--print-value-only").stdout
        return out[:-1] if out.endswith("\n") else (out or None)

    def put_many(self, count: int, value_size: int, *, prefix: str = "/load/", workers: int = 8) -> int:
        """Load ``count`` keys of ``value_size`` bytes through the v3 JSON gateway; return bytes."""
        session = requests.Session()
        session.cert = (str(self.ssl.node_cert), str(self.ssl.node_key))
        session.trust_env = False  # REQUESTS_CA_BUNDLE in the env would override verify
        session.verify = str(self.ssl.cacert)
        filler = (b"x" * value_size)

        def put_one(i: int) -> None:
            key = f"{prefix}{i:08d}".encode()
            value = (f"{i:08d}".encode() + filler)[:value_size]
            body = {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()}
            session.post(f"{self.url}/v3/kv/put", json=body, timeout=30).raise_for_status()

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(put_one, range(count)))
        return count * value_size

    def stop(self) -> None:
        stop_process(self.process, timeout=15)
