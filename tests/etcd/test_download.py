"""``download`` from a peer: verified, resumed, retried, and never a half file in place."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidekick.errors import SidekickError
from sidekick.etcd import download, restore, serve, verified
from sidekick.etcd.budgets import Budgets
from sidekick.etcd.download import Peer, parse_content_range, repr_digest_sha256
from sidekick.etcd.options import Options
from sidekick.host.files import TEMP_PREFIX
from tests.etcd.servers import captured_logs, running_server
from tests.harness.env import clean_env
from tests.harness.pki import RkeSsl
from tests.harness.ports import free_port
from tests.harness.stops import RecordingStop, fast_policy

NAME = "2024-10-04T12:00:00Z_etcd"


@pytest.fixture
def nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path, bytes]]:
    """(source root, destination root, snapshot bytes); SIDEKICK_ROOT is the source first."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for root in (src, dst):
        (root / "backup").mkdir(parents=True)
    data = os.urandom(5 << 20) + b"end"
    (src / "backup" / NAME).write_bytes(data)
    monkeypatch.setenv("SIDEKICK_ROOT", str(src))
    yield src, dst, data


def pull(dst: Path, port: int, ssl_: RkeSsl, monkeypatch: pytest.MonkeyPatch, **kw: object) -> verified.Digest:
    monkeypatch.setenv("SIDEKICK_ROOT", str(dst))
    stop = RecordingStop()
    stop.waits = kw.pop("sleeps", [])  # type: ignore[assignment]
    return download.download_from_peer(
        NAME, "127.0.0.1", cacert=ssl_.cacert, cert=ssl_.node_cert, key=ssl_.node_key, port=port,
        budgets=Budgets(), stop=stop, policy=fast_policy(int(kw.pop("retries", 4))),  # type: ignore[call-overload]
    )


