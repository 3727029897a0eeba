"""The demo's steps, in order: each takes the context and returns a one-line detail."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.entrypoint import aws_hostname, scheduler_passthrough
from demo.etcd_drill import local_restore_drill, s3_restore_drill
from demo.etcd_restore import extract_state_file, large_transfer, serve_and_download
from demo.etcd_save import (
    prune_dry_run,
    rolling_metrics,
    rolling_retention,
    save_encrypted_and_restore,
    save_once_to_s3,
)
from demo.etcd_verify import list_table, verify_corrupted, verify_good
from demo.node_tools import cert_deployer_bundle, nginx_proxy_failover
from tests.harness.etcd import EtcdServer
from tests.harness.pki import CertificateAuthority, RkeSsl
from tests.harness.s3 import S3Server

SIDEKICK = Path(sys.executable).with_name("sidekick")


@dataclass
class Context:
    workdir: Path
    stack: ExitStack
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """The SIDEKICK_ROOT standing in for a node's /."""
        return self.workdir / "node1"

    def sidekick(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        import os

        full_env = {**os.environ, "SIDEKICK_ROOT": str(self.root), **(env or {})}
        result = subprocess.run([str(SIDEKICK), *args], capture_output=True, text=True, env=full_env, check=False)
        if check and result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            raise RuntimeError(f"sidekick {args[0]} exited {result.returncode}: {lines[-1] if lines else ''}")
        return result


def start_etcd(ctx: Context) -> str:
    ca = CertificateAuthority("kube-ca")
    ssl = RkeSsl.create(ctx.root / "etc/kubernetes/ssl", ca, "127.0.0.1")
    etcd = EtcdServer(ctx.workdir / "etcd", ssl).start()
    ctx.stack.callback(etcd.stop)
    loaded = etcd.put_many(200, 4096, prefix="/registry/demo/")
    ctx.values.update(ca=ca, ssl=ssl, etcd=etcd)
    return f"etcd {etcd.endpoint} (client TLS), {loaded // 1024} KiB loaded"


def start_s3(ctx: Context) -> str:
    s3 = S3Server(ctx.workdir / "s3", tls_ca=CertificateAuthority("s3-ca")).start()
    ctx.stack.callback(s3.stop)
    bucket = s3.new_bucket("demo")
    ctx.values.update(s3=s3, bucket=bucket)
    return f"S3 {s3.url} bucket {bucket}"


def install_layout(ctx: Context) -> str:
    ctx.sidekick("install", "--prefix", str(ctx.root))
    links = sorted(p.name for p in (ctx.root / "opt/rke-tools").iterdir())
    return "links: " + ", ".join(links)


STEPS: list[tuple[str, Callable[[Context], str]]] = [
    ("start etcd", start_etcd),
    ("start S3 (HTTPS, own CA)", start_s3),
    ("sidekick install --prefix", install_layout),
    ("etcd snapshot --once to S3 (HTTPS)", save_once_to_s3),
    ("etcd snapshot age-encrypted + restore", save_encrypted_and_restore),
    ("etcd rolling tick: S3 retention", rolling_retention),
    ("etcd prune --dry-run: keep-daily policy", prune_dry_run),
    ("etcd rolling ticks: /metrics, /healthz", rolling_metrics),
    ("etcd verify: trial restore", verify_good),
    ("etcd verify: a corrupted snapshot", verify_corrupted),
    ("etcd list: local + S3 (table)", list_table),
    ("etcd restore: serve + peer download", serve_and_download),
    ("etcd restore: 256 MB peer transfer", large_transfer),
    ("etcd restore: extractstatefile", extract_state_file),
    ("nginx-proxy: traffic and failover", nginx_proxy_failover),
    ("cert-deployer: RKE bundle", cert_deployer_bundle),
    ("entrypoint.sh: kube-scheduler exec", scheduler_passthrough),
    ("entrypoint.sh: EC2 hostname (IMDSv2)", aws_hostname),
    ("etcd drill: 3 netns, local restore", local_restore_drill),
    ("etcd drill: restore from S3", s3_restore_drill),
]
