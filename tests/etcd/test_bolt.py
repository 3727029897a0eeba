"""The page-by-page reader of etcd snapshots against ``etcdctl snapshot status`` itself.

One real etcd on loopback (TLS) is filled in stages; after each, ``etcdctl snapshot save``
takes a real snapshot and the reader must report exactly what ``etcdctl snapshot status -w
json`` reports for it. Damaged copies of those snapshots give one ``snapshot check failed``
line, never another exception.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from sidekick.etcd import bolt
from sidekick.etcd.archive import write_archive
from sidekick.etcd.etcdctl import EtcdError, check_hash_trailer, check_snapshot_hash
from tests.harness.etcd import ETCDCTL, EtcdServer
from tests.harness.pki import CertificateAuthority, RkeSsl

PAGE = struct.Struct("<QHHI")
LEAF = struct.Struct("<IIII")
BRANCH, LEAF_PAGE = 0x01, 0x02


# --- what etcd reports -------------------------------------------------------------------
def etcdctl_status(path: Path) -> dict[str, object]:
    import subprocess

    done = subprocess.run([ETCDCTL, "snapshot", "status", str(path), "-w", "json"], capture_output=True,
                          text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=120, check=True)
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(status, dict)
    return status


@dataclass
class Shape:
    """What the snapshot holds, from the reader's own walk: which buckets are inline, how deep
    the ``key`` bucket's tree is, how many pages carry overflow pages."""

    inline: set[bytes]
    key_depth: int
    overflowing: int


def shape(path: Path) -> Shape:
    with open(path, "rb") as source:
        size = os.fstat(source.fileno()).st_size
        reader = bolt._Reader(source.fileno(), size - 32, None)
        inline: set[bytes] = set()
        depth = [0]
        overflowing = [0]
        real_page = reader.page

        def page(pgid: int, expect: int, *, what: str) -> tuple[bytes, int, int]:
            data, flags, count = real_page(pgid, expect, what=what)
            overflowing[0] += PAGE.unpack_from(data)[3] > 0
            return data, flags, count

        reader.page = page  # type: ignore[method-assign]

        def top(data: bytes, count: int, pgid: int) -> None:
            for name, value, _ in bolt._leaf_entries(data, count, pgid):
                root = struct.unpack_from("<Q", value)[0]
                if root == 0:
                    inline.add(name)
                elif name == b"key":
                    depth[0] = tree_depth(reader, root)
                reader.bucket(value, lambda *_: None, what=name.decode())

        reader.tree(reader.meta.root, top, what="root")
    return Shape(inline, depth[0], overflowing[0])


def tree_depth(reader: bolt._Reader, root: int) -> int:
    offset = root * reader.page_size
    _, flags, _, _ = PAGE.unpack(os.pread(reader.fd, PAGE.size, offset))
    if flags & LEAF_PAGE:
        return 1
    first_child = struct.unpack_from("<IIQ", os.pread(reader.fd, 16, offset + PAGE.size))[2]
    return 1 + tree_depth(reader, first_child)


# --- a real etcd, filled in stages -------------------------------------------------------
@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory, kube_ca: CertificateAuthority) -> Iterator[dict[str, Path]]:
    workdir = tmp_path_factory.mktemp("bolt-etcd")
    server = EtcdServer(workdir, RkeSsl.create(workdir / "ssl", kube_ca, "127.0.0.1")).start()
    out: dict[str, Path] = {}

    def take(stage: str) -> None:
        out[stage] = workdir / f"{stage}.db"
        server.ctl("snapshot", "save", str(out[stage]))

    try:
        take("empty")
        server.put("/registry/one", "1")
        take("one key")
        server.put_many(12_000, 60, prefix="/registry/small/")  # the key bucket: branch pages over leaves
        take("many small keys")
        session = requests.Session()
        session.trust_env = False
        session.cert = (str(server.ssl.node_cert), str(server.ssl.node_key))
        session.verify = str(server.ssl.cacert)
        for i in range(6):  # values of several pages: leaves with overflow pages
            body = {"key": base64.b64encode(f"/registry/big/{i}".encode()).decode(),
                    "value": base64.b64encode(os.urandom(200_000 + i * 50_000)).decode()}
            session.post(f"{server.url}/v3/kv/put", json=body, timeout=30).raise_for_status()
        take("large values")
        server.ctl("del", "/registry/small/0000", "--prefix")  # tombstones
        revision = json.loads(server.ctl("get", "/registry/one", "-w", "json").stdout)["header"]["revision"]
        server.ctl("compact", str(revision), "--physical")  # history gone, tombstones kept
        take("deleted and compacted")
        server.ctl("defrag")
        take("defragmented")
        yield out
    finally:
        server.stop()


