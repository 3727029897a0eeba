"""Freshness telemetry for rolling ``save``: Prometheus ``/metrics``, ``/healthz`` and ``status.json``.

Backups that stop silently are found only during the outage that needs them (rancher/rancher
#25887, #23711). With ``SIDEKICK_METRICS_ADDRESS`` set (``127.0.0.1:9465``, ``:9465`` for every
IPv4 address, ``[::1]:9465``; port 0 picks a free one) the rolling loop reports each stage's
outcome here, and this module says how fresh the backups are, three ways:

* ``GET /metrics``: Prometheus text (``prometheus_client``, imported only when enabled);
* ``GET /healthz``: 200 while the last successful snapshot (and, with S3, the last successful
  upload) is at most two creation periods old, else 503; the body is a one-line reason. Before
  a stage's first success the first two periods after :meth:`Telemetry.start` count as healthy;
* ``/backup/.sidekick/status.json``: the same facts as a JSON document (:class:`Status`),
  replaced atomically after every report, for ``list`` and for anyone reading the disk.

Where status.json lives, and why there: ``/backup`` is the one directory every etcd command's
container binds (``/opt/rke/etcd-snapshots`` on the host), so ``list`` finds the file wherever
it runs, and it survives container restarts. RKE and Rancher address snapshots in /backup only
by name (``/backup/<name>``, ``/backup/<name>.zip``: CONTRACT 3.5-3.10), the checksum container
reads one named file, rotation parses ``<RFC3339>_...`` names and skips directories, and
every snapshot name is refused when it starts with a dot (``validate_name``), so the
dot-directory ``.sidekick`` can never be taken for a snapshot, served, downloaded, deleted or
rotated. A plain ``ls`` or shell glob does not show it; ``ls -a`` or ``find`` shows one
directory that matches no snapshot pattern. The file's temp name lives inside that directory
too, so the top level of /backup does not change even mid-write. Elsewhere would be worse:
``/etc/kubernetes`` is not bound by every etcd command (extract binds only /backup), and a path
inside the container dies with it.

status.json is mode 0644 (the directory 0755): it holds timestamps, sizes, counters and short
cause labels, never an error text, a key or an endpoint, and a monitoring agent on the host
that does not run as root can then read freshness without being able to read the snapshots
(0600, CONTRACT 3.11).

Across restarts (RKE's ``RestartPolicy=always``) the last-success timestamps are read back from
the previous status.json, so a crash-looping container cannot look fresh; the counters start
again from zero, as Prometheus counters do after a restart.

The HTTP server is bounded: one thread answers one connection at a time, HTTP/1.0 (one request
per connection), each connection gets :data:`CONNECTION_DEADLINE` seconds in total before its
socket is shut down (a timer thread, at most one alive), a queue of :data:`LISTEN_BACKLOG`
pending connections, :data:`IDLE_TIMEOUT` for any one read or write, and the request size
limits of :mod:`http.server` (64 KiB lines, 100 headers). A port already in use is a warning, not the end of the backups.

Usage, from the rolling loop::

    telemetry = Telemetry.from_env(opts.creation, s3_backup=opts.s3_backup)  # None: disabled
    if telemetry:
        telemetry.start()
    ...
    with telemetry.stage("snapshot") as outcome:     # success, or the exception's cause
        snap = take_snapshot(name)
        outcome.size = snap.archive.size
    telemetry.stage_failed("upload", "s3 timed out")  # or report by hand
    ...
    telemetry.close()
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidekick.errors import SidekickError, UsageError
from sidekick.etcd import layout
from sidekick.etcd.options import format_go_duration
from sidekick.host.files import atomic_write, remove_leftovers
from sidekick.log import kv
from sidekick.paths import host_path

if TYPE_CHECKING:
    import socketserver

log = logging.getLogger(__name__)

METRICS_ENV = "SIDEKICK_METRICS_ADDRESS"
STATUS_PATH = f"{layout.PRIVATE_DIR}/status.json"
STATUS_MODE = 0o644
STATUS_SCHEMA = 1
STAGES = ("snapshot", "upload", "retention", "verify")
# The bounded set of failure causes (a label of the failures counter).
CAUSES = ("etcd_unreachable", "s3_unreachable", "s3_denied", "s3_no_bucket", "timeout", "disk", "corrupt", "other")
STALE_PERIODS = 2  # /healthz fails when the last success is older than this many creation periods
CONNECTION_DEADLINE = 10.0  # seconds one HTTP connection may take, in total
IDLE_TIMEOUT = 5.0  # seconds one socket read or write may wait
LISTEN_BACKLOG = 8
METRIC_PREFIX = "sidekick_etcd_backup_"
# The classic text format, what prometheus_client itself answers a scraper that asks for nothing
# else: every Prometheus release reads it.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Clock = Callable[[], float]


# --- decisions ---------------------------------------------------------------------------
def parse_address(text: str) -> tuple[str, int, socket.AddressFamily]:
    """``host:port`` to listen on: ``:9465`` means every IPv4 address, ``[::]:9465`` IPv6.

    The host must be an IP address (or ``localhost``): a name that needs DNS would make the
    metrics depend on the resolver at start-up.
    """
    import ipaddress

    host, sep, port_text = text.strip().rpartition(":")
    problem = None
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        problem = "expected HOST:PORT with a port from 0 to 65535 (127.0.0.1:9465, :9465, [::1]:9465)"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            if ipaddress.ip_address(host).version != 6:
                problem = "brackets are for IPv6 addresses"
        except ValueError:
            problem = f"{host!r} is not an IPv6 address"
    elif host in {"", "localhost"}:
        host = "0.0.0.0" if not host else "127.0.0.1"
    else:
        try:
            if ipaddress.ip_address(host).version != 4:
                problem = "write an IPv6 address in brackets ([::1]:9465)"
        except ValueError:
            problem = f"{host!r} is not an IP address"
    if problem:
        raise UsageError(f"{METRICS_ENV}={text!r}: {problem}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return host, int(port_text), family


_DISK = ("no space left", "disk quota", "read-only file system", "input/output error", "file too large",
         "permission denied", "operation not permitted")
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES, errno.EPERM})
_DENIED = ("denied", "invalidaccesskeyid", "signaturedoesnotmatch", "forbidden", "no s3 credentials",
           "expiredtoken", "invalidtoken")
_NO_BUCKET = ("nosuchbucket", "bucket not found", "is not found", "no s3 bucket")
_CORRUPT = ("snapshot check failed", "sha256", "checksum", "corrupt", "does not match", "mismatch", "crc",
            "truncated", "bad zip", "not a zip")
_UNREACHABLE = ("cannot reach", "could not connect", "connection refused", "connect timeout", "no route to host",
                "network is unreachable", "name or service not known", "temporary failure in name resolution",
                "not healthy", "health check failed", "unhealthy", "tls error", "ssl", "certificate verify failed",
                "connection reset", "connection aborted")
_TIMEOUT = ("timed out", "timeout", "deadline exceeded")
_UNREACHABLE_BY_STAGE = {"snapshot": "etcd_unreachable", "upload": "s3_unreachable", "retention": "s3_unreachable"}


def cause_label(stage: str, cause: str | BaseException) -> str:
    """The failure's label among :data:`CAUSES`, from an exception or its one-line message.

    An exact label passes through. Otherwise, in this order: an OSError's errno or text for a
    full, read-only or forbidden local disk -> ``disk``; S3 refusing the keys -> ``s3_denied``;
    a missing bucket -> ``s3_no_bucket``; a bad hash, CRC or archive -> ``corrupt``; a peer that
    cannot be reached (refused, DNS, TLS, etcd unhealthy) -> ``etcd_unreachable`` for the
    snapshot stage, ``s3_unreachable`` for upload and retention, and for verify whichever the
    text names; a timeout -> ``timeout``; anything else -> ``other``.
    """
    if isinstance(cause, str) and cause in CAUSES:
        return cause
    if isinstance(cause, TimeoutError):
        return "timeout"
    if isinstance(cause, OSError) and cause.errno in _DISK_ERRNOS:
        return "disk"
    text = str(cause).lower() if isinstance(cause, str) else f"{type(cause).__name__}: {cause}".lower()
    for words, label in ((_DISK, "disk"), (_DENIED, "s3_denied"), (_NO_BUCKET, "s3_no_bucket"), (_CORRUPT, "corrupt")):
        if any(word in text for word in words):
            return label
    if any(word in text for word in _UNREACHABLE):
        return _UNREACHABLE_BY_STAGE.get(stage) or ("s3_unreachable" if "s3" in text else "etcd_unreachable")
    if any(word in text for word in _TIMEOUT):
        return "timeout"
    return "other"


@dataclass
class StageRecord:
    """One stage's facts; times are Unix seconds (None: never)."""

    last_success: float | None = None
    last_attempt: float | None = None
    last_attempt_ok: bool | None = None
    last_duration_seconds: float | None = None  # of the last successful attempt
    last_failure: float | None = None
    last_failure_cause: str | None = None
    failures: dict[str, int] = field(default_factory=dict)  # cause -> count, this process


