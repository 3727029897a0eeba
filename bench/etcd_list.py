"""``list`` of a bucket folder holding 10,000 snapshots (moto), beside boto3's paginator alone.

The issue's bound: 10,000 S3 objects list in under 5 s. ``list`` makes one ListObjectsV2
request per 1,000 objects and no HEAD (metadata only with ``--details``), so the figure is the
CLI's whole run (interpreter start included) against the bare listing of the same folder.
``BENCH_LIST_OBJECTS`` sets the count.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import SIDEKICK, Row

COUNT = int(os.environ.get("BENCH_LIST_OBJECTS", "10000"))


def run() -> list[Row]:
    from tests.harness.etcd_backup import rke_s3_env
    from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

    work = Path(tempfile.mkdtemp(prefix="bench-etcd-list-"))
    s3 = S3Server(work / "s3").start()
    try:
        client = s3.client()
        bucket = s3.new_bucket("list")
        keys = [f"cluster/c-bench-rl-x_{i:05d}.zip" for i in range(COUNT)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"zip"), keys))

        start = time.perf_counter()
        listed = sum(len(page.get("Contents", [])) for page in
                     client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="cluster/", Delimiter="/"))
        bare = time.perf_counter() - start
        assert listed == COUNT

        root = work / "node"
        (root / "backup").mkdir(parents=True)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("S3_", "SIDEKICK_"))},
               "SIDEKICK_ROOT": str(root), **rke_s3_env(ACCESS_KEY, SECRET_KEY)}
        argv = [str(SIDEKICK), "rke-etcd-backup", "etcd-backup", "list", "--output=json", "--s3-backup",
                f"--s3-endpoint={s3.url}", f"--s3-bucketName={bucket}", "--s3-folder=cluster"]
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        ours = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"list failed: {done.stderr[-2000:]}")
        assert len(json.loads(done.stdout)["snapshots"]) == COUNT
        return [Row(f"list --s3-backup, {COUNT} objects (moto)", ours, "s", "boto3 paginator alone", bare,
                    note="whole CLI run incl. interpreter start; goal < 5 s")]
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
