"""The archive writer: Go-readable zip (absolute names), parallel deflate, manifest, atomicity."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import stat
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest

from sidekick.etcd import archive
from sidekick.etcd.archive import write_archive
from sidekick.etcd.extract import read_manifest
from tests.harness.gozip import build_zipstandin, go_unzip


def mixed_data(size: int, seed: int = 7) -> bytes:
    """JSON-ish text with random runs, so pieces both compress and do not."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(3, 9))) for _ in range(200)]
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.1:
            out += rng.randbytes(rng.randint(10, 300))
        else:
            out += b'{"%s":"%s",' % (rng.choice(words), b" ".join(rng.choice(words) for _ in range(8)))
    return bytes(out[:size])


def repeating_data(size: int, seed: int = 11) -> bytes:
    """20 KiB random blocks, each repeated (slightly changed) for 60 KiB: most matches reach
    back 20 KiB, so at every piece boundary they point into the previous piece."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        block = bytearray(rng.randbytes(20 << 10))
        for _ in range(3):
            block[rng.randrange(len(block))] = rng.randrange(256)
            out += block
    return bytes(out[:size])


PIECE = 64 << 10


@pytest.fixture(scope="module")
def zipstandin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary, _ = build_zipstandin(tmp_path_factory.mktemp("go"))
    return binary


@pytest.fixture
def snapshot(tmp_path: Path) -> tuple[Path, bytes]:
    data = mixed_data(3_000_000)
    path = tmp_path / "raw-snapshot"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize(("chunk_size", "workers"), [(64 << 10, 1), (64 << 10, 3), (archive.DEFAULT_CHUNK, 2)])
def test_round_trip_with_absolute_names(tmp_path: Path, snapshot: tuple[Path, bytes], chunk_size: int,
                                        workers: int) -> None:
    raw, data = snapshot
    state = tmp_path / "state.json"
    state.write_text('{\n  "desiredState": {}\n}')
    dest = tmp_path / "backup" / "snap.zip"
    dest.parent.mkdir()
    seen: list[int] = []
    result = write_archive(dest, [("/backup/snap", raw), ("/etc/kubernetes/snap.rkestate", state)],
                           chunk_size=chunk_size, workers=workers, on_input=seen.append)

    assert sum(seen) == len(data) + state.stat().st_size
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    with zipfile.ZipFile(dest) as zf:
        assert zf.namelist() == ["/backup/snap", "/etc/kubernetes/snap.rkestate"]
        assert zf.testzip() is None  # every CRC-32 checks
        assert zf.read("/backup/snap") == data
        assert zf.read("/etc/kubernetes/snap.rkestate") == state.read_bytes()
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert stat.S_IMODE(info.external_attr >> 16) == 0o600
            assert info.flag_bits & 0x08  # data descriptor, like the Go writer
    assert result.size == dest.stat().st_size
    assert result.sha256 == hashlib.sha256(dest.read_bytes()).hexdigest()
    # Parallel pieces cost little ratio against one zlib stream at the default level.
    assert result.size < len(zlib.compress(data, 6)) * 1.15
    assert read_manifest(dest) == {
        "/backup/snap": hashlib.sha256(data).hexdigest(),
        "/etc/kubernetes/snap.rkestate": hashlib.sha256(state.read_bytes()).hexdigest(),
    }
    assert json.loads(zipfile.ZipFile(dest).comment)["sidekick"] == 1
    assert [p.name for p in dest.parent.iterdir()] == ["snap.zip"]


def test_empty_and_tiny_entries(tmp_path: Path) -> None:
    empty, tiny = tmp_path / "empty", tmp_path / "tiny"
    empty.write_bytes(b"")
    tiny.write_bytes(b"x")
    dest = tmp_path / "t.zip"
    write_archive(dest, [("/backup/empty", empty), ("/backup/tiny", tiny)])
    with zipfile.ZipFile(dest) as zf:
        assert zf.read("/backup/empty") == b"" and zf.read("/backup/tiny") == b"x"


def test_zip64_records_read_back(tmp_path: Path, snapshot: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    # Snapshots past 4 GiB need zip64; force that path on a small file.
    monkeypatch.setattr(archive, "_ZIP64_MARGIN", 1 << 40)
    raw, data = snapshot
    dest = tmp_path / "big.zip"
    write_archive(dest, [("/backup/big", raw)], chunk_size=1 << 20)
    with zipfile.ZipFile(dest) as zf:
        assert zf.read("/backup/big") == data
        assert zf.testzip() is None


def test_failure_leaves_the_previous_archive_and_no_temp(tmp_path: Path, snapshot: tuple[Path, bytes]) -> None:
    raw, _ = snapshot
    dest = tmp_path / "snap.zip"
    dest.write_bytes(b"previous good archive")

    def boom(_count: int) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_archive(dest, [("/backup/snap", raw)], chunk_size=64 << 10, on_input=boom)
    assert dest.read_bytes() == b"previous good archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw-snapshot", "snap.zip"]


def test_a_disk_error_while_writing_is_the_disk_error(tmp_path: Path, snapshot: tuple[Path, bytes]) -> None:
    """The archive's own writes fail for real (a file size limit: EFBIG at 1 MiB, past the
    first direct writes): the OSError is what the caller gets, the old archive stays."""
    raw, _ = snapshot
    dest = tmp_path / "snap.zip"
    dest.write_bytes(b"previous good archive")
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limits[1]))
    try:
        with pytest.raises(OSError) as failed:
            write_archive(dest, [("/backup/snap", raw)], chunk_size=PIECE)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert failed.value.errno == errno.EFBIG
    assert dest.read_bytes() == b"previous good archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw-snapshot", "snap.zip"]


def test_manifest_absent_or_foreign(tmp_path: Path) -> None:
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("/backup/x", b"data")
    assert read_manifest(plain) == {}
    with zipfile.ZipFile(plain, "a") as zf:
        zf.comment = b'{"other": true}'
    assert read_manifest(plain) == {}
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert read_manifest(tmp_path / "junk.zip") == {}
    assert read_manifest(tmp_path / "missing.zip") == {}


@pytest.mark.integration
def test_unzip_reads_it(tmp_path: Path, snapshot: tuple[Path, bytes]) -> None:
    raw, data = snapshot
    dest = tmp_path / "snap.zip"
    write_archive(dest, [("/backup/snap", raw)], chunk_size=256 << 10)
    tested = subprocess.run(["unzip", "-t", str(dest)], capture_output=True, text=True, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "No errors detected" in tested.stdout
    extracted = subprocess.run(["unzip", "-p", str(dest), "/backup/snap"], capture_output=True, check=True)
    assert extracted.stdout == data


@pytest.mark.parametrize("engine", sorted(archive.ENGINES))
@pytest.mark.parametrize("size", [0, 1, PIECE - 1, PIECE, PIECE + 1, 7 * PIECE, 7 * PIECE + 12345])
def test_pieces_inflate_to_the_input_across_boundaries(tmp_path: Path, engine: str, size: int) -> None:
    data = repeating_data(size)
    raw = tmp_path / "raw"
    raw.write_bytes(data)
    dest = tmp_path / "snap.zip"
    result = write_archive(dest, [("/backup/snap", raw)], engine=engine, chunk_size=PIECE, workers=3)
    with zipfile.ZipFile(dest) as zf:
        assert zf.testzip() is None
        assert zf.read("/backup/snap") == data
    assert zlib.decompress(dest.read_bytes()[30 + len("/backup/snap"):][: result.entries[0].compressed], -15) == data
    if size > 2 * PIECE:
        # Each piece sees the previous 32 KiB: the 20 KiB repeats cost nothing at any boundary,
        # where pieces deflated alone would spell one block out again (1/3 of the input).
        assert result.entries[0].compressed < len(data) * 0.45


@pytest.mark.integration
@pytest.mark.parametrize("data", [repeating_data(1_500_000), mixed_data(1_500_000)], ids=["repeating", "mixed"])
def test_go_and_unzip_read_the_default_engine(tmp_path: Path, zipstandin: Path, data: bytes) -> None:
    """The readers RKE's side uses: Go's archive/zip as the Go tool's decompressFile (CRC-32
    checked), and Info-ZIP; pieces of 64 KiB, so the stream has a boundary every 64 KiB."""
    raw, state = tmp_path / "raw", tmp_path / "state.json"
    raw.write_bytes(data)
    state.write_text('{"desiredState": {}}')
    dest = tmp_path / "snap.zip"
    write_archive(dest, [("/backup/snap", raw), ("/etc/kubernetes/snap.rkestate", state)],
                  chunk_size=PIECE, workers=2)
    for name, expected in (("/backup/snap", data), ("/etc/kubernetes/snap.rkestate", state.read_bytes())):
        out = tmp_path / "out"
        done = go_unzip(zipstandin, dest, name, out)
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == expected
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        out.unlink()
    tested = subprocess.run(["unzip", "-t", str(dest)], capture_output=True, text=True, check=False)
    assert tested.returncode == 0 and "No errors detected" in tested.stdout, tested.stdout + tested.stderr
    assert subprocess.run(["unzip", "-p", str(dest), "/backup/snap"], capture_output=True, check=True).stdout == data


@pytest.mark.integration
def test_go_refuses_a_corrupted_archive(tmp_path: Path, zipstandin: Path) -> None:
    """The Go reader of the test above does check: one flipped byte in the deflate data fails it."""
    data = mixed_data(400_000)
    raw = tmp_path / "raw"
    raw.write_bytes(data)
    dest = tmp_path / "snap.zip"
    write_archive(dest, [("/backup/snap", raw)], chunk_size=PIECE)
    body = bytearray(dest.read_bytes())
    body[30 + len("/backup/snap") + 50_000] ^= 0x10
    dest.write_bytes(bytes(body))
    done = go_unzip(zipstandin, dest, "/backup/snap", tmp_path / "out")
    assert done.returncode == 1
    assert "checksum" in done.stderr or "flate" in done.stderr, done.stderr


@pytest.mark.integration
def test_file_size_limit_is_a_clean_failure(tmp_path: Path, snapshot: tuple[Path, bytes]) -> None:
    raw, _ = snapshot
    dest = tmp_path / "snap.zip"
    code = (
        "import sys; from pathlib import Path; from sidekick.etcd.archive import write_archive\n"
        "try:\n"
        f"    write_archive(Path({str(dest)!r}), [('/backup/snap', Path({str(raw)!r}))])\n"
        "except OSError as err:\n"
        "    print(err.errno); sys.exit(3)\n"
    )

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limit,
                          check=False, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == "27"  # EFBIG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw-snapshot"]
    assert shutil.which("unzip")
    assert os.path.exists(raw)


def test_an_unknown_engine_is_refused_before_any_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown deflate engine 'lzma'"):
        write_archive(tmp_path / "snap.zip", [("/backup/snap", raw)], engine="lzma")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
