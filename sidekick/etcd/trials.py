"""The record of trial restores (``verify``), kept so that ``list`` can show them.

One small JSON document per snapshot name, ``/backup/.sidekick/verified/<name>.json``,
replaced atomically by each ``verify`` of that name, whatever the source (local, S3, peer),
with the outcome: passed, or failed and why. Not an xattr on the archive: a verify of an S3
or peer copy has no local file to carry it, and a record must survive the local archive being
rotated while the S3 copy stays. Why under ``/backup/.sidekick/``: the directory every etcd
command binds, and a dot-directory that no snapshot name can be (the reasoning of
:mod:`sidekick.etcd.telemetry`, whose status.json lives beside it). Mode 0644 like
status.json: names, digests, revisions and short causes, nothing secret.

A record states the SHA-256 of the snapshot it tried, so a reader can tell whether it still
describes the file of that name today (``list`` shows it either way, with the digest).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from sidekick.host.files import atomic_write, remove_leftovers
from sidekick.log import kv
from sidekick.paths import host_path

log = logging.getLogger(__name__)

RECORD_DIR = "/backup/.sidekick/verified"
RECORD_MODE = 0o644
# Records are not deleted with their snapshot (an S3 copy may outlive the local one), so the
# directory keeps the newest MAX_RECORDS (a rolling --verify every 5 minutes: three days).
MAX_RECORDS = 1000
METHOD = "trial-restore"  # etcdctl snapshot restore, then a throwaway member read back


@dataclass(frozen=True)
class Trial:
    """One verification: ``at`` is RFC 3339 UTC, ``source`` local, s3 or peer."""

    name: str
    ok: bool
    at: str
    source: str
    seconds: float
    sha256: str | None = None
    revision: int | None = None
    keys: int | None = None
    cause: str | None = None
    method: str = METHOD


def now_stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_dir() -> Path:
    return host_path(RECORD_DIR)


def record(trial: Trial) -> None:
    """Write the record; a failure is a warning (the verification itself stands)."""
    directory = record_dir()
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        path = directory / f"{trial.name}.json"
        remove_leftovers(directory, names=[path.name])  # a kill -9 mid-write
        atomic_write(path, json.dumps(asdict(trial), sort_keys=True) + "\n", mode=RECORD_MODE)
        trim(directory, keep=MAX_RECORDS)
    except OSError as err:
        log.warning("cannot record the verification", extra=kv(name=trial.name, error=err.strerror or str(err)))


def trim(directory: Path, *, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest records; return what went."""
    records = []
    for path in directory.iterdir():
        if path.suffix == ".json" and not path.name.startswith("."):
            with contextlib.suppress(FileNotFoundError):
                records.append((path.stat().st_mtime_ns, path))
    records.sort(reverse=True)
    removed = []
    for _, path in records[keep:]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _parse(text: str) -> Trial | None:
    with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
        body = json.loads(text)
        return Trial(
            name=str(body["name"]), ok=bool(body["ok"]), at=str(body["at"]), source=str(body["source"]),
            seconds=float(body["seconds"]), sha256=body.get("sha256"), revision=body.get("revision"),
            keys=body.get("keys"), cause=body.get("cause"), method=str(body.get("method") or METHOD),
        )
    return None


def recall_all() -> dict[str, Trial]:
    """Every readable record by snapshot name (unreadable ones are skipped)."""
    found: dict[str, Trial] = {}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for path in record_dir().iterdir():
            if path.name.startswith(".") or path.suffix != ".json":
                continue
            with contextlib.suppress(OSError):
                trial = _parse(path.read_text())
                if trial is not None and trial.name == path.stem:
                    found[trial.name] = trial
    return found
