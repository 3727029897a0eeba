"""cert-deployer, nginx-proxy, the weave plugin deployer and RKE's `sh -c` helpers, as RKE
runs them from the image (CONTRACT 4 to 7), host paths under a temp directory."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import socketserver
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.container.docker import IMAGE, Containers, docker, running, wait_until
from tests.harness.pki import CertificateAuthority
from tests.harness.ports import free_port, port_open
from tests.harness.rke_bundle import rke_cert_env

pytestmark = pytest.mark.container


def file_name(env_key: str) -> str:
    """RKE's env name back to the file cert-deployer writes (CONTRACT 5)."""
    if env_key.startswith("KUBECFG_"):
        return "kubecfg-" + env_key[len("KUBECFG_"):].lower().replace("_", "-") + ".yaml"
    if env_key.endswith("_KEY"):
        return env_key[: -len("_KEY")].lower().replace("_", "-") + "-key.pem"
    return env_key.lower().replace("_", "-") + ".pem"


def test_cert_deployer_writes_the_bundle_and_logs_no_secret(
    tmp_path: Path, containers: Containers, kube_ca: CertificateAuthority
) -> None:
    env = rke_cert_env(kube_ca, etcd_ips=("172.26.14.216",), control=True)
    kubernetes = tmp_path / "etc/kubernetes"
    kubernetes.mkdir(parents=True)
    code, out, err = containers.run_once(
        "cert-deployer", cmd=["cert-deployer"], env=env, binds=[f"{kubernetes}:/etc/kubernetes"],
        privileged=True)
    assert code == 0, err
    ssl = kubernetes / "ssl"
    assert stat.S_IMODE(ssl.stat().st_mode) == 0o755
    expected = {file_name(key): value for key, value in env.items()}
    assert {p.name for p in ssl.iterdir()} == set(expected)
    for name, value in expected.items():
        path = ssl / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert path.read_text().strip() == value.strip(), name
    logs = out + err
    assert "BEGIN" not in logs and "PRIVATE" not in logs
    for value in env.values():
        for line in value.splitlines():
            if len(line) > 40:  # a base64 line of a certificate or key
                assert line not in logs


