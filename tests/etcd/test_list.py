"""``list``: local rows from /backup, S3 rows from moto, the last verify and the rolling status;
the JSON validated against docs/list-schema.json; S3 down gives the partial exit code."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from pathlib import Path

import jsonschema
import pytest

from sidekick.etcd import cli, trials
from sidekick.etcd.archive import write_archive
from sidekick.etcd.facts import SnapshotFacts
from sidekick.etcd.listing import EXIT_PARTIAL
from sidekick.etcd.telemetry import Telemetry
from tests.conftest import run_sidekick
from tests.harness.etcd_backup import rke_s3_env
from tests.harness.ports import free_port
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "list-schema.json").read_text())
OLD = "c-list_2026-11-30T00:00:00Z"
NEW = "c-list_2026-12-01T00:00:00Z"
LEGACY = "legacy-raw"


def make_archive(backup: Path, name: str, *, revision: int, keys: int, mtime: float) -> SnapshotFacts:
    """An archive as save writes it: the manifest carries the recorded facts."""
    db = os.urandom(4096) + name.encode()
    work = backup.parent / "work"
    work.mkdir(exist_ok=True)
    (work / name).write_bytes(db)
    facts = SnapshotFacts(revision=revision, keys=keys, total_keys=keys * 2, etcd_hash=1234, size=len(db),
                          sha256=hashlib.sha256(db).hexdigest(), version="0.1.0")
    write_archive(backup / f"{name}.zip", [(f"/backup/{name}", work / name)], facts=lambda _: facts.to_manifest())
    os.utime(backup / f"{name}.zip", (mtime, mtime))
    return facts


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    backup = tmp_path / "node" / "backup"
    backup.mkdir(parents=True)
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path / "node"))
    return tmp_path / "node"


@pytest.fixture
def populated(root: Path) -> dict[str, SnapshotFacts]:
    backup = root / "backup"
    now = time.time()
    facts = {OLD: make_archive(backup, OLD, revision=10, keys=5, mtime=now - 86400),
             NEW: make_archive(backup, NEW, revision=20, keys=7, mtime=now - 60)}
    (backup / LEGACY).write_bytes(b"raw snapshot of an old rke-tools")
    os.utime(backup / LEGACY, (now - 7 * 86400, now - 7 * 86400))
    trials.record(trials.Trial(NEW, True, "2026-12-01T00:01:00Z", "local", 1.5, facts[NEW].sha256, 20, 7))
    trials.record(trials.Trial(OLD, False, "2026-12-01T00:02:00Z", "s3", 0.2, facts[OLD].sha256, 10, 5,
                               "the snapshot is corrupt: snapshot check failed"))
    with Telemetry(address=None, creation_period=dt.timedelta(minutes=5)) as telemetry:
        telemetry.start()
        telemetry.stage_succeeded("snapshot", seconds=1.0, size=1000)
    return facts


def run_list(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["etcd-backup", "list", *args])
    return code, capsys.readouterr().out


def test_json_lists_local_snapshots_with_facts_verify_and_status(
        populated: dict[str, SnapshotFacts], capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_list(capsys, "--output", "json")

    assert code == 0
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    assert doc["complete"] is True and doc["sources"]["s3"] is None
    assert [row["name"] for row in doc["snapshots"]] == [LEGACY, OLD, NEW]  # oldest first
    legacy, old, new = doc["snapshots"]
    assert legacy["local"]["format"] == "raw" and legacy["sha256"] is None and legacy["verified"] is None
    assert new["where"] == "local" and new["revision"] == 20 and new["keys"] == 7
    assert new["sha256"] == populated[NEW].sha256 and new["sidekick_version"] == "0.1.0"
    assert new["verified"]["ok"] is True and new["verified"]["current"] is True
    assert old["verified"]["ok"] is False and "corrupt" in old["verified"]["cause"]
    assert doc["status"]["healthy"] is True and doc["status"]["stages"]["snapshot"]["last_success"]
    assert all(not row["name"].startswith(".") for row in doc["snapshots"])  # .sidekick is no snapshot


def test_table_for_people(populated: dict[str, SnapshotFacts], capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_list(capsys)

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "WHERE", "SIZE", "CREATED", "SHA256", "REVISION", "KEYS", "VERIFIED"]
    new = next(line for line in lines if line.startswith(NEW))
    assert populated[NEW].sha256 is not None and populated[NEW].sha256[:12] in new
    assert " 20 " in new and "ok 2026-12-01T00:01:00Z local" in new
    assert f"verify of {OLD} failed: the snapshot is corrupt" in out
    assert "rolling save: healthy" in out


def test_empty_backup_dir_is_an_empty_valid_listing(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_list(capsys, "--output=json")
    assert code == 0
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    assert doc["snapshots"] == [] and doc["status"] is None


def s3_args(server: S3Server, bucket: str) -> list[str]:
    return ["--s3-backup", f"--s3-endpoint=http://{server.endpoint}", f"--s3-bucketName={bucket}",
            "--s3-folder=cluster-a"]


@pytest.mark.integration
def test_s3_rows_merge_with_local_ones(populated: dict[str, SnapshotFacts], root: Path, s3_http: S3Server) -> None:
    bucket = s3_http.new_bucket()
    client = s3_http.client()
    client.put_object(Bucket=bucket, Key=f"cluster-a/{NEW}.zip", Body=(root / f"backup/{NEW}.zip").read_bytes())
    only_s3 = SnapshotFacts(revision=99, keys=42, sha256="ab" * 32)
    client.put_object(Bucket=bucket, Key="cluster-a/c-list_2026-12-02T00:00:00Z.zip", Body=b"zip",
                      Metadata={**only_s3.to_metadata(), "archive-sha256": "cd" * 32})
    client.put_object(Bucket=bucket, Key="cluster-a/nested/other.zip", Body=b"not in the folder's top level")
    client.put_object(Bucket=bucket, Key="elsewhere.zip", Body=b"outside the folder")

    plain = run_sidekick(["rke-etcd-backup", "etcd-backup", "list", "--output", "json", *s3_args(s3_http, bucket)],
                         root=root, env=rke_s3_env(ACCESS_KEY, SECRET_KEY))
    detailed = run_sidekick(["rke-etcd-backup", "etcd-backup", "list", "--output", "json", "--details",
                             *s3_args(s3_http, bucket)], root=root, env=rke_s3_env(ACCESS_KEY, SECRET_KEY))

    assert plain.returncode == 0, plain.stderr
    doc = json.loads(plain.stdout)
    jsonschema.validate(doc, SCHEMA)
    rows = {row["name"]: row for row in doc["snapshots"]}
    assert set(rows) == {LEGACY, OLD, NEW, "c-list_2026-12-02T00:00:00Z"}
    assert rows[NEW]["where"] == "both" and rows[NEW]["revision"] == 20 and rows[NEW]["s3"]["key"] == f"cluster-a/{NEW}.zip"
    assert rows[OLD]["where"] == "local"
    s3_only = rows["c-list_2026-12-02T00:00:00Z"]
    assert s3_only["where"] == "s3" and s3_only["revision"] is None  # no HEAD without --details
    assert doc["sources"]["s3"] == {"ok": True, "error": None, "details": False, "bucket": bucket,
                                    "folder": "cluster-a", "endpoint": f"http://{s3_http.endpoint}", "count": 2}
    assert detailed.returncode == 0, detailed.stderr
    doc = json.loads(detailed.stdout)
    jsonschema.validate(doc, SCHEMA)
    s3_only = next(row for row in doc["snapshots"] if row["name"] == "c-list_2026-12-02T00:00:00Z")
    assert (s3_only["revision"], s3_only["keys"], s3_only["sha256"]) == (99, 42, "ab" * 32)
    assert s3_only["s3"]["archive_sha256"] == "cd" * 32


@pytest.mark.integration
@pytest.mark.parametrize("output", ["json", "table"])
def test_s3_down_still_lists_local_rows_and_exits_partial(populated: dict[str, SnapshotFacts], root: Path,
                                                          output: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    done = run_sidekick(["rke-etcd-backup", "etcd-backup", "list", f"--output={output}", "--s3-backup",
                         f"--s3-endpoint={dead}", "--s3-bucketName=snaps"], root=root,
                        env={**rke_s3_env(ACCESS_KEY, SECRET_KEY), "SIDEKICK_RETRY_WAIT": "0"}, timeout=90)

    assert done.returncode == EXIT_PARTIAL, done.stderr
    assert "Traceback" not in done.stderr
    if output == "json":
        doc = json.loads(done.stdout)
        jsonschema.validate(doc, SCHEMA)
        assert doc["complete"] is False
        assert doc["sources"]["s3"]["ok"] is False and "cannot reach S3" in doc["sources"]["s3"]["error"]
        assert {row["name"] for row in doc["snapshots"]} == {LEGACY, OLD, NEW}
    else:
        assert NEW in done.stdout and OLD in done.stdout
        assert "S3 NOT LISTED (partial listing): " in done.stdout
    assert SECRET_KEY not in done.stdout + done.stderr


def test_verify_records_are_bounded(root: Path) -> None:
    for i in range(5):
        trials.record(trials.Trial(f"snap-{i}", True, "2026-12-01T00:00:00Z", "local", 1.0))
        stamp = time.time() - 100 + i
        os.utime(trials.record_dir() / f"snap-{i}.json", (stamp, stamp))
    removed = trials.trim(trials.record_dir(), keep=3)
    assert sorted(p.name for p in removed) == ["snap-0.json", "snap-1.json"]
    assert sorted(trials.recall_all()) == ["snap-2", "snap-3", "snap-4"]
