"""Node tools: nginx-proxy start-up to accepting connections, cert-deployer on a full RKE bundle.

Baselines, measured in the same run: nginx started directly on an equivalent hand-written
config (what nginx-proxy adds is render + ``nginx -V`` + ``nginx -t`` + the Python start-up),
and a plain bash loop writing the same files (the shape of the original script, without its
``bash -x`` tracing).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import SIDEKICK, Row
from tests.harness.nginx import Nginx, stream_proxy_config
from tests.harness.nginx_proxy import NginxProxyProcess
from tests.harness.pki import CertificateAuthority
from tests.harness.ports import free_port
from tests.harness.rke_bundle import rke_cert_env
from tests.harness.tcp import TcpBackend

RUNS = 10

# Same work as the original cert-deployer, written as a baseline: one file per variable, chmod 600.
BASH_DEPLOY = r"""
dir=$CRTS_DEPLOY_PATH; mkdir -p "$dir"; chmod 755 "$dir"
for var in $(compgen -e); do
  case $var in
    KUBECFG_*) f="$dir/$(echo "$var" | tr 'A-Z_' 'a-z-').yaml"; [ -f "$f" ] || { echo "${!var}" > "$f"; chmod 600 "$f"; } ;;
    KUBE_*) f="$dir/$(echo "$var" | tr 'A-Z_' 'a-z-').pem"; echo "${!var}" > "$f"; chmod 600 "$f" ;;
  esac
done
"""


def _median_ms(action: Callable[[], None]) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _nginx_startups(work: Path, backends: list[TcpBackend]) -> tuple[float, float]:
    cp_hosts = ",".join(b.address for b in backends)

    def tool() -> None:
        proxy = NginxProxyProcess(SIDEKICK, work / "root", cp_hosts, work / "proxy.log").start()
        proxy.stop()

    def plain() -> None:
        port = free_port()
        nginx = Nginx(work / "plain", stream_proxy_config(port, [b.address for b in backends], work / "plain"))
        nginx.start(port)
        nginx.stop()

    return _median_ms(tool), _median_ms(plain)


def _deploys(work: Path, env: dict[str, str]) -> tuple[float, float]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SIDEKICK_")}

    def tool() -> None:
        shutil.rmtree(work / "tool", ignore_errors=True)
        subprocess.run([str(SIDEKICK), "cert-deployer"], env={**base, **env, "SIDEKICK_ROOT": str(work / "tool")},
                       check=True, capture_output=True)

    def bash() -> None:
        shutil.rmtree(work / "bash", ignore_errors=True)
        subprocess.run(["bash", "-c", BASH_DEPLOY], env={**base, **env, "CRTS_DEPLOY_PATH": str(work / "bash")},
                       check=True, capture_output=True)

    return _median_ms(tool), _median_ms(bash)


def run() -> list[Row]:
    backends = [TcpBackend(f"cp{i}").start() for i in range(3)]
    env = rke_cert_env(CertificateAuthority("bench-ca"), etcd_ips=("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
            work = Path(tmp)
            proxy_ms, nginx_ms = _nginx_startups(work, backends)
            tool_ms, bash_ms = _deploys(work, env)
    finally:
        for backend in backends:
            backend.stop()
    files = len(env)
    return [
        Row("nginx-proxy start to listening (3 upstreams)", proxy_ms, "ms", "nginx started directly", nginx_ms),
        Row(f"cert-deployer full bundle ({files} files, PEM checks)", tool_ms, "ms", "bash loop, same files", bash_ms),
    ]
