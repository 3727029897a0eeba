"""Freshness telemetry of rolling ``save``: the rules, real HTTP on loopback, promtool, kill -9."""

from __future__ import annotations

import datetime as dt
import errno
import http.client
import json
import logging
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidekick.errors import SidekickError, UsageError
from sidekick.etcd import telemetry as tm
from sidekick.etcd.telemetry import (
    CAUSES,
    STAGES,
    Status,
    StatusError,
    Telemetry,
    cause_label,
    read_status,
)
from sidekick.host.files import leftover_of
from tests.harness.env import clean_env
from tests.harness.ports import stop_process

PERIOD = dt.timedelta(hours=12)
P = PERIOD.total_seconds()
T0 = 1_733_000_000.0
LOOPBACK = ("127.0.0.1", 0, socket.AF_INET)


class Clock:
    """Wall clock the test moves by hand: no sleeping for periods."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    (tmp_path / "backup").mkdir()
    return tmp_path


def make(clock: Clock, *, s3_backup: bool = True, address: tuple[str, int, socket.AddressFamily] | None = None,
         ) -> Telemetry:
    return Telemetry(address=address, creation_period=PERIOD, s3_backup=s3_backup, clock=clock)


@pytest.fixture
def served(root: Path, clock: Clock) -> Iterator[Telemetry]:
    telemetry = make(clock, address=LOOPBACK)
    telemetry.start()
    yield telemetry
    telemetry.close()


def samples(telemetry: Telemetry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by (name, sorted labels), parsed by prometheus_client."""
    text = telemetry.metrics_text().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(telemetry: Telemetry, path: str) -> tuple[int, str, str]:
    assert telemetry.url
    host, port = telemetry.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


# --- the address ---------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9465", ("127.0.0.1", 9465, socket.AF_INET)),
    (":9465", ("0.0.0.0", 9465, socket.AF_INET)),
    ("localhost:9465", ("127.0.0.1", 9465, socket.AF_INET)),
    ("[::1]:9465", ("::1", 9465, socket.AF_INET6)),
    ("[::]:0", ("::", 0, socket.AF_INET6)),
    (" 10.0.0.5:9100 ", ("10.0.0.5", 9100, socket.AF_INET)),
])
def test_addresses(text: str, expected: tuple[str, int, socket.AddressFamily]) -> None:
    assert tm.parse_address(text) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("9465", "expected HOST:PORT"),
    ("127.0.0.1:", "expected HOST:PORT"),
    ("127.0.0.1:65536", "expected HOST:PORT"),
    ("127.0.0.1:-1", "expected HOST:PORT"),
    ("example.com:9465", "'example.com' is not an IP address"),
    ("::1:9465", "write an IPv6 address in brackets"),
    ("[127.0.0.1]:9465", "brackets are for IPv6"),
    ("[nope]:9465", "'nope' is not an IPv6 address"),
])
def test_bad_addresses_are_one_usage_line(text: str, why: str) -> None:
    with pytest.raises(UsageError) as caught:
        tm.parse_address(text)
    message = str(caught.value)
    assert message.startswith(f"SIDEKICK_METRICS_ADDRESS={text!r}: ") and why in message
    assert "\n" not in message and caught.value.exit_code == 2


def test_from_env_is_off_unless_the_address_is_set(clock: Clock) -> None:
    assert Telemetry.from_env(PERIOD, environ={}) is None
    assert Telemetry.from_env(PERIOD, environ={tm.METRICS_ENV: "  "}) is None
    telemetry = Telemetry.from_env(PERIOD, s3_backup=True, environ={tm.METRICS_ENV: "127.0.0.1:9465"}, clock=clock)
    assert telemetry is not None and telemetry.listen == ("127.0.0.1", 9465, socket.AF_INET)
    assert telemetry.status().s3_backup is True and telemetry.status().creation_period_seconds == P
    with pytest.raises(UsageError):
        Telemetry.from_env(PERIOD, environ={tm.METRICS_ENV: "9465"})


