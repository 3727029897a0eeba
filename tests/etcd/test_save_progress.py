"""Progress lines and backoff schedules (pure, fake clock)."""

from __future__ import annotations

import logging

import pytest

from sidekick.etcd.progress import Progress
from sidekick.etcd.retry import Backoff, StopFlag, etcd_backoff, s3_backoff


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    logger = logging.getLogger("sidekick.test.progress")
    logger.propagate = True
    caplog.set_level(logging.INFO, logger="sidekick.test.progress")
    progress = Progress(logger, "upload", total=100_000_000, interval=5, clock=clock, key="k")
    progress.add(10_000_000)  # t=0: no line yet
    clock.now += 2
    progress.add(10_000_000)  # t=2: still inside the interval
    clock.now += 3
    progress.add(30_000_000)  # t=5: a line
    clock.now += 5
    progress.add(50_000_000)  # t=10: a line
    elapsed = progress.finish(sha256="ab" * 32)
    lines = [(r.getMessage(), getattr(r, "fields", {})) for r in caplog.records]
    assert [m for m, _ in lines] == ["upload in progress", "upload in progress", "upload done"]
    first = lines[0][1]
    assert first["done"] == 50_000_000 and first["total"] == 100_000_000 and first["percent"] == "50"
    assert first["mbps"] == "10.0" and first["key"] == "k"
    final = lines[2][1]
    assert final["size"] == 100_000_000 and final["sha256"] == "ab" * 32 and final["mbps"] == "10.0"
    assert elapsed == 10


def test_backoff_doubles_to_a_cap() -> None:
    assert list(Backoff(first=1, cap=5).delays(5)) == [1, 2, 4, 5, 5]
    assert list(etcd_backoff(15).delays(4)) == [7.5, 15, 30, 30]
    assert list(s3_backoff(15).delays(3)) == [1, 2, 4]
    assert list(s3_backoff(0).delays(3)) == [0, 0, 0]


def test_stop_flag_cuts_waits_short() -> None:
    flag = StopFlag()
    assert flag.wait(0) is False
    flag.set()
    assert flag.wait(60) is True and flag.is_set()
