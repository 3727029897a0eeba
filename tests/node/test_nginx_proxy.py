"""nginx-proxy for real: the tool renders, checks and becomes nginx in front of test backends."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidekick.host.proc import Runner
from sidekick.nginx.config import Settings, parse_cp_hosts, render
from sidekick.nginx.launcher import NginxProxy
from tests.conftest import SIDEKICK, last_line, run_sidekick
from tests.harness.nginx import NGINX
from tests.harness.nginx_proxy import NginxProxyProcess
from tests.harness.tcp import TcpBackend, request

pytestmark = pytest.mark.integration


@pytest.fixture
def backends() -> Iterator[list[TcpBackend]]:
    started = [TcpBackend(f"cp{i}").start() for i in range(1, 4)]
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[Callable[..., NginxProxyProcess]]:
    started: list[NginxProxyProcess] = []

    def start(exe: Path, cp_hosts: str, **env: str) -> NginxProxyProcess:
        proxy = NginxProxyProcess(exe, tmp_path / "root", cp_hosts, tmp_path / "nginx-proxy.log", env=env)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()


def test_traffic_passes_and_survives_a_dead_backend(
    backends: list[TcpBackend], proxy_factory: Callable[..., NginxProxyProcess],
    tool_link: Callable[[str], Path], tmp_path: Path,
) -> None:
    cp_hosts = ",".join(b.address for b in backends)
    proxy = proxy_factory(tool_link("nginx-proxy"), cp_hosts)

    # The tool exec'd nginx: the process RKE started is nginx itself, with its pid under the root.
    assert os.path.realpath(f"/proc/{proxy.pid}/exe") == os.path.realpath(NGINX)
    assert (tmp_path / "root/run/nginx.pid").read_text().strip() == str(proxy.pid)
    conf = (tmp_path / "root/etc/nginx/nginx.conf").read_text()
    for backend in backends:
        assert f"server {backend.address} max_fails=1 fail_timeout=10s;" in conf

    answers = [request(proxy.listen_port, f"hello {i}\n".encode()) for i in range(9)]
    assert all(a.endswith(f"hello {i}\n".encode()) for i, a in enumerate(answers))
    served = Counter(a.split(b":")[0].decode() for a in answers)
    assert set(served) == {"cp1", "cp2", "cp3"}  # round robin over every control-plane node

    backends[0].stop()
    before = backends[0].connections
    answers = [request(proxy.listen_port, b"after\n") for _ in range(12)]
    assert all(a.endswith(b":after\n") for a in answers)
    served = Counter(a.split(b":")[0].decode() for a in answers)
    assert set(served) == {"cp2", "cp3"}
    assert backends[0].connections == before
    # Passive health with a shared zone: one refused connect marks cp1 down for every worker.
    log = (tmp_path / "nginx-proxy.log").read_text()
    assert log.count("connect() failed (111: Connection refused) while connecting to upstream") == 1, log
    assert "upstream server temporarily disabled while connecting to upstream" in log

    assert proxy.stop() == 0


def test_ipv6_loopback_backend_and_host_name(
    proxy_factory: Callable[..., NginxProxyProcess], tool_link: Callable[[str], Path],
) -> None:
    v6 = TcpBackend("v6", host="::1").start()
    named = TcpBackend("named").start()
    try:
        proxy = proxy_factory(tool_link("nginx-proxy"), f"{v6.address},localhost:{named.port}")
        served = {request(proxy.listen_port).split(b":")[0] for _ in range(6)}
        assert served == {b"v6", b"named"}
    finally:
        v6.stop()
        named.stop()


def test_cp_hosts_from_the_argument_when_the_environment_lacks_it(
    backends: list[TcpBackend], tmp_path: Path,
) -> None:
    proxy = NginxProxyProcess(SIDEKICK, tmp_path / "root", backends[1].address, tmp_path / "log",
                              cp_hosts_in_env=False)
    try:
        proxy.start()
        assert request(proxy.listen_port).startswith(b"cp2:")
        assert "using the argument" in (tmp_path / "log").read_text()
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    ("cp_hosts", "message"),
    [
        ("", "CP_HOSTS is empty"),
        ("10.0.0.1,,10.0.0.2", "CP_HOSTS item 2 is empty"),
        ("10.0.0.1, 10.0.0.2", "CP_HOSTS item ' 10.0.0.2' contains spaces"),
        ("10.0.0.1,10.0.0.1", "CP_HOSTS item '10.0.0.1' duplicates '10.0.0.1'"),
        ("10.0.0.300", "'10.0.0.300' is not a valid IPv4 address"),
    ],
)
def test_bad_cp_hosts_fails_and_keeps_the_old_config(tmp_path: Path, cp_hosts: str, message: str) -> None:
    conf = tmp_path / "etc/nginx/nginx.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("# the previous, working config\n")
    result = run_sidekick(["nginx-proxy", f"CP_HOSTS={cp_hosts}"], root=tmp_path, env={"CP_HOSTS": cp_hosts})
    assert result.returncode == 2
    line = last_line(result.stderr)
    assert "level=fatal" in line and message in line
    assert conf.read_text() == "# the previous, working config\n"
    assert sorted(p.name for p in conf.parent.iterdir()) == ["nginx.conf"]


def test_rendered_config_passes_nginx_t_with_every_host_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    proxy = NginxProxy(Runner())
    text = render(parse_cp_hosts("127.0.0.1,[::1]:7443,::2,localhost:8443"), Settings("127.0.0.1", 16443),
                  pid_path=proxy.pid_path, stream_module=proxy.stream_module)
    proxy.install(text)
    assert (tmp_path / "etc/nginx/nginx.conf").read_text() == text
    check = subprocess.run([NGINX, "-t", "-c", str(tmp_path / "etc/nginx/nginx.conf")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    assert "syntax is ok" in check.stderr
