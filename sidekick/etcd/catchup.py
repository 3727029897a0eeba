"""S3 catch-up: snapshots taken while S3 was down reach the bucket once it is back.

Opt-in (``--s3-catch-up=K``, env ``SIDEKICK_S3_CATCH_UP``): after a run's own upload, the
local rolling archives (``<RFC3339>_etcd.zip`` in /backup) that the bucket lacks, or holds with
another size or SHA-256, are uploaded oldest first, at most K per run, inside the same S3
budget. An archive confirmed in the bucket is remembered in a ``user.`` extended attribute on
the local file (key, SHA-256, and the file's mtime, so any rewrite forgets it), so a later run
costs one listing and no HEAD for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from sidekick.etcd import crypto, layout, retention
from sidekick.etcd.extract import manifest_digests, read_manifest_document
from sidekick.etcd.facts import SnapshotFacts
from sidekick.etcd.prune import local_files
from sidekick.etcd.s3 import (
    AGE_CONTENT_TYPE,
    ARCHIVE_SHA_META,
    ENCRYPTION_META,
    SNAPSHOT_SHA_META,
    S3Store,
)
from sidekick.etcd.verified import file_sha256
from sidekick.host.files import temp_path
from sidekick.log import kv

log = logging.getLogger(__name__)

XATTR = "user.sidekick.s3"


def _confirmed(path: Path, key: str) -> bool:
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        body = json.loads(os.getxattr(path, XATTR))
        return bool(body["key"] == key and body["mtime_ns"] == path.stat().st_mtime_ns)
    return False


def remember(path: Path, key: str, sha256: str) -> None:
    """Note that ``key`` holds ``path`` as it is now (silently nothing without xattrs)."""
    with contextlib.suppress(OSError):
        body = {"key": key, "sha256": sha256, "mtime_ns": path.stat().st_mtime_ns}
        os.setxattr(path, XATTR, json.dumps(body, sort_keys=True).encode())


def catch_up(store: S3Store, directory: Path, *, limit: int, skip: str = "",
             age: crypto.AgeSettings | None = None) -> int:
    """Upload up to ``limit`` local rolling archives the bucket lacks or holds different,
    oldest first (``skip``: the archive this run uploaded itself); return how many went.

    With age recipients a plain local archive belongs in the bucket as ``<name>.zip.age``,
    whose ``archive-sha256`` metadata is the plaintext's (its size says nothing); a local
    ``<name>.zip.age`` (``--age-encrypt-local``) goes up as it is, the same bytes.
    """
    age = age or crypto.AgeSettings()
    folder = store.config.folder
    listed = {o.key: o.size for o in store.list_objects(f"{folder}/" if folder else "", recursive=False)}
    local = sorted((s for s in retention.local_rolling(local_files(directory))
                    if s.successful and s.name != skip
                    and (s.name.endswith(layout.ARCHIVE_SUFFIX) or crypto.is_encrypted_archive(s.name))),
                   key=lambda s: (s.time, s.name))
    uploaded = 0
    for snapshot in local:
        sealed = crypto.is_encrypted_archive(snapshot.name)
        encrypt = age.encrypts and not sealed
        path = directory / snapshot.name
        key = store.config.key(crypto.encrypted_name(snapshot.name) if encrypt else snapshot.name)
        same_size = key in listed and (encrypt or listed[key] == snapshot.size)
        if same_size and _confirmed(path, key):
            continue
        sha = "" if sealed else file_sha256(path)  # a sealed file's plaintext is not read here
        if same_size and sealed:
            remember(path, key, sha)
            continue
        if same_size:
            metadata = store.head(key).metadata
            if metadata.get(ARCHIVE_SHA_META, "").lower() == sha:
                remember(path, key, sha)
                continue
        if uploaded >= limit:
            log.info("more local snapshots are missing from S3: the next run continues", extra=kv(limit=limit))
            break
        metadata = {ENCRYPTION_META: crypto.AGE} if sealed or encrypt else {}
        if not sealed:
            document = read_manifest_document(path)
            # The facts save recorded travel as metadata, as with a tick's own upload.
            metadata.update(SnapshotFacts.from_manifest(document.get("snapshot")).to_metadata())
            metadata[ARCHIVE_SHA_META] = sha
            stem = snapshot.name[: -len(layout.ARCHIVE_SUFFIX)]
            snapshot_sha = manifest_digests(document).get(layout.snapshot_entry(stem))
            if snapshot_sha:
                metadata[SNAPSHOT_SHA_META] = snapshot_sha
        if sealed:
            store.upload_file(path, key, metadata=metadata, content_type=AGE_CONTENT_TYPE)
        elif encrypt:
            temp = temp_path(path.with_name(crypto.encrypted_name(path.name)))
            try:
                crypto.encrypt_file(path, temp, age.recipients, stop=store.stop)
                store.upload_file(temp, key, metadata=metadata, content_type=AGE_CONTENT_TYPE)
            finally:
                temp.unlink(missing_ok=True)
        else:
            store.upload_file(path, key, metadata=metadata)
        remember(path, key, sha)
        uploaded += 1
        log.info("caught up: uploaded a snapshot S3 lacked", extra=kv(key=key, size=snapshot.size,
                                                                   reason="different" if key in listed else "missing"))
    return uploaded
