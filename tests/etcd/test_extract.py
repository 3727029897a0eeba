"""Reading snapshot archives: ours and the Go tool's, verified, and hostile ones refused."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import time
import zipfile
from pathlib import Path

import pytest

from sidekick.errors import SidekickError
from sidekick.etcd import extract, layout, restore, verified
from sidekick.etcd.archive import write_archive
from sidekick.etcd.options import Options
from sidekick.host.files import TEMP_PREFIX
from sidekick.host.signals import StopRequest
from tests.harness.goarchive import write_go_archive

NAME = "c-abcde-rl-x7k2p_2024-10-04T12:00:00Z"
STATE = {"desiredState": {"rkeConfig": {"nodes": []}}, "currentState": {}}


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path / "root"))
    for d in ("backup", "etc/kubernetes", "tmp"):
        (tmp_path / "root" / d).mkdir(parents=True)
    return tmp_path / "root"


def _ready() -> verified.SnapshotFile:
    """What serve does with an archive there."""
    return extract.extract_snapshot(NAME, layout.archive_path(NAME), stop=StopRequest())


def snapshot_bytes(size: int = 3 << 20) -> bytes:
    """Compressible but not trivial, like an etcd db (pages of keys and zeroed free space)."""
    block = b"".join(f"/registry/pods/ns/{i:06d}={os.urandom(8).hex()}\n".encode() for i in range(200))
    data = (block + bytes(4096)) * (size // (len(block) + 4096) + 1)
    return data[:size]


def make_ours(root: Path, name: str = NAME, db: bytes | None = None, state: bytes | None = None) -> tuple[Path, bytes]:
    db = snapshot_bytes() if db is None else db
    work = root.parent / "work"
    work.mkdir(exist_ok=True)
    (work / name).write_bytes(db)
    entries = [(f"/backup/{name}", work / name)]
    if state is not None:
        (work / f"{name}.rkestate").write_bytes(state)
        entries.append((f"/etc/kubernetes/{name}.rkestate", work / f"{name}.rkestate"))
    write_archive(root / "backup" / f"{name}.zip", entries)
    return root / "backup" / f"{name}.zip", db


def make_go(root: Path, name: str = NAME, db: bytes | None = None, state: bytes | None = None) -> tuple[Path, bytes]:
    db = snapshot_bytes() if db is None else db
    entries: list[tuple[str, bytes | Path]] = [(f"/backup/{name}", db)]
    if state is not None:
        entries.append((f"/etc/kubernetes/{name}.rkestate", state))
    return write_go_archive(root / "backup" / f"{name}.zip", entries), db


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]


def patch_central(zip_path: Path, entry: str, *, size: int | None = None, compressed: int | None = None) -> None:
    """Rewrite the declared sizes of ``entry`` in the central directory (a lying archive)."""
    data = bytearray(zip_path.read_bytes())
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46 : pos + 46 + name_len].decode() == entry:
            if compressed is not None:
                struct.pack_into("<I", data, pos + 20, compressed)
            if size is not None:
                struct.pack_into("<I", data, pos + 24, size)
        pos = data.find(b"PK\x01\x02", pos + 4)
    zip_path.write_bytes(bytes(data))


# --- the happy paths -------------------------------------------------------------------
@pytest.mark.parametrize("maker", [make_ours, make_go], ids=["ours", "go"])
def test_extracts_verifies_and_records(root: Path, maker) -> None:  # type: ignore[no-untyped-def]
    _, db = maker(root)
    result = _ready()
    out = root / "backup" / NAME
    assert result.origin == "extracted"
    assert out.read_bytes() == db
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert result.digest is not None and result.digest.sha256 == hashlib.sha256(db).hexdigest()
    assert verified.recall(out) == result.digest
    assert leftovers(root / "backup") == []


@pytest.mark.parametrize("maker", [make_ours, make_go], ids=["ours", "go"])
def test_second_start_keeps_the_verified_file(root: Path, maker) -> None:  # type: ignore[no-untyped-def]
    maker(root)
    _ready()
    before = (root / "backup" / NAME).stat()
    again = _ready()
    after = (root / "backup" / NAME).stat()
    assert again.origin == "already verified"
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def touch_keeping_times(path: Path) -> None:
    """Set the times a file already has: only its ctime moves (once the clock's coarse tick
    has passed since the last change)."""
    before = path.stat()
    for _ in range(1000):
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if path.stat().st_ctime_ns != before.st_ctime_ns:
            return
        time.sleep(0.001)
    raise AssertionError(f"the ctime of {path} never changed")


def test_the_record_names_the_archive_file_it_came_from(root: Path) -> None:
    """Serve's second start knows the file by the archive's identity, without opening it; any
    other version of the archive (rewritten, touched) is not that archive."""
    zip_path, _ = make_ours(root)
    out = root / "backup" / NAME
    digest = _ready().digest
    assert digest is not None and verified.recall(out, source=zip_path) == digest
    assert verified.recall(out, source=root / "backup" / "other.zip") is None
    touch_keeping_times(zip_path)
    assert verified.recall(out, source=zip_path) is None
    assert verified.recall(out) == digest  # the file itself is still the verified one
    assert _ready().origin == "already verified"  # checked against the entry, then recorded again
    assert verified.recall(out, source=zip_path) == digest
    make_ours(root)  # the same content, written anew
    assert verified.recall(out, source=zip_path) is None


def test_an_older_record_learns_its_archive_on_the_next_start(root: Path) -> None:
    zip_path, db = make_ours(root)
    out = root / "backup" / NAME
    out.write_bytes(db)
    digest = verified.Digest(len(db), hashlib.sha256(db).hexdigest())
    verified.record(out, digest)  # as a version without archive identities wrote it
    assert verified.recall(out, source=zip_path) is None
    assert _ready().origin == "already verified"
    assert verified.recall(out, source=zip_path) == digest


def test_a_changed_file_is_extracted_again(root: Path) -> None:
    _, db = make_ours(root)
    _ready()
    out = root / "backup" / NAME
    with open(out, "r+b") as f:  # same size, one byte different: only the mtime tells
        f.write(b"X")
    assert _ready().origin == "extracted"
    assert out.read_bytes() == db


def test_a_file_verified_against_another_archive_is_replaced(root: Path) -> None:
    make_ours(root, db=snapshot_bytes(1 << 20))
    _ready()
    _, db2 = make_ours(root, db=snapshot_bytes(1 << 20)[::-1])
    assert _ready().origin == "extracted"
    assert (root / "backup" / NAME).read_bytes() == db2


# --- refusing bad archives, keeping the previous file -----------------------------------
def test_manifest_mismatch_is_refused_and_the_old_file_kept(root: Path) -> None:
    zip_path, _ = make_ours(root)
    with zipfile.ZipFile(zip_path, "a") as archive:
        body = json.loads(archive.comment)
        body["sha256"][f"/backup/{NAME}"] = "0" * 64
        archive.comment = json.dumps(body).encode()
    (root / "backup" / NAME).write_bytes(b"previous")
    with pytest.raises(SidekickError, match=r"SHA-256 .* does not match the manifest"):
        _ready()
    assert (root / "backup" / NAME).read_bytes() == b"previous"
    assert leftovers(root / "backup") == []


def test_corrupt_data_is_refused(root: Path) -> None:
    zip_path, _ = make_go(root)
    data = bytearray(zip_path.read_bytes())
    data[200] ^= 0xFF  # inside the first entry's deflate stream
    zip_path.write_bytes(bytes(data))
    with pytest.raises(SidekickError, match=r"corrupt|CRC-32|inflates past|truncated"):
        _ready()
    assert not (root / "backup" / NAME).exists()
    assert leftovers(root / "backup") == []


def test_crc_mismatch_is_refused(root: Path) -> None:
    zip_path, _ = make_go(root, db=b"a" * 5000)
    data = bytearray(zip_path.read_bytes())
    pos = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, pos + 16, 0x12345678)
    zip_path.write_bytes(bytes(data))
    with pytest.raises(SidekickError, match=r"CRC-32 .* does not match the recorded 12345678"):
        _ready()


def test_truncated_archive_is_refused(root: Path) -> None:
    zip_path, _ = make_ours(root)
    zip_path.write_bytes(zip_path.read_bytes()[: zip_path.stat().st_size // 2])
    with pytest.raises(SidekickError, match="not a readable zip archive"):
        _ready()


def test_not_a_zip(root: Path) -> None:
    (root / "backup" / f"{NAME}.zip").write_bytes(b"this is not a zip")
    with pytest.raises(SidekickError, match="not a readable zip archive"):
        _ready()


def test_absurd_declared_size_is_refused_before_inflating(root: Path) -> None:
    zip_path, _ = make_go(root)
    patch_central(zip_path, f"/backup/{NAME}", size=0xFFFFFFF0)
    with pytest.raises(SidekickError, match="ratio deflate cannot produce"):
        _ready()
    assert not (root / "backup" / NAME).exists()


def test_size_over_the_limit_is_refused(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_go(root)
    monkeypatch.setattr(extract, "MAX_SNAPSHOT_BYTES", 1 << 20)
    with pytest.raises(SidekickError, match="more than the 1048576 allowed"):
        _ready()


def test_entry_inflating_past_its_declared_size_stops(root: Path) -> None:
    zip_path, _ = make_go(root, db=bytes(4 << 20))
    patch_central(zip_path, f"/backup/{NAME}", size=3 << 20)
    with pytest.raises(SidekickError, match="inflates past its declared size"):
        _ready()
    assert not (root / "backup" / NAME).exists()


def test_not_enough_space_is_refused(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_go(root)
    real = os.statvfs

    class Tiny:
        def __init__(self, st: os.statvfs_result) -> None:
            self.f_frsize = st.f_frsize
            self.f_bavail = 1

    monkeypatch.setattr(os, "statvfs", lambda p: Tiny(real(p)))
    with pytest.raises(SidekickError, match=r"not enough space in .*/backup"):
        _ready()


def test_duplicate_entries_are_refused(root: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        write_go_archive(root / "backup" / f"{NAME}.zip", [(f"/backup/{NAME}", b"one"), (f"/backup/{NAME}", b"two")])
    with pytest.raises(SidekickError, match="2 entries named"):
        _ready()


def test_relative_entry_names_are_not_ours(root: Path) -> None:
    """What ``zipfile.write`` produces (no leading slash) is not the original's format."""
    write_go_archive(root / "backup" / f"{NAME}.zip", [(f"backup/{NAME}", b"db")])
    with pytest.raises(SidekickError, match=f"entry /backup/{NAME} not found in .*entries: backup/{NAME}"):
        _ready()