STAGES = ["empty", "one key", "many small keys", "large values", "deleted and compacted", "defragmented"]


@pytest.mark.integration
@pytest.mark.parametrize("stage", STAGES)
def test_reader_reports_what_etcdctl_reports(snapshots: dict[str, Path], stage: str) -> None:
    path = snapshots[stage]
    assert bolt.status(path).as_etcdctl() == etcdctl_status(path)


@pytest.mark.integration
def test_the_stages_cover_the_format(snapshots: dict[str, Path]) -> None:
    """The snapshots above hold what the reader must handle, so the equality means something."""
    small = shape(snapshots["one key"])
    assert b"key" in small.inline and b"meta" in small.inline  # inline buckets: root 0
    many = shape(snapshots["many small keys"])
    assert b"key" not in many.inline and many.key_depth >= 3  # branch pages over branch pages
    # bbolt keeps at least two elements a leaf: six large values make 3 or so leaves of many pages.
    assert shape(snapshots["large values"]).overflowing >= 2
    statuses = [bolt.status(snapshots[s]) for s in STAGES]
    assert statuses[0].revision < statuses[1].revision < statuses[2].revision < statuses[3].revision
    # The compaction at the deletion's revision dropped the deleted keys, tombstones included
    # (etcd's status then names the last revision left, below the store's).
    assert statuses[4].total_keys < statuses[3].total_keys - 9_000
    assert statuses[5].as_etcdctl() | {"totalSize": 0} == statuses[4].as_etcdctl() | {"totalSize": 0}
    assert statuses[5].total_size < statuses[4].total_size


def bucket_root(data: bytes, leaf: int, name: bytes) -> int:
    """The root page id of bucket ``name`` in the root bucket's leaf page at byte ``leaf``."""
    _, _, count, _ = PAGE.unpack_from(data, leaf)
    for i in range(count):
        element = leaf + 16 + i * 16
        _, pos, ksize, _ = LEAF.unpack_from(data, element)
        if data[element + pos:element + pos + ksize] == name:
            return int(struct.unpack_from("<Q", data, element + pos + ksize)[0])
    raise AssertionError(f"no bucket {name!r}")


