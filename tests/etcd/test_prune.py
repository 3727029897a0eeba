"""``prune`` as an operator runs it: the dry run's set is exactly what a real run deletes,
locked S3 objects are skipped with one warning, and prune never runs beside a save."""

from __future__ import annotations

import datetime as dt
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sidekick.etcd.retention import rolling_name
from tests.conftest import last_line, run_sidekick
from tests.harness.etcd_backup import rke_s3_env, rke_s3_flags
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.integration

FOLDER = "cluster-a"


def history(now: dt.datetime, count: int) -> list[str]:
    """Rolling names every 5 minutes back from ``now`` (a day is 288)."""
    return [f"{rolling_name(now - dt.timedelta(minutes=5 * i))}.zip" for i in range(count)]


def prune(root: Path, s3: S3Server, bucket: str, *flags: str) -> tuple[int, str, str]:
    done = run_sidekick(["rke-etcd-backup", "etcd-backup", "prune", *flags, *rke_s3_flags(f"http://{s3.endpoint}",
                                                                                          bucket, folder=FOLDER)],
                        root=root, env=rke_s3_env(ACCESS_KEY, SECRET_KEY))
    return done.returncode, done.stdout, done.stderr


def bucket_keys(s3: S3Server, bucket: str) -> set[str]:
    paginator = s3.client().get_paginator("list_objects_v2")
    return {o["Key"] for page in paginator.paginate(Bucket=bucket) for o in page.get("Contents", [])}


def test_the_dry_run_is_exactly_what_a_real_run_deletes(tmp_path: Path, s3_http: S3Server) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    names = history(now, 1200)  # over four days
    root = tmp_path / "node"
    backup = root / "backup"
    backup.mkdir(parents=True)
    for name in names[:600]:
        (backup / name).write_bytes(b"PK")
    (backup / "notes.txt").write_text("not a snapshot")
    bucket = s3_http.new_bucket()
    client = s3_http.client()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: client.put_object(Bucket=bucket, Key=f"{FOLDER}/{n}", Body=b"PK"), names))
    client.put_object(Bucket=bucket, Key=f"{FOLDER}/rke_etcd_snapshot_manual.zip", Body=b"PK")
    flags = ("--retention=24h", "--keep-daily=3", "--keep-hourly=30")

    code, out, err = prune(root, s3_http, bucket, "--dry-run", *flags)
    assert code == 0, err
    planned = [line.split(" ")[1:3] for line in out.splitlines() if line.startswith("delete ")]
    assert planned and all(where in ("local", "s3") for where, _ in planned)
    assert sorted(os.listdir(backup)) == sorted([*names[:600], "notes.txt", ".sidekick"])  # nothing deleted
    assert len(bucket_keys(s3_http, bucket)) == 1201

    code, _, err = prune(root, s3_http, bucket, *flags)
    assert code == 0, err
    gone_local = {n for n in [*names[:600], "notes.txt"] if not (backup / n).exists()}
    gone_s3 = {f"{FOLDER}/{n}" for n in names} - bucket_keys(s3_http, bucket)
    assert gone_local == {name for where, name in planned if where == "local"}
    assert gone_s3 == {name for where, name in planned if where == "s3"}
    assert (backup / "notes.txt").exists() and f"{FOLDER}/rke_etcd_snapshot_manual.zip" in bucket_keys(s3_http, bucket)
    # 24 hours of 5-minute snapshots stay, and more (older days and hours) by the keep rules.
    assert len({f"{FOLDER}/{n}" for n in names} & bucket_keys(s3_http, bucket)) > 288

    code, out, _ = prune(root, s3_http, bucket, "--dry-run", *flags)
    assert code == 0 and not [line for line in out.splitlines() if line.startswith("delete ")]


def test_locked_objects_are_skipped_with_one_warning(tmp_path: Path, s3_http: S3Server) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    names = history(now - dt.timedelta(days=3), 6)  # all expired
    bucket = s3_http.new_bucket("locked")
    client = s3_http.client()
    client.delete_bucket(Bucket=bucket)
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    until = now + dt.timedelta(days=1)
    client.put_object(Bucket=bucket, Key=f"{FOLDER}/{names[0]}", Body=b"PK", ObjectLockMode="COMPLIANCE",
                      ObjectLockRetainUntilDate=until)
    client.put_object(Bucket=bucket, Key=f"{FOLDER}/{names[1]}", Body=b"PK", ObjectLockLegalHoldStatus="ON")
    for name in names[2:]:
        client.put_object(Bucket=bucket, Key=f"{FOLDER}/{name}", Body=b"PK")
    root = tmp_path / "node"
    (root / "backup").mkdir(parents=True)

    code, _, err = prune(root, s3_http, bucket, "--retention=24h", "--keep-floor=0")
    assert code == 0, err
    assert bucket_keys(s3_http, bucket) == {f"{FOLDER}/{names[0]}", f"{FOLDER}/{names[1]}"}
    warnings = [line for line in err.splitlines() if "S3 keeps some expired snapshots" in line]
    assert len(warnings) == 1 and "count=2" in warnings[0] and "legal hold" in warnings[0]


def test_prune_waits_for_a_running_save_then_says_who(tmp_path: Path, s3_http: S3Server) -> None:
    import subprocess
    import sys

    root = tmp_path / "node"
    lock = root / "backup/.sidekick/lock"
    lock.parent.mkdir(parents=True)
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'save --once x (pid 42)'); print('held', flush=True); "
            "time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        done = run_sidekick(["rke-etcd-backup", "etcd-backup", "prune", "--retention=24h"], root=root,
                            env={"SIDEKICK_BUDGET_SCALE": "0.02"})  # a 1.2 s wait
        assert done.returncode == 1
        assert "prune: save --once x (pid 42) is still running after 1.2s" in last_line(done.stderr)
        assert time.monotonic() - started < 15
    finally:
        holder.kill()
        holder.wait()
