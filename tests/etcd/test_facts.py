"""The recorded facts: manifest and S3 metadata round trips, and older manifests still read."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from sidekick.etcd.archive import write_archive
from sidekick.etcd.extract import read_manifest, read_manifest_document
from sidekick.etcd.facts import SnapshotFacts, disagreements

FACTS = SnapshotFacts(revision=42, keys=7, total_keys=19, etcd_hash=3141592653, size=20512, sha256="ab" * 32,
                      version="0.1.0")


def test_manifest_and_metadata_round_trip() -> None:
    assert SnapshotFacts.from_manifest(json.loads(json.dumps(FACTS.to_manifest()))) == FACTS
    metadata = FACTS.to_metadata()
    assert metadata["etcd-revision"] == "42" and metadata["snapshot-sha256"] == "ab" * 32
    assert all(isinstance(v, str) for v in metadata.values())
    # S3 servers may return metadata names in any case.
    assert SnapshotFacts.from_metadata({k.upper(): v for k, v in metadata.items()}) == FACTS


def test_status_of_etcdctl() -> None:
    status = {"hash": 3141592653, "revision": 42, "totalKey": 19, "totalSize": 20480}
    facts = SnapshotFacts.from_status(status, keys=7, size=20512, sha256="ab" * 32, version="0.1.0")
    assert facts == FACTS


def test_lenient_reading_drops_what_it_cannot_use() -> None:
    odd = SnapshotFacts.from_manifest({"revision": "12", "keys": True, "sha256": "AB" * 32, "size": [1]})
    assert odd == SnapshotFacts(revision=12, sha256="ab" * 32)
    assert SnapshotFacts.from_manifest("not an object").empty()
    assert SnapshotFacts.from_metadata({"etcd-revision": "x"}).empty()


def test_disagreements_compare_only_what_both_know() -> None:
    assert disagreements(FACTS, SnapshotFacts(revision=42), of="a", by="b") == []
    assert disagreements(FACTS, SnapshotFacts(revision=41, version="9"), of="manifest", by="metadata") == [
        "revision: manifest 42, metadata 41"]


def test_manifest_carries_the_facts_and_old_readers_still_read(tmp_path: Path) -> None:
    (tmp_path / "db").write_bytes(b"x" * 1000)
    new = tmp_path / "new.zip"
    result = write_archive(new, [("/backup/db", tmp_path / "db")], facts=lambda _: FACTS.to_manifest())
    document = read_manifest_document(new)
    assert document["snapshot"] == FACTS.to_manifest()
    assert read_manifest(new) == {"/backup/db": result.entries[0].sha256}
    with zipfile.ZipFile(new) as archive:
        assert archive.namelist() == ["/backup/db"] and archive.read("/backup/db") == b"x" * 1000
    # A manifest written before the facts existed reads as before, with no facts.
    old = tmp_path / "old.zip"
    write_archive(old, [("/backup/db", tmp_path / "db")])
    assert "snapshot" not in read_manifest_document(old)
    assert read_manifest(old) == read_manifest(new)
    assert SnapshotFacts.from_manifest(read_manifest_document(old).get("snapshot")).empty()
