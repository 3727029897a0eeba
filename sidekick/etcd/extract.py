"""Reading snapshot archives safely: the snapshot for serve and restore, the state file (3.3, 3.11).

An archive is ``/backup/<name>.zip`` whose entries have ABSOLUTE names: ``/backup/<name>``
(the etcd database) and optionally ``/etc/kubernetes/<name>.rkestate`` (the cluster state).
Archives of the Go tool (deflate with data descriptors, no comment) and ours (plus a JSON
manifest of SHA-256s in the comment, :func:`read_manifest`) are read
the same way.

Safety, because an archive can come from S3 or from a peer's disk:

- only the exact entry asked for is read, and its name must be a plain file directly inside
  its directory (no ``..``, no ``//``, no NUL): nothing outside ``/backup``,
  ``/etc/kubernetes`` and ``/tmp/cluster.rkestate`` is ever written;
- declared sizes are checked before a byte is inflated: over :data:`MAX_SNAPSHOT_BYTES`
  (or :data:`MAX_STATE_BYTES`), a ratio deflate cannot produce (:data:`MAX_RATIO`), or more
  than the free space is refused (zip bombs, full disks: rancher/rancher#21675), and inflating
  never produces more than the declared size;
- the output goes to a temporary name and is renamed only after its size, CRC-32 and (when
  the manifest has it) SHA-256 match; anything else leaves the previous file untouched.

Inflate uses ISA-L (several times zlib's speed) while the output is hashed and written on
other threads (:mod:`sidekick.etcd.stream`); memory stays a few chunks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import struct
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, cast

from sidekick.deadline import Stopped
from sidekick.errors import SidekickError
from sidekick.etcd import layout, verified
from sidekick.etcd.progress import Progress
from sidekick.etcd.verified import Digest, SnapshotFile
from sidekick.host.files import atomic_output, atomic_write, remove_leftovers
from sidekick.host.signals import StopRequest
from sidekick.log import kv
from sidekick.paths import host_path

log = logging.getLogger(__name__)

MAX_SNAPSHOT_BYTES = 64 << 30  # etcd's own hard quota is 8 GiB; beyond 64 GiB a size is a lie
MAX_STATE_BYTES = 64 << 20  # a cluster.rkestate is a few hundred KiB of JSON
MAX_RATIO = 1100  # deflate cannot exceed about 1032:1; a larger declared ratio is a bomb
MAX_ENTRIES = 1024
CHUNK = 4 << 20  # the most one inflate call may produce
# Compressed input per inflate call. Its output (3-4x) is one piece in the hash/write queue, and
# the inflater briefly holds it twice: 64 KiB keeps the extraction at +1.8 MiB RSS where 256 KiB
# took +4.6 (etcd footprint bench's 64 MB snapshot), and is no slower (pieces stay in cache).
READ_SIZE = 64 << 10

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_LOCAL_SIGNATURE = 0x04034B50


class ArchiveError(SidekickError):
    """The archive is unusable (corrupt, hostile, truncated): say which and why."""


def destination(entry_name: str, directory: str) -> Path:
    """Where entry ``entry_name`` may be written: a plain file directly inside ``directory``."""
    base = posixpath.basename(entry_name)
    if (
        "\x00" in entry_name
        or "\\" in entry_name
        or posixpath.normpath(entry_name) != entry_name
        or posixpath.dirname(entry_name) != directory
        or base in ("", ".", "..")
    ):
        raise ArchiveError(f"refusing archive entry {entry_name!r}: it would be written outside {directory}")
    return host_path(entry_name)


def manifest_document(comment: bytes) -> dict[str, object]:
    """The JSON manifest :func:`sidekick.etcd.archive.write_archive` puts in the zip comment;
    ``{}`` when absent (archives of the Go tool have no comment) or unreadable."""
    try:
        body = json.loads(comment.decode("utf-8")) if comment else {}
    except (UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(body, dict) or "sidekick" not in body or not isinstance(body.get("sha256"), dict):
        return {}
    return body


def read_manifest_document(zip_path: Path) -> dict[str, object]:
    """:func:`manifest_document` of the archive at ``zip_path`` (``{}`` when it cannot be read)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            comment = archive.comment
    except (OSError, zipfile.BadZipFile):
        return {}
    return manifest_document(comment)


def manifest_digests(body: Mapping[str, object]) -> dict[str, str]:
    digests = body.get("sha256")
    return {str(k): str(v) for k, v in digests.items()} if isinstance(digests, dict) else {}


def read_manifest(zip_path: Path) -> dict[str, str]:
    """The ``{entry name: sha256 hex}`` recorded by ``write_archive``; ``{}`` when absent."""
    return manifest_digests(read_manifest_document(zip_path))


