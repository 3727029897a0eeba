"""``etcd-backup list``: every snapshot in /backup and S3, what save recorded, the last verify.

Sources: the local ``/backup`` (entries whose name starts with a dot, such as
``/backup/.sidekick/``, are never snapshots) and, with ``--s3-backup`` and the S3 flags, the
bucket's folder (not recursive, as S3 retention sees it). One row per snapshot name: a
``<name>.zip`` archive and a bare ``<name>`` file count as the same snapshot, and the same
name in both places is one row ``where=both``.

Per row: sizes and times from the directory entry and from ListObjectsV2 (one request per
1,000 objects: 10,000 objects are ten requests), the recorded facts (revision, keys, SHA-256;
:mod:`sidekick.etcd.facts`) from the local archive's manifest, and the last ``verify`` of the
name (:mod:`sidekick.etcd.trials`). S3 user metadata is not in a listing; reading it costs one
HEAD per object, so it is read only with ``--details`` (for rows not known locally). Plus the
rolling save's ``status.json`` (:func:`sidekick.etcd.telemetry.read_status`), judged with
this run's clock.

``--output json`` prints one document that validates against ``docs/list-schema.json``
(:data:`SCHEMA_ID`, :data:`SCHEMA_VERSION`): keys are stable, absent facts are ``null``, new
keys may be added within a version, never renamed or removed. ``--output table`` (default)
is for people.

Exit codes: 0 complete; :data:`EXIT_PARTIAL` (3) when the S3 listing failed: the local rows
and the S3 error are still printed; 2 for bad flags; 1 for anything else.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidekick.deadline import Deadline
from sidekick.errors import SidekickError
from sidekick.etcd import crypto, layout, trials
from sidekick.etcd.budgets import LIST_S3, Budgets
from sidekick.etcd.extract import manifest_digests, read_manifest_document
from sidekick.etcd.facts import SnapshotFacts
from sidekick.etcd.options import Options
from sidekick.log import kv

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA_ID = "https://sidekick.invalid/schemas/etcd-snapshot-list/v1.json"
EXIT_PARTIAL = 3
LIST_RETRIES = 1  # an interactive listing: one retry, within LIST_S3


@dataclass
class LocalCopy:
    path: str
    size: int
    modified: float
    format: str  # "zip" or "raw"
    archive_sha256: str | None = None


@dataclass
class S3Copy:
    key: str
    size: int
    modified: float | None
    archive_sha256: str | None = None


@dataclass
class Row:
    name: str
    local: LocalCopy | None = None
    s3: S3Copy | None = None
    facts: SnapshotFacts = field(default_factory=SnapshotFacts)
    verified: trials.Trial | None = None

    @property
    def where(self) -> str:
        return "both" if self.local and self.s3 else ("local" if self.local else "s3")

    @property
    def size(self) -> int | None:
        return self.local.size if self.local else (self.s3.size if self.s3 else None)

    @property
    def created(self) -> float | None:
        return self.local.modified if self.local else (self.s3.modified if self.s3 else None)


@dataclass
class Listing:
    rows: list[Row]
    s3_requested: bool
    s3_error: str | None = None
    s3_location: dict[str, str] = field(default_factory=dict)  # bucket, folder, endpoint
    status: dict[str, Any] | None = None
    status_error: str | None = None
    details: bool = False

    @property
    def complete(self) -> bool:
        return self.s3_error is None


# --- gathering --------------------------------------------------------------------------------
def scan_local() -> dict[str, LocalCopy]:
    """Snapshots in /backup: ``<name>.zip`` archives (or their ``.zip.age`` encryption), else
    bare ``<name>`` files."""
    found: dict[str, LocalCopy] = {}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(layout.backup_dir()) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat(follow_symlinks=False)
                if entry.name.endswith(layout.ARCHIVE_SUFFIX):
                    name = entry.name[: -len(layout.ARCHIVE_SUFFIX)]
                    found[name] = LocalCopy(layout.archive_entry(name), st.st_size, st.st_mtime, "zip")
                elif crypto.is_encrypted_archive(entry.name):  # --age-encrypt-local: facts sealed inside
                    name = crypto.plain_name(entry.name)[: -len(layout.ARCHIVE_SUFFIX)]
                    if name not in found or found[name].format == "raw":
                        found[name] = LocalCopy(f"{layout.BACKUP_DIR}/{entry.name}", st.st_size, st.st_mtime,
                                                "zip.age")
                elif entry.name not in found:
                    found.setdefault(entry.name, LocalCopy(layout.snapshot_entry(entry.name), st.st_size,
                                                           st.st_mtime, "raw"))
    return found


def local_facts(name: str, copy: LocalCopy) -> SnapshotFacts:
    if copy.format != "zip":
        return SnapshotFacts()
    document = read_manifest_document(layout.archive_path(name))
    facts = SnapshotFacts.from_manifest(document.get("snapshot"))
    if facts.sha256 is None:  # older manifests: the entry's SHA-256 only
        sha = manifest_digests(document).get(layout.snapshot_entry(name))
        facts = SnapshotFacts(**{**facts.to_manifest(), "sha256": sha})
    return facts


def s3_name(key: str, folder: str) -> str | None:
    """The snapshot name of an object directly in the folder (``.zip`` stripped), else None."""
    prefix = f"{folder}/" if folder else ""
    if not key.startswith(prefix) or key.endswith("/"):
        return None
    base = key[len(prefix):]
    if "/" in base or base.startswith("."):
        return None
    if crypto.is_encrypted_archive(base):
        base = crypto.plain_name(base)
    return base[: -len(layout.ARCHIVE_SUFFIX)] if base.endswith(layout.ARCHIVE_SUFFIX) else base


def scan_s3(opts: Options, budgets: Budgets, *,
            details_for: Callable[[str], bool] | None = None) -> tuple[dict[str, S3Copy], dict[str, SnapshotFacts]]:
    """(copies by name, facts from the metadata of the names ``details_for`` picks)."""
    from sidekick.etcd import s3

    config = s3.S3Config.from_options(opts)
    if not config.bucket:
        raise s3.S3Error("no S3 bucket given (--s3-bucketName)")
    phase = Deadline(budgets.seconds(LIST_S3), what="S3 listing")
    copies: dict[str, S3Copy] = {}
    facts: dict[str, SnapshotFacts] = {}
    with s3.S3Store(config, budgets=budgets, retries=LIST_RETRIES, phase=phase) as store:
        prefix = f"{config.folder}/" if config.folder else ""
        for obj in store.list_objects(prefix, recursive=False):
            name = s3_name(obj.key, config.folder)
            if name is not None and (name not in copies or obj.key.endswith(layout.ARCHIVE_SUFFIX)
                                     or crypto.is_encrypted_archive(obj.key)):
                copies[name] = S3Copy(obj.key, obj.size, obj.modified)
        for name in sorted(n for n in copies if details_for is not None and details_for(n)):
            metadata = store.head(copies[name].key).metadata
            facts[name] = SnapshotFacts.from_metadata(metadata)
            copies[name].archive_sha256 = metadata.get(s3.ARCHIVE_SHA_META)
    return copies, facts


def s3_location(opts: Options) -> dict[str, str]:
    from sidekick.etcd import s3

    return {"bucket": opts.s3_bucket_name, "folder": opts.s3_folder.strip("/"),
            "endpoint": opts.s3_endpoint or s3.DEFAULT_ENDPOINT}


def gather(opts: Options, budgets: Budgets) -> Listing:
    local = scan_local()
    listing = Listing([], s3_requested=opts.s3_backup, details=opts.details)
    rows = {name: Row(name, local=copy, facts=local_facts(name, copy)) for name, copy in local.items()}
    if opts.s3_backup:
        listing.s3_location = s3_location(opts)
        # --details: the metadata of each S3 row whose facts no local manifest gave.
        lacking = (lambda n: n not in rows or rows[n].facts.empty()) if opts.details else None
        try:
            copies, s3_facts = scan_s3(opts, budgets, details_for=lacking)
        except SidekickError as err:
            listing.s3_error = str(err)
            log.warning("cannot list S3: showing the local snapshots only", extra=kv(error=str(err)))
        else:
            for name, copy in copies.items():
                row = rows.setdefault(name, Row(name))
                row.s3 = copy
                if name in s3_facts:
                    row.facts = s3_facts[name]
    records = trials.recall_all()
    for name, row in rows.items():
        row.verified = records.get(name)
    listing.rows = sorted(rows.values(), key=lambda r: (r.created or 0.0, r.name))
    _attach_status(listing)
    return listing


def _attach_status(listing: Listing) -> None:
    from sidekick.etcd.telemetry import StatusError, read_status

    try:
        status = read_status()
    except StatusError as err:
        listing.status_error = str(err)
        return
    if status is not None:
        listing.status = json.loads(status.to_json(time.time()))  # health judged now, not when written


# --- rendering ---------------------------------------------------------------------------------
def stamp(when: float | None) -> str | None:
    if when is None:
        return None
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def row_document(row: Row) -> dict[str, Any]:
    facts = row.facts
    trial = row.verified
    verified = None
    if trial is not None:
        verified = {
            "ok": trial.ok, "at": trial.at, "source": trial.source, "method": trial.method,
            "seconds": trial.seconds, "sha256": trial.sha256, "revision": trial.revision, "keys": trial.keys,
            "cause": trial.cause,
            "current": None if facts.sha256 is None or trial.sha256 is None else trial.sha256 == facts.sha256,
        }
    return {
        "name": row.name,
        "where": row.where,
        "size": row.size,
        "created": stamp(row.created),
        "sha256": facts.sha256,
        "revision": facts.revision,
        "keys": facts.keys,
        "total_keys": facts.total_keys,
        "etcd_hash": facts.etcd_hash,
        "snapshot_size": facts.size,
        "sidekick_version": facts.version,
        "local": None if row.local is None else {
            "path": row.local.path, "size": row.local.size, "modified": stamp(row.local.modified),
            "format": row.local.format},
        "s3": None if row.s3 is None else {
            "key": row.s3.key, "size": row.s3.size, "modified": stamp(row.s3.modified),
            "archive_sha256": row.s3.archive_sha256},
        "verified": verified,
    }


def document(listing: Listing, *, now: float | None = None) -> dict[str, Any]:
    s3_source = None
    if listing.s3_requested:
        s3_source = {"ok": listing.s3_error is None, "error": listing.s3_error, "details": listing.details,
                     "bucket": listing.s3_location.get("bucket"), "folder": listing.s3_location.get("folder"),
                     "endpoint": listing.s3_location.get("endpoint"),
                     "count": sum(1 for r in listing.rows if r.s3) if listing.s3_error is None else None}
    return {
        "$schema": SCHEMA_ID,
        "schema": SCHEMA_VERSION,
        "generated": stamp(now if now is not None else time.time()),
        "complete": listing.complete,
        "sources": {
            "local": {"path": layout.BACKUP_DIR, "ok": True, "error": None,
                      "count": sum(1 for r in listing.rows if r.local)},
            "s3": s3_source,
        },
        "status": listing.status,
        "status_error": listing.status_error,
        "snapshots": [row_document(r) for r in listing.rows],
    }


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _verified_cell(doc: dict[str, Any] | None) -> str:
    if doc is None:
        return "never"
    state = "ok" if doc["ok"] else "FAILED"
    stale = " (older file)" if doc["current"] is False else ""
    return f"{state} {doc['at']} {doc['source']}{stale}"


def table(doc: dict[str, Any]) -> str:
    header = ("NAME", "WHERE", "SIZE", "CREATED", "SHA256", "REVISION", "KEYS", "VERIFIED")
    lines = [header]
    for row in doc["snapshots"]:
        lines.append((row["name"], row["where"], human_size(row["size"]), row["created"] or "-",
                      (row["sha256"] or "-")[:12], str(row["revision"] if row["revision"] is not None else "-"),
                      str(row["keys"] if row["keys"] is not None else "-"), _verified_cell(row["verified"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines]
    out.append("")
    local = doc["sources"]["local"]
    out.append(f"{local['count']} local snapshot(s) in {local['path']}")
    s3 = doc["sources"]["s3"]
    if s3 is not None:
        where = f"s3://{s3['bucket']}/{s3['folder'] + '/' if s3['folder'] else ''}"
        out.append(f"{s3['count']} S3 snapshot(s) in {where}" if s3["ok"] else
                   f"S3 NOT LISTED (partial listing): {s3['error']}")
    for row in doc["snapshots"]:
        verified = row["verified"]
        if verified is not None and not verified["ok"]:
            out.append(f"verify of {row['name']} failed: {verified['cause']}")
    status = doc["status"]
    if status is not None:
        out.append(f"rolling save: {'healthy' if status['healthy'] else 'UNHEALTHY'}: {status['reason']} "
                   f"(status.json updated {status['updated']})")
    elif doc["status_error"]:
        out.append(f"rolling save: status unreadable: {doc['status_error']}")
    else:
        out.append("rolling save: no status.json (telemetry off, or no rolling save ran here)")
    return "\n".join(out)


def run_list(opts: Options) -> int:
    listing = gather(opts, Budgets.from_options(opts))
    doc = document(listing)
    # One line: json's C encoder (indent would use the pure-Python one, a second for 10,000 rows).
    print(json.dumps(doc) if opts.output == "json" else table(doc), flush=True)
    return 0 if listing.complete else EXIT_PARTIAL

