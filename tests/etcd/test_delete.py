"""``delete`` as RKE's ``etcd-remove-snapshot`` runs it (CONTRACT 3.10), against real moto."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import last_line, run_sidekick
from tests.harness.etcd_backup import rke_s3_env
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.integration


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "node/backup").mkdir(parents=True)
    return tmp_path / "node"


def delete(root: Path, *args: str) -> tuple[int, str]:
    done = run_sidekick(["rke-etcd-backup", "etcd-backup", "delete", *args], root=root,
                        env=rke_s3_env(ACCESS_KEY, SECRET_KEY))
    return done.returncode, done.stderr


def s3_flags(server: S3Server, bucket: str, folder: str = "") -> list[str]:
    # delete gets a bare --s3-backup from RKE
    flags = ["--s3-backup", f"--s3-endpoint=http://{server.endpoint}", f"--s3-bucketName={bucket}", "--s3-region="]
    return [*flags, f"--s3-folder={folder}"] if folder else flags


def put_keys(server: S3Server, bucket: str, keys: list[str]) -> None:
    client = server.client()
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"zip")


def keys_in(server: S3Server, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in server.client().list_objects_v2(Bucket=bucket).get("Contents", []))


def files(root: Path) -> list[str]:
    return sorted(os.listdir(root / "backup"))


def test_local_delete(root: Path) -> None:
    for name in ("snap.zip", "snap", "snap2.zip", "snap-other"):
        (root / "backup" / name).write_bytes(b"x")
    code, err = delete(root, "--name", "snap")
    assert code == 0, err
    assert files(root) == ["snap-other", "snap2.zip"]
    # Deleting what is not there is not an error (the original used rm -f).
    assert delete(root, "--name", "snap")[0] == 0


def test_cleanup_only_removes_the_uncompressed_file_when_the_zip_exists(root: Path, s3_http: S3Server) -> None:
    bucket = s3_http.new_bucket()
    put_keys(s3_http, bucket, ["snap.zip", "snap"])
    (root / "backup/snap.zip").write_bytes(b"zip")
    (root / "backup/snap").write_bytes(b"db")
    code, err = delete(root, "--name", "snap", "--cleanup", *s3_flags(s3_http, bucket))
    assert code == 0, err
    assert files(root) == ["snap.zip"]
    assert keys_in(s3_http, bucket) == ["snap", "snap.zip"]


def test_cleanup_without_zip_never_deletes_s3_objects(root: Path, s3_http: S3Server) -> None:
    bucket = s3_http.new_bucket()
    put_keys(s3_http, bucket, ["snap.zip"])
    (root / "backup/snap").write_bytes(b"db")
    code, err = delete(root, "--name", "snap", "--cleanup", *s3_flags(s3_http, bucket))
    assert code == 0, err
    assert files(root) == ["snap"]  # kept: there is no archive to fall back on
    assert keys_in(s3_http, bucket) == ["snap.zip"]  # the original deleted these


def test_s3_delete_removes_only_that_snapshot(root: Path, s3_http: S3Server) -> None:
    bucket = s3_http.new_bucket()
    put_keys(s3_http, bucket, ["tiny1.zip", "tiny1", "tiny10.zip", "tiny1-keepme.zip", "f/tiny1.zip",
                               "other.zip"])
    (root / "backup/tiny1.zip").write_bytes(b"zip")
    code, err = delete(root, "--name", "tiny1", *s3_flags(s3_http, bucket))
    assert code == 0, err
    assert files(root) == []
    assert keys_in(s3_http, bucket) == ["f/tiny1.zip", "other.zip", "tiny1-keepme.zip", "tiny10.zip"]
    assert "removed backups from object store" in err


def test_s3_delete_in_folder(root: Path, s3_http: S3Server) -> None:
    bucket = s3_http.new_bucket()
    put_keys(s3_http, bucket, ["f/snap.zip", "f/snap", "snap.zip", "f/sub/snap.zip"])
    code, err = delete(root, "--name", "snap", *s3_flags(s3_http, bucket, folder="f"))
    assert code == 0, err
    assert keys_in(s3_http, bucket) == ["f/sub/snap.zip", "snap.zip"]


def test_errors_are_one_clear_line(root: Path, s3_http: S3Server) -> None:
    code, err = delete(root)
    assert code == 2 and "snapshot name is required" in last_line(err)
    code, err = delete(root, "--name", "../etc")
    assert code == 2 and "invalid snapshot name" in last_line(err)
    code, err = delete(root, "--name", "snap", *s3_flags(s3_http, "no-such-bucket"))
    assert code == 1 and "bucket no-such-bucket is not found" in last_line(err)
    assert ACCESS_KEY not in err and SECRET_KEY not in err
