"""The parsed command line of ``rke-etcd-backup etcd-backup SUBCOMMAND``, one object for all.

Every subcommand receives an :class:`Options`; its field names are the original's flag names
in snake_case (``--s3-bucketName`` -> ``s3_bucket_name``), so code and CONTRACT section 11 read
alike. Fields a subcommand does not declare keep their defaults.

Go semantics the original users rely on live here too: ``time.ParseDuration`` syntax for
``--creation``/``--retention`` (``5m``, ``72h0m0s``, ``1h30m``; ``24`` and ``1d`` are errors,
rancher/docs#2525) and the snapshot-name rules (rke#2408: a path or a ``.zip`` suffix used to
give "snapshot missing hash" far away from the cause).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field

from sidekick.errors import UsageError
from sidekick.etcd.layout import ARCHIVE_SUFFIX
from sidekick.retry import MAX_ATTEMPTS
from sidekick.settings import number

RETRY_WAIT_ENV = "SIDEKICK_RETRY_WAIT"
SERVE_ADDRESS_ENV = "SIDEKICK_SERVE_ADDRESS"
SERVE_PORT_ENV = "SIDEKICK_SERVE_PORT"
DEFAULT_SERVE_ADDRESS = "0.0.0.0"
DEFAULT_SERVE_PORT = 2379
DEFAULT_RETRY_WAIT = 15.0  # seconds between etcd snapshot attempts, as the original
DEFAULT_BACKUP_RETRIES = 4
DEFAULT_S3_RETRIES = 3
MAX_RETRIES = MAX_ATTEMPTS  # a user-given retry count; beyond it, a typo
MAX_RETRY_WAIT = 300.0


@dataclass
class Options:
    """One subcommand's flags.

    - ``command``: the subcommand (``save``, ``delete``, ``download``, ``serve``,
      ``extractstatefile``).
    - ``name``: ``--name``, the snapshot name: a file stem under /backup, validated by
      :func:`validate_name` when not empty (no ``/``, no ``..``, no ``.zip`` suffix).
    - ``endpoints``: ``--endpoints``, etcd endpoints as given (``<ip>:2379``, no scheme).
    - ``cacert``/``cert``/``key``: ``--cacert``/``--cert``/``--key`` (env ``ETCD_CACERT``/
      ``ETCD_CERT``/``ETCD_KEY``), paths as the container sees them (map with ``host_path``).
    - ``local_endpoint``: ``--local-endpoint`` (env ``LOCAL_ENDPOINT``), the peer host for
      ``download``; port 2379 is implied.
    - ``s3_backup``: ``--s3-backup`` (env ``S3_BACKUP`` except for ``delete``).
    - ``s3_endpoint``, ``s3_access_key``, ``s3_secret_key``, ``s3_bucket_name``,
      ``s3_region``, ``s3_endpoint_ca``, ``s3_folder``: the ``--s3-*`` flags, raw as given
      (keys and CA possibly base64; ``sidekick.etcd.s3`` decodes them). The keys are
      registered as log secrets by the CLI before anything logs.
    - ``creation``/``retention``: ``--creation``/``--retention`` as timedeltas (defaults 5m/24h).
    - ``once``: ``--once``. ``cleanup``: ``--cleanup`` (delete). ``debug``: ``--debug``
      (env ``RANCHER_DEBUG``).
    - ``backup_retries``/``s3_retries``: attempts after the first (defaults 4 and 3).
    - ``keep``: the opt-in ``--keep-*`` flags as given (None: absent), parsed with their
      ``SIDEKICK_KEEP_*`` variables by :func:`sidekick.etcd.retention.parse_policy`;
      ``dry_run``: ``prune --dry-run``; ``s3_catch_up``: ``--s3-catch-up`` (env
      ``SIDEKICK_S3_CATCH_UP``), local archives uploaded per run when S3 lacks them.
    - ``retry_wait``: seconds between etcd snapshot attempts; not a flag of the original:
      env ``SIDEKICK_RETRY_WAIT`` (default 15) so tests need not sleep a minute.
    - Ours, not the original's: ``verify``/``verify_every`` (rolling ``save``: a trial
      restore after every tick, or every Nth), ``output`` (``list``: table or json) and
      ``details`` (``list``: read each S3 object's metadata).
    - ``age_*``: client-side encryption (:mod:`sidekick.etcd.crypto`), none of them the
      original's: recipients for ``save``, an identity file for the reading commands.
    - ``s3_*_file``, ``s3_session_token``, ``s3_sse*``, ``s3_checksum``,
      ``s3_addressing_style``, ``s3_proxy``, ``s3_insecure_skip_verify``: S3 settings beyond the
      original's (:class:`sidekick.etcd.s3.S3Config`); empty means today's behaviour.
    """

    command: str = ""
    name: str = ""
    endpoints: str = "127.0.0.1:2379"
    cacert: str = ""
    cert: str = ""
    key: str = ""
    local_endpoint: str = ""
    s3_backup: bool = False
    s3_endpoint: str = ""
    s3_access_key: str = field(default="", repr=False)
    s3_secret_key: str = field(default="", repr=False)
    s3_bucket_name: str = ""
    s3_region: str = ""
    s3_endpoint_ca: str = field(default="", repr=False)
    s3_folder: str = ""
    creation: dt.timedelta = dt.timedelta(minutes=5)
    retention: dt.timedelta = dt.timedelta(hours=24)
    once: bool = False
    backup_retries: int = DEFAULT_BACKUP_RETRIES
    s3_retries: int = DEFAULT_S3_RETRIES
    cleanup: bool = False
    debug: bool = False
    keep: dict[str, str | None] = field(default_factory=dict)  # --keep-* as given (KEEP_OPTIONS)
    dry_run: bool = False
    s3_catch_up: int = 0
    retry_wait: float = DEFAULT_RETRY_WAIT
    verify: bool = False
    verify_every: int = 0
    output: str = "table"
    details: bool = False
    age_recipient: str = ""
    age_recipients_file: str = ""
    age_identity_file: str = ""
    age_encrypt_local: bool = False
    s3_access_key_file: str = ""
    s3_secret_key_file: str = ""
    s3_session_token: str = field(default="", repr=False)
    s3_sse: str = ""
    s3_sse_kms_key_id: str = ""
    s3_sse_c_key_file: str = ""
    s3_checksum: str = ""
    s3_addressing_style: str = ""
    s3_proxy: str = field(default="", repr=False)
    s3_insecure_skip_verify: bool = False


# --keep-*: the retention policy's opt-in rules (sidekick.etcd.retention applies them).
DEFAULT_FLOOR = 1


@dataclass(frozen=True)
class KeepOption:
    """One opt-in flag of the policy, its env var, and its help line."""

    flag: str
    env: str
    field: str
    help: str

    @property
    def param(self) -> str:
        """The click parameter name (``keep_last``)."""
        return self.flag[2:].replace("-", "_")


KEEP_OPTIONS = (
    KeepOption("--keep-last", "SIDEKICK_KEEP_LAST", "last", "keep the N newest snapshots"),
    KeepOption("--keep-hourly", "SIDEKICK_KEEP_HOURLY", "hourly",
               "keep the newest snapshot of each of the N most recent hours that have one (UTC)"),
    KeepOption("--keep-daily", "SIDEKICK_KEEP_DAILY", "daily",
               "keep the newest snapshot of each of the N most recent days that have one (UTC)"),
    KeepOption("--keep-weekly", "SIDEKICK_KEEP_WEEKLY", "weekly",
               "keep the newest snapshot of each of the N most recent ISO weeks that have one (UTC)"),
    KeepOption("--keep-monthly", "SIDEKICK_KEEP_MONTHLY", "monthly",
               "keep the newest snapshot of each of the N most recent months that have one (UTC)"),
    KeepOption("--keep-floor", "SIDEKICK_KEEP_FLOOR", "floor",
               f"never delete the N newest successful snapshots, whatever the other rules say "
               f"(default {DEFAULT_FLOOR}; 0 turns the floor off)"),
)


def retry_wait_from_env() -> float:
    return number(os.environ, RETRY_WAIT_ENV, DEFAULT_RETRY_WAIT, low=0, high=MAX_RETRY_WAIT)


def serve_port() -> int:
    """The peer port of ``serve`` and ``download`` (2379, where etcd listens while it runs)."""
    text = os.environ.get(SERVE_PORT_ENV, "").strip()
    if not text:
        return DEFAULT_SERVE_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{SERVE_PORT_ENV}={text!r} is not a TCP port")
    return int(text)


def serve_address() -> str:
    return os.environ.get(SERVE_ADDRESS_ENV, "").strip() or DEFAULT_SERVE_ADDRESS


def check_retries(flag: str, value: int) -> int:
    """Retry counts beyond :data:`MAX_RETRIES` are typos, and would outlast every budget."""
    if value > MAX_RETRIES:
        raise UsageError(f"{flag}={value} is more than {MAX_RETRIES} retries")
    return value


# --- snapshot names -------------------------------------------------------------------


def validate_name(name: str) -> str:
    """Reject names that would escape /backup or double the ``.zip`` (rke#2408)."""
    if "/" in name or "\\" in name:
        raise UsageError(f"invalid snapshot name {name!r}: a name, not a path (no '/')")
    if ".." in name or name == ".":
        raise UsageError(f"invalid snapshot name {name!r}: must not contain '..'")
    if name.lower().endswith(ARCHIVE_SUFFIX):
        stem = name[: -len(ARCHIVE_SUFFIX)]
        raise UsageError(f"invalid snapshot name {name!r}: give the name without .zip ({stem!r})")
    if "\x00" in name or any(ord(c) < 0x20 for c in name):
        raise UsageError(f"invalid snapshot name {name!r}: control characters")
    if name.startswith("."):
        raise UsageError(f"invalid snapshot name {name!r}: must not start with '.'")
    return name


# --- Go durations ---------------------------------------------------------------------
_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_COMPONENT = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]+)")


