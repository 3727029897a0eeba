"""Node tools: nginx-proxy start-up to accepting connections, cert-deployer on a full RKE bundle,
and nginx-proxy's active health checks.

Baselines, measured in the same run: nginx started directly on an equivalent hand-written
config (what nginx-proxy adds is render + ``nginx -V`` + ``nginx -t`` + the Python start-up),
and a plain bash loop writing the same files (the shape of the original script, without its
``bash -x`` tracing).

Health checks: the time from a backend failing to new connections avoiding it, with readyz
checks against checks off (nginx's passive checks only, what RKE runs), for a backend that
refuses connections and for one that accepts them but is not ready (``/readyz`` 500); and
the checker's CPU and memory against nginx's master process over the same period.
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

import psutil

from bench.common import SIDEKICK, Row
from tests.harness.nginx import Nginx, stream_proxy_config
from tests.harness.nginx_backends import ReadyzBackend, client_context, who
from tests.harness.nginx_proxy import NginxProxyProcess
from tests.harness.pki import CertificateAuthority
from tests.harness.ports import free_port, wait_for
from tests.harness.rke_bundle import rke_cert_env
from tests.harness.tcp import TcpBackend

RUNS = 10
CHECK_ENV = {"NGINX_PROXY_HEALTH_CHECK": "readyz", "NGINX_PROXY_HEALTH_INTERVAL": "1s",
             "NGINX_PROXY_HEALTH_FALL": "2", "NGINX_PROXY_HEALTH_RISE": "2"}
CHECKS = "readyz, 1s interval, fall 2"
AVOID_WINDOW = 10.0  # seconds: "not avoided" when traffic still reaches the backend by then
AVOID_STREAK = 20  # answers in a row from the healthy backend: traffic avoids the failed one
USAGE_PERIOD = 10.0  # seconds over which CPU is measured

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


def _proxy(work: Path, name: str, ca: CertificateAuthority, cp_hosts: str, env: dict[str, str]) -> NginxProxyProcess:
    root = work / name
    (root / "etc/kubernetes/ssl").mkdir(parents=True, exist_ok=True)
    (root / "etc/kubernetes/ssl/kube-ca.pem").write_bytes(ca.cert_pem)
    return NginxProxyProcess(SIDEKICK, root, cp_hosts, work / f"{name}.log", env=env).start()


def _time_to_avoid(work: Path, ca: CertificateAuthority, *, checks: bool, failure: str) -> float | None:
    """Seconds from failing cp1 (``refuse``: stop it; ``unready``: /readyz 500) to the first
    of ``AVOID_STREAK`` new connections in a row that reach cp2 (when it was opened); None
    when that does not happen within the window."""
    cp1 = ReadyzBackend("cp1", "127.0.0.2", ca).start()
    cp2 = ReadyzBackend("cp2", "127.0.0.3", ca).start()
    proxy = _proxy(work, f"avoid-{failure}-{checks}", ca, f"{cp1.address},{cp2.address}", CHECK_ENV if checks else {})
    context = client_context(ca)
    try:
        wait_for(lambda: {who(proxy.listen_port, context)[1] for _ in range(4)} == {"cp1", "cp2"},
                 timeout=15, what="both backends serving")
        if failure == "refuse":
            cp1.stop()  # returns once the listener is closed
        else:
            cp1.ready = False
        failed = time.monotonic()
        streak, began = 0, failed
        while time.monotonic() - failed < AVOID_WINDOW:
            sent = time.monotonic()
            try:
                answer = who(proxy.listen_port, context, timeout=5)[1]
            except OSError:
                answer = ""
            if answer == "cp2":
                began = began if streak else sent
                streak += 1
                if streak == AVOID_STREAK:
                    return began - failed
            else:
                streak = 0
        return None
    finally:
        proxy.stop()
        cp1.stop()
        cp2.stop()


def _avoid_rows(work: Path, ca: CertificateAuthority) -> list[Row]:
    rows = []
    for failure, what in (("unready", "accepts TCP, /readyz 500"), ("refuse", "refuses connections")):
        on = _time_to_avoid(work, ca, checks=True, failure=failure)
        off = _time_to_avoid(work, ca, checks=False, failure=failure)
        never = f"never within {AVOID_WINDOW:g} s counted as {AVOID_WINDOW:g} s"
        note = "; ".join(n for n in (f"checks on: {never}" if on is None else "",
                                      f"checks off: {never}" if off is None else "",
                                      "nginx retries a refused connect on the next host" if failure == "refuse" else "")
                         if n)
        rows.append(Row(f"backend {what} -> new connections avoid it ({CHECKS})",
                        (AVOID_WINDOW if on is None else on) * 1000, "ms", "checks off (passive only)",
                        (AVOID_WINDOW if off is None else off) * 1000, note))
    return rows


def _usage(process: psutil.Process, period: float) -> tuple[float, float]:
    """(CPU as % of one core over ``period``, RSS in MiB at its end) of one process."""
    before = sum(process.cpu_times()[:2])
    time.sleep(period)
    return (sum(process.cpu_times()[:2]) - before) / period * 100, process.memory_info().rss / 2**20


def _checker_rows(work: Path, ca: CertificateAuthority) -> list[Row]:
    rows = []
    live = [ReadyzBackend(f"cp{i}", f"127.0.0.{i + 1}", ca).start() for i in (1, 2, 3)]
    refused = free_port("127.1.0.1")
    try:
        for hosts in (3, 100):
            dead = [f"127.1.0.{i}:{refused}" for i in range(1, hosts - 2)]
            proxy = _proxy(work, f"usage-{hosts}", ca, ",".join([*(b.address for b in live), *dead]), CHECK_ENV)
            try:
                time.sleep(3)  # past start-up and the first rounds (and, for 100, the reload)
                checker = psutil.Process(proxy.pid)
                nginx = psutil.Process(proxy.nginx_pid)
                # The same period for both: measured side by side.
                nginx_before = sum(nginx.cpu_times()[:2])
                cpu, rss = _usage(checker, USAGE_PERIOD)
                nginx_cpu = (sum(nginx.cpu_times()[:2]) - nginx_before) / USAGE_PERIOD * 100
                nginx_rss = nginx.memory_info().rss / 2**20
            finally:
                proxy.stop()
            rows.append(Row(f"checker CPU, {hosts} hosts ({CHECKS})", cpu, "% core", "nginx master, same period", nginx_cpu))
            rows.append(Row(f"checker RSS, {hosts} hosts", rss, "MiB", "nginx master (all that runs without checks)", nginx_rss))
    finally:
        for backend in live:
            backend.stop()
    return rows


def run() -> list[Row]:
    backends = [TcpBackend(f"cp{i}").start() for i in range(3)]
    env = rke_cert_env(CertificateAuthority("bench-ca"), etcd_ips=("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
            work = Path(tmp)
            proxy_ms, nginx_ms = _nginx_startups(work, backends)
            tool_ms, bash_ms = _deploys(work, env)
            health_ca = CertificateAuthority("bench-kube-ca")
            health = _avoid_rows(work, health_ca) + _checker_rows(work, health_ca)
    finally:
        for backend in backends:
            backend.stop()
    files = len(env)
    return [
        Row("nginx-proxy start to listening (3 upstreams)", proxy_ms, "ms", "nginx started directly", nginx_ms),
        Row(f"cert-deployer full bundle ({files} files, PEM checks)", tool_ms, "ms", "bash loop, same files", bash_ms),
        *health,
    ]
