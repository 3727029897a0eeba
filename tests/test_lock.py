"""The node's run lock: waits within a bound, names the holder, never outlives a killed holder."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sidekick.host.lock import LockBusy, exclusive
from sidekick.host.signals import StopRequest


def test_a_second_holder_waits_then_fails_with_the_holders_note(tmp_path: Path) -> None:
    lock = tmp_path / ".sidekick" / "lock"
    with exclusive(lock, wait=1, stop=StopRequest(), what="first", note="save --once a (pid 1)"):
        started = time.monotonic()
        with pytest.raises(LockBusy, match=r"second: save --once a \(pid 1\) is still running after 0.2s"), \
                exclusive(lock, wait=0.2, stop=StopRequest(), what="second"):
            pass
        assert 0.2 <= time.monotonic() - started < 2
    with exclusive(lock, wait=0, stop=StopRequest(), what="third"):  # free again
        assert oct(lock.stat().st_mode & 0o777) == "0o600"


def test_the_second_runs_as_soon_as_the_first_ends(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    order: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with exclusive(lock, wait=5, stop=StopRequest(), what="first"):
            first_in.set()
            time.sleep(0.3)
            order.append("first")

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)
    with exclusive(lock, wait=5, stop=StopRequest(), what="second"):
        order.append("second")
    thread.join()
    assert order == ["first", "second"]


def test_a_stop_ends_the_wait(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    stop = StopRequest()
    with exclusive(lock, wait=5, stop=StopRequest(), what="first"):
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        with pytest.raises(LockBusy, match="stopped while waiting"), exclusive(lock, wait=60, stop=stop, what="x"):
            pass
        assert time.monotonic() - started < 2


@pytest.mark.integration
def test_a_holder_killed_with_sigkill_never_blocks(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy), exclusive(lock, wait=0.1, stop=StopRequest(), what="while held"):
            pass
        holder.kill()
        holder.wait(10)
        with exclusive(lock, wait=1, stop=StopRequest(), what="after the kill"):
            pass
    finally:
        holder.kill()