@dataclass
class Status:
    """What status.json holds (and what /metrics and /healthz show), as of ``updated``.

    The document (schema 1; times are RFC 3339 UTC strings with microseconds, or null)::

        {"schema": 1, "updated": T, "started": T, "creation_period_seconds": 43200.0,
         "s3_backup": true, "healthy": true, "reason": "ok: ...",
         "snapshot_size_bytes": 123 | null, "deleted_objects_total": 0,
         "stages": {"snapshot" | "upload" | "retention" | "verify": {
             "last_success": T, "last_attempt": T, "last_attempt_ok": true | false | null,
             "last_duration_seconds": 1.5 | null, "last_failure": T,
             "last_failure_cause": "<one of CAUSES>" | null, "failures": {"<cause>": 2}}}}

    ``healthy``/``reason`` are as of ``updated``; a reader should judge again with its own
    clock (:meth:`health`), since a hung writer stops updating the file.
    """

    started: float
    updated: float
    creation_period_seconds: float
    s3_backup: bool
    snapshot_size_bytes: int | None = None
    deleted_objects_total: int = 0
    stages: dict[str, StageRecord] = field(default_factory=lambda: {s: StageRecord() for s in STAGES})

    def health(self, now: float) -> tuple[bool, str]:
        """(healthy, one-line reason) at ``now``: see the module docstring for the rule."""
        limit = STALE_PERIODS * self.creation_period_seconds
        watched = ("snapshot", "upload") if self.s3_backup else ("snapshot",)
        fresh = []
        for stage in watched:
            last = self.stages[stage].last_success
            if last is None:
                waited = now - self.started
                if waited > limit:
                    return False, (f"stale: no successful {stage} since the start {_ago(waited)} ago "
                                   f"(limit {_ago(limit)}, {STALE_PERIODS} creation periods)")
                fresh.append(f"waiting for the first {stage} (started {_ago(waited)} ago)")
            elif now - last > limit:
                return False, (f"stale: last successful {stage} {_ago(now - last)} ago "
                               f"(limit {_ago(limit)}, {STALE_PERIODS} creation periods)")
            else:
                fresh.append(f"last {stage} {_ago(now - last)} ago")
        return True, f"ok: {', '.join(fresh)} (limit {_ago(limit)})"

    def to_json(self, now: float) -> str:
        healthy, reason = self.health(now)
        doc = {
            "schema": STATUS_SCHEMA,
            "updated": _stamp(self.updated),
            "started": _stamp(self.started),
            "creation_period_seconds": self.creation_period_seconds,
            "s3_backup": self.s3_backup,
            "healthy": healthy,
            "reason": reason,
            "snapshot_size_bytes": self.snapshot_size_bytes,
            "deleted_objects_total": self.deleted_objects_total,
            "stages": {
                name: {
                    "last_success": _stamp(rec.last_success),
                    "last_attempt": _stamp(rec.last_attempt),
                    "last_attempt_ok": rec.last_attempt_ok,
                    "last_duration_seconds": rec.last_duration_seconds,
                    "last_failure": _stamp(rec.last_failure),
                    "last_failure_cause": rec.last_failure_cause,
                    "failures": dict(sorted(rec.failures.items())),
                }
                for name, rec in self.stages.items()
            },
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Status:
        """Parse status.json; ValueError (one line) for anything that is not schema 1."""
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("schema") != STATUS_SCHEMA:
            raise ValueError(f"not a schema {STATUS_SCHEMA} status document")
        try:
            stages = {}
            for name in STAGES:
                raw = doc["stages"].get(name) or {}
                stages[name] = StageRecord(
                    last_success=_unstamp(raw.get("last_success")),
                    last_attempt=_unstamp(raw.get("last_attempt")),
                    last_attempt_ok=raw.get("last_attempt_ok"),
                    last_duration_seconds=raw.get("last_duration_seconds"),
                    last_failure=_unstamp(raw.get("last_failure")),
                    last_failure_cause=raw.get("last_failure_cause"),
                    failures={str(k): int(v) for k, v in (raw.get("failures") or {}).items()},
                )
            return cls(
                started=_unstamp(doc["started"]) or 0.0,
                updated=_unstamp(doc["updated"]) or 0.0,
                creation_period_seconds=float(doc["creation_period_seconds"]),
                s3_backup=bool(doc["s3_backup"]),
                snapshot_size_bytes=doc.get("snapshot_size_bytes"),
                deleted_objects_total=int(doc.get("deleted_objects_total") or 0),
                stages=stages,
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"missing or malformed field: {err}") from None


def _ago(seconds: float) -> str:
    return format_go_duration(dt.timedelta(seconds=round(max(seconds, 0.0))))


def _stamp(when: float | None) -> str | None:
    """RFC 3339 UTC with microseconds, so a read-back status keeps the exact time."""
    if when is None:
        return None
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _unstamp(text: object) -> float | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError(f"timestamp {text!r} is not a string")
    return dt.datetime.fromisoformat(text).timestamp()


class StatusError(SidekickError):
    pass


def read_status(path: Path | None = None) -> Status | None:
    """The status.json a rolling ``save`` wrote (default :data:`STATUS_PATH` under the root);
    None when there is none; StatusError (one line) when it cannot be read or parsed."""
    path = path or host_path(STATUS_PATH)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StatusError(f"cannot read {path}: {err.strerror}") from None
    try:
        return Status.from_json(text)
    except ValueError as err:
        raise StatusError(f"{path} is not a sidekick status document: {err}") from None


# --- the effects -------------------------------------------------------------------------
@dataclass
class Outcome:
    """Filled in by the body of :meth:`Telemetry.stage` to report what the stage did."""

    size: int | None = None
    deleted: int | None = None


class Telemetry:
    """The rolling loop's reports in, /metrics, /healthz and status.json out. Thread-safe:
    the loop reports, the HTTP thread reads."""

    def __init__(
        self,
        *,
        address: tuple[str, int, socket.AddressFamily] | None,
        creation_period: dt.timedelta,
        s3_backup: bool = False,
        status_path: Path | None = None,
        clock: Clock = time.time,
    ) -> None:
        if creation_period <= dt.timedelta(0):
            raise ValueError("creation period must be positive")
        self.listen = address
        self.status_path = status_path or host_path(STATUS_PATH)
        self._clock = clock
        self._lock = threading.Lock()  # guards the facts
        self._write_lock = threading.Lock()  # orders status.json writes (the last report wins)
        self._status = Status(started=clock(), updated=clock(),
                              creation_period_seconds=creation_period.total_seconds(), s3_backup=s3_backup)
        self._server: socketserver.TCPServer | None = None
        self._thread: threading.Thread | None = None
        self._registry: Any = None

    @classmethod
    def from_env(
        cls,
        creation_period: dt.timedelta,
        *,
        s3_backup: bool = False,
        environ: Mapping[str, str] | None = None,
        clock: Clock = time.time,
    ) -> Telemetry | None:
        """None unless ``SIDEKICK_METRICS_ADDRESS`` is set; UsageError for an invalid address."""
        text = (os.environ if environ is None else environ).get(METRICS_ENV, "").strip()
        if not text:
            return None
        return cls(address=parse_address(text), creation_period=creation_period, s3_backup=s3_backup, clock=clock)

    # --- reports ------------------------------------------------------------------------
    def stage_succeeded(self, stage: str, *, seconds: float, size: int | None = None,
                        deleted: int | None = None) -> None:
        """``stage`` finished well after ``seconds``; ``size``: the snapshot archive's bytes;
        ``deleted``: how many snapshots (local files or S3 objects) retention removed."""
        _check_stage(stage)
        with self._lock:
            now = self._clock()
            rec = self._status.stages[stage]
            rec.last_success = rec.last_attempt = now
            rec.last_attempt_ok = True
            rec.last_duration_seconds = float(seconds)
            if size is not None:
                self._status.snapshot_size_bytes = int(size)
            if deleted:
                self._status.deleted_objects_total += int(deleted)
        self._write_status()

    def stage_failed(self, stage: str, cause: str | BaseException) -> str:
        """``stage`` failed; ``cause`` is a label of :data:`CAUSES`, the error's one-line
        message or the exception. Returns the label it was counted under."""
        _check_stage(stage)
        label = cause_label(stage, cause)
        with self._lock:
            now = self._clock()
            rec = self._status.stages[stage]
            rec.last_attempt = rec.last_failure = now
            rec.last_attempt_ok = False
            rec.last_failure_cause = label
            rec.failures[label] = rec.failures.get(label, 0) + 1
        self._write_status()
        return label

    @contextlib.contextmanager
    def stage(self, stage: str, *, ignore: tuple[type[BaseException], ...] = ()) -> Iterator[Outcome]:
        """Time the block and report it: success, or the exception's cause (re-raised).

        Exceptions of the ``ignore`` types (a stop modelled as an exception) and BaseExceptions
        that are not Exceptions (an interrupt) are neither successes nor failures: nothing is
        reported; neither is anything the caller catches inside the block.
        """
        _check_stage(stage)
        outcome = Outcome()
        began = time.monotonic()
        try:
            yield outcome
        except ignore:
            raise
        except Exception as err:
            self.stage_failed(stage, err)
            raise
        self.stage_succeeded(stage, seconds=time.monotonic() - began, size=outcome.size, deleted=outcome.deleted)

    # --- views --------------------------------------------------------------------------
    def status(self) -> Status:
        """A copy of the current facts (``updated`` = now)."""
        with self._lock:
            copy = dataclasses.replace(self._status, stages={k: dataclasses.replace(v, failures=dict(v.failures))
                                                             for k, v in self._status.stages.items()})
        copy.updated = self._clock()
        return copy

    def health(self) -> tuple[bool, str]:
        return self.status().health(self._clock())

    def metrics_text(self) -> bytes:
        """The Prometheus exposition of the current facts."""
        from prometheus_client import CollectorRegistry, generate_latest

        with self._write_lock:
            if self._registry is None:
                self._registry = CollectorRegistry(auto_describe=False)
                self._registry.register(_Collector(self))
            registry = self._registry
        return bytes(generate_latest(registry))

    # --- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Read back the previous status, write the first status.json, start serving."""
        self._restore()
        self._write_status()
        if self.listen is None:
            return
        host, port, family = self.listen
        try:
            self._server = _serve((host, port), family, self)
        except OSError as err:
            log.warning("cannot serve metrics; backups go on without them",
                        extra=kv(address=f"{host}:{port}", error=err.strerror or str(err)))
            return
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="sidekick-metrics", daemon=True)
        self._thread.start()
        log.info("serving metrics", extra=kv(address=self.url or "", healthz="/healthz", status=str(self.status_path)))

    @property
    def url(self) -> str | None:
        """``http://host:port`` the server listens on (the real port when 0 was asked)."""
        if self._server is None:
            return None
        host, port = (str(part) for part in self._server.server_address[:2])
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def close(self) -> None:
        """Stop serving (waits for the request in flight); safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> Telemetry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _restore(self) -> None:
        """Keep the last known outcomes of a previous run (never its counters)."""
        try:
            previous = read_status(self.status_path)
        except StatusError as err:
            log.warning("ignoring the previous status", extra=kv(error=str(err)))
            return
        if previous is None:
            return
        with self._lock:
            for name, old in previous.stages.items():
                self._status.stages[name] = dataclasses.replace(old, failures={})
            self._status.snapshot_size_bytes = previous.snapshot_size_bytes

    def _write_status(self) -> None:
        """Replace status.json; a failure is a warning (telemetry never stops the backups)."""
        directory = self.status_path.parent
        try:
            with self._write_lock:
                text = self.status().to_json(self._clock())
                directory.mkdir(mode=0o755, parents=True, exist_ok=True)
                remove_leftovers(directory, names=[self.status_path.name])  # a kill -9 mid-write
                atomic_write(self.status_path, text, mode=STATUS_MODE)
        except OSError as err:
            log.warning("cannot write the status file", extra=kv(path=str(self.status_path),
                                                                 error=err.strerror or str(err)))


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")


class _Collector:
    """Renders the facts as metric families at scrape time: one source of truth, no copies."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self._telemetry.status()
        healthy, _ = status.health(status.updated)
        p = METRIC_PREFIX
        success = GaugeMetricFamily(p + "last_success_timestamp_seconds",
                                    "Unix time of the stage's last success.", labels=["stage"])
        attempt = GaugeMetricFamily(p + "last_attempt_timestamp_seconds",
                                    "Unix time the stage last ended, well or not.", labels=["stage"])
        attempt_ok = GaugeMetricFamily(p + "last_attempt_success",
                                       "1 if the stage's last attempt succeeded, 0 if it failed.", labels=["stage"])
        duration = GaugeMetricFamily(p + "last_duration_seconds",
                                     "How long the stage's last successful attempt took.", labels=["stage"])
        failures = CounterMetricFamily(p + "failures", "Failed attempts by stage and cause since the start.",
                                       labels=["stage", "cause"])
        for name, rec in status.stages.items():
            if rec.last_success is not None:
                success.add_metric([name], rec.last_success)
            if rec.last_attempt is not None:
                attempt.add_metric([name], rec.last_attempt)
            if rec.last_attempt_ok is not None:
                attempt_ok.add_metric([name], 1.0 if rec.last_attempt_ok else 0.0)
            if rec.last_duration_seconds is not None:
                duration.add_metric([name], rec.last_duration_seconds)
            for cause in CAUSES:
                failures.add_metric([name, cause], rec.failures.get(cause, 0))
        yield from (success, attempt, attempt_ok, duration, failures)
        if status.snapshot_size_bytes is not None:
            yield GaugeMetricFamily(p + "snapshot_size_bytes", "Size of the last successful snapshot archive.",
                                    value=status.snapshot_size_bytes)
        yield CounterMetricFamily(p + "deleted_objects", "Snapshots removed by retention since the start.",
                                  value=status.deleted_objects_total)
        yield GaugeMetricFamily(p + "healthy", "1 when /healthz answers 200 (backups fresh), else 0.",
                                value=1.0 if healthy else 0.0)
        yield GaugeMetricFamily(p + "creation_period_seconds", "The --creation period between snapshots.",
                                value=status.creation_period_seconds)


