"""An S3-compatible endpoint: ``moto[server]`` as its own process, over HTTP or HTTPS.

HTTPS uses a server certificate from the tests' own CA, so ``--s3-endpoint-ca`` is exercised
for real (the original always speaks TLS to S3).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config

from tests.harness.pki import CertificateAuthority
from tests.harness.ports import free_port, stop_process, wait_for

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"


@dataclass
class S3Server:
    workdir: Path
    tls_ca: CertificateAuthority | None = None
    host: str = "127.0.0.1"
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_ca else "http"

    @property
    def endpoint(self) -> str:
        """``host:port`` as RKE passes ``--s3-endpoint`` (no scheme)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"

    @property
    def ca_path(self) -> Path | None:
        return self.workdir / "s3-ca.pem" if self.tls_ca else None

    def start(self) -> S3Server:
        import os

        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        if self.tls_ca:
            pair = self.tls_ca.server(dns=("localhost",), ips=(self.host,))
            cert, key = pair.write(self.workdir, "s3-server")
            assert self.ca_path is not None
            self.ca_path.write_bytes(self.tls_ca.cert_pem)
            cmd += ["-c", str(cert), "-k", str(key)]
        log = open(self.workdir / f"moto-{self.port}.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, **self.env})
        log.close()

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError("moto server exited")
            requests.get(self.url, timeout=1, verify=str(self.ca_path) if self.ca_path else True)
            return True

        wait_for(up, timeout=30, what="moto server")
        return self

    def client(self, **overrides: Any) -> Any:
        kwargs: dict[str, Any] = {
            "endpoint_url": self.url,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "region_name": REGION,
            "verify": str(self.ca_path) if self.ca_path else False,
            "config": Config(s3={"addressing_style": "path"}),
        }
        kwargs.update(overrides)
        return boto3.client("s3", **kwargs)

    def new_bucket(self, prefix: str = "snap") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        stop_process(self.process)
