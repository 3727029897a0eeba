"""Retention planning over 100,000 snapshot names (pure, no I/O).

A node's year of 5-minute snapshots (``BENCH_RETENTION_NAMES``, default 100,000), as S3 keys
in a folder and as /backup files. Measured in the same run, in turns, median of 7 runs:

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
RUNS = 7
NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
RETENTION = dt.timedelta(hours=72)
FULL = Policy(within=RETENTION, last=10, hourly=48, daily=30, weekly=12, monthly=12, floor=3)


def _medians_ms(actions: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median milliseconds of each action, run in turns so all of them see the same machine
    load (the host is shared)."""
    samples: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(RUNS):
        for name, action in actions.items():
            start = time.perf_counter()
            action()
            samples[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


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

    ms = _medians_ms({
        "s3 base": lambda: original_s3_expired(keys, folder="cluster-a", tick=NOW, retention=RETENTION),
        "s3 age": lambda: s3_expired(keys, folder="cluster-a", tick=NOW, retention=RETENTION),
        "s3 full": lambda: plan(s3_rolling(objects, folder="cluster-a"), FULL, NOW),
        "local base": lambda: original_local_expired(files, tick=NOW, retention=RETENTION),
        "local age": lambda: local_expired(files, tick=NOW, retention=RETENTION),
    })
    return [
        Row("retention: S3 age rule via the engine", ms["s3 age"], "ms", "age rule as one filter loop",
            ms["s3 base"], note=note),
        Row("retention: local age rule via the engine", ms["local age"], "ms", "age rule as one filter loop",
            ms["local base"]),
        Row("retention: S3 full plan (age+last+calendar+floor)", ms["s3 full"], "ms", "age rule as one filter loop",
            ms["s3 base"], note=FULL.describe()),
    ]
