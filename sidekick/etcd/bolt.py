"""What ``etcdctl snapshot status`` says about a snapshot, read with positioned reads.

``etcdctl snapshot status`` opens the snapshot with bbolt, which maps the whole file: on a
1 GB snapshot the check alone held ~1 GB resident. This module reads the same bbolt file
(etcd's backend) one page at a time with :func:`os.pread` and computes the same three figures:

- ``revision``: the main revision (first 8 bytes, big-endian) of the last key of the ``key``
  bucket (0 when it is empty);
- ``totalKey``: every entry of every top-level bucket, nested bucket entries included;
- ``hash``: CRC-32C (Castagnoli) over, for each top-level bucket in key order, its name and
  then each key and value in order (a nested bucket's entry contributes its key only);

and ``totalSize`` (the high-water mark times the page size), under etcdctl's JSON names. The
walk is also a structural check in the spirit of bbolt's ``tx.Check``: a valid meta page (the
one with the higher transaction id among the two whose magic, version and FNV-64a checksum
hold), page ids inside the file and below the high-water mark, each page (overflow included)
reached at most once, branch and leaf flags where the tree needs them, element offsets inside
their page, trees of a sane depth. (etcd 3.4 and later write no freelist, ``NoFreelistSync``:
free pages are those no tree reaches; a freelist that an older etcd wrote is not read.) A file
that fails gives :class:`~sidekick.etcd.etcdctl.EtcdError` with one line (``snapshot check
failed: ...``).

Memory: the pages on the path from a bucket's root to the current leaf (tree depth times the
page size, a leaf with overflow pages being as large as the values it holds) plus one byte per
page for the reached-once bitmap, whatever the file's size.

CRC-32C comes from ``google-crc32c``'s C extension (Apache-2.0; about 10 GB/s and 0.14 us a
call here, the same as the ``crc32c`` package, which is LGPL and costs 80 ms and 7 MiB to
import where google-crc32c costs 3 ms and 1.3 MiB).
"""

from __future__ import annotations

import operator
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from google_crc32c.cext import extend as crc32c_extend

from sidekick.etcd.etcdctl import HASH_SIZE, EtcdError, has_hash_trailer

_PAGE = struct.Struct("<QHHI")  # id, flags, count, overflow
_META = struct.Struct("<IIIIQQQQQ")  # magic, version, page size, flags, root, sequence, freelist, pgid, txid
_CHECKSUM = struct.Struct("<Q")
_BRANCH = struct.Struct("<IIQ")  # pos, key size, child page id
_LEAF = struct.Struct("<IIII")  # flags, pos, key size, value size
_BUCKET = struct.Struct("<QQ")  # root page id (0: inline), sequence
_HEADER = _PAGE.size
_ELEMENT = 16
_BRANCH_PAGE, _LEAF_PAGE, _META_PAGE = 0x01, 0x02, 0x04
_BUCKET_LEAF = 0x01
_MAGIC = 0xED0CDAED
_VERSION = 2
_PAGE_SIZES = (4096, 8192, 16384, 32768, 65536, 1024, 2048, 512)
_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3
_KEY_BUCKET = b"key"
# bbolt's trees are a few levels deep (fan-out of tens to hundreds, at least 2); deeper means
# a damaged file. Both bounds keep the walk's recursion far from Python's limit.
_MAX_DEPTH = 32
_MAX_NESTING = 8
_CHECKPOINT_PAGES = 1024  # a stop request is honoured within this many pages
_REVISION_BYTES = 8


@dataclass(frozen=True)
class Status:
    revision: int
    total_keys: int
    hash: int
    total_size: int

    def as_etcdctl(self) -> dict[str, object]:
        """The object ``etcdctl snapshot status -w json`` prints."""
        return {"hash": self.hash, "revision": self.revision, "totalKey": self.total_keys,
                "totalSize": self.total_size}


class _Corrupt(Exception):
    """A structural fault; :func:`status` turns it into one EtcdError line."""