# --- causes --------------------------------------------------------------------------------
@pytest.mark.parametrize(("stage", "cause", "label"), [
    # the one-line messages sidekick's own errors carry (etcdctl.py, s3.py)
    ("snapshot", "etcd is not healthy: https://10.0.0.1:2379 is unhealthy: failed to commit proposal: "
                 "context deadline exceeded", "etcd_unreachable"),
    ("snapshot", "etcd health check failed: etcdctl timed out after 30s", "etcd_unreachable"),
    ("snapshot", "etcd snapshot failed: dial tcp 10.0.0.1:2379: connect: connection refused", "etcd_unreachable"),
    ("snapshot", "snapshot check failed: snapshot file integrity check failed", "corrupt"),
    ("snapshot", "/backup/x.zip: no space left on device", "disk"),
    ("upload", "cannot reach S3: Could not connect to the endpoint URL: \"http://127.0.0.1:9/b\"", "s3_unreachable"),
    ("upload", "TLS error talking to S3: certificate verify failed", "s3_unreachable"),
    ("upload", "access to bucket snaps denied (check the S3 keys): HeadBucket: 403: Forbidden", "s3_denied"),
    ("upload", "PutObject: InvalidAccessKeyId: The AWS Access Key Id you provided does not exist", "s3_denied"),
    ("upload", "no S3 credentials: give --s3-accessKey/--s3-secretKey or run with an IAM role", "s3_denied"),
    ("upload", "bucket snaps is not found", "s3_no_bucket"),
    ("upload", "S3 timed out: Read timeout on endpoint URL", "timeout"),
    ("upload", "downloaded k does not match its archive-sha256 metadata", "corrupt"),
    ("retention", "failed to list objects in bucket snaps: cannot reach S3: x", "s3_unreachable"),
    ("retention", "/backup/old.zip: read-only file system", "disk"),
    ("verify", "cannot reach S3: x", "s3_unreachable"),
    ("verify", "throwaway etcd: connection refused", "etcd_unreachable"),
    ("verify", "restored revision 10 != recorded 12", "other"),
    # exceptions, and a label given as is
    ("snapshot", OSError(errno.ENOSPC, "No space left on device"), "disk"),
    ("upload", TimeoutError("deadline"), "timeout"),
    ("upload", ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "s3_unreachable"),
    ("snapshot", RuntimeError("boom"), "other"),
    ("upload", "s3_denied", "s3_denied"),
])
def test_causes_map_to_a_bounded_label_set(stage: str, cause: str | BaseException, label: str) -> None:
    assert label in CAUSES
    assert cause_label(stage, cause) == label


# --- the facts, driven by a sequence of results ----------------------------------------------
def test_a_sequence_of_results_drives_timestamps_and_counters(root: Path, clock: Clock) -> None:
    telemetry = make(clock)
    telemetry.stage_succeeded("snapshot", seconds=4.25, size=123_456)
    telemetry.stage_succeeded("upload", seconds=2.0)
    first_upload = clock.now
    for _ in range(3):  # S3 goes away: three ticks fail to upload
        clock.advance(P)
        telemetry.stage_succeeded("snapshot", seconds=5.0, size=130_000)
        assert telemetry.stage_failed("upload", "cannot reach S3: Could not connect") == "s3_unreachable"
    clock.advance(P)
    telemetry.stage_failed("snapshot", "etcd is not healthy: unhealthy")
    telemetry.stage_succeeded("retention", seconds=0.5, deleted=2)
    telemetry.stage_succeeded("retention", seconds=0.5, deleted=1)

    s = samples(telemetry)
    p = tm.METRIC_PREFIX
    assert s[(p + "last_success_timestamp_seconds", (("stage", "upload"),))] == first_upload  # stayed put
    assert s[(p + "last_success_timestamp_seconds", (("stage", "snapshot"),))] == clock.now - P
    assert s[(p + "last_attempt_timestamp_seconds", (("stage", "snapshot"),))] == clock.now
    assert s[(p + "last_attempt_success", (("stage", "snapshot"),))] == 0
    assert s[(p + "last_attempt_success", (("stage", "upload"),))] == 0
    assert s[(p + "last_attempt_success", (("stage", "retention"),))] == 1
    assert s[(p + "failures_total", (("cause", "s3_unreachable"), ("stage", "upload")))] == 3
    assert s[(p + "failures_total", (("cause", "etcd_unreachable"), ("stage", "snapshot")))] == 1
    assert s[(p + "failures_total", (("cause", "other"), ("stage", "verify")))] == 0  # every series from 0
    assert sum(v for (name, _), v in s.items() if name == p + "failures_total") == 4
    assert len([k for k in s if k[0] == p + "failures_total"]) == len(STAGES) * len(CAUSES)
    assert s[(p + "snapshot_size_bytes", ())] == 130_000
    assert s[(p + "last_duration_seconds", (("stage", "snapshot"),))] == 5.0
    assert s[(p + "deleted_objects_total", ())] == 3
    assert s[(p + "creation_period_seconds", ())] == P
    assert s[(p + "healthy", ())] == 0  # the upload is 4 periods old
    assert (p + "last_success_timestamp_seconds", (("stage", "verify"),)) not in s  # never ran: no sample

    clock.advance(60)  # S3 is back
    telemetry.stage_succeeded("upload", seconds=3.0)
    s = samples(telemetry)
    assert s[(p + "last_success_timestamp_seconds", (("stage", "upload"),))] == clock.now
    assert s[(p + "failures_total", (("cause", "s3_unreachable"), ("stage", "upload")))] == 3  # counters never go back
    assert s[(p + "healthy", ())] == 1


