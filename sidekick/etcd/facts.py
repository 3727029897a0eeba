"""What a restore of a snapshot must reproduce, recorded when ``save`` takes it.

A snapshot can be empty, truncated or hash-less and nobody notices until the outage that needs
it. So ``save`` records, beside the SHA-256s it already had, what etcd itself says about the
file and what a restored member must show again:

- ``revision``: the store revision of the snapshot (``etcdctl snapshot status``); a member
  restored from the file answers with the same revision;
- ``keys``: the number of live keys at that revision, asked of etcd right after the snapshot
  (``etcdctl get "" --prefix --rev=<revision>``: a restored member must count the same);
  None when etcd could not say (compacted meanwhile, or an older archive);
- ``total_keys`` and ``etcd_hash``: ``snapshot status``'s ``totalKey`` (every key *revision*
  stored, history included) and its hash over the database's buckets: a check of the file
  itself, without starting anything;
- ``size`` and ``sha256``: of the uncompressed snapshot (the archive entry ``/backup/<name>``);
- ``version``: the sidekick version that took it.

The same facts travel two ways: in the archive's JSON manifest (the zip comment, under
``"snapshot"``; the Go tool ignores the comment) and as S3 user metadata (strings, lowercase
``x-amz-meta-`` names, :data:`META`), so ``list`` and ``verify`` can read them without
downloading the archive. Every field is optional on reading: archives of the Go tool and of
older sidekick versions have none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

# S3 user metadata names (x-amz-meta-<name>); snapshot-sha256 and archive-sha256 predate these.
META = {
    "revision": "etcd-revision",
    "keys": "etcd-keys",
    "total_keys": "etcd-total-keys",
    "etcd_hash": "etcd-hash",
    "size": "snapshot-size",
    "sha256": "snapshot-sha256",
    "version": "sidekick-version",
}
_INTS = {"revision", "keys", "total_keys", "etcd_hash", "size"}


@dataclass(frozen=True)
class SnapshotFacts:
    revision: int | None = None
    keys: int | None = None
    total_keys: int | None = None
    etcd_hash: int | None = None
    size: int | None = None
    sha256: str | None = None
    version: str | None = None

    @classmethod
    def from_status(cls, status: Mapping[str, object], *, keys: int | None, size: int, sha256: str,
                    version: str | None) -> SnapshotFacts:
        """From ``etcdctl snapshot status -w json`` (``revision``, ``totalKey``, ``hash``)."""
        return cls(revision=_int(status.get("revision")), keys=keys, total_keys=_int(status.get("totalKey")),
                   etcd_hash=_int(status.get("hash")), size=size, sha256=sha256, version=version)

    def to_manifest(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_manifest(cls, body: object) -> SnapshotFacts:
        """Lenient: a field of the wrong type is dropped (None), never an error."""
        if not isinstance(body, Mapping):
            return cls()
        return cls(**{f.name: _typed(f.name, body.get(f.name)) for f in fields(cls)})

    def to_metadata(self) -> dict[str, str]:
        return {META[k]: str(v) for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> SnapshotFacts:
        lowered = {k.lower(): v for k, v in metadata.items()}
        return cls(**{f.name: _typed(f.name, lowered.get(META[f.name])) for f in fields(cls)})

    def empty(self) -> bool:
        return all(v is None for v in asdict(self).values())


def disagreements(recorded: SnapshotFacts, found: SnapshotFacts, *, of: str, by: str) -> list[str]:
    """``field <of> <value> but <by> <value>`` for each field both know and differ on."""
    out = []
    for f in fields(SnapshotFacts):
        if f.name == "version":
            continue  # who wrote it, not what it holds
        want, got = getattr(recorded, f.name), getattr(found, f.name)
        if want is not None and got is not None and want != got:
            out.append(f"{f.name}: {of} {want}, {by} {got}")
    return out


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _typed(name: str, value: object) -> Any:
    if value is None:
        return None
    if name in _INTS:
        return _int(value)
    return value.lower() if name == "sha256" and isinstance(value, str) else (
        value if isinstance(value, str) else None)
