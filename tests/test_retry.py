"""The one retry/deadline policy, the stop model and the guard that enforces deadlines."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from sidekick.deadline import Deadline, DeadlineExceeded, Stopped
from sidekick.errors import SidekickError
from sidekick.etcd.budgets import Budgets
from sidekick.host.guard import Guard
from sidekick.host.signals import StopRequest, stop_on_signals
from sidekick.retry import Policy
from tests.harness.stops import RecordingStop


class Flaky(Exception):
    pass


def test_waits_double_to_a_cap_and_attempts_are_bounded() -> None:
    policy = Policy(attempts=5, first_wait=1, max_wait=5, budget=1000, attempt_budget=10)
    assert list(policy.waits()) == [1, 2, 4, 5]
    calls: list[float] = []
    stop = RecordingStop()

    def step(deadline: Deadline) -> None:
        calls.append(deadline.remaining())
        raise Flaky("no")

    with pytest.raises(Flaky):
        policy.run(step, what="x", stop=stop, retryable=lambda e: isinstance(e, Flaky))
    assert len(calls) == 5 and all(0 < c <= 10 for c in calls)
    assert stop.waits == [1, 2, 4, 5]


def test_defaults_fit_rke() -> None:
    budgets = Budgets()
    assert list(budgets.etcd(4).waits()) == [2, 4, 8, 15]
    assert list(budgets.s3(3).waits()) == [1, 2, 4]
    assert budgets.etcd(4).budget + 5 <= 45  # etcd down: over within 45 s
    assert budgets.s3(3).budget <= 200


def test_a_step_that_succeeds_is_not_retried() -> None:
    policy = Policy(attempts=3, first_wait=0, max_wait=0, budget=10, attempt_budget=10)
    results = iter([Flaky("once"), "ok"])

    def step(_deadline: Deadline) -> str:
        value = next(results)
        if isinstance(value, Exception):
            raise value
        return value

    assert policy.run(step, what="x", stop=RecordingStop(), retryable=lambda e: True) == "ok"


def test_errors_that_are_not_retryable_end_at_once() -> None:
    policy = Policy(attempts=3, first_wait=0, max_wait=0, budget=10, attempt_budget=10)
    calls = []

    def step(_deadline: Deadline) -> None:
        calls.append(1)
        raise SidekickError("bucket b is not found")

    with pytest.raises(SidekickError, match="not found"):
        policy.run(step, what="x", stop=RecordingStop(), retryable=lambda e: False)
    assert calls == [1]


def test_the_budget_cuts_waits_and_attempts() -> None:
    policy = Policy(attempts=50, first_wait=0.05, max_wait=0.05, budget=0.3, attempt_budget=10)
    calls = []
    started = time.monotonic()

    def step(_deadline: Deadline) -> None:
        calls.append(1)
        raise Flaky("down")

    with pytest.raises(DeadlineExceeded, match=r"x did not succeed within 0.3s \(\d+ attempts\): down"):
        policy.run(step, what="x", stop=StopRequest(), retryable=lambda e: True)
    assert time.monotonic() - started < 1.0
    assert 2 <= len(calls) < 50


def test_absurd_attempt_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        Policy(attempts=10_000_000_000, first_wait=1, max_wait=1, budget=1, attempt_budget=1)


def test_guard_shuts_a_silent_connection_at_its_deadline() -> None:
    """A server that accepts and never answers: recv would block for ever."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"read did not finish within 0\.3s"), \
                Guard(Deadline(0.3, what="read"), StopRequest()):
            if not client.recv(10):
                raise OSError("closed")
        assert time.monotonic() - started < 1.5
        client.close()


def test_guard_ends_a_dripping_read_on_stop() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        stop = StopRequest()

        def drip() -> None:
            for _ in range(100):
                try:
                    server.send(b"x")
                except OSError:
                    return
                time.sleep(0.05)

        threading.Thread(target=drip, daemon=True).start()
        threading.Timer(0.4, stop.request, args=("SIGTERM",)).start()
        started = time.monotonic()
        with pytest.raises(Stopped), Guard(Deadline(60, what="read"), stop):
            while client.recv(1):
                pass
            raise OSError("closed")
        assert time.monotonic() - started < 1.5
        client.close()
        server.close()


def test_guard_leaves_a_step_that_finished_alone() -> None:
    with Guard(Deadline(5, what="quick"), StopRequest()) as guard:
        value = 1 + 1
    assert value == 2 and guard.tripped is None


def test_stop_on_signals_sets_the_request_and_restores_the_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop.wait(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5) and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_deadline_extend_and_restart() -> None:
    now = [100.0]
    deadline = Deadline(10, what="t", clock=lambda: now[0])
    now[0] = 108
    assert deadline.remaining() == 2
    deadline.extend(5)
    assert deadline.remaining() == 7
    deadline.restart()
    assert deadline.remaining() == 15  # the full (extended) span again from now
    assert deadline.within(3).remaining() == 3
