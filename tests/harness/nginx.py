"""Debian's nginx with the stream module, started in the foreground on loopback ports."""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.ports import port_open, stop_process, wait_for

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def stream_proxy_config(listen_port: int, backends: list[str], prefix: Path) -> str:
    """A minimal stream proxy config (what nginx-proxy renders, reduced to the essentials)."""
    servers = "\n".join(f"        server {b};" for b in backends)
    return f"""
load_module {STREAM_MODULE};
pid {prefix}/nginx.pid;
error_log stderr notice;
worker_processes 1;
events {{ worker_connections 64; }}
stream {{
    upstream backends {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{listen_port};
        proxy_pass backends;
        proxy_connect_timeout 1s;
    }}
}}
"""


@dataclass
class Nginx:
    prefix: Path
    config: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def conf_path(self) -> Path:
        return self.prefix / "nginx.conf"

    def test_config(self) -> subprocess.CompletedProcess[str]:
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.config)
        return subprocess.run(
            [NGINX, "-t", "-p", str(self.prefix), "-c", str(self.conf_path)],
            capture_output=True, text=True, check=False,
        )

    def start(self, wait_port: int) -> Nginx:
        result = self.test_config()
        if result.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {result.stderr}")
        log = open(self.prefix / "nginx.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.prefix), "-c", str(self.conf_path), "-g", "daemon off;"],
            stdout=log, stderr=log,
        )
        log.close()
        wait_for(lambda: port_open(wait_port), timeout=15, what="nginx listening")
        return self

    def stop(self) -> None:
        stop_process(self.process, sig=signal.SIGQUIT)  # nginx's graceful stop