def fnv64a(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


@dataclass(frozen=True)
class Meta:
    page_size: int
    root: int
    high_water: int  # pages in use: the file's db part is high_water * page_size bytes
    txid: int


def parse_meta(page: bytes) -> Meta | None:
    """The meta of a meta page, or None when its magic, version or checksum does not hold."""
    if len(page) < _HEADER + _META.size + _CHECKSUM.size:
        return None
    _, flags, _, _ = _PAGE.unpack_from(page)
    magic, version, page_size, _, root, _, _, pgid, txid = _META.unpack_from(page, _HEADER)
    (checksum,) = _CHECKSUM.unpack_from(page, _HEADER + _META.size)
    if magic != _MAGIC or version != _VERSION or not flags & _META_PAGE:
        return None
    if fnv64a(page[_HEADER:_HEADER + _META.size]) != checksum:
        return None
    return Meta(page_size, root, pgid, txid)


class _Reader:
    def __init__(self, fd: int, db_size: int, checkpoint: Callable[[], None] | None) -> None:
        self.fd = fd
        self.db_size = db_size
        self.checkpoint = checkpoint
        self.pages = 0
        self.meta = self._meta()
        self.page_size = self.meta.page_size
        if self.meta.high_water < 2 or self.meta.high_water * self.page_size > db_size:
            raise _Corrupt(f"the meta page claims {self.meta.high_water} pages of {self.page_size} bytes, "
                           f"the file holds {db_size} bytes")
        self.reached = bytearray(self.meta.high_water)
        self.reached[0] = self.reached[1] = 1  # the two meta pages

    def _pread(self, size: int, offset: int) -> bytes:
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise _Corrupt(f"cut short at byte {offset + len(data)}")
        return data

    def _meta(self) -> Meta:
        """bbolt's choice: of the two meta pages that validate, the one with the higher txid."""
        need = _HEADER + _META.size + _CHECKSUM.size
        if self.db_size < need:
            raise _Corrupt(f"{self.db_size} bytes is too short for a bbolt database")
        first = parse_meta(self._pread(need, 0))
        sizes = (first.page_size,) if first else _PAGE_SIZES
        second = None
        for size in sizes:
            if size < need or 2 * size > self.db_size:
                continue
            candidate = parse_meta(self._pread(need, size))
            if candidate is not None and candidate.page_size == size:
                second = candidate
                break
        valid = [m for m in (first, second) if m is not None]
        if not valid:
            raise _Corrupt("no valid meta page (not a bbolt database, or both meta pages damaged)")
        meta = max(valid, key=lambda m: m.txid)
        if meta.page_size < 512 or meta.page_size & (meta.page_size - 1):
            raise _Corrupt(f"page size {meta.page_size} is not a power of two of 512 bytes or more")
        return meta

    def page(self, pgid: int, expect: int, *, what: str) -> tuple[bytes, int, int]:
        """The page ``pgid`` with its overflow pages, once: (bytes, flags, count)."""
        if not 2 <= pgid < self.meta.high_water:
            raise _Corrupt(f"{what} points to page {pgid}, outside pages 2..{self.meta.high_water - 1}")
        offset = pgid * self.page_size
        page = self._pread(self.page_size, offset)
        stored, flags, count, overflow = _PAGE.unpack_from(page)
        if stored != pgid:
            raise _Corrupt(f"page {pgid} says it is page {stored}")
        if not flags & expect:
            raise _Corrupt(f"page {pgid} has flags {flags:#x} where {what} needs {expect:#x}")
        last = pgid + overflow
        if last >= self.meta.high_water:
            raise _Corrupt(f"page {pgid} runs {overflow} pages past the high-water mark {self.meta.high_water}")
        if self.reached[pgid] or (overflow and any(self.reached[pgid:last + 1])):
            raise _Corrupt(f"page {pgid} (with {overflow} overflow pages) is reached twice")
        self.reached[pgid:last + 1] = b"\x01" * (overflow + 1)
        self.pages += 1
        if self.checkpoint is not None and self.pages % _CHECKPOINT_PAGES == 0:
            self.checkpoint()
        if overflow:  # read again whole rather than joined: one copy of a large page, not two
            page = self._pread((overflow + 1) * self.page_size, offset)
        return page, flags, count

    # --- trees ---------------------------------------------------------------------------
    def tree(self, root: int, on_leaf: Callable[[bytes, int, int], None], *, what: str, depth: int = 0) -> None:
        """Call ``on_leaf(page, count, pgid)`` for each leaf of the tree at ``root``, in key order."""
        if depth > _MAX_DEPTH:
            raise _Corrupt(f"{what}: a tree deeper than {_MAX_DEPTH} levels")
        page, flags, count = self.page(root, _BRANCH_PAGE | _LEAF_PAGE, what=what)
        if flags & _LEAF_PAGE:
            on_leaf(page, count, root)
            return
        _check_elements(page, count, root)
        children = [_BRANCH.unpack_from(page, _HEADER + i * _ELEMENT)[2] for i in range(count)]
        del page
        for child in children:
            self.tree(child, on_leaf, what=f"a branch of page {root}", depth=depth + 1)

    def bucket(self, value: bytes, on_leaf: Callable[[bytes, int, int], None], *, what: str) -> None:
        """``on_leaf(page, count, pgid)`` for each leaf of the bucket whose header is ``value``
        (an inline bucket's page comes with pgid 0)."""
        if len(value) < _BUCKET.size:
            raise _Corrupt(f"{what}: a bucket value of {len(value)} bytes")
        root, _ = _BUCKET.unpack_from(value)
        if root == 0:
            inline = value[_BUCKET.size:]
            if len(inline) < _HEADER:
                raise _Corrupt(f"{what}: an inline bucket of {len(inline)} bytes")
            _, flags, count, _ = _PAGE.unpack_from(inline)
            if not flags & _LEAF_PAGE:
                raise _Corrupt(f"{what}: an inline bucket with flags {flags:#x}")
            on_leaf(inline, count, 0)
        else:
            self.tree(root, on_leaf, what=what)

    def nested(self, value: bytes, *, what: str, depth: int = 1) -> None:
        """A bucket inside a bucket: etcd keeps none and ``snapshot status`` counts only its
        key; its pages are walked all the same, so they count as reached."""
        if depth > _MAX_NESTING:
            raise _Corrupt(f"{what}: buckets nested deeper than {_MAX_NESTING} levels")

        def leaf(page: bytes, count: int, pgid: int) -> None:
            for _, data, is_bucket in _leaf_entries(page, count, pgid):
                if is_bucket:
                    self.nested(data, what=f"a bucket nested in {what}", depth=depth + 1)

        self.bucket(value, leaf, what=what)


def _check_elements(page: bytes, count: int, pgid: int) -> None:
    if _HEADER + count * _ELEMENT > len(page):
        raise _Corrupt(f"page {pgid} claims {count} elements, more than it holds")


def _span(page: bytes, count: int, pgid: int) -> tuple[int, int, int, int] | None:
    """Where a leaf page's keys and values lie back to back in element order, as bbolt writes
    them: (start, end, start of the last key, its size); None when they do not (or an element
    is a bucket), and the page is then read element by element. One CRC call per page instead
    of two per element; the loops here run in C."""
    _check_elements(page, count, pgid)
    if count == 0:
        return None
    fields = struct.unpack_from(f"<{4 * count}I", page, _HEADER)
    if any(fields[0::4]):
        return None
    starts = list(map(operator.add, fields[1::4], range(_HEADER, _HEADER + count * _ELEMENT, _ELEMENT)))
    ends = list(map(operator.add, starts, map(operator.add, fields[2::4], fields[3::4])))
    if starts[1:] != ends[:-1] or starts[0] < _HEADER + count * _ELEMENT or ends[-1] > len(page):
        return None
    return starts[0], ends[-1], starts[-1], fields[-2]


def _leaf_entries(page: bytes, count: int, pgid: int) -> Iterator[tuple[bytes, bytes, bool]]:
    """(key, value, is a bucket) of each element of a leaf page, in order, one at a time."""
    _check_elements(page, count, pgid)
    end = len(page)
    elements = memoryview(page)[_HEADER:_HEADER + count * _ELEMENT]
    for i, (flags, pos, ksize, vsize) in enumerate(_LEAF.iter_unpack(elements)):
        start = _HEADER + i * _ELEMENT + pos
        if start + ksize + vsize > end:
            raise _Corrupt(f"page {pgid} element {i} points past the end of its page")
        yield page[start:start + ksize], page[start + ksize:start + ksize + vsize], bool(flags & _BUCKET_LEAF)


def read_status(fd: int, db_size: int, checkpoint: Callable[[], None] | None = None) -> Status:
    """Walk the bbolt file open at ``fd`` whose database part is ``db_size`` bytes;
    ``checkpoint()`` is called every so many pages (it raises to end the walk)."""
    reader = _Reader(fd, db_size, checkpoint)
    crc = 0
    total = 0
    revision = 0

    def top(name: bytes, value: bytes, is_bucket: bool) -> None:
        nonlocal crc, revision
        if not is_bucket:
            raise _Corrupt(f"top-level key {name!r} is not a bucket")
        crc = crc32c_extend(crc, name)
        what = f"bucket {name.decode(errors='replace')}"
        last = [b""]

        def leaf(page: bytes, count: int, pgid: int) -> None:
            nonlocal crc, total
            span = _span(page, count, pgid)
            if span is not None:
                start, end, last_key, key_size = span
                crc = crc32c_extend(crc, page[start:end])
                total += count
                last[0] = page[last_key:last_key + key_size]
                return
            for key, data, nested in _leaf_entries(page, count, pgid):
                crc = crc32c_extend(crc, key)
                if nested:
                    reader.nested(data, what=f"a bucket nested in {what}")
                else:
                    crc = crc32c_extend(crc, data)
                total += 1
                last[0] = key

        reader.bucket(value, leaf, what=what)
        if name == _KEY_BUCKET and last[0]:
            if len(last[0]) < _REVISION_BYTES:
                raise _Corrupt(f"the last key of bucket key has {len(last[0])} bytes, not a revision")
            revision = int.from_bytes(last[0][:_REVISION_BYTES], "big")

    def root_leaf(page: bytes, count: int, pgid: int) -> None:
        for name, value, is_bucket in _leaf_entries(page, count, pgid):
            top(name, value, is_bucket)

    reader.tree(reader.meta.root, root_leaf, what="the root bucket")
    return Status(revision, total, crc, reader.meta.high_water * reader.page_size)


def status(path: Path, checkpoint: Callable[[], None] | None = None) -> Status:
    """What ``etcdctl snapshot status`` reports for ``path`` (a snapshot, or a bare db file),
    or EtcdError with ``snapshot check failed: ...``."""
    try:
        with open(path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            db_size = size - HASH_SIZE if has_hash_trailer(size) else size
            return read_status(source.fileno(), db_size, checkpoint)
    except _Corrupt as err:
        raise EtcdError(f"snapshot check failed: {err}") from None
    except OSError as err:
        raise EtcdError(f"snapshot check failed: cannot read the snapshot: {err.strerror or err}") from None