def no_leftovers(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_downloads_verifies_and_records(nodes, etcd_ssl: RkeSsl, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _src, dst, data = nodes
    with running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key,
                        sha256=hashlib.sha256(data).hexdigest()) as srv:
        digest = pull(dst, srv.port, etcd_ssl, monkeypatch)
    out = dst / "backup" / NAME
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    assert verified.recall(out) == digest
    assert no_leftovers(dst / "backup")


def test_a_server_that_announces_no_digest_is_checked_by_size(nodes, etcd_ssl: RkeSsl, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _src, dst, data = nodes
    with running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key, sha256=None) as srv:
        digest = pull(dst, srv.port, etcd_ssl, monkeypatch)
    assert digest.size == len(data) and (dst / "backup" / NAME).read_bytes() == data


def test_a_tampered_transfer_is_refused_and_the_old_file_kept(nodes, etcd_ssl: RkeSsl, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _src, dst, _data = nodes
    (dst / "backup" / NAME).write_bytes(b"previous snapshot")
    with (
        running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key, sha256="ab" * 32) as srv,
        pytest.raises(SidekickError, match="does not match the SHA-256 the peer announced"),
    ):
        pull(dst, srv.port, etcd_ssl, monkeypatch)
    assert (dst / "backup" / NAME).read_bytes() == b"previous snapshot"
    assert no_leftovers(dst / "backup")


def test_404_is_reported_at_once_without_retries(nodes, etcd_ssl: RkeSsl, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _src, dst, _ = nodes
    (dst / "backup" / NAME).write_bytes(b"previous")
    sleeps: list[float] = []
    with running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key) as srv:
        monkeypatch.setenv("SIDEKICK_ROOT", str(dst))
        with pytest.raises(SidekickError, match=rf"snapshot other not found on peer 127.0.0.1:{srv.port} \(HTTP 404\)"):
            download.download_from_peer("other", "127.0.0.1", cacert=etcd_ssl.cacert, cert=etcd_ssl.node_cert,
                                        key=etcd_ssl.node_key, port=srv.port, budgets=Budgets(),
                                        stop=RecordingStop(sleeps.append), policy=fast_policy())
    assert sleeps == []
    assert (dst / "backup" / NAME).read_bytes() == b"previous"
    assert not (dst / "backup" / "other").exists()


def test_unreachable_peer_is_retried_with_backoff(nodes, etcd_ssl: RkeSsl, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, dst, _ = nodes
    sleeps: list[float] = []
    port = free_port()
    with pytest.raises(SidekickError, match=rf"after 4 attempts: cannot connect to 127.0.0.1:{port}: Connection refused"):
        pull(dst, port, etcd_ssl, monkeypatch, retries=3, sleeps=sleeps)
    assert sleeps == [0.01, 0.02, 0.02]
    assert not (dst / "backup" / NAME).exists()
    assert no_leftovers(dst / "backup")


def test_a_broken_transfer_resumes_where_it_stopped(
    nodes, etcd_ssl: RkeSsl, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    _src, dst, data = nodes
    real_chunks = serve._chunks
    calls: list[tuple[int, int]] = []

    def cut_first(source, start, length):  # type: ignore[no-untyped-def]
        calls.append((start, length))
        sent = 0
        for view in real_chunks(source, start, length):
            if len(calls) == 1 and sent >= 2 << 20:
                return  # the first transfer breaks off after 2 MiB
            sent += len(view)
            yield view

    monkeypatch.setattr(serve, "_chunks", cut_first)
    with captured_logs(caplog), running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key) as srv:
        digest = pull(dst, srv.port, etcd_ssl, monkeypatch)
    assert (dst / "backup" / NAME).read_bytes() == data
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    assert calls[0] == (0, len(data))
    assert calls[1][0] >= 2 << 20 and sum(calls[1]) == len(data)  # only the rest was asked for
    assert any(r.getMessage() == "download attempt failed, retrying" for r in caplog.records)


def test_a_transfer_broken_at_an_odd_byte_resumes_and_verifies(
    nodes, etcd_ssl: RkeSsl, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """The first attempt ends 100 bytes into a 1 MiB buffer: the resumed transfer continues at
    an offset no direct write can take, and the file and its digest are still exact."""
    _src, dst, data = nodes
    real_chunks = serve._chunks
    calls: list[tuple[int, int]] = []

    def cut_first(source, start, length):  # type: ignore[no-untyped-def]
        calls.append((start, length))
        for i, view in enumerate(real_chunks(source, start, length)):
            if len(calls) == 1 and i == 3:
                yield view[:100]
                return
            yield view

    monkeypatch.setattr(serve, "_chunks", cut_first)
    with running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key,
                        sha256=hashlib.sha256(data).hexdigest()) as srv:
        digest = pull(dst, srv.port, etcd_ssl, monkeypatch)
    assert calls[1][0] % 4096 != 0  # the resume really started at an unaligned offset
    assert (dst / "backup" / NAME).read_bytes() == data
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    assert no_leftovers(dst / "backup")


def test_a_file_that_changed_between_attempts_is_fetched_again_whole(
    nodes, etcd_ssl: RkeSsl, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    src, dst, data = nodes
    real_chunks = serve._chunks
    calls: list[int] = []
    new = os.urandom(len(data))
    replaced = src / "backup" / f"{NAME}.new"
    replaced.write_bytes(new)

    def cut_first(source, start, length):  # type: ignore[no-untyped-def]
        calls.append(start)
        sent = 0
        for view in real_chunks(source, start, length):
            if len(calls) == 1 and sent >= 1 << 20:
                return
            sent += len(view)
            yield view

    monkeypatch.setattr(serve, "_chunks", cut_first)
    with running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key, sha256=None) as srv:

        def replace_file(_delay: float) -> None:  # between attempts: a new file, a new ETag
            srv.resource = serve.Resource.of(NAME, replaced, None)

        monkeypatch.setenv("SIDEKICK_ROOT", str(dst))
        digest = download.download_from_peer(
            NAME, "127.0.0.1", cacert=etcd_ssl.cacert, cert=etcd_ssl.node_cert, key=etcd_ssl.node_key,
            port=srv.port, budgets=Budgets(), stop=RecordingStop(replace_file), policy=fast_policy(),
        )
    assert (dst / "backup" / NAME).read_bytes() == new
    assert digest.sha256 == hashlib.sha256(new).hexdigest()
    assert calls[0] == 0 and calls[-1] == 0  # If-Range failed, so the new file came whole


def test_run_download_needs_a_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    with pytest.raises(restore.UsageError, match=r"--local-endpoint .* or --s3-backup"):
        restore.run_download(Options(command="download", name=NAME))
    with pytest.raises(restore.UsageError, match="--cacert is required"):
        restore.run_download(Options(command="download", name=NAME, local_endpoint="10.0.0.1"))
    with pytest.raises(restore.UsageError, match="--name is required"):
        restore.run_download(Options(command="download"))


# --- pure parts -------------------------------------------------------------------------
def test_peer_url() -> None:
    assert Peer("10.0.0.1", 2379, "rke_etcd_snapshot_2024-10-04T14:00:00+02:00").url == (
        "https://10.0.0.1:2379/rke_etcd_snapshot_2024-10-04T14:00:00+02:00"
    )
    assert Peer("fd00::1", 2379, "a b").url == "https://[fd00::1]:2379/a%20b"


def test_repr_digest() -> None:
    digest = hashlib.sha256(b"x").digest()
    import base64

    value = base64.b64encode(digest).decode()
    assert repr_digest_sha256(f"sha-256=:{value}:") == digest.hex()
    assert repr_digest_sha256(f"sha-512=:abc:, sha-256=:{value}:") == digest.hex()
    assert repr_digest_sha256("sha-256=:notbase64!:") is None
    assert repr_digest_sha256(None) is None
    assert repr_digest_sha256("sha-256=:YQ==:") is None  # not 32 bytes


def test_content_range() -> None:
    assert parse_content_range("bytes 10-19/100") == (10, 19, 100)
    assert parse_content_range("bytes */100") is None
    assert parse_content_range(None) is None


def test_a_verified_identical_copy_is_not_downloaded_again(
    nodes, etcd_ssl: RkeSsl, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    _, dst, data = nodes
    bodies: list[int] = []
    real = serve.SnapshotHandler._send_body

    def counting(self, *args):  # type: ignore[no-untyped-def]
        bodies.append(1)
        return real(self, *args)

    monkeypatch.setattr(serve.SnapshotHandler, "_send_body", counting)
    with running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key,
                        sha256=hashlib.sha256(data).hexdigest()) as srv:
        first = pull(dst, srv.port, etcd_ssl, monkeypatch)
        before = (dst / "backup" / NAME).stat()
        with captured_logs(caplog):
            again = pull(dst, srv.port, etcd_ssl, monkeypatch)
    after = (dst / "backup" / NAME).stat()
    assert again == first
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert any("not downloaded again" in r.getMessage() for r in caplog.records)
    assert bodies == [1]  # the second run only asked HEAD


def test_a_verified_copy_of_another_snapshot_is_replaced(nodes, etcd_ssl: RkeSsl, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, dst, data = nodes
    old = os.urandom(1000)
    (dst / "backup" / NAME).write_bytes(old)
    verified.record(dst / "backup" / NAME, verified.Digest(len(old), hashlib.sha256(old).hexdigest()))
    with running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key,
                        sha256=hashlib.sha256(data).hexdigest()) as srv:
        pull(dst, srv.port, etcd_ssl, monkeypatch)
    assert (dst / "backup" / NAME).read_bytes() == data


def test_a_full_disk_fails_before_the_transfer(nodes, etcd_ssl: RkeSsl, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, dst, _ = nodes
    import errno

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    sleeps: list[float] = []
    with (
        running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key) as srv,
        pytest.raises(SidekickError, match=r"not enough space in /backup for the \d+ byte snapshot"),
    ):
        pull(dst, srv.port, etcd_ssl, monkeypatch, sleeps=sleeps)
    assert sleeps == []
    assert list((dst / "backup").iterdir()) == []


def test_a_write_error_is_not_retried(nodes, etcd_ssl: RkeSsl, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, dst, _ = nodes
    import errno

    from sidekick.etcd import stream

    def failing_write(fd: int, data: object) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(stream.os, "write", failing_write)
    sleeps: list[float] = []
    with (
        running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key) as srv,
        pytest.raises(SidekickError, match="writing the snapshot failed: Input/output error"),
    ):
        pull(dst, srv.port, etcd_ssl, monkeypatch, sleeps=sleeps)
    assert sleeps == []
    assert list((dst / "backup").iterdir()) == []


@pytest.mark.integration
def test_the_peer_download_loads_neither_s3_nor_zip_nor_cryptography() -> None:
    """Its peak RSS is mostly what it imports: the S3 client, the zip machinery, age and
    cryptography's verifier belong to other commands."""
    heavy = ("cryptography", "boto3", "botocore", "zipfile", "isal", "pyrage", "sidekick.etcd.s3",
             "sidekick.etcd.extract", "sidekick.etcd.crypto", "sidekick.etcd.archive")
    code = (
        "import sys\n"
        "import sidekick.etcd.cli, sidekick.etcd.restore, sidekick.etcd.download\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), check=True)
    assert out.stdout.strip() == "[]"
