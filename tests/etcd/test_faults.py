"""Every network step ends within its budget, whatever the network does (faults on loopback).

Most tests scale the budgets down (``SIDEKICK_BUDGET_SCALE``) so the same logic runs in
seconds; one runs the default budget against a black hole, as RKE would meet it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidekick.etcd.archive import write_archive
from sidekick.etcd.budgets import S3_PHASE, Budgets
from tests.conftest import SIDEKICK, last_line, run_sidekick
from tests.etcd.servers import running_server
from tests.harness.env import clean_env
from tests.harness.etcd import EtcdServer
from tests.harness.etcd_backup import node_root, rke_s3_env, rke_s3_flags, rke_save_argv
from tests.harness.faults import BlackHole, Fault, FaultyHttp
from tests.harness.pki import RkeSsl
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.integration

UPLOAD_FAILED = "failed to upload etcd snapshot file"
SCALE = 0.05  # S3 phase 10 s, a request 1.5 s
SCALED = {"SIDEKICK_BUDGET_SCALE": str(SCALE), "SIDEKICK_RETRY_WAIT": "0.3"}
S3_BOUND = S3_PHASE * SCALE + 5  # the phase, plus start-up and a snapshot of a small database


@pytest.fixture
def root(tmp_path: Path, etcd_ssl: RkeSsl) -> Path:
    return node_root(tmp_path, etcd_ssl)


def save(root: Path, endpoint: str, name: str, *extra: str, env: dict[str, str] | None = None,
         timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = run_sidekick(["rke-etcd-backup", *rke_save_argv(endpoint, name, *extra)], root=root, env=env or {},
                        timeout=timeout)
    return done, time.monotonic() - started


@pytest.fixture
def proxy_for(s3_http: S3Server) -> Iterator[object]:
    made: list[FaultyHttp] = []

    def make(rule) -> FaultyHttp:  # type: ignore[no-untyped-def]
        made.append(FaultyHttp(s3_http.port, rule))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def s3_env(**extra: str) -> dict[str, str]:
    return {**rke_s3_env(ACCESS_KEY, SECRET_KEY), **SCALED, **extra}


# --- S3 faults during save --once ---------------------------------------------------------
def test_a_put_that_is_never_answered(root: Path, etcd_server: EtcdServer, s3_http: S3Server, proxy_for) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_http.new_bucket()
    proxy = proxy_for(lambda method, path: Fault(hold=True) if method in ("PUT", "POST") else None)
    done, took = save(root, etcd_server.endpoint, "snap-silent", "--once", *rke_s3_flags(proxy.endpoint, bucket),
                      env=s3_env())
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert UPLOAD_FAILED in line and ("did not" in line or "timed out" in line), line
    assert took < S3_BOUND, took
    assert (root / "backup/snap-silent.zip").is_file()
    assert proxy.requests["PUT"] <= 4  # --s3-retries 3: four attempts at most


def test_an_s3_that_drips_one_byte_at_a_time(root: Path, etcd_server: EtcdServer, s3_http: S3Server,  # type: ignore[no-untyped-def]
                                             proxy_for) -> None:
    bucket = s3_http.new_bucket()
    proxy = proxy_for(lambda method, path: Fault(drip=0.2))
    done, took = save(root, etcd_server.endpoint, "snap-drip", "--once", *rke_s3_flags(proxy.endpoint, bucket),
                      env=s3_env())
    assert done.returncode == 1
    assert UPLOAD_FAILED in last_line(done.stderr)
    assert took < S3_BOUND, took
    assert (root / "backup/snap-drip.zip").is_file()


def test_sigterm_during_the_upload_says_the_snapshot_is_kept(root: Path, etcd_server: EtcdServer,  # type: ignore[no-untyped-def]
                                                             s3_http: S3Server, proxy_for) -> None:
    bucket = s3_http.new_bucket()
    proxy = proxy_for(lambda method, path: Fault(hold=True) if method in ("PUT", "POST") else None)
    env = clean_env()
    env.update(SIDEKICK_ROOT=str(root), **rke_s3_env(ACCESS_KEY, SECRET_KEY))  # default budgets
    argv = [str(SIDEKICK), "rke-etcd-backup", *rke_save_argv(etcd_server.endpoint, "snap-term", "--once",
                                                             *rke_s3_flags(proxy.endpoint, bucket))]
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proxy.requests["PUT"] == 0:
            time.sleep(0.05)
        assert proxy.requests["PUT"] == 1
        time.sleep(1)  # the upload is under way, and silent
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _, err = process.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
    assert took < 5, took
    assert process.returncode == 143, err
    line = last_line(err)
    assert "snapshot kept locally at /backup/snap-term.zip" in line and UPLOAD_FAILED in line, line
    assert (root / "backup/snap-term.zip").is_file()


def test_the_default_budget_against_a_black_hole_fits_rke(root: Path, etcd_server: EtcdServer,  # type: ignore[no-untyped-def]
                                                          s3_http: S3Server) -> None:
    """RKE gives the one-shot container 300 s; the default budget ends it well before."""
    hole = BlackHole()
    try:
        done, took = save(root, etcd_server.endpoint, "snap-hole", "--once",
                          *rke_s3_flags(f"http://{hole.endpoint}", "bucket"), env=rke_s3_env(ACCESS_KEY, SECRET_KEY))
    finally:
        hole.close()
    assert done.returncode == 1
    assert UPLOAD_FAILED in last_line(done.stderr)
    assert took < 240, took
    assert (root / "backup/snap-hole.zip").is_file()


# --- S3 faults during download --------------------------------------------------------------
@pytest.fixture
def stored(tmp_path: Path, s3_http: S3Server) -> tuple[str, str]:
    """A bucket holding one snapshot archive: (bucket, key)."""
    name = "snap-stored"
    raw = tmp_path / "raw"
    raw.write_bytes(os.urandom(1 << 20))
    archive = write_archive(tmp_path / f"{name}.zip", [(f"/backup/{name}", raw)])
    bucket = s3_http.new_bucket()
    s3_http.client().put_object(Bucket=bucket, Key=f"{name}.zip", Body=archive.path.read_bytes(),
                                Metadata={"archive-sha256": archive.sha256})
    return bucket, f"{name}.zip"


@pytest.mark.parametrize("fault", [Fault(status=503), Fault(status=500), Fault(reset=200)], ids=["503", "500", "reset"])
def test_requests_of_one_download_are_bounded(root: Path, stored: tuple[str, str], proxy_for, fault: Fault) -> None:  # type: ignore[no-untyped-def]
    bucket, key = stored
    object_path = f"/{bucket}/{key}"

    def rule(method: str, path: str) -> Fault | None:
        return fault if method == "GET" and urllib.parse.urlsplit(path).path == object_path else None

    proxy = proxy_for(rule)
    started = time.monotonic()
    done = run_sidekick(["rke-etcd-backup", "etcd-backup", "download", "--name", "snap-stored",
                         *rke_s3_flags(proxy.endpoint, bucket)], root=root, env=s3_env())
    took = time.monotonic() - started
    assert done.returncode == 1
    assert "snap-stored" in last_line(done.stderr)
    # download: 5 attempts (4 retries) of one GET each; a HEAD first; one listing.
    assert proxy.requests["GET"] - 1 <= 5, proxy.requests
    assert proxy.requests["HEAD"] <= 2, proxy.requests
    assert took < S3_BOUND, took
    assert sorted(os.listdir(root / "backup")) == []


# --- etcd and the command line ----------------------------------------------------------------
def test_etcd_unreachable_with_default_flags_ends_within_45s(root: Path) -> None:
    hole = BlackHole(accept=False)  # a slow accept: connections queue, nobody answers
    try:
        done, took = save(root, hole.endpoint, "snap-noetcd", "--once", env={})
    finally:
        hole.close()
    assert done.returncode == 1
    assert "failed to take etcd snapshot snap-noetcd after" in last_line(done.stderr)
    assert took < 45, took
    assert [n for n in os.listdir(root / "backup") if n != ".sidekick"] == []


@pytest.mark.parametrize("flag", ["--backup-retries=10000000000", "--s3-retries=101"])
def test_absurd_retry_counts_are_refused_at_once(root: Path, flag: str) -> None:
    done, took = save(root, "127.0.0.1:1", "snap", "--once", flag)
    assert done.returncode == 2 and "retries" in last_line(done.stderr)
    assert took < 10


def test_a_name_too_long_for_the_filesystem_is_refused_up_front(root: Path) -> None:
    done, _ = save(root, "127.0.0.1:1", "n" * 230, "--once")
    assert done.returncode == 2
    assert "at most 223 fit in file names on /backup" in last_line(done.stderr)
    assert os.listdir(root / "backup") == []


def test_backup_that_is_a_file_or_read_only_is_one_clear_line(root: Path, tmp_path: Path) -> None:
    backup = root / "backup"
    backup.rmdir()
    backup.write_text("not a directory")
    done, _ = save(root, "127.0.0.1:1", "snap", "--once")
    assert done.returncode == 1 and "/backup: not a directory" in last_line(done.stderr)
    assert "Traceback" not in done.stderr and "OSError" not in done.stderr

    backup.unlink()
    backup.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(backup)], check=True)
    try:
        done, _ = save(root, "127.0.0.1:1", "snap", "--once")
    finally:
        subprocess.run(["umount", str(backup)], check=True)
    assert done.returncode == 1 and "cannot write to /backup: read-only file system" in last_line(done.stderr)


# --- the peer transfer ------------------------------------------------------------------------
def test_a_stalled_peer_ends_with_a_clear_line_and_progress(tmp_path: Path, etcd_ssl: RkeSsl) -> None:
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(etcd_ssl.node_cert, etcd_ssl.node_key)
    listener = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def stall() -> None:
        while not release.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(4096)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 100_000)
                while not release.wait(0.5):  # a byte now and then: no read ever times out
                    tls.sendall(b"x")

    threading.Thread(target=stall, daemon=True).start()
    peer = node_root(tmp_path / "peer", etcd_ssl)
    started = time.monotonic()
    try:
        done = run_sidekick(["rke-etcd-backup", "etcd-backup", "download", "--name", "snap",
                             "--local-endpoint", "127.0.0.1", "--cacert", "/etc/kubernetes/ssl/kube-ca.pem",
                             "--cert", "/etc/kubernetes/ssl/kube-node.pem", "--key", "/etc/kubernetes/ssl/kube-node-key.pem"],
                            root=peer, env={**SCALED, "SIDEKICK_SERVE_PORT": str(listener.getsockname()[1])}, timeout=120)
    finally:
        release.set()
        listener.close()
    took = time.monotonic() - started
    budget = Budgets(scale=SCALE)
    assert took < budget.seconds(200) + budget.for_bytes(10_000_000) + 10, took
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert "failed to download snapshot snap" in line and "did not" in line, line
    assert "download in progress" in done.stderr
    assert not (peer / "backup" / "snap").exists()


def test_a_download_never_removes_another_snapshots_temp(tmp_path: Path, etcd_ssl: RkeSsl,  # type: ignore[no-untyped-def]
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source"
    (source / "backup").mkdir(parents=True)
    (source / "backup" / "srv1").write_bytes(os.urandom(1 << 16))
    monkeypatch.setenv("SIDEKICK_ROOT", str(source))
    node = node_root(tmp_path / "node", etcd_ssl)
    in_flight = node / "backup" / ".sidekick-tmp-srv1.x.0badf00d"  # a save --name srv1.x at work
    in_flight.write_bytes(b"partial")
    stale = node / "backup" / ".sidekick-tmp-srv1.0badcafe"  # a download of srv1 killed an hour ago
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    with running_server("srv1", etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key) as srv:
        done = run_sidekick(["rke-etcd-backup", "etcd-backup", "download", "--name", "srv1", "--local-endpoint",
                             "127.0.0.1", "--cacert", "/etc/kubernetes/ssl/kube-ca.pem", "--cert",
                             "/etc/kubernetes/ssl/kube-node.pem", "--key", "/etc/kubernetes/ssl/kube-node-key.pem"],
                            root=node, env={"SIDEKICK_SERVE_PORT": str(srv.port)})
    assert done.returncode == 0, done.stderr
    assert in_flight.exists() and not stale.exists()
    assert hashlib.sha256((node / "backup/srv1").read_bytes()).digest() == \
        hashlib.sha256((source / "backup/srv1").read_bytes()).digest()
