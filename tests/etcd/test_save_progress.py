"""Progress lines (pure, fake clock)."""

from __future__ import annotations

import logging

import pytest

from sidekick.etcd.progress import Progress


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
