"""Retention planning over 100,000 snapshot names (pure, no I/O).

A node's year of 5-minute snapshots (``BENCH_RETENTION_NAMES``, default 100,000), as S3 keys
in a folder and as /backup files. Measured in the same run, median of several runs:

- the baseline: the age rule as a single filter loop (the restatement in
  tests/etcd/test_retention_properties.py that the engine is checked against);
- the same age-only decision through the engine (``s3_expired``/``local_expired``, what
  RKE's calls use);
- a full plan: listing mapped to snapshots, then age + keep-last + hourly/daily/weekly/monthly
  + floor, with a reason for every entry (what ``prune --dry-run`` prints).
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import time
from collections.abc import Callable

from bench.common import Row
from sidekick.etcd.retention import (
    LocalFile,
    Policy,
    local_expired,
    plan,
    rolling_name,
    s3_expired,
    s3_rolling,
)
from tests.etcd.test_retention_properties import original_local_expired, original_s3_expired

NAMES = int(os.environ.get("BENCH_RETENTION_NAMES", "100000"))
RUNS = 5
NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
RETENTION = dt.timedelta(hours=72)
FULL = Policy(within=RETENTION, last=10, hourly=48, daily=30, weekly=12, monthly=12, floor=3)


def _median_ms(action: Callable[[], object]) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def run() -> list[Row]:
    times = [NOW - i * dt.timedelta(minutes=5) for i in range(NAMES)]
    keys = [f"cluster-a/{rolling_name(t)}.zip" for t in times]
    objects = [(k, 50_000_000) for k in keys]
    files = [LocalFile(rolling_name(t) + ".zip", t, size=50_000_000) for t in times]

    # The engine and the baseline must agree before their times mean anything.
    if s3_expired(keys, folder="cluster-a", tick=NOW, retention=RETENTION) != original_s3_expired(
            keys, folder="cluster-a", tick=NOW, retention=RETENTION):
        raise RuntimeError("the engine's age rule disagrees with the baseline")
    full = plan(s3_rolling(objects, folder="cluster-a"), FULL, NOW)
    note = f"{NAMES:,} names; full plan deletes {len(full.deleted):,}, keeps {len(full.kept):,}"

    s3_base = _median_ms(lambda: original_s3_expired(keys, folder="cluster-a", tick=NOW, retention=RETENTION))
    local_base = _median_ms(lambda: original_local_expired(files, tick=NOW, retention=RETENTION))
    s3_age = _median_ms(lambda: s3_expired(keys, folder="cluster-a", tick=NOW, retention=RETENTION))
    local_age = _median_ms(lambda: local_expired(files, tick=NOW, retention=RETENTION))
    s3_full = _median_ms(lambda: plan(s3_rolling(objects, folder="cluster-a"), FULL, NOW))
    return [
        Row("retention: S3 age rule via the engine", s3_age, "ms", "age rule as one filter loop", s3_base,
            note=note),
        Row("retention: local age rule via the engine", local_age, "ms", "age rule as one filter loop",
            local_base),
        Row("retention: S3 full plan (age+last+calendar+floor)", s3_full, "ms", "age rule as one filter loop",
            s3_base, note=FULL.describe()),
    ]