def check_declared(info: zipfile.ZipInfo, *, limit: int, archive: Path) -> None:
    """Refuse an entry whose declared sizes are absurd before inflating anything."""
    where = f"entry {info.filename} of {archive}"
    if info.flag_bits & 0x1:
        raise ArchiveError(f"{where} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ArchiveError(f"{where} uses compression method {info.compress_type} (only deflate and store)")
    if info.file_size > limit:
        raise ArchiveError(f"{where} declares {info.file_size} bytes, more than the {limit} allowed")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise ArchiveError(f"{where} is stored but declares different sizes")
    if info.file_size > MAX_RATIO * max(info.compress_size, 1) and info.file_size > CHUNK:
        raise ArchiveError(
            f"{where} declares {info.file_size} bytes from {info.compress_size} compressed: "
            "a ratio deflate cannot produce (zip bomb?)"
        )


def check_free_space(directory: Path, needed: int) -> None:
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise ArchiveError(f"not enough space in {directory}: need {needed} bytes, {free} free")


class Archive:
    """An open snapshot archive: exact-name lookup and verified streaming of one entry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise ArchiveError(f"archive {path} not found") from None
        except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
            raise ArchiveError(f"{path} is not a readable zip archive: {err}") from None
        if len(self._zip.filelist) > MAX_ENTRIES:
            self._zip.close()
            raise ArchiveError(f"{path} has {len(self._zip.filelist)} entries; a snapshot archive has two")
        self.manifest = manifest_digests(manifest_document(self._zip.comment))
        self.source = os.fstat(cast(BinaryIO, self._zip.fp).fileno())  # the file read (open while the zip is)

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._zip.close()

    def names(self) -> list[str]:
        return [info.filename for info in self._zip.filelist]

    def entry(self, name: str) -> zipfile.ZipInfo | None:
        """The entry named exactly ``name`` (the Go tool matches exactly too)."""
        found = [info for info in self._zip.filelist if info.filename == name]
        if len(found) > 1:
            raise ArchiveError(f"{self.path} has {len(found)} entries named {name}; refusing an ambiguous archive")
        return found[0] if found else None

    def require(self, name: str) -> zipfile.ZipInfo:
        info = self.entry(name)
        if info is None:
            listed = ", ".join(self.names()) or "none"
            raise ArchiveError(f"entry {name} not found in {self.path} (entries: {listed})")
        return info

    def _data_start(self, source: BinaryIO, info: zipfile.ZipInfo) -> None:
        source.seek(info.header_offset)
        header = source.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size:
            raise ArchiveError(f"{self.path} is truncated (entry {info.filename})")
        fields = _LOCAL_HEADER.unpack(header)
        if fields[0] != _LOCAL_SIGNATURE:
            raise ArchiveError(f"{self.path}: bad local header for entry {info.filename}")
        name_len, extra_len = fields[9], fields[10]
        local_name = source.read(name_len).decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace")
        if local_name != info.orig_filename:
            raise ArchiveError(f"{self.path}: entry {info.filename} has a different name in its local header")
        source.seek(extra_len, os.SEEK_CUR)

    def chunks(self, info: zipfile.ZipInfo, *, chunk: int = CHUNK, read_size: int = READ_SIZE) -> Iterator[bytes]:
        """The entry's bytes, at most ``chunk`` at a time, never past its declared size.

        Input is read ``read_size`` at a time, small enough that one inflate call usually
        consumes all of it (no copies of a leftover tail), while ``chunk`` caps each output
        so a bomb cannot balloon memory. Size and CRC-32 are the caller's to check.
        """
        from isal import isal_zlib  # a serve of a file already verified reads no entry

        inflate_error = cast(type[Exception], isal_zlib.IsalError)  # the stub says instance; it is a class
        with open(self.path, "rb") as source:
            self._data_start(source, info)
            remaining = info.compress_size
            produced = 0
            inflater = isal_zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
            tail = b""
            while True:
                if not tail:
                    if remaining <= 0:
                        break
                    data = source.read(min(read_size, remaining))
                    if not data:
                        raise ArchiveError(f"{self.path} is truncated (entry {info.filename})")
                    remaining -= len(data)
                else:
                    data = tail
                if inflater is None:
                    out, tail = data, b""
                else:
                    try:
                        out = inflater.decompress(data, chunk)
                    except inflate_error as err:
                        raise ArchiveError(f"entry {info.filename} of {self.path} is corrupt: {err}") from None
                    tail = inflater.unconsumed_tail
                produced += len(out)
                if produced > info.file_size:
                    raise ArchiveError(f"entry {info.filename} of {self.path} inflates past its declared size")
                if out:
                    yield out
                if inflater is not None and inflater.eof:
                    break
            if inflater is not None and not inflater.eof:
                raise ArchiveError(f"entry {info.filename} of {self.path} is truncated (deflate stream ends early)")

    def _check_result(self, info: zipfile.ZipInfo, digest: Digest, expected_sha256: str | None) -> None:
        where = f"entry {info.filename} of {self.path}"
        if digest.size != info.file_size:
            raise ArchiveError(f"{where}: {digest.size} bytes, the archive declares {info.file_size}")
        if digest.crc32 is not None and digest.crc32 != info.CRC:
            raise ArchiveError(f"{where}: CRC-32 {digest.crc32:08x} does not match the recorded {info.CRC:08x}")
        if expected_sha256 and digest.sha256 != expected_sha256.lower():
            raise ArchiveError(f"{where}: SHA-256 {digest.sha256} does not match the manifest's {expected_sha256}")

    def extract(self, info: zipfile.ZipInfo, dest: Path, *, stop: StopRequest, limit: int | None = None) -> Digest:
        """Write the entry to ``dest`` (0600) only once it is complete and verified."""
        check_declared(info, limit=MAX_SNAPSHOT_BYTES if limit is None else limit, archive=self.path)
        for stale in remove_leftovers(dest.parent, names=[dest.name]):
            log.info("removed a leftover of an interrupted run", extra=kv(path=stale))
        check_free_space(dest.parent, info.file_size)
        expected = self.manifest.get(info.filename)
        progress = Progress(log, "extract", total=info.file_size, entry=info.filename)
        from sidekick.etcd.stream import HashingWriter

        with atomic_output(dest, mode=0o600) as pending:
            writer = HashingWriter(pending.file.fileno(), chunk=CHUNK, crc32=True)
            try:
                for piece in self.chunks(info):
                    if stop.is_set():
                        raise Stopped("extraction interrupted")
                    writer.submit_bytes(piece)
                    progress.add(len(piece))
            except BaseException:
                writer.abort()
                raise
            digest = writer.finish()
            self._check_result(info, digest, expected)
        progress.finish(size=digest.size, sha256=digest.sha256)
        verified.record(dest, digest, source=self.source)
        return digest

    def read(self, info: zipfile.ZipInfo, *, limit: int) -> bytes:
        """A small entry, verified, in memory (the state file)."""
        from isal import isal_zlib

        check_declared(info, limit=limit, archive=self.path)
        sha = hashlib.sha256()
        crc = 0
        parts = []
        for piece in self.chunks(info):
            sha.update(piece)
            crc = isal_zlib.crc32(piece, crc)
            parts.append(piece)
        data = b"".join(parts)
        self._check_result(info, Digest(len(data), sha.hexdigest(), crc), self.manifest.get(info.filename))
        return data


def matches(known: Digest | None, info: zipfile.ZipInfo, expected_sha256: str | None) -> bool:
    """Is a file with the recorded digest ``known`` the same as the archive entry ``info``?"""
    if known is None or known.size != info.file_size:
        return False
    if expected_sha256:
        return known.sha256 == expected_sha256.lower()
    return known.crc32 is not None and known.crc32 == info.CRC


def extract_snapshot(name: str, zip_path: Path, *, stop: StopRequest) -> SnapshotFile:
    """``/backup/<name>`` from ``zip_path``, unless the file there is already verified as it."""
    dest = destination(layout.snapshot_entry(name), layout.BACKUP_DIR)
    with Archive(zip_path) as archive:
        info = archive.require(layout.snapshot_entry(name))
        known = verified.recall(dest)
        if known is not None and matches(known, info, archive.manifest.get(info.filename)):
            verified.record(dest, known, source=archive.source)  # the next start need not open the archive
            return verified.already_verified(dest, known)
        return SnapshotFile(dest, archive.extract(info, dest, stop=stop), "extracted")


def extract_state_file(name: str, zip_path: Path | None = None) -> Path:
    """Write the archive's ``/etc/kubernetes/<name>.rkestate`` to ``/tmp/cluster.rkestate``
    (``zip_path``: a decrypted copy of ``/backup/<name>.zip.age`` in place of the zip)."""
    zip_path = zip_path or layout.archive_path(name)
    archive_name, entry = layout.archive_entry(name), layout.state_entry(name)
    if not zip_path.exists():
        raise SidekickError(f"snapshot archive {archive_name} not found")
    destination(entry, layout.STATE_DIR)  # the entry name itself must be sane
    with Archive(zip_path) as archive:
        info = archive.entry(entry)
        if info is None:
            raise SidekickError(
                f"snapshot archive {archive_name} has no state file {entry} "
                "(snapshots taken without a cluster state file cannot restore it)"
            )
        data = archive.read(info, limit=MAX_STATE_BYTES)
    try:
        json.loads(data)
    except ValueError as err:
        raise SidekickError(f"state file {entry} in {archive_name} is not JSON: {err}") from None
    out = layout.state_output()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, data, mode=0o600)  # it holds every private key of the cluster
    log.info("state file extracted", extra=kv(archive=zip_path, entry=info.filename, path=layout.STATE_OUTPUT,
                                              size=len(data)))
    return out