def test_local_header_name_must_match(root: Path) -> None:
    zip_path, _ = make_go(root, db=b"x" * 100)
    data = bytearray(zip_path.read_bytes())
    local = data.find(f"/backup/{NAME}".encode())
    data[local + 1 : local + 7] = b"etc/xx"
    zip_path.write_bytes(bytes(data))
    with pytest.raises(SidekickError, match="different name in its local header"):
        _ready()


@pytest.mark.parametrize(
    "entry,directory",
    [
        ("/backup/../etc/passwd", "/backup"),
        ("/backup//x", "/backup"),
        ("//backup/x", "/backup"),
        ("/backup/sub/x", "/backup"),
        ("backup/x", "/backup"),
        ("/backup/.", "/backup"),
        ("/backup/..", "/backup"),
        ("/backup/", "/backup"),
        ("/backup/x\x00y", "/backup"),
        ("/backup/x\\..\\..\\y", "/backup"),
        ("/etc/kubernetes/../../root/.ssh/authorized_keys", "/etc/kubernetes"),
    ],
)
def test_entry_names_escaping_their_directory_are_refused(root: Path, entry: str, directory: str) -> None:
    with pytest.raises(SidekickError, match="would be written outside"):
        extract.destination(entry, directory)


def test_plain_names_map_under_the_root(root: Path) -> None:
    assert extract.destination(f"/backup/{NAME}", "/backup") == root / "backup" / NAME


