"""nginx-proxy's active health checks for real: the tool supervises Debian's nginx in front of
HTTPS stand-ins for kube-apiservers on 127.0.0.x, with short intervals."""

from __future__ import annotations

import http.client
import os
import re
import signal
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from sidekick.host.proc import Runner
from sidekick.nginx.config import Settings, Upstream, render
from sidekick.nginx.launcher import NginxProxy
from tests.conftest import SIDEKICK, last_line, run_sidekick
from tests.harness.nginx_backends import ReadyzBackend, client_context, who
from tests.harness.nginx_proxy import NginxProxyProcess
from tests.harness.pki import CertificateAuthority
from tests.harness.ports import free_port, wait_for
from tests.harness.tcp import TcpBackend, request

pytestmark = pytest.mark.integration

Start = Callable[..., NginxProxyProcess]


@pytest.fixture
def start_proxy(tmp_path: Path, kube_ca: CertificateAuthority) -> Iterator[Start]:
    """``start_proxy(cp_hosts, check="readyz", interval=..., ...)``: a checked nginx-proxy."""
    started: list[NginxProxyProcess] = []

    def start(cp_hosts: str, *, check: str = "readyz", interval: str = "0.5", fall: str = "1", rise: str = "1",
              wrap: list[str] | None = None, with_kube_ca: bool = True, **env: str) -> NginxProxyProcess:
        root = tmp_path / "root"
        ssl_dir = root / "etc/kubernetes/ssl"
        ssl_dir.mkdir(parents=True, exist_ok=True)
        if with_kube_ca:
            (ssl_dir / "kube-ca.pem").write_bytes(kube_ca.cert_pem)
        env = {"NGINX_PROXY_HEALTH_CHECK": check, "NGINX_PROXY_HEALTH_INTERVAL": interval,
               "NGINX_PROXY_HEALTH_FALL": fall, "NGINX_PROXY_HEALTH_RISE": rise, **env}
        proxy = NginxProxyProcess(SIDEKICK, root, cp_hosts, tmp_path / f"proxy{len(started)}.log",
                                  env=env, wrap=wrap or [])
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def backends(kube_ca: CertificateAuthority) -> Iterator[list[ReadyzBackend]]:
    started = [ReadyzBackend(f"cp{i}", f"127.0.0.{i + 1}", kube_ca).start() for i in (1, 2, 3)]
    yield started
    for backend in started:
        backend.stop()


def _in_conf(proxy: NginxProxyProcess, backend: ReadyzBackend | TcpBackend) -> bool:
    return f"server {backend.address} " in proxy.conf


def _served_by(port: int, context: ssl.SSLContext, count: int) -> Counter[str]:
    return Counter(who(port, context)[1] for _ in range(count))


def test_an_unready_backend_leaves_and_returns_by_reloads(
    start_proxy: Start, backends: list[ReadyzBackend], kube_ca: CertificateAuthority,
) -> None:
    cp1 = backends[0]
    proxy = start_proxy(",".join(b.address for b in backends), fall="2", rise="2")
    context = client_context(kube_ca)
    master = proxy.nginx_pid
    assert master != proxy.pid  # nginx is the tool's child, not the tool itself
    assert set(_served_by(proxy.listen_port, context, 9)) == {"cp1", "cp2", "cp3"}

    cp1.ready = False  # still accepts TCP and TLS; only /readyz says 500
    wait_for(lambda: not _in_conf(proxy, cp1), timeout=15, what="cp1 out of the rendered upstream")
    wait_for(lambda: "cp1" not in _served_by(proxy.listen_port, context, 6), timeout=10, what="traffic avoids cp1")
    before = cp1.served
    answers = [who(proxy.listen_port, context) for _ in range(12)]
    assert {status for status, _ in answers} == {200}
    assert set(Counter(name for _, name in answers)) == {"cp2", "cp3"}
    assert cp1.served == before
    assert re.search(rf'level=warning msg="control-plane host fails its health check; out of the upstream" '
                     rf'host="?{re.escape(cp1.address)}"? failures=2 reason=', proxy.log), proxy.log

    cp1.ready = True
    wait_for(lambda: _in_conf(proxy, cp1), timeout=15, what="cp1 back in the rendered upstream")
    wait_for(lambda: "cp1" in _served_by(proxy.listen_port, context, 6), timeout=10, what="traffic reaches cp1")
    assert "control-plane host passes its health check; back in the upstream" in proxy.log

    # Reloads, never restarts: the same nginx master all along, and nginx said so.
    assert proxy.nginx_pid == master
    assert proxy.log.count("reconfiguring") >= 2
    assert "do not verify" not in proxy.log  # kube-ca.pem is there: probes verify
    assert "fail open" not in proxy.log
    assert proxy.stop() == 0  # SIGQUIT forwarded; nginx's own exit code


