"""Remember that a file's content was verified, so the next ``serve`` need not re-read it.

RKE declares a serve container dead when it is not running 5 s after start, and extracting a
1 GB snapshot takes seconds. Once our extraction or download has verified a file (zip CRC, SHA-256), the digests
are stored in a ``user.`` extended attribute ON THE FILE ITSELF, together with its size and
mtime: the record disappears with the file (``delete`` needs to know nothing about it), and
any later write changes the mtime and invalidates it. Without xattr support (some overlay or
network filesystems) nothing is recorded and callers fall back to re-verifying.

A file extracted from an archive also records which archive file it came from (inode, size,
mtime and ctime: a write or ``touch`` changes the ctime, which no one can set back), so a
second ``serve`` knows the file without opening the archive at all: the zip reader, some
0.4 MiB of the process that then stays up for the whole restore, is never loaded. Any other
archive, or the same one changed, is opened and checked entry by entry as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sidekick.log import kv

log = logging.getLogger(__name__)

XATTR = "user.sidekick.verified"


@dataclass(frozen=True)
class Digest:
    """What a verified file's bytes hash to (``crc32`` only when a zip entry was checked)."""

    size: int
    sha256: str
    crc32: int | None = None


@dataclass(frozen=True)
class SnapshotFile:
    """The uncompressed snapshot ready to be served; ``digest`` None when nothing vouches for it."""

    path: Path
    digest: Digest | None
    origin: str  # "extracted", "already verified", "uncompressed file"


def identity(st: os.stat_result) -> dict[str, int]:
    """What tells one version of a file from another without reading it."""
    return {"ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def record(path: Path, digest: Digest, *, source: os.stat_result | None = None) -> bool:
    """Store ``digest`` for ``path`` as it is now (``source``: the archive it was extracted
    from, as it was when read); False when the filesystem refuses xattrs."""
    try:
        st = os.stat(path, follow_symlinks=False)
        if st.st_size != digest.size:
            raise ValueError(f"{path}: size {st.st_size} is not the verified {digest.size}")
        body: dict[str, object] = {"size": digest.size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
                                   "sha256": digest.sha256}
        if digest.crc32 is not None:
            body["crc32"] = digest.crc32
        if source is not None:
            body["source"] = identity(source)
        os.setxattr(path, XATTR, json.dumps(body, sort_keys=True).encode(), follow_symlinks=False)
    except OSError as err:
        log.debug("cannot record verification of %s: %s", path, err)
        return False
    return True


def recall(path: Path, *, source: Path | None = None) -> Digest | None:
    """The digest recorded for ``path`` if the file is still the one that was verified (and,
    with ``source``, was extracted from that archive file as it is now)."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        st = os.stat(path, follow_symlinks=False)
        body = json.loads(os.getxattr(path, XATTR, follow_symlinks=False))
        if (body["size"], body["mtime_ns"], body["ino"]) != (st.st_size, st.st_mtime_ns, st.st_ino):
            return None
        if source is not None and body.get("source") != identity(os.stat(source)):
            return None
        crc = body.get("crc32")
        return Digest(int(body["size"]), str(body["sha256"]), None if crc is None else int(crc))
    return None


def already_verified(path: Path, digest: Digest) -> SnapshotFile:
    """``path``, kept as it is: the digest recorded for it vouches for it."""
    log.info("snapshot already extracted and verified", extra=kv(path=path, size=digest.size, sha256=digest.sha256))
    return SnapshotFile(path, digest, "already verified")


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read through hashlib's own reused buffer (1 MiB reads, at glibc's
    mmap threshold, were each mapped and faulted in anew: 2 MiB more RSS)."""
    import hashlib  # here: a serve of an already verified file hashes nothing

    with open(path, "rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()