def test_the_stage_block_reports_success_or_the_exceptions_cause(root: Path, clock: Clock) -> None:
    telemetry = make(clock)
    with telemetry.stage("snapshot") as outcome:
        outcome.size = 42
    with pytest.raises(OSError), telemetry.stage("retention"):
        raise OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(KeyboardInterrupt), telemetry.stage("upload"):
        raise KeyboardInterrupt  # a stop is not a failure
    with pytest.raises(LookupError), telemetry.stage("upload", ignore=(LookupError,)):
        raise KeyError("a stop the caller models as an exception")
    status = telemetry.status()
    snap = status.stages["snapshot"]
    assert snap.last_success == T0 and snap.last_duration_seconds is not None and snap.last_duration_seconds >= 0
    assert status.snapshot_size_bytes == 42
    assert status.stages["retention"].failures == {"disk": 1}
    assert status.stages["upload"] == tm.StageRecord()
    with pytest.raises(ValueError, match="unknown stage 'tick'"):
        telemetry.stage_failed("tick", "x")


# --- health ----------------------------------------------------------------------------------
def test_health_grace_then_stale_then_recovery(root: Path, clock: Clock) -> None:
    telemetry = make(clock, s3_backup=True)
    ok, reason = telemetry.health()
    assert ok and reason == "ok: waiting for the first snapshot (started 0s ago), " \
                            "waiting for the first upload (started 0s ago) (limit 24h0m0s)"
    clock.advance(2 * P)  # exactly two periods: still within the grace
    assert telemetry.health()[0]
    clock.advance(1)
    assert telemetry.health() == (False, "stale: no successful snapshot since the start 24h0m1s ago "
                                         "(limit 24h0m0s, 2 creation periods)")
    telemetry.stage_succeeded("snapshot", seconds=1)
    ok, reason = telemetry.health()
    assert not ok and reason.startswith("stale: no successful upload since the start")
    telemetry.stage_succeeded("upload", seconds=1)
    assert telemetry.health() == (True, "ok: last snapshot 0s ago, last upload 0s ago (limit 24h0m0s)")
    clock.advance(P)
    telemetry.stage_succeeded("snapshot", seconds=1)
    telemetry.stage_failed("upload", "s3_unreachable")
    clock.advance(P + 1)  # snapshot fresh, the upload two periods and a second old
    assert telemetry.health() == (False, "stale: last successful upload 24h0m1s ago "
                                         "(limit 24h0m0s, 2 creation periods)")


def test_without_s3_only_the_snapshot_counts(root: Path, clock: Clock) -> None:
    telemetry = make(clock, s3_backup=False)
    telemetry.stage_succeeded("snapshot", seconds=1)
    telemetry.stage_failed("verify", "corrupt")
    clock.advance(2 * P)
    assert telemetry.health() == (True, "ok: last snapshot 24h0m0s ago (limit 24h0m0s)")