def test_no_client_connection_fails_across_membership_changes(
    start_proxy: Start, backends: list[ReadyzBackend], kube_ca: CertificateAuthority,
) -> None:
    cp1, cp2, _ = backends
    proxy = start_proxy(f"{cp1.address},{cp2.address}")
    context = client_context(kube_ca)
    established = http.client.HTTPSConnection("127.0.0.1", proxy.listen_port, context=context, timeout=10)
    established.auto_open = 0  # a closed connection must raise, not reconnect quietly
    established.connect()
    established.request("GET", "/who")
    first = established.getresponse()
    first.read()
    assert first.status == 200

    statuses: Counter[int] = Counter()
    errors: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                statuses[who(proxy.listen_port, context)[0]] += 1
            except Exception as err:
                errors.append(repr(err))

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        for _ in range(3):  # cp2 stays ready throughout: at least one backend always is
            cp1.ready = False
            wait_for(lambda: not _in_conf(proxy, cp1), timeout=15, what="cp1 out")
            time.sleep(0.5)
            cp1.ready = True
            wait_for(lambda: _in_conf(proxy, cp1), timeout=15, what="cp1 back")
            time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    assert errors == []
    assert sum(statuses.values()) > 50, statuses
    assert set(statuses) <= {200, 503}  # 503: cp1 answering "not ready" before its removal landed
    assert proxy.log.count("upstream changed, nginx reloaded") >= 6

    # The connection opened before the six reloads still carries requests.
    established.request("GET", "/who")
    again = established.getresponse()
    assert again.read() in (b"cp1", b"cp2")
    established.close()


@pytest.mark.parametrize(("action", "code"), [("SIGTERM to the tool", 0), ("SIGKILL to nginx", 137)])
def test_signals_reach_nginx_and_its_exit_code_is_the_tools(
    start_proxy: Start, backends: list[ReadyzBackend], action: str, code: int,
) -> None:
    proxy = start_proxy(backends[0].address)
    nginx = proxy.nginx_pid
    assert proxy.process is not None
    if action == "SIGTERM to the tool":
        proxy.process.send_signal(signal.SIGTERM)  # docker stop
    else:
        # nginx writes its pid file before it starts its workers: wait for them, so that none
        # outlives the test (in a container they would end with it).
        wait_for(lambda: len(psutil.Process(nginx).children()) == psutil.cpu_count(), timeout=10,
                 what="nginx's workers (worker_processes auto)")
        workers = psutil.Process(nginx).children()
        os.kill(nginx, signal.SIGKILL)  # a crash
        for worker in workers:
            worker.kill()
    assert proxy.process.wait(timeout=15) == code
    assert not Path(f"/proc/{nginx}").exists()
    if code == 0:
        assert "forwarding signal to nginx" in proxy.log and "signal=SIGTERM" in proxy.log
    assert f'level=info msg="nginx exited" pid={nginx} code={code}' in proxy.log