class _Answer(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(64)
        self.request.sendall(self.server.name.encode() + b"\n")  # type: ignore[attr-defined]


@contextlib.contextmanager
def apiservers(count: int) -> Iterator[list[str]]:
    """Stand-ins for control-plane nodes: each on its own loopback address, port 6443 as RKE
    expects (CP_HOSTS carries bare addresses), answering its own name."""
    base = f"127.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
    servers = []
    try:
        for i in range(1, count + 1):
            server = socketserver.ThreadingTCPServer((f"{base}.{i}", 6443), _Answer)
            server.daemon_threads = True
            server.name = f"{base}.{i}"  # type: ignore[attr-defined]
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            servers.append(server)
        yield [s.name for s in servers]  # type: ignore[attr-defined]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def ask(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"ping\n")
        return sock.makefile().readline().strip()


def test_nginx_proxy_passes_traffic_to_the_control_plane(containers: Containers) -> None:
    """RKE's nginx-proxy (CONTRACT 6). The listener moves off 6443 (NGINX_PROXY_LISTEN_*):
    on one machine the stand-in apiservers hold 6443 on their loopback addresses."""
    port = free_port()
    with apiservers(2) as hosts:
        cp_hosts = ",".join(hosts)
        name = containers.run(
            "nginx-proxy", entrypoint=["nginx-proxy"], cmd=[f"CP_HOSTS={cp_hosts}"],
            env={"CP_HOSTS": cp_hosts, "NGINX_PROXY_LISTEN_ADDRESS": "127.0.0.1",
                 "NGINX_PROXY_LISTEN_PORT": str(port)},
            network="host", restart="always", labels={"io.rancher.rke.container.name": "nginx-proxy"})
        wait_until(lambda: port_open(port), timeout=30, what="nginx-proxy listening")
        answers = {ask(port) for _ in range(8)}
        assert answers == set(hosts)
        assert running(name)
    logs = docker("logs", name)
    assert "level=fatal" not in logs.stderr


def test_weave_plugins_land_in_the_host_opt(tmp_path: Path, containers: Containers) -> None:
    """weave-plugins-cni.sh with the host's /opt bound at /opt (CONTRACT 7); the image's
    /opt/rke-tools volume is mounted on top of it, as Docker does."""
    host_opt = tmp_path / "opt"
    (host_opt / "cni/bin").mkdir(parents=True)
    name = containers.run("weave-plugins", entrypoint=["/opt/rke-tools/weave-plugins-cni.sh"],
                          binds=[f"{host_opt}:/opt"], privileged=True)
    plugins = [host_opt / "cni/bin/loopback", host_opt / "cni/bin/portmap"]
    wait_until(lambda: all(p.exists() for p in plugins), timeout=30, what="CNI plugins in /opt/cni/bin")
    for plugin in plugins:
        assert stat.S_IMODE(plugin.stat().st_mode) == 0o755
        assert plugin.read_bytes()[:4] == b"\x7fELF"
    assert running(name)  # it stays, like the DaemonSet's container
    docker("stop", "--time", "10", name, timeout=30)
    assert not running(name)


def test_port_listener_and_checker_lines(containers: Containers) -> None:
    """rke-*-port-listener `nc -kl -p 1337 -e echo` behind a published port, and
    rke-port-checker's `sh -c` loop: stderr empty means every port answered (CONTRACT 4)."""
    port = free_port()
    listener = containers.run("rke-cp-port-listener", cmd=["nc", "-kl", "-p", "1337", "-e", "echo"],
                              ports=[f"127.0.0.1:{port}:1337"])
    wait_until(lambda: port_open(port), timeout=30, what="the port listener")
    checker = ('for host in $HOSTS; do for port in $PORTS ; do echo "Checking host ${host} on port ${port}" >&1 & '
               'nc -w 5 -z $host $port > /dev/null || echo "${host}:${port}" >&2 & done; wait; done')
    env = {"HOSTS": "127.0.0.1", "PORTS": f"{port} {port}"}
    code, out, err = containers.run_once("rke-port-checker", cmd=["sh", "-c", checker], env=env, network="host")
    assert (code, err) == (0, "")
    assert out.count("Checking host 127.0.0.1") == 2
    assert running(listener)  # -k: still listening after the checks
    closed = free_port()
    env = {"HOSTS": "127.0.0.1", "PORTS": str(closed)}
    _, _, err = containers.run_once("rke-port-checker", cmd=["sh", "-c", checker], env=env, network="host")
    assert err == f"127.0.0.1:{closed}\n"


def test_file_deployer_line_keeps_newlines(tmp_path: Path, containers: Containers) -> None:
    """file-deployer: `echo -e "$FILE_DEPLOY"` (bash's echo, as /bin/sh) then mv and chmod."""
    kubernetes = tmp_path / "etc/kubernetes"
    kubernetes.mkdir(parents=True)
    content = 'apiVersion: v1\nkind: AdmissionConfiguration\nplugins:\n- name: "x"\n'
    line = ('t=$(mktemp); echo -e "$FILE_DEPLOY" > $t && mv $t /etc/kubernetes/admission.yaml '
            "&& chmod 600 /etc/kubernetes/admission.yaml")
    code, _, err = containers.run_once("file-deployer", cmd=["sh", "-c", line],
                                       env={"FILE_DEPLOY": content}, binds=[f"{kubernetes}:/etc/kubernetes"])
    assert code == 0, err
    written = kubernetes / "admission.yaml"
    assert written.read_text() == content + "\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert os.stat(written).st_uid == 0


def test_image_default_cmd_serves_docker_cp(containers: Containers, tmp_path: Path) -> None:
    """cert-fetcher: a container of the image with no Cmd exists only for `docker cp`."""
    kubernetes = tmp_path / "etc/kubernetes"
    (kubernetes / ".tmp").mkdir(parents=True)
    (kubernetes / ".tmp/kube-ca.pem").write_text("certificate\n")
    code, _, _ = containers.run_once("cert-fetcher", image=IMAGE, binds=[f"{kubernetes}:/etc/kubernetes"],
                                     privileged=True)
    assert code == 0
