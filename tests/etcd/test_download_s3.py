"""``download --s3-backup`` and ``extractstatefile --s3-backup`` as RKE runs them, on moto over HTTPS."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from sidekick.etcd.archive import write_archive
from tests.conftest import last_line, run_sidekick
from tests.harness.etcd import EtcdServer
from tests.harness.etcd_backup import node_root, rke_s3_env, rke_s3_flags, rke_save_argv
from tests.harness.goarchive import write_go_archive
from tests.harness.pki import RkeSsl
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.integration

NAME = "c-abcde-rs-x7k2p_2024-10-04T12:00:00Z"
ENV = {**rke_s3_env(ACCESS_KEY, SECRET_KEY), "SIDEKICK_RETRY_WAIT": "0.15"}


def flags(s3: S3Server, bucket: str, folder: str = "") -> list[str]:
    assert s3.ca_path is not None
    return rke_s3_flags(s3.endpoint, bucket, ca_pem=s3.ca_path.read_bytes(), folder=folder)


def download(root: Path, s3: S3Server, bucket: str, name: str = NAME, folder: str = ""):  # type: ignore[no-untyped-def]
    """``etcd-download-backup`` Cmd for S3 (CONTRACT 3.5)."""
    argv = ["rke-etcd-backup", "etcd-backup", "download", "--name", name, *flags(s3, bucket, folder)]
    return run_sidekick(argv, root=root, env=ENV)


def upload(s3: S3Server, bucket: str, key: str, path: Path, *, sha256: str | None = None) -> None:
    metadata = {"archive-sha256": sha256 or hashlib.sha256(path.read_bytes()).hexdigest()}
    s3.client().put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), Metadata=metadata,
                           ContentType="application/zip")


@pytest.fixture
def node(tmp_path: Path, etcd_ssl: RkeSsl) -> Path:
    return node_root(tmp_path / "node", etcd_ssl)


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """Our archive of a fake snapshot and state file: (zip path, db bytes, state bytes)."""
    work = tmp_path / "work"
    work.mkdir()
    db, state = os.urandom(3 << 20), b'{"desiredState": {}}'
    (work / NAME).write_bytes(db)
    (work / "state").write_bytes(state)
    zip_path = work / f"{NAME}.zip"
    write_archive(zip_path, [(f"/backup/{NAME}", work / NAME), (f"/etc/kubernetes/{NAME}.rkestate", work / "state")])
    return zip_path, db, state


def test_save_on_one_node_download_on_another(tmp_path: Path, etcd_ssl: RkeSsl, etcd_server: EtcdServer,
                                              s3_https: S3Server) -> None:
    """The whole S3 path: the real ``save --once`` uploads, another node downloads and unzips."""
    bucket = s3_https.new_bucket()
    saver = node_root(tmp_path / "saver", etcd_ssl)
    etcd_server.put("/registry/drill/s3", "from-s3")
    saved = run_sidekick(["rke-etcd-backup", *rke_save_argv(etcd_server.endpoint, NAME, "--once",
                                                             *flags(s3_https, bucket, "cluster-a"))],
                         root=saver, env=ENV)
    assert saved.returncode == 0, saved.stderr
    restorer = node_root(tmp_path / "restorer", etcd_ssl)
    done = download(restorer, s3_https, bucket, folder="cluster-a")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(restorer / "backup")) == [NAME, f"{NAME}.zip"]
    with zipfile.ZipFile(saver / "backup" / f"{NAME}.zip") as zf:
        assert (restorer / "backup" / NAME).read_bytes() == zf.read(f"/backup/{NAME}")
    assert oct((restorer / "backup" / NAME).stat().st_mode & 0o777) == "0o600"
    assert oct((restorer / "backup" / f"{NAME}.zip").stat().st_mode & 0o777) == "0o600"
    assert ACCESS_KEY not in done.stderr and SECRET_KEY not in done.stderr


def test_download_picks_the_exact_stem_among_similar_keys(node: Path, s3_https: S3Server, archive) -> None:  # type: ignore[no-untyped-def]
    zip_path, db, _ = archive
    bucket = s3_https.new_bucket()
    decoy = zip_path.with_name("decoy.zip")
    write_go_archive(decoy, [(f"/backup/{NAME}-keepme", b"wrong")])
    upload(s3_https, bucket, f"{NAME}-keepme.zip", decoy)
    upload(s3_https, bucket, f"{NAME}.zip", zip_path)
    done = download(node, s3_https, bucket)
    assert done.returncode == 0, done.stderr
    assert (node / "backup" / NAME).read_bytes() == db


def test_a_go_archive_without_metadata_is_read(node: Path, s3_https: S3Server, tmp_path: Path) -> None:
    bucket = s3_https.new_bucket()
    go_zip = write_go_archive(tmp_path / "go.zip", [(f"/backup/{NAME}", b"go-snapshot" * 1000)])
    s3_https.client().put_object(Bucket=bucket, Key=f"{NAME}.zip", Body=go_zip.read_bytes())
    done = download(node, s3_https, bucket)
    assert done.returncode == 0, done.stderr
    assert (node / "backup" / NAME).read_bytes() == b"go-snapshot" * 1000


def test_a_tampered_object_is_refused_and_nothing_replaced(node: Path, s3_https: S3Server, archive) -> None:  # type: ignore[no-untyped-def]
    zip_path, _, _ = archive
    bucket = s3_https.new_bucket()
    upload(s3_https, bucket, f"{NAME}.zip", zip_path, sha256="0" * 64)
    (node / "backup" / NAME).write_bytes(b"previous")
    done = download(node, s3_https, bucket)
    assert done.returncode == 1
    assert "does not match its archive-sha256 metadata" in last_line(done.stderr)
    assert sorted(os.listdir(node / "backup")) == [NAME]
    assert (node / "backup" / NAME).read_bytes() == b"previous"


def test_a_missing_snapshot_is_one_line_and_not_retried(node: Path, s3_https: S3Server) -> None:
    bucket = s3_https.new_bucket()
    done = download(node, s3_https, bucket)
    assert done.returncode == 1
    assert "no backups found" in last_line(done.stderr)
    assert "retrying" not in done.stderr


def test_extractstatefile_downloads_first(node: Path, s3_https: S3Server, archive) -> None:  # type: ignore[no-untyped-def]
    zip_path, _, state = archive
    bucket = s3_https.new_bucket()
    upload(s3_https, bucket, f"folder/{NAME}.zip", zip_path)
    argv = ["rke-etcd-backup", "etcd-backup", "extractstatefile", "--name", NAME,
            "--creation=12h", "--retention=72h", *flags(s3_https, bucket, "folder")]
    done = run_sidekick(argv, root=node, env=ENV)
    assert done.returncode == 0, done.stderr
    assert (node / "tmp" / "cluster.rkestate").read_bytes() == state
    assert sorted(os.listdir(node / "backup")) == [f"{NAME}.zip"]  # the db is not unzipped for this
