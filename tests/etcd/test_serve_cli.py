"""``serve`` and ``download`` as RKE runs them: the real executable, RKE's argv, two node roots."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidekick.etcd.archive import write_archive
from tests.conftest import SIDEKICK, last_line, run_sidekick
from tests.harness.env import clean_env
from tests.harness.etcd_backup import node_root
from tests.harness.goarchive import write_go_archive
from tests.harness.pki import RkeSsl
from tests.harness.ports import free_port, port_open, wait_for

pytestmark = pytest.mark.integration

NAME = "c-abcde-rl-x7k2p_2024-10-04T12:00:00Z"
CERTS = [
    "--cacert", "/etc/kubernetes/ssl/kube-ca.pem",
    "--cert", "/etc/kubernetes/ssl/kube-node.pem",
    "--key", "/etc/kubernetes/ssl/kube-node-key.pem",
]


def serve_argv(name: str = NAME) -> list[str]:
    """``etcd-Serve-backup`` Cmd (CONTRACT 3.6)."""
    return ["rke-etcd-backup", "etcd-backup", "serve", "--name", name, *CERTS]


def download_argv(peer: str, name: str = NAME) -> list[str]:
    """``etcd-download-backup`` Cmd from a peer (CONTRACT 3.7)."""
    return ["rke-etcd-backup", "etcd-backup", "download", "--name", name, "--local-endpoint", peer, *CERTS]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class Serving:
    def __init__(self, root: Path, port: int, name: str = NAME) -> None:
        env = clean_env()
        env.update(SIDEKICK_ROOT=str(root), SIDEKICK_SERVE_ADDRESS="127.0.0.1", SIDEKICK_SERVE_PORT=str(port))
        self.port = port
        self.process = subprocess.Popen([str(SIDEKICK), *serve_argv(name)], env=env, stderr=subprocess.PIPE, text=True)

    def wait_listening(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {self.process.stderr.read() if self.process.stderr else ''}")
            return port_open(self.port)

        wait_for(ready, timeout=timeout, what="serve listening")

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=15)
        return self.process.returncode, err


@pytest.fixture
def source(tmp_path: Path, etcd_ssl: RkeSsl) -> Path:
    return node_root(tmp_path / "a", etcd_ssl)


@pytest.fixture
def peer(tmp_path: Path, etcd_ssl: RkeSsl) -> Path:
    return node_root(tmp_path / "b", etcd_ssl)


@pytest.fixture
def db(source: Path) -> bytes:
    data = os.urandom(8 << 20) + b"etcd"
    write_go_archive(source / "backup" / f"{NAME}.zip", [(f"/backup/{NAME}", data)])
    return data


@pytest.fixture
def serving(source: Path, db: bytes) -> Iterator[Serving]:
    server = Serving(source, free_port())
    server.wait_listening()
    yield server
    server.stop()


def test_serve_then_download_as_rke_runs_them(serving: Serving, source: Path, peer: Path, db: bytes) -> None:
    done = run_sidekick(download_argv("127.0.0.1"), root=peer, env={"SIDEKICK_SERVE_PORT": str(serving.port)})
    assert done.returncode == 0, done.stderr
    got = peer / "backup" / NAME
    assert got.read_bytes() == db
    assert md5(got) == md5(source / "backup" / NAME)
    assert oct(got.stat().st_mode & 0o777) == "0o600"
    assert "download done" in done.stderr
    code, err = serving.stop()
    assert code == 0
    assert "snapshot sent" in err and "subject=\"CN=system:node,O=system:nodes\"" in err
    assert "serve stopped" in last_line(err)


def test_second_start_keeps_the_file_it_verified(source: Path, tmp_path: Path) -> None:
    """A restart serves the extracted file as it is (its time to listening is a bench row)."""
    data = os.urandom(64 << 20)
    write_go_archive(source / "backup" / f"{NAME}.zip", [(f"/backup/{NAME}", data)])
    first = Serving(source, free_port())
    first.wait_listening()
    assert first.stop()[0] == 0
    extracted = os.stat(source / "backup" / NAME)
    again = Serving(source, free_port())
    again.wait_listening()
    code, err = again.stop()
    assert code == 0
    assert 'source="already verified"' in err
    kept = os.stat(source / "backup" / NAME)
    assert (kept.st_ino, kept.st_mtime_ns) == (extracted.st_ino, extracted.st_mtime_ns)


def test_second_start_loads_no_zip_reader(source: Path, db: bytes) -> None:
    """serve stays up for the whole restore: a file extracted from this very archive is known
    by the archive's identity, and the zip machinery (0.4 MiB) and hashlib are never loaded."""
    import sys

    heavy = ("zipfile", "hashlib", "sidekick.etcd.extract", "sidekick.etcd.stream", "isal")
    code = (
        "import sys\n"
        "from sidekick import log\n"
        "from sidekick.etcd import options, serve\n"
        "log.setup()\n"
        "from sidekick.host.signals import StopRequest\n"
        f"ready = serve.snapshot_to_serve(options.Options(name={NAME!r}), None, StopRequest())\n"
        f"print(ready.origin, sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    env = clean_env(SIDEKICK_ROOT=str(source))
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            for _ in range(2)]
    assert runs[0].stdout.startswith("extracted ") and "zipfile" in runs[0].stdout
    assert runs[1].stdout.strip() == "already verified []"
    assert "snapshot already extracted and verified" in runs[1].stderr
    assert (source / "backup" / NAME).read_bytes() == db