def test_healthz_and_metrics_over_real_http(served: Telemetry, clock: Clock) -> None:
    code, ctype, body = get(served, "/healthz")
    assert code == 200 and body.startswith("ok: waiting for the first snapshot") and body.count("\n") == 1
    assert ctype.startswith("text/plain")
    clock.advance(2 * P + 1)  # two periods without a success
    code, _, body = get(served, "/healthz")
    assert code == 503 and body == "stale: no successful snapshot since the start 24h0m1s ago " \
                                   "(limit 24h0m0s, 2 creation periods)\n"
    served.stage_succeeded("snapshot", seconds=2)
    code, _, body = get(served, "/healthz?verbose=1")
    assert code == 503 and "no successful upload" in body  # S3 is in use: the upload counts too
    served.stage_succeeded("upload", seconds=2)
    assert get(served, "/healthz")[0] == 200  # recovered
    clock.advance(2 * P + 1)
    assert get(served, "/healthz")[0] == 503
    served.stage_succeeded("snapshot", seconds=2)
    served.stage_succeeded("upload", seconds=2)
    assert get(served, "/healthz")[0] == 200

    code, ctype, body = get(served, "/metrics")
    assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
    parsed = {(s.name, tuple(s.labels.values())): s.value
              for family in text_string_to_metric_families(body) for s in family.samples}
    assert parsed[("sidekick_etcd_backup_last_success_timestamp_seconds", ("upload",))] == clock.now
    assert get(served, "/other")[0] == 404