# --- the state file ---------------------------------------------------------------------
@pytest.mark.parametrize("maker", [make_ours, make_go], ids=["ours", "go"])
def test_extractstatefile_writes_tmp_cluster_rkestate(root: Path, maker) -> None:  # type: ignore[no-untyped-def]
    state = json.dumps(STATE, indent=2).encode()
    maker(root, state=state)
    assert restore.run_extractstatefile(Options(command="extractstatefile", name=NAME)) == 0
    out = root / "tmp" / "cluster.rkestate"
    assert out.read_bytes() == state
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not (root / "backup" / NAME).exists()  # only the state file was read


def test_extractstatefile_without_state_entry_fails_and_leaves_no_file(root: Path) -> None:
    make_ours(root)
    stale = root / "tmp" / "cluster.rkestate"
    stale.write_text("{}")  # from an earlier run: must not be copied out by RKE
    with pytest.raises(SidekickError, match=f"has no state file /etc/kubernetes/{NAME}.rkestate"):
        restore.run_extractstatefile(Options(command="extractstatefile", name=NAME))
    assert not stale.exists()


def test_extractstatefile_refuses_a_state_file_that_is_not_json(root: Path) -> None:
    make_go(root, state=b"\x00garbage")
    with pytest.raises(SidekickError, match="is not JSON"):
        restore.run_extractstatefile(Options(command="extractstatefile", name=NAME))
    assert not (root / "tmp" / "cluster.rkestate").exists()