def test_serve_without_snapshot_fails_fast_with_the_reason_last(source: Path) -> None:
    done = run_sidekick(serve_argv(), root=source, env={"SIDEKICK_SERVE_PORT": str(free_port())}, timeout=10)
    assert done.returncode == 1
    assert f"snapshot {NAME} not found: neither /backup/{NAME}.zip nor /backup/{NAME} exists" in last_line(done.stderr)
    assert "level=fatal" in last_line(done.stderr)


def test_serve_on_a_taken_port_says_so(source: Path, db: bytes) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_sidekick(serve_argv(), root=source,
                            env={"SIDEKICK_SERVE_PORT": str(port), "SIDEKICK_SERVE_ADDRESS": "127.0.0.1"}, timeout=30)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in last_line(done.stderr)


def test_download_of_an_unknown_name_says_404(serving: Serving, peer: Path) -> None:
    done = run_sidekick(download_argv("127.0.0.1", name="not-there"), root=peer,
                        env={"SIDEKICK_SERVE_PORT": str(serving.port)}, timeout=60)
    assert done.returncode == 1
    assert f"snapshot not-there not found on peer 127.0.0.1:{serving.port} (HTTP 404)" in last_line(done.stderr)
    assert not (peer / "backup" / "not-there").exists()


def test_download_from_a_dead_peer_retries_then_says_why(peer: Path) -> None:
    port = free_port()
    done = run_sidekick(download_argv("127.0.0.1"), root=peer,
                        env={"SIDEKICK_SERVE_PORT": str(port), "SIDEKICK_RETRY_WAIT": "0.15"}, timeout=60)
    assert done.returncode == 1
    assert f"after 5 attempts: cannot connect to 127.0.0.1:{port}: Connection refused" in last_line(done.stderr)
    assert done.stderr.count("download attempt failed, retrying") == 4
    assert os.listdir(peer / "backup") == []


def test_extractstatefile_as_rke_runs_it(source: Path) -> None:
    state = b'{\n  "desiredState": {"rkeConfig": {}}\n}'
    write_go_archive(source / "backup" / f"{NAME}.zip",
                     [(f"/backup/{NAME}", b"db"), (f"/etc/kubernetes/{NAME}.rkestate", state)])
    done = run_sidekick(["rke-etcd-backup", "etcd-backup", "extractstatefile", "--name", NAME], root=source)
    assert done.returncode == 0, done.stderr
    assert (source / "tmp" / "cluster.rkestate").read_bytes() == state


def _temps(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".sidekick-tmp-")]


def test_sigterm_while_extracting_leaves_no_temp_file(source: Path) -> None:
    raw = source.parent / "raw"
    block = os.urandom(1 << 20)  # incompressible for deflate's 32 KiB window: a slow extraction
    with open(raw, "wb") as out:
        for _ in range(256):
            out.write(block)
    write_archive(source / "backup" / f"{NAME}.zip", [(f"/backup/{NAME}", raw)])
    server = Serving(source, free_port())
    wait_for(lambda: bool(_temps(source / "backup")) or server.process.poll() is not None, timeout=30,
             what="extraction to start")
    code, err = server.stop()
    assert code == 143, err
    assert "stopped by SIGTERM before finishing; nothing was replaced" in last_line(err)
    assert _temps(source / "backup") == []
    assert not (source / "backup" / NAME).exists()


def test_sigterm_while_downloading_leaves_no_temp_file(peer: Path, etcd_ssl: RkeSsl) -> None:
    """A peer that sends part of the body and stalls; docker stop (SIGTERM) must clean up."""
    import socket
    import ssl
    import threading

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(etcd_ssl.node_cert, etcd_ssl.node_key)
    listener = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def stall() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(4096)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n" + b"x" * (3 << 20))
            release.wait(30)

    thread = threading.Thread(target=stall, daemon=True)
    thread.start()
    stale = peer / "backup" / f".sidekick-tmp-{NAME}.0badf00d"
    stale.write_bytes(b"left by a killed run")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    env = clean_env()
    env.update(SIDEKICK_ROOT=str(peer), SIDEKICK_SERVE_PORT=str(listener.getsockname()[1]))
    process = subprocess.Popen([str(SIDEKICK), *download_argv("127.0.0.1")], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(p.stat().st_size > 0 for p in (peer / "backup").iterdir()
                             if p.name.startswith(".sidekick-tmp-") and "0badf00d" not in p.name),
                 timeout=30, what="download to start writing")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        release.set()
        listener.close()
    assert process.returncode == 143, err
    assert "stopped by SIGTERM before finishing" in last_line(err)
    assert "removed a leftover of an interrupted run" in err
    assert _temps(peer / "backup") == []
    assert not (peer / "backup" / NAME).exists()