def test_a_slow_client_cannot_hold_the_server(root: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread serves one connection at a time: a client that drips its request a byte at a
    time (never idle long enough for the read timeout) is cut at the connection deadline, and
    the next client is answered."""
    monkeypatch.setattr(tm, "CONNECTION_DEADLINE", 0.5)
    telemetry = make(clock, address=LOOPBACK)
    telemetry.start()
    cut = threading.Event()

    def drip(sock: socket.socket) -> None:
        for _ in range(200):  # 20 s at most
            try:
                sock.sendall(b"X")
            except OSError:
                break
            if cut.wait(0.1):
                break
        cut.set()

    try:
        assert telemetry.url
        port = int(telemetry.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            dripper = threading.Thread(target=drip, args=(slow,))
            dripper.start()
            try:
                assert get(telemetry, "/healthz")[0] == 200  # answered once the slow one was cut
                assert slow.recv(1024) == b""  # the server closed it without an answer
            finally:
                cut.set()
                dripper.join()
    finally:
        telemetry.close()


def test_a_port_in_use_is_a_warning_not_the_end(root: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        telemetry = make(clock, address=("127.0.0.1", port, socket.AF_INET))
        telemetry.start()
        assert telemetry.url is None
        telemetry.stage_succeeded("snapshot", seconds=1)  # reports still land in status.json
        telemetry.close()
    assert read_status() is not None
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == "cannot serve metrics; backups go on without them"
    assert warning.fields["address"] == f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    assert warning.fields["error"] == "Address already in use"  # type: ignore[attr-defined]


def test_close_stops_serving(root: Path, clock: Clock) -> None:
    telemetry = make(clock, address=LOOPBACK)
    telemetry.start()
    assert telemetry.url
    port = int(telemetry.url.rsplit(":", 1)[1])
    telemetry.close()
    telemetry.close()  # twice is fine
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


# --- status.json ---------------------------------------------------------------------------
def test_status_json_location_mode_and_schema(root: Path, clock: Clock) -> None:
    telemetry = make(clock)
    telemetry.start()
    telemetry.stage_succeeded("snapshot", seconds=1.5, size=99)
    telemetry.stage_failed("upload", "bucket snaps is not found")
    path = root / "backup/.sidekick/status.json"
    assert telemetry.status_path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert os.listdir(root / "backup") == [".sidekick"]  # the names RKE sees in /backup: none new
    assert os.listdir(path.parent) == ["status.json"]
    doc = json.loads(path.read_text())
    assert list(doc) == ["schema", "updated", "started", "creation_period_seconds", "s3_backup", "healthy",
                         "reason", "snapshot_size_bytes", "deleted_objects_total", "stages"]
    assert doc["schema"] == 1 and doc["healthy"] is True and doc["snapshot_size_bytes"] == 99
    assert list(doc["stages"]) == list(STAGES)
    assert doc["stages"]["snapshot"]["last_success"] == "2024-11-30T20:53:20.000000Z"
    assert doc["stages"]["upload"] == {
        "last_success": None, "last_attempt": "2024-11-30T20:53:20.000000Z", "last_attempt_ok": False,
        "last_duration_seconds": None, "last_failure": "2024-11-30T20:53:20.000000Z",
        "last_failure_cause": "s3_no_bucket", "failures": {"s3_no_bucket": 1}}
    back = read_status()
    assert back is not None and back.stages == telemetry.status().stages
    telemetry.close()


def test_read_status_missing_and_malformed(root: Path) -> None:
    assert read_status() is None
    path = root / "backup/.sidekick/status.json"
    path.parent.mkdir()
    for text in ("{", "[]", '{"schema": 2}', '{"schema": 1, "stages": {}}', '{"schema": 1, "started": 5}'):
        path.write_text(text)
        with pytest.raises(StatusError) as caught:
            read_status()
        assert str(caught.value).startswith(f"{path} is not a sidekick status document: ")


def test_a_restart_keeps_the_last_successes_not_the_counters(root: Path, clock: Clock) -> None:
    first = make(clock)
    first.start()
    first.stage_succeeded("snapshot", seconds=1, size=10)
    first.stage_succeeded("upload", seconds=1)
    first.stage_failed("upload", "timeout")
    first.close()
    clock.advance(3 * P)  # the container crash-loops for three periods
    second = make(clock, address=LOOPBACK)
    second.start()
    try:
        status = second.status()
        assert status.started == clock.now
        assert status.stages["snapshot"].last_success == T0 and status.snapshot_size_bytes == 10
        assert status.stages["upload"].last_failure_cause == "timeout" and status.stages["upload"].failures == {}
        code, _, body = get(second, "/healthz")  # no grace: the last snapshot is known to be old
        assert code == 503 and body.startswith("stale: last successful snapshot 36h0m0s ago")
    finally:
        second.close()


def test_an_unwritable_status_is_a_warning(root: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    (root / "backup/.sidekick").write_text("a file where the directory should be")
    telemetry = make(clock)
    telemetry.start()
    telemetry.stage_succeeded("snapshot", seconds=1)
    assert telemetry.health()[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings.count("cannot write the status file") == 2  # at the start and for the report


def test_status_round_trips() -> None:
    status = Status(started=T0, updated=T0 + 5.5, creation_period_seconds=P, s3_backup=False,
                    snapshot_size_bytes=7, deleted_objects_total=3)
    status.stages["verify"] = tm.StageRecord(last_success=T0 + 0.25, last_attempt=T0 + 1, last_attempt_ok=False,
                                             last_duration_seconds=9.5, last_failure=T0 + 1,
                                             last_failure_cause="corrupt", failures={"corrupt": 2})
    assert Status.from_json(status.to_json(T0 + 5.5)) == status


# --- real programs -----------------------------------------------------------------------------
@pytest.mark.integration
def test_metrics_pass_promtool(root: Path, clock: Clock) -> None:
    telemetry = make(clock)
    telemetry.stage_succeeded("snapshot", seconds=3.5, size=1 << 30)
    telemetry.stage_failed("upload", "s3_denied")
    telemetry.stage_succeeded("retention", seconds=0.2, deleted=4)
    telemetry.stage_succeeded("verify", seconds=12)
    text = telemetry.metrics_text()
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # promtool really lints: the same text with a counter lacking its _total fails.
    broken = text.replace(b"sidekick_etcd_backup_deleted_objects_total", b"sidekick_etcd_backup_deleted_objects")
    refused = subprocess.run(["promtool", "check", "metrics"], input=broken, capture_output=True, check=False)
    assert refused.returncode != 0 and b"counter metrics should have \"_total\" suffix" in refused.stdout + refused.stderr


@pytest.mark.integration
def test_nothing_heavy_is_imported_unless_enabled() -> None:
    code = (
        "import datetime as dt, sys\n"
        "from sidekick.etcd.telemetry import Telemetry\n"
        "assert Telemetry.from_env(dt.timedelta(hours=12), environ={}) is None\n"
        "print(sorted(m for m in ('prometheus_client', 'http.server', 'socketserver') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), check=True)
    assert out.stdout.strip() == "[]"


WRITER = """
import datetime as dt, sys
from sidekick.etcd.telemetry import Telemetry
t = Telemetry(address=None, creation_period=dt.timedelta(minutes=5), s3_backup=True)
t.start()
print("ready", flush=True)
i = 0
while True:
    i += 1
    t.stage_succeeded("snapshot", seconds=i, size=i)
    t.stage_failed("upload", "cannot reach S3")
"""


@pytest.mark.integration
def test_status_json_survives_kill_9_mid_write(root: Path) -> None:
    """A writer rewriting status.json as fast as it can, killed with SIGKILL again and again:
    the file always parses, before and after every kill, and /backup gains nothing else."""
    path = root / "backup/.sidekick/status.json"
    rng = random.Random(11)
    env = clean_env(SIDEKICK_ROOT=str(root))
    reads = 0
    for _ in range(25):
        writer = subprocess.Popen([sys.executable, "-c", WRITER], env=env, stdout=subprocess.PIPE)
        try:
            assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
            deadline = time.monotonic() + rng.uniform(0.02, 0.25)
            while time.monotonic() < deadline:  # read while it writes
                assert read_status() is not None
                reads += 1
            writer.send_signal(signal.SIGKILL)
            assert writer.wait(timeout=10) == -signal.SIGKILL
        finally:
            stop_process(writer, sig=signal.SIGKILL)  # type: ignore[arg-type]
        status = read_status()
        assert status is not None and status.stages["snapshot"].last_success is not None
        assert status.stages["upload"].last_failure_cause == "s3_unreachable"
    assert reads > 25
    assert os.listdir(root / "backup") == [".sidekick"]
    # Temp files a kill left behind are ours, beside the file, and only for status.json.
    assert all(name == "status.json" or leftover_of(name) == "status.json" for name in os.listdir(path.parent))


def test_kill_9_leftovers_are_removed_once_old(root: Path, clock: Clock) -> None:
    directory = root / "backup/.sidekick"
    directory.mkdir()
    stale = directory / ".sidekick-tmp-status.json.0123abcd"
    stale.write_text('{"half')
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = directory / ".sidekick-tmp-status.json.89abcdef"
    fresh.write_text('{"half')
    make(clock).start()
    assert not stale.exists()
    assert fresh.exists()  # young: might be another writer's work in flight


@pytest.mark.integration
def test_real_s3_outage_and_recovery(root: Path, clock: Clock, tmp_path: Path) -> None:
    """The rolling loop's upload stage against moto: the real S3 errors land under their labels,
    the upload timestamp stays put while moto is down, /healthz follows."""
    from sidekick.etcd.budgets import Budgets
    from sidekick.etcd.s3 import S3Config, S3Store
    from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

    archive = tmp_path / "2024-10-04T12:00:00Z_etcd.zip"
    archive.write_bytes(os.urandom(4096))
    server = S3Server(tmp_path / "moto").start()
    telemetry = make(clock, address=LOOPBACK)
    telemetry.start()

    def upload(bucket: str) -> None:
        config = S3Config(endpoint=f"http://{server.endpoint}", bucket=bucket,
                          access_key=ACCESS_KEY, secret_key=SECRET_KEY)
        with telemetry.stage("upload"), S3Store(config, budgets=Budgets(retry_wait=0.1, scale=0.05)) as store:
            store.check_bucket()
            store.upload_file(archive, archive.name, metadata={})

    try:
        bucket = server.new_bucket()
        telemetry.stage_succeeded("snapshot", seconds=1, size=archive.stat().st_size)
        upload(bucket)
        uploaded = clock.now
        with pytest.raises(SidekickError):
            upload("no-such-bucket")
        server.stop()
        for _ in range(2):  # two ticks with S3 down
            clock.advance(P)
            telemetry.stage_succeeded("snapshot", seconds=1)
            with pytest.raises(SidekickError):
                upload(bucket)
        status = telemetry.status()
        assert status.stages["upload"].last_success == uploaded  # stayed put
        assert status.stages["upload"].failures == {"s3_no_bucket": 1, "s3_unreachable": 2}
        clock.advance(1)
        code, _, body = get(telemetry, "/healthz")
        assert code == 503 and body.startswith("stale: last successful upload 24h0m1s ago")
        server.start()  # same port: S3 is back (moto keeps nothing: the bucket again)
        server.client().create_bucket(Bucket=bucket)
        upload(bucket)
        assert get(telemetry, "/healthz")[0] == 200
        s = samples(telemetry)
        assert s[(tm.METRIC_PREFIX + "failures_total", (("cause", "s3_unreachable"), ("stage", "upload")))] == 2
        assert s[(tm.METRIC_PREFIX + "last_success_timestamp_seconds", (("stage", "upload"),))] == clock.now
    finally:
        telemetry.close()
        server.stop()
