"""``save --once`` with S3 on a real etcd snapshot, beside the tools a user would compare with.

Measured in the same run, on the same snapshot file:
- ``etcdctl snapshot save`` alone, ``zip -6`` (Info-ZIP), ``gzip -6`` and Python's ``zipfile``
  at level 5 (the issue's 101 MB/s reference), all MB/s of input;
- sidekick's archive stage and upload stage (from its own progress lines), the deflate ratio
  and its peak RSS (polled), against a single-request ``put_object`` of the same archive;
- S3 prune of `BENCH_PRUNE_OBJECTS` (10,000) expired objects: plan + DeleteObjects batches vs sequential DELETEs
  (what the Go tool does), on the same moto server.

The etcd data are JSON-ish values of 100 kB (Kubernetes-object shaped, the issue's load).
Size: ``BENCH_ETCD_SAVE_MB`` (default 400 MB; the issue's reference snapshot was 1,086 MB).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from bench.common import SIDEKICK, Row, measure

SIZE_MB = int(os.environ.get("BENCH_ETCD_SAVE_MB", "400"))
VALUE_SIZE = 100_000
EXPIRED = int(os.environ.get("BENCH_PRUNE_OBJECTS", "10000"))


def _values(count: int, seed: int = 3) -> list[bytes]:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 10))) for _ in range(300)]
    kinds = ["ConfigMap", "Secret", "Pod", "Event", "Deployment"]
    out = []
    for _ in range(count):
        items: list[str] = []
        size = 0
        while size < VALUE_SIZE:
            obj = {
                "apiVersion": "v1", "kind": rng.choice(kinds),
                "metadata": {"name": f"{rng.choice(words)}-{rng.getrandbits(16):04x}", "namespace": rng.choice(words),
                             "uid": "-".join(f"{rng.getrandbits(4 * n):0{n}x}" for n in (8, 4, 4, 4, 12)),
                             "resourceVersion": str(rng.randint(1, 10**9)),
                             "labels": {rng.choice(words): rng.choice(words) for _ in range(3)}},
                "data": {rng.choice(words): " ".join(rng.choice(words) for _ in range(rng.randint(10, 40)))
                         for _ in range(4)},
                "blob": base64.b64encode(rng.randbytes(rng.randint(8, 24))).decode(),
            }
            text = json.dumps(obj)
            items.append(text)
            size += len(text)
        out.append(("[" + ",".join(items) + "]").encode()[:VALUE_SIZE])
    return out


def loaded_etcd(work: Path, total_mb: int, bench: str, pool: list[bytes] | None = None) -> tuple[Any, Any]:
    """A real etcd member (TLS with RKE's certificates, loopback, an 8 GiB quota) started under
    ``work`` and holding about ``total_mb`` MB of values (:func:`_load`): (its certificates,
    the running server). The caller stops it."""
    from tests.harness.etcd import EtcdServer
    from tests.harness.pki import CertificateAuthority, RkeSsl

    ssl_files = RkeSsl.create(work / "ssl", CertificateAuthority("kube-ca"), "127.0.0.1")
    etcd = EtcdServer(work / "etcd", ssl_files, extra_args=("--quota-backend-bytes=8589934592",)).start()
    try:
        loaded = _load(etcd, total_mb, pool)
    except BaseException:
        etcd.stop()
        raise
    print(f"# {bench}: loaded {loaded / 1e6:.0f} MB of values", file=sys.stderr)
    return ssl_files, etcd


def _load(etcd: object, total_mb: int, pool: list[bytes] | None = None) -> int:
    """Put about ``total_mb`` MB of values into etcd, cycling through ``pool`` (default: the
    JSON-ish values above); returns the bytes put."""
    from tests.harness.etcd import EtcdServer

    assert isinstance(etcd, EtcdServer)
    pool = pool or _values(256)
    count = total_mb * 1_000_000 * len(pool) // sum(map(len, pool))
    session = requests.Session()
    session.trust_env = False
    session.cert = (str(etcd.ssl.node_cert), str(etcd.ssl.node_key))
    session.verify = str(etcd.ssl.cacert)

    def put(i: int) -> int:
        value = pool[i % len(pool)]
        body = {"key": base64.b64encode(f"/registry/bench/{i:08d}".encode()).decode(),
                "value": base64.b64encode(value).decode()}
        session.post(f"{etcd.url}/v3/kv/put", json=body, timeout=60).raise_for_status()
        return len(value)

    with ThreadPoolExecutor(8) as workers:
        return sum(workers.map(put, range(count)))


def _timed(argv: list[str], **kwargs: object) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - start


def _mbps(size: int, seconds: float) -> float:
    return size / 1e6 / seconds


def _field(stderr: str, msg: str, name: str) -> float:
    for line in stderr.splitlines():
        if f'msg="{msg}"' in line:
            m = re.search(rf"\b{name}=([0-9.]+)", line)
            if m:
                return float(m.group(1))
    raise RuntimeError(f"no {name} in the {msg!r} line:\n{stderr[-2000:]}")


def _retention_rows(s3: object) -> list[Row]:
    from sidekick.etcd.options import Options
    from sidekick.etcd.retention import rolling_name
    from sidekick.etcd.s3 import S3Config, S3Store
    from sidekick.etcd.save import Saver
    from sidekick.host.proc import Runner
    from sidekick.host.signals import StopRequest
    from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

    assert isinstance(s3, S3Server)
    client = s3.client()
    tick = dt.datetime(2024, 10, 4, 12, 0, tzinfo=dt.UTC)
    keys = [f"{rolling_name(tick - dt.timedelta(days=2, minutes=i))}.zip" for i in range(EXPIRED)]

    def fill() -> str:
        bucket = s3.new_bucket("ret")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b""), keys))
        return bucket

    bucket = fill()
    start = time.perf_counter()
    for key in keys:  # the Go tool: one RemoveObject per expired key
        client.delete_object(Bucket=bucket, Key=key)
    sequential = time.perf_counter() - start

    bucket = fill()
    store = S3Store(S3Config(endpoint=s3.url, bucket=bucket, access_key=ACCESS_KEY, secret_key=SECRET_KEY))
    saver = Saver(Options(retention=dt.timedelta(hours=24), s3_bucket_name=bucket), Runner(), StopRequest())
    start = time.perf_counter()
    saver.s3_retention(store, tick)  # the policy engine's plan, list (paginated) + DeleteObjects batches
    ours = time.perf_counter() - start
    store.close()
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    return [Row(f"S3 prune, {EXPIRED} expired objects", ours, "s", "sequential DELETEs", sequential,
                note="lower is better; list + plan + DeleteObjects")]


def run() -> list[Row]:
    from tests.harness.etcd_backup import node_root, rke_s3_env, rke_s3_flags, rke_save_argv
    from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

    work = Path(tempfile.mkdtemp(prefix="bench-etcd-save-"))
    rows: list[Row] = []
    ssl_files, etcd = loaded_etcd(work, SIZE_MB, "etcd_save")
    s3 = S3Server(work / "s3").start()
    try:

        # Baselines on the same data: etcdctl alone, then zip/gzip/zipfile of that file.
        raw = work / "plain.db"
        start = time.perf_counter()
        etcd.ctl("snapshot", "save", str(raw), timeout=600)
        seconds = time.perf_counter() - start
        size = raw.stat().st_size
        note = f"snapshot {size / 1e6:.0f} MB"
        rows.append(Row("etcdctl snapshot save", _mbps(size, seconds), "MB/s", note=note))
        zip_s = _timed(["zip", "-6", "-q", str(work / "plain.zip"), str(raw)])
        zip_ratio = (work / "plain.zip").stat().st_size / size
        gzip_s = _timed(["gzip", "-6", "-k", "-f", str(raw)])
        gzip_ratio = raw.with_suffix(".db.gz").stat().st_size / size
        start = time.perf_counter()
        with zipfile.ZipFile(work / "py.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=5) as zf:
            zf.write(raw, "/backup/plain")
        py_s = time.perf_counter() - start
        py_ratio = (work / "py.zip").stat().st_size / size
        for leftover in ("plain.zip", "plain.db.gz", "py.zip"):
            (work / leftover).unlink()

        # sidekick save --once with S3 upload, as RKE runs it.
        root = node_root(work, ssl_files)
        bucket = s3.new_bucket("bench")
        argv = [str(SIDEKICK), "rke-etcd-backup",
                *rke_save_argv(etcd.endpoint, "bench-snap", "--once", *rke_s3_flags(s3.url, bucket))]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("S3_", "SIDEKICK_"))},
               "SIDEKICK_ROOT": str(root), **rke_s3_env(ACCESS_KEY, SECRET_KEY)}
        total, peaks, _, stderr = measure(argv, env, timeout=1800)
        archive_mbps = _field(stderr, "archive done", "mbps")
        ratio = _field(stderr, "archive done", "ratio")
        upload_mbps = _field(stderr, "upload done", "mbps")
        archive_size = int(_field(stderr, "archive done", "archive_size"))

        # Upload baseline: the same archive as one PUT request.
        archive = root / "backup/bench-snap.zip"
        client = s3.client()
        start = time.perf_counter()
        with open(archive, "rb") as body:
            client.put_object(Bucket=bucket, Key="single-put.zip", Body=body)
        single_put = _mbps(archive_size, time.perf_counter() - start)

        rows += [
            Row("archive stage (deflate)", archive_mbps, "MB/s", "zip -6", _mbps(size, zip_s),
                note=f"ratio {ratio:.3f} vs zip {zip_ratio:.3f}"),
            Row("archive stage (deflate)", archive_mbps, "MB/s", "gzip -6", _mbps(size, gzip_s),
                note=f"gzip ratio {gzip_ratio:.3f}"),
            Row("archive stage (deflate)", archive_mbps, "MB/s", "python zipfile -5", _mbps(size, py_s),
                note=f"zipfile ratio {py_ratio:.3f}; Go tool on the issue: 138-155 MB/s"),
            Row("upload stage (multipart, 4 parallel parts)", upload_mbps, "MB/s", "single put_object", single_put,
                note=f"archive {archive_size / 1e6:.0f} MB to moto over HTTP"),
            Row("save --once with S3, peak RSS", peaks.own / 2**20, "MiB", note="goal < 100 MiB"),
            Row("save --once with S3, wall", total, "s", note=note),
        ]
        rows += _retention_rows(s3)
    finally:
        s3.stop()
        etcd.stop()
        shutil.rmtree(work, ignore_errors=True)
    return rows