def test_when_every_backend_fails_all_stay_in(
    start_proxy: Start, backends: list[ReadyzBackend], kube_ca: CertificateAuthority,
) -> None:
    cp1, cp2, _ = backends
    cp1.ready = cp2.ready = False
    proxy = start_proxy(f"{cp1.address},{cp2.address}")
    wait_for(lambda: "(fail open)" in proxy.log, timeout=15, what="the fail-open warning")
    wait_for(lambda: cp1.readyz_hits >= 6 and cp2.readyz_hits >= 6, timeout=15, what="more check rounds")
    assert proxy.log.count("(fail open)") == 1  # one warning per transition, not per round
    assert _in_conf(proxy, cp1) and _in_conf(proxy, cp2)
    assert "nginx reloaded" not in proxy.log
    served = cp1.served, cp2.served
    assert {who(proxy.listen_port, client_context(kube_ca))[0] for _ in range(4)} == {503}
    assert cp1.served > served[0] and cp2.served > served[1]  # traffic still reaches both

    cp2.ready = True
    wait_for(lambda: not _in_conf(proxy, cp1), timeout=15, what="cp1 out once cp2 is ready")
    assert proxy.log.count("fail open ends") == 1
    assert _in_conf(proxy, cp2)


def test_a_membership_change_reaches_nginx_within_two_intervals(
    start_proxy: Start, backends: list[ReadyzBackend], kube_ca: CertificateAuthority,
) -> None:
    interval = 1.0
    cp1, cp2, _ = backends
    proxy = start_proxy(f"{cp1.address},{cp2.address}", interval=str(interval), NGINX_PROXY_HEALTH_TIMEOUT="0.5")
    context = client_context(kube_ca)
    wait_for(lambda: cp1.readyz_hits >= 1, timeout=10, what="a first check round")

    def watch(until: Callable[[str], bool]) -> float:
        """Request until ``until(body)`` holds for 20 answers in a row; when the first of them was sent."""
        began = time.monotonic()
        streak, streak_start = 0, began
        deadline = began + 6 * interval
        while streak < 20:
            assert time.monotonic() < deadline, "the change did not reach nginx"
            sent = time.monotonic()
            _, body = who(proxy.listen_port, context)
            if until(body):
                streak, streak_start = streak + 1, streak_start if streak else sent
            else:
                streak = 0
        return streak_start

    changed = time.monotonic()
    cp1.ready = False
    avoided = watch(lambda body: body == "cp2")  # cp1 answers "not ready" until it is out
    assert avoided - changed <= 2 * interval, f"{avoided - changed:.2f}s"

    changed = time.monotonic()
    cp1.ready = True
    while who(proxy.listen_port, context)[1] != "cp1":  # nginx sends nothing to cp1 until it is back
        assert time.monotonic() < changed + 6 * interval, "cp1 did not come back"
    returned = time.monotonic()
    assert returned - changed <= 2 * interval, f"{returned - changed:.2f}s"


def test_a_thousand_hosts_render_load_and_are_checked(start_proxy: Start, tmp_path: Path) -> None:
    live = TcpBackend("live").start()
    closed = free_port("127.1.0.1")  # nothing listens there: refused at once
    dead = [f"127.1.{i // 250}.{i % 250 + 1}:{closed}" for i in range(999)]
    cp_hosts = ",".join([live.address, *dead])
    unchecked = NginxProxyProcess(SIDEKICK, tmp_path / "plain", cp_hosts, tmp_path / "plain.log")
    try:
        unchecked.start()
        conf = unchecked.conf
        assert conf.count(" max_fails=1 fail_timeout=10s;") == 1000
        assert "zone kube_apiserver 4032k;" in conf
        # nginx tries past refused peers. Bounded wait, not one shot: the readiness probes above
        # went through nginx too, and on a busy machine one may have found the live backend's
        # small accept queue full and marked it down for fail_timeout (10 s).
        wait_for(lambda: request(unchecked.listen_port, timeout=5).startswith(b"live:"), timeout=25,
                 what="a request through 1,000 hosts to the live one")
        assert unchecked.stop() == 0

        checked = start_proxy(cp_hosts, check="tcp", interval="1")
        wait_for(lambda: checked.conf.count(" max_fails=") == 1, timeout=30, what="999 refusing hosts out")
        assert "zone kube_apiserver 4032k;" in checked.conf  # sized for every host, not the members
        assert _in_conf(checked, live)
        assert request(checked.listen_port).startswith(b"live:")
        assert "upstream changed, nginx reloaded" in checked.log
    finally:
        unchecked.stop()
        live.stop()