# --- damaged files -----------------------------------------------------------------------
def element_offsets(path: Path) -> list[int]:
    """Byte offsets of page headers and element arrays of every tree page (not the data)."""
    data = path.read_bytes()
    page_size = struct.unpack_from("<I", data, 16 + 8)[0]
    offsets = []
    for pgid in range(2, (len(data) - 32) // page_size):
        base = pgid * page_size
        stored, flags, count, _ = PAGE.unpack_from(data, base)
        if stored == pgid and flags in (BRANCH, LEAF_PAGE):
            offsets += range(base, base + PAGE.size + 16 * min(count, 8))
    return offsets


@pytest.mark.integration
def test_any_damaged_header_or_element_is_one_clear_error(snapshots: dict[str, Path], tmp_path: Path) -> None:
    """Each byte of each page header and of the first elements, flipped: either the file
    still reads (a flipped flag bit that means nothing, say) or one ``snapshot check failed``
    line; never another exception."""
    source = snapshots["many small keys"]
    offsets = element_offsets(source)
    assert len(offsets) > 1000
    sample = offsets[::max(1, len(offsets) // 1500)]
    path = tmp_path / "damaged.db"
    path.write_bytes(source.read_bytes())
    failed = 0
    with open(path, "r+b") as damage:
        for offset in sample:
            original = os.pread(damage.fileno(), 1, offset)
            os.pwrite(damage.fileno(), bytes([original[0] ^ 0xFF]), offset)
            try:
                bolt.status(path)
            except EtcdError as err:
                message = str(err)
                assert message.startswith("snapshot check failed: ") and "\n" not in message
                failed += 1
            finally:
                os.pwrite(damage.fileno(), original, offset)
    assert failed > len(sample) // 2


@pytest.mark.integration
@pytest.mark.parametrize("where", ["meta 0", "both metas", "root page id", "a child page id", "a chain of branches",
                                   "truncated"])
def test_damaged_structure(snapshots: dict[str, Path], tmp_path: Path, where: str) -> None:
    source = snapshots["many small keys"]
    data = bytearray(source.read_bytes())
    page_size = struct.unpack_from("<I", data, 24)[0]
    root = struct.unpack_from("<Q", data, 32)[0]
    path = tmp_path / "snap.db"
    if where == "meta 0":  # bbolt falls back to meta 1 (one txid older, the same tree)
        data[40] ^= 0x01
        path.write_bytes(bytes(data))
        assert bolt.status(path).as_etcdctl() == etcdctl_status(source)
        return
    expected = {
        "both metas": "no valid meta page",
        "root page id": "points to page",
        "a child page id": "",
        "a chain of branches": "a tree deeper than 32 levels",
        "truncated": "the meta page claims",
    }[where]
    if where == "both metas":
        data[16] ^= 0x01
        data[page_size + 16] ^= 0x01
    elif where == "root page id":  # the root bucket's page, far past the end (checksum redone)
        for meta in (0, page_size):
            struct.pack_into("<Q", data, meta + 32, 10**9)
            struct.pack_into("<Q", data, meta + 72, bolt.fnv64a(bytes(data[meta + 16:meta + 72])))
    elif where == "a child page id":  # a branch that points to a page reached elsewhere
        key_root = bucket_root(bytes(data), root * page_size, b"key")
        branch = key_root * page_size
        first, second = (struct.unpack_from("<Q", data, branch + 16 + i * 16 + 8)[0] for i in (0, 1))
        struct.pack_into("<Q", data, branch + 16 + 16 + 8, first)
        expected = f"page {first} (with"
        assert second != first
    elif where == "a chain of branches":  # 40 pages rewritten as branches of one child each
        key_root = bucket_root(bytes(data), root * page_size, b"key")
        high_water = struct.unpack_from("<Q", data, 56)[0]
        chain = [p for p in range(high_water - 50, high_water) if p not in (root, key_root)][:40]
        struct.pack_into("<Q", data, key_root * page_size + 16 + 8, chain[0])
        for pgid, child in itertools.pairwise(chain):
            PAGE.pack_into(data, pgid * page_size, pgid, BRANCH, 1, 0)
            struct.pack_into("<IIQ", data, pgid * page_size + 16, 16, 0, child)
    else:
        data = data[:len(data) // 2]
    path.write_bytes(bytes(data))
    with pytest.raises(EtcdError) as caught:
        bolt.status(path)
    assert str(caught.value).startswith("snapshot check failed: ") and expected in str(caught.value)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "noise.db"
    for content in (b"", b"x" * 100, os.urandom(512 * 64)):
        path.write_bytes(content)
        with pytest.raises(EtcdError, match=r"^snapshot check failed: "):
            bolt.status(path)
    with pytest.raises(EtcdError, match=r"^snapshot check failed: cannot read the snapshot: [Nn]o such file"):
        bolt.status(tmp_path / "missing.db")


# --- the hash trailer, from the archive's own pass ------------------------------------------
@pytest.mark.parametrize("size", [512 * 7, 512 * 8, 4096 * 3 - 32, 4096 * 3 + 17])
@pytest.mark.parametrize("chunk", [4096, 4096 - 32, 1000])
def test_trailer_is_checked_in_the_archive_pass(tmp_path: Path, size: int, chunk: int) -> None:
    body = os.urandom(size)
    good = tmp_path / "good"
    good.write_bytes(body + hashlib.sha256(body).digest())
    bad = tmp_path / "bad"
    bad.write_bytes(body[:-1] + bytes([body[-1] ^ 1]) + hashlib.sha256(body).digest())
    result = write_archive(tmp_path / "a.zip", [("/backup/good", good), ("/backup/bad", bad)], chunk_size=chunk)
    ok, wrong = result.entries
    has_trailer = (size + 32) % 512 == 32
    assert check_hash_trailer(ok.size, ok.head_sha256, ok.tail) is (True if has_trailer else None)
    assert check_snapshot_hash(good) is (True if has_trailer else None)
    if has_trailer:
        with pytest.raises(EtcdError, match="the sha256 etcd appended does not match the content"):
            check_hash_trailer(wrong.size, wrong.head_sha256, wrong.tail)
        with pytest.raises(EtcdError, match="the sha256 etcd appended does not match the content"):
            check_snapshot_hash(bad)
    assert ok.head_sha256 == hashlib.sha256(body).digest() and ok.tail == hashlib.sha256(body).digest()


def test_fnv64a_and_meta_validation() -> None:
    assert bolt.fnv64a(b"") == 0xCBF29CE484222325
    assert bolt.fnv64a(b"a") == 0xAF63DC4C8601EC8C
    meta = struct.pack("<IIIIQQQQQ", 0xED0CDAED, 2, 4096, 0, 3, 0, 0, 5, 9)
    page = PAGE.pack(0, 0x04, 0, 0) + meta + struct.pack("<Q", bolt.fnv64a(meta))
    assert bolt.parse_meta(page) == bolt.Meta(4096, 3, 5, 9)
    assert bolt.parse_meta(page[:-1] + bytes([page[-1] ^ 1])) is None
    assert bolt.parse_meta(PAGE.pack(0, 0x02, 0, 0) + page[16:]) is None  # not a meta page
