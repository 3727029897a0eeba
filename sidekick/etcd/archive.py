"""The snapshot archive: ``/backup/<name>.zip`` exactly as the Go tool reads it, written fast.

Format (CONTRACT 3.11 and 12): a standard zip, deflate entries with data descriptors, entry
names that are ABSOLUTE paths (``/backup/<name>`` and optionally
``/etc/kubernetes/<name>.rkestate``; the Go extractor matches the name exactly, and
``zipfile.ZipFile.write`` would strip the slash), mode 0600. Added, and ignored by Go: the zip
comment is a JSON manifest ``{"sidekick": 1, "sha256": {entry name: hex}}`` so any later
reader can check the snapshot end to end (:func:`sidekick.etcd.extract.read_manifest`), plus, when ``save`` knows
them, ``"snapshot": {...}``: what a restore must reproduce (:mod:`sidekick.etcd.facts`).
Readers take what they know and ignore the rest, so older manifests read as before.

Speed: the input is cut into ``chunk_size`` pieces deflated in parallel, each piece primed
with the previous 32 KiB as a dictionary and ended with a sync flush, so the pieces concatenate
into ONE valid deflate stream (the pigz technique). The engine is zlib-ng at level 3 (its
"medium" strategy), chosen with ``python -m bench etcd_archive`` on real etcd snapshots of
JSON and of protobuf-like values against Go's archive/zip (the Go tool: compress/flate at its
default level): the archive is within 1 % of Go's size (1.009x and 0.996x) for 1/2.7 and 1/1.5
of its CPU seconds per byte, spread over the cores where Go uses one. ISA-L is 3-5 times
cheaper still but 1.7-2.6 % larger even at level 3 (3.3 % and 1.8 % at level 2); zlib needs
level 5 to match the size, at about Go's CPU cost. CRC-32 and SHA-256 run in one more
thread; all of them release the GIL. Memory bound: at most ``workers + 3`` input pieces and
their outputs are alive, i.e. about ``(workers + 3) * chunk_size * 1.3`` (13 MiB at the
defaults), whatever the snapshot size. The input buffers are reused from piece to piece and
each deflate call is fed :data:`FEED` bytes, so its output stays under the mmap threshold
that :func:`sidekick.host.memory.bound_malloc` sets: no piece is mapped and faulted in anew
(that had cost ``save`` about 1.2 s of system time per GB of snapshot). Pieces of 2 MiB
archive as fast as 4 MiB and hold 10 MiB less (1 MiB was up to 20 % slower; sizes differ
by 0.002 %).

The archive goes to the disk with ``O_DIRECT``, packed into :data:`OUTPUT_CHUNK` buffers of a
:class:`~sidekick.etcd.stream.HashingWriter` (which also hashes it, in its own thread): it
does not fill the page cache the node's etcd uses, and writing through the page cache had
cost 0.3-2 s of system time per GB of snapshot on this project's VMs (2 when the page cache
grows into memory never used before).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import mmap
import os
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from isal import isal_zlib

from sidekick.etcd.stream import HashingWriter, WriteError
from sidekick.etcd.verified import Digest
from sidekick.host.files import atomic_output

MANIFEST_VERSION = 1
# The deflate engines (:func:`deflate_engine`); the ones other than the default are there for
# the benchmark that chose it (bench/etcd_archive.py).
ENGINES = ("zlib-ng", "isal", "zlib")
DEFAULT_ENGINE = "zlib-ng"
DEFAULT_LEVEL = 3
DEFAULT_CHUNK = 2 << 20
FEED = 512 << 10  # input per deflate call: the output of each is a fraction of it
OUTPUT_CHUNK = 512 << 10  # the archive goes to the disk in writes of this size ...
OUTPUT_DEPTH = 2  # ... with at most this many of them in flight
_WINDOW = 32 << 10
_ZIP64_LIMIT = 0xFFFFFFFF
# Deflate can grow incompressible input slightly; decide zip64 with a margin (input size is
# known before the first byte is written, the compressed size is not).
_ZIP64_MARGIN = 1 << 26

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<IHHHHIIH")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR64 = struct.Struct("<IIQI")
_FLAG_DESCRIPTOR = 0x08
_FLAG_UTF8 = 0x800
_DEFLATED = 8
_MADE_BY_UNIX = 3 << 8
_FILE_MODE = 0o100600


@dataclass
class EntryResult:
    name: str
    size: int
    compressed: int
    crc: int
    sha256: str
    offset: int = 0
    dos_time: int = 0
    dos_date: int = 0
    zip64: bool = False
    # For etcd's hash trailer, checked in this same pass: the SHA-256 of all bytes but the last
    # TAIL (None when the entry is shorter, or its size changed while it was read) and those bytes.
    head_sha256: bytes | None = None
    tail: bytes = b""


@dataclass
class ArchiveResult:
    path: Path
    size: int
    sha256: str  # of the archive bytes (S3 metadata ``archive-sha256``)
    entries: list[EntryResult] = field(default_factory=list)

    @property
    def manifest(self) -> dict[str, str]:
        return {e.name: e.sha256 for e in self.entries}

    @property
    def input_size(self) -> int:
        return sum(e.size for e in self.entries)


class _Output:
    """The archive's bytes, packed into the page-aligned buffers of a :class:`HashingWriter`:
    whole buffers go to the disk with ``O_DIRECT`` while another thread hashes them."""

    def __init__(self, fd: int) -> None:
        self.writer = HashingWriter(fd, chunk=OUTPUT_CHUNK, depth=OUTPUT_DEPTH, direct=True)
        self.offset = 0
        self._buffer: bytearray | mmap.mmap | None = None
        self._filled = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        self.offset += len(view)
        while view:
            if self._buffer is None:
                self._buffer, self._filled = self.writer.get_buffer(), 0
            count = min(len(self._buffer) - self._filled, len(view))
            self._buffer[self._filled:self._filled + count] = view[:count]
            self._filled += count
            view = view[count:]
            if self._filled == len(self._buffer):
                self.writer.submit(self._buffer, self._filled)
                self._buffer = None

    def finish(self) -> Digest:
        if self._buffer is not None:
            self.writer.submit(self._buffer, self._filled)
            self._buffer = None
        return self.writer.finish()

    def abort(self) -> None:
        self.writer.abort()


def _dos_stamp(mtime: float) -> tuple[int, int]:
    t = time.gmtime(max(mtime, 315532800))  # DOS time starts in 1980
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday


def deflate_engine(name: str) -> ModuleType:
    """The module of engine ``name``: zlib's ``compressobj(level, method, wbits, memLevel,
    strategy, zdict)``, releasing the GIL while it compresses. Imported here, when an archive
    is written: the many readers of archives (download, list, verify) need no deflater."""
    if name == "zlib-ng":
        from zlib_ng import zlib_ng

        return zlib_ng
    if name == "isal":
        return isal_zlib
    if name == "zlib":
        import zlib

        return zlib
    raise ValueError(f"unknown deflate engine {name!r} (one of {', '.join(ENGINES)})")


def _deflate_piece(engine: ModuleType, data: memoryview, zdict: bytes, last: bool, level: int) -> list[bytes]:
    if zdict:
        comp = engine.compressobj(level, engine.DEFLATED, -15, 9, 0, zdict)
    else:
        comp = engine.compressobj(level, engine.DEFLATED, -15, 9)
    parts = [comp.compress(data[start:start + FEED]) for start in range(0, len(data), FEED)]
    parts.append(comp.flush(engine.Z_FINISH if last else engine.Z_SYNC_FLUSH))
    return parts


TAIL = 32  # etcd appends a SHA-256 to a snapshot


class _Digests:
    """CRC-32 and SHA-256 of the input, updated in order by one thread; on the way, a copy of
    the SHA-256 taken ``TAIL`` bytes before the expected end, and the last ``TAIL`` bytes."""

    def __init__(self, expected_size: int) -> None:
        self.crc = 0
        self.sha = hashlib.sha256()
        self.split = expected_size - TAIL
        self.seen = 0
        self.head: bytes | None = None
        self.tail = b""

    def update(self, data: bytes | memoryview) -> None:
        self.crc = isal_zlib.crc32(data, self.crc)
        cut = self.split - self.seen
        if 0 <= cut <= len(data) and self.split >= 0:
            view = memoryview(data)
            self.sha.update(view[:cut])
            self.head = self.sha.copy().digest()
            self.sha.update(view[cut:])
        else:
            self.sha.update(data)
        self.seen += len(data)
        self.tail = (self.tail + data[-TAIL:])[-TAIL:]

    def head_sha256(self) -> bytes | None:
        return self.head if self.seen == self.split + TAIL else None


def _write_entry(
    writer: _Output,
    name: str,
    source: io.BufferedIOBase,
    *,
    size_hint: int,
    mtime: float,
    engine: ModuleType,
    level: int,
    chunk_size: int,
    pool: ThreadPoolExecutor,
    hasher: ThreadPoolExecutor,
    workers: int,
    on_input: Callable[[int], None] | None,
) -> EntryResult:
    encoded = name.encode("utf-8")
    flags = _FLAG_DESCRIPTOR | (0 if encoded.isascii() else _FLAG_UTF8)
    zip64 = size_hint + _ZIP64_MARGIN >= _ZIP64_LIMIT
    dos_time, dos_date = _dos_stamp(mtime)
    extra = struct.pack("<HHQQ", 0x0001, 16, 0, 0) if zip64 else b""
    offset = writer.offset
    writer.write(
        _LOCAL.pack(0x04034B50, 45 if zip64 else 20, flags, _DEFLATED, dos_time, dos_date, 0,
                    _ZIP64_LIMIT if zip64 else 0, _ZIP64_LIMIT if zip64 else 0, len(encoded), len(extra))
    )
    writer.write(encoded + extra)

    digests = _Digests(size_hint)
    # Per piece in flight: its deflate, its digest update, and the input buffer both read.
    inflight: collections.deque[tuple[Future[list[bytes]], Future[None], bytearray]] = collections.deque()
    spare: list[bytearray] = []
    hashing: Future[None] | None = None
    size = compressed = 0
    previous_tail = b""

    def read() -> tuple[bytearray, memoryview]:
        buffer = spare.pop() if spare else bytearray(chunk_size)
        return buffer, memoryview(buffer)[: source.readinto(buffer)]

    buffer, pending = read()
    while True:
        following_buffer, following = read() if pending else (buffer, pending[:0])
        last = not following
        deflating = pool.submit(_deflate_piece, engine, pending, previous_tail, last, level)
        if hashing is not None:
            hashing.result()  # one piece queued for the digests at most, however slow they run
        hashing = hasher.submit(digests.update, pending)
        inflight.append((deflating, hashing, buffer))
        size += len(pending)
        previous_tail = bytes(pending[-_WINDOW:])
        while len(inflight) > workers or (last and inflight):
            deflated, hashed, done = inflight.popleft()
            for part in deflated.result():
                writer.write(part)
                compressed += len(part)
            hashed.result()
            spare.append(done)
        if on_input is not None:
            on_input(len(pending))
        if last:
            break
        buffer, pending = following_buffer, following
    if hashing is not None:
        hashing.result()

    if zip64:
        writer.write(struct.pack("<IIQQ", 0x08074B50, digests.crc, compressed, size))
    else:
        if size >= _ZIP64_LIMIT or compressed >= _ZIP64_LIMIT:
            raise OSError(f"{name}: grew past 4 GiB while being archived")
        writer.write(struct.pack("<IIII", 0x08074B50, digests.crc, compressed, size))
    return EntryResult(name, size, compressed, digests.crc, digests.sha.hexdigest(), offset,
                       dos_time, dos_date, zip64, digests.head_sha256(), digests.tail)


def _central_directory(writer: _Output, entries: Sequence[EntryResult], comment: bytes) -> None:
    start = writer.offset
    for e in entries:
        encoded = e.name.encode("utf-8")
        flags = _FLAG_DESCRIPTOR | (0 if encoded.isascii() else _FLAG_UTF8)
        big = [v for v in (e.size, e.compressed, e.offset) if v >= _ZIP64_LIMIT]
        extra = b""
        size, compressed, offset = e.size, e.compressed, e.offset
        if big or e.zip64:
            values = []
            if size >= _ZIP64_LIMIT or e.zip64:
                values += [size, compressed]
                size = compressed = _ZIP64_LIMIT
            if offset >= _ZIP64_LIMIT:
                values.append(offset)
                offset = _ZIP64_LIMIT
            extra = struct.pack(f"<HH{len(values)}Q", 0x0001, 8 * len(values), *values)
        version = 45 if extra else 20
        writer.write(
            _CENTRAL.pack(0x02014B50, _MADE_BY_UNIX | version, version, flags, _DEFLATED, e.dos_time,
                          e.dos_date, e.crc, compressed, size, len(encoded), len(extra), 0, 0, 0,
                          _FILE_MODE << 16, offset)
        )
        writer.write(encoded + extra)
    end = writer.offset
    cd_size = end - start
    if start >= _ZIP64_LIMIT or cd_size >= _ZIP64_LIMIT:
        writer.write(_EOCD64.pack(0x06064B50, 44, _MADE_BY_UNIX | 45, 45, 0, 0, len(entries), len(entries),
                                  cd_size, start))
        writer.write(_LOCATOR64.pack(0x07064B50, 0, end, 1))
        start = min(start, _ZIP64_LIMIT)
        cd_size = min(cd_size, _ZIP64_LIMIT)
    writer.write(_EOCD.pack(0x06054B50, 0, 0, len(entries), len(entries), cd_size, start, len(comment)))
    writer.write(comment)


def manifest_comment(entries: Sequence[EntryResult], facts: Mapping[str, object] | None = None) -> bytes:
    body: dict[str, object] = {"sidekick": MANIFEST_VERSION, "sha256": {e.name: e.sha256 for e in entries}}
    if facts:
        body["snapshot"] = dict(facts)
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def write_archive(
    dest: Path,
    entries: Sequence[tuple[str, Path]],
    *,
    engine: str = DEFAULT_ENGINE,
    level: int = DEFAULT_LEVEL,
    chunk_size: int = DEFAULT_CHUNK,
    workers: int | None = None,
    on_input: Callable[[int], None] | None = None,
    facts: Callable[[list[EntryResult]], Mapping[str, object] | None] | None = None,
) -> ArchiveResult:
    """Write ``dest`` atomically (temp name, fsync, rename; mode 0600) from ``(name, path)``.

    ``on_input(n)`` is called as input bytes are consumed (progress lines); ``facts(entries)``
    gives the manifest's ``"snapshot"`` object once the entries' digests are known.
    ``engine`` names one of :data:`ENGINES`.
    """
    deflater = deflate_engine(engine)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="deflate") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="digest") as hasher,
        atomic_output(dest, mode=0o600) as pending,
    ):
        writer = _Output(pending.file.fileno())
        try:
            results = []
            for name, path in entries:
                with open(path, "rb") as source:
                    st = os.fstat(source.fileno())
                    results.append(
                        _write_entry(writer, name, source, size_hint=st.st_size, mtime=st.st_mtime,
                                     engine=deflater, level=level, chunk_size=chunk_size, pool=pool, hasher=hasher,
                                     workers=workers, on_input=on_input)
                    )
            _central_directory(writer, results, manifest_comment(results, facts(results) if facts else None))
            written = writer.finish()
        except BaseException as err:
            writer.abort()
            if isinstance(err, WriteError):
                raise err.error from None  # the disk's own error, as the reads and the rename raise theirs
            raise
    return ArchiveResult(dest, written.size, written.sha256, results)