def test_the_zone_holds_a_thousand_of_the_longest_ipv6_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    hosts = [Upstream(f"[fd00:1234:5678:9abc:def0:1234:5678:{i:04x}]", 65535) for i in range(1000)]
    proxy = NginxProxy(Runner())
    proxy.install(render(hosts, Settings("127.0.0.1", free_port(), 100, "1000s"), pid_path=proxy.pid_path,
                         stream_module=proxy.stream_module))  # nginx -t allocates the zone: it would refuse
    assert "zone kube_apiserver 4032k;" in (tmp_path / "etc/nginx/nginx.conf").read_text()


def _private_resolver(tmp_path: Path, hosts: str) -> tuple[Path, list[str]]:
    """A hosts file the test edits and no name server (glibc then asks 127.0.0.1:53, which
    refuses): names resolve from the file alone, inside a private mount namespace."""
    hosts_file, resolv = tmp_path / "hosts", tmp_path / "resolv.conf"
    hosts_file.write_text(hosts)
    resolv.write_text("options attempts:1 timeout:1\n")
    script = f'mount --bind {hosts_file} /etc/hosts && mount --bind {resolv} /etc/resolv.conf && exec "$@"'
    return hosts_file, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def test_a_name_that_does_not_resolve_at_start_is_a_warning_and_retried(start_proxy: Start, tmp_path: Path) -> None:
    early, late = TcpBackend("early", host="127.0.0.2").start(), TcpBackend("late", host="127.0.0.3").start()
    try:
        hosts, wrap = _private_resolver(tmp_path, "127.0.0.1 localhost\n127.0.0.2 cp-early.test\n")
        cp_hosts = f"cp-early.test:{early.port},cp-late.test:{late.port}"
        proxy = start_proxy(cp_hosts, check="tcp", wrap=wrap)
        assert re.search(r'level=warning msg="control-plane host name does not resolve; out of the upstream '
                         rf'until its health check passes" host="?cp-late.test:{late.port}', proxy.log), proxy.log
        assert f"server cp-early.test:{early.port} " in proxy.conf
        assert "cp-late.test" not in proxy.conf
        assert {request(proxy.listen_port).split(b":")[0] for _ in range(4)} == {b"early"}

        with open(hosts, "a") as file:  # in place: the bind mount follows the inode
            file.write("127.0.0.3 cp-late.test\n")
        wait_for(lambda: f"server cp-late.test:{late.port} " in proxy.conf, timeout=15, what="cp-late.test in")
        wait_for(lambda: b"late" in {request(proxy.listen_port).split(b":")[0] for _ in range(4)},
                 timeout=10, what="traffic reaches cp-late.test")
        assert "back in the upstream" in proxy.log
    finally:
        early.stop()
        late.stop()


def test_no_name_resolving_at_all_is_a_clear_error(tmp_path: Path) -> None:
    _, wrap = _private_resolver(tmp_path, "127.0.0.1 localhost\n")
    env = {"CP_HOSTS": "cp-a.test,cp-b.test", "NGINX_PROXY_HEALTH_CHECK": "tcp"}
    result = run_sidekick([*wrap[1:], str(SIDEKICK), "nginx-proxy"], argv0=Path(wrap[0]), root=tmp_path, env=env)
    assert result.returncode == 1, result.stderr
    assert 'msg="no host in CP_HOSTS resolves (cp-a.test:6443,cp-b.test:6443): nothing to proxy to"' in \
        last_line(result.stderr)
    assert not (tmp_path / "etc/nginx/nginx.conf").exists()


def test_without_kube_ca_probes_are_unverified_and_it_is_said_once(
    start_proxy: Start, backends: list[ReadyzBackend],
) -> None:
    proxy = start_proxy(backends[0].address, with_kube_ca=False)
    wait_for(lambda: backends[0].readyz_hits >= 3, timeout=10, what="check rounds")
    assert proxy.log.count("kube-ca not found: /readyz probes do not verify the apiserver certificate") == 1
    assert "out of the upstream" not in proxy.log