def test_extractstatefile_checks_the_manifest(root: Path) -> None:
    zip_path, _ = make_ours(root, state=json.dumps(STATE).encode())
    with zipfile.ZipFile(zip_path, "a") as archive:
        body = json.loads(archive.comment)
        body["sha256"][f"/etc/kubernetes/{NAME}.rkestate"] = "f" * 64
        archive.comment = json.dumps(body).encode()
    with pytest.raises(SidekickError, match="does not match the manifest"):
        restore.run_extractstatefile(Options(command="extractstatefile", name=NAME))


def test_extractstatefile_without_archive(root: Path) -> None:
    with pytest.raises(SidekickError, match=f"snapshot archive /backup/{NAME}.zip not found"):
        restore.run_extractstatefile(Options(command="extractstatefile", name=NAME))


def test_state_file_over_its_limit_is_refused(root: Path) -> None:
    make_go(root, state=b" " * (extract.MAX_STATE_BYTES + 1))
    with pytest.raises(SidekickError, match=r"more than the .* allowed"):
        restore.run_extractstatefile(Options(command="extractstatefile", name=NAME))


def test_hostile_entries_are_never_written(root: Path) -> None:
    """An archive carrying extra entries aimed elsewhere: only the two exact names are read."""
    state = json.dumps(STATE).encode()
    write_go_archive(root / "backup" / f"{NAME}.zip", [
        ("/etc/passwd", b"root::0:0::/root:/bin/sh\n"),
        (f"/backup/../etc/{NAME}", b"escape"),
        ("../../outside", b"escape"),
        (f"/backup/{NAME}", b"the snapshot"),
        (f"/etc/kubernetes/{NAME}.rkestate", state),
    ])
    _ready()
    restore.run_extractstatefile(Options(command="extractstatefile", name=NAME))
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert written == [f"backup/{NAME}", f"backup/{NAME}.zip", "tmp/cluster.rkestate"]
    assert not (root.parent / "outside").exists()