def parse_go_duration(text: str) -> dt.timedelta:
    """Parse Go's ``time.ParseDuration`` syntax (``72h0m0s``, ``1h30m``, ``1.5h``, ``-5m``)."""
    original = text
    sign = 1
    if text[:1] in "+-" and text:
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return dt.timedelta(0)
    if not text:
        raise ValueError(f"invalid duration {original!r}")
    total_ns = 0
    pos = 0
    while pos < len(text):
        m = _COMPONENT.match(text, pos)
        if not m or (not m.group(1) and not m.group(2)):
            raise ValueError(f"invalid duration {original!r}")
        whole, frac, unit = m.group(1), m.group(2) or "", m.group(3)
        if unit not in _UNITS_NS:
            raise ValueError(f"unknown unit {unit!r} in duration {original!r}")
        scale = _UNITS_NS[unit]
        total_ns += int(whole or "0") * scale
        if frac:
            total_ns += int(frac) * scale // (10 ** len(frac))
        pos = m.end()
    if total_ns > (1 << 63) - 1:
        raise ValueError(f"invalid duration {original!r}: out of range")
    return dt.timedelta(microseconds=sign * total_ns / 1000)


def format_go_duration(value: dt.timedelta) -> str:
    """Go's ``Duration.String()`` for whole seconds and up (``72h0m0s``), as the logs show it."""
    total = value.total_seconds()
    sign = "-" if total < 0 else ""
    total = abs(total)
    if total == 0:
        return "0s"
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    secs = f"{seconds:.9f}".rstrip("0").rstrip(".")
    if hours:
        return f"{sign}{int(hours)}h{int(minutes)}m{secs}s"
    if minutes:
        return f"{sign}{int(minutes)}m{secs}s"
    return f"{sign}{secs}s"
