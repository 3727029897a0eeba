"""Shared fixtures: the no-surprises guard, the tests' PKI, and the real servers."""

from __future__ import annotations

import ipaddress
import os
import posix
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.harness.env import clean_env
from tests.harness.etcd import EtcdServer
from tests.harness.pki import CertificateAuthority, RkeSsl
from tests.harness.s3 import S3Server

SIDEKICK = Path(sys.executable).with_name("sidekick")
# scripts/test's second pass: the Pythons the tests start (the tools, and the servers they
# talk to) run at this optimization level, the image's -OO; this process keeps its asserts.
if os.environ.get("SIDEKICK_TEST_TOOL_OPTIMIZE"):
    os.environ["PYTHONOPTIMIZE"] = os.environ["SIDEKICK_TEST_TOOL_OPTIMIZE"]
REAL_MARKERS = {"integration", "netns", "container"}


# --- the guard -----------------------------------------------------------------------
def _loopback(address: object) -> bool:
    if not isinstance(address, tuple):
        return True  # AF_UNIX paths: our own fake servers (Docker socket stand-ins)
    host = str(address[0])
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_surprises(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests may not spawn processes or exec; no test may leave the machine.

    Integration tests may run programs and talk to loopback; only ``netns`` tests may reach
    the addresses of the namespaces they built.
    """
    markers = {m.name for m in request.node.iter_markers()}
    if "netns" not in markers:
        real_connect = socket.socket.connect
        real_connect_ex = socket.socket.connect_ex

        def check(address: object) -> None:
            if not _loopback(address):
                raise AssertionError(f"unexpected outbound connection to {address!r}")

        def connect(self: socket.socket, address: object) -> None:
            check(address)
            return real_connect(self, address)  # type: ignore[arg-type]

        def connect_ex(self: socket.socket, address: object) -> int:
            check(address)
            return real_connect_ex(self, address)  # type: ignore[arg-type]

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    if not markers & REAL_MARKERS:

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"unexpected subprocess/exec in a unit test: {args[:2]!r}")

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
        # posix too: os re-exports its functions, and the entrypoint's fast path calls posix.
        for module in (os, posix):
            for name in ("execv", "execve", "execvp", "execvpe", "fork"):
                if hasattr(module, name):
                    monkeypatch.setattr(module, name, refuse)


# --- running the real CLI ------------------------------------------------------------
def run_sidekick(
    args: Sequence[str],
    *,
    root: Path | None = None,
    env: dict[str, str] | None = None,
    argv0: Path | None = None,
    timeout: float = 120,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the installed executable (or a link to it named ``argv0``) as RKE would."""
    full_env = clean_env()
    if root is not None:
        full_env["SIDEKICK_ROOT"] = str(root)
    full_env.update(env or {})
    exe = str(argv0 or SIDEKICK)
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, env=full_env, timeout=timeout, input=input
    )


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture
def tool_link(tmp_path: Path):  # type: ignore[no-untyped-def]
    """``tool_link("entrypoint.sh")`` -> a symlink of that name to the executable."""

    def make(name: str) -> Path:
        link = tmp_path / "bin" / name
        link.parent.mkdir(exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(SIDEKICK)
        return link

    return make


# --- PKI and servers ------------------------------------------------------------------
@pytest.fixture(scope="session")
def kube_ca() -> CertificateAuthority:
    return CertificateAuthority("kube-ca")


@pytest.fixture(scope="session")
def etcd_ssl(tmp_path_factory: pytest.TempPathFactory, kube_ca: CertificateAuthority) -> RkeSsl:
    return RkeSsl.create(tmp_path_factory.mktemp("etcd-ssl"), kube_ca, "127.0.0.1")


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory, etcd_ssl: RkeSsl) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd"), etcd_ssl).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3-http")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3-https"), tls_ca=CertificateAuthority("s3-test-ca")).start()
    yield server
    server.stop()