# --- the HTTP server ----------------------------------------------------------------------
def _serve(address: tuple[str, int], family: socket.AddressFamily, telemetry: Telemetry) -> socketserver.TCPServer:
    """Bind the bounded server (see the module docstring); :mod:`http.server` is imported
    here so that rolling ``save`` without metrics does not pay for it."""
    import http.server
    import socketserver

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: a client cannot hold the thread
        timeout = IDLE_TIMEOUT  # per socket operation; the server bounds the total

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                code, ctype, body = 200, METRICS_CONTENT_TYPE, telemetry.metrics_text()
            elif path == "/healthz":
                healthy, reason = telemetry.health()
                code, ctype, body = (200 if healthy else 503), "text/plain; charset=utf-8", (reason + "\n").encode()
            else:
                code, ctype, body = 404, "text/plain; charset=utf-8", b"not found: /metrics or /healthz\n"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics request", extra=kv(client=str(self.client_address[0]), request=format % args))

    class Server(socketserver.TCPServer):
        """Serial, with a total deadline per connection (not HTTPServer: its bind looks the
        host name up in DNS)."""

        allow_reuse_address = True
        request_queue_size = LISTEN_BACKLOG
        address_family = family

        def finish_request(self, request: Any, client_address: Any) -> None:
            def cut() -> None:
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)

            timer = threading.Timer(CONNECTION_DEADLINE, cut)
            timer.daemon = True
            timer.start()
            try:
                super().finish_request(request, client_address)
            finally:
                timer.cancel()

        def handle_error(self, request: Any, client_address: Any) -> None:
            log.debug("metrics request failed", extra=kv(client=str(client_address[0])), exc_info=True)

    return Server(address, Handler)
