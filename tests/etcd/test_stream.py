"""The hashing writer's direct mode: whole aligned chunks bypass the page cache, everything
else (a short tail, a resume at an odd offset) is written the ordinary way; the file and its
SHA-256 are the same either way."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import pytest

from sidekick.errors import SidekickError
from sidekick.etcd.stream import ALIGN, HashingWriter

CHUNK = 64 << 10


def _feed(writer: HashingWriter, data: bytes, *, piece: int = CHUNK) -> None:
    for start in range(0, len(data), piece):
        part = data[start:start + piece]
        buffer = writer.get_buffer()
        memoryview(buffer)[: len(part)] = part
        writer.submit(buffer, len(part))


def _o_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def _takes_direct(directory: Path) -> bool:
    try:
        os.close(os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    except OSError:
        return False
    return True


def test_many_aligned_buffers_and_an_odd_tail(tmp_path: Path) -> None:
    data = os.urandom(40 * CHUNK + 123)
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        writer = HashingWriter(fd, chunk=CHUNK, depth=3, direct=True)
        assert _o_direct(fd) == _takes_direct(tmp_path)  # else it writes the ordinary way
        _feed(writer, data)
        digest = writer.finish()
        assert not _o_direct(fd)  # the descriptor is the caller's again, as it was
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert digest.size == len(data) and digest.sha256 == hashlib.sha256(data).hexdigest()


def test_a_short_buffer_in_the_middle_turns_direct_off_for_the_rest(tmp_path: Path) -> None:
    """What a resume after a broken connection looks like: a partial buffer, then whole ones
    at an offset that is no longer aligned."""
    head, middle, rest = os.urandom(3 * CHUNK), os.urandom(ALIGN + 7), os.urandom(5 * CHUNK)
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        writer = HashingWriter(fd, chunk=CHUNK, depth=2, direct=True)
        _feed(writer, head)
        _feed(writer, middle)
        _feed(writer, rest)
        digest = writer.finish()
    finally:
        os.close(fd)
    data = head + middle + rest
    assert path.read_bytes() == data
    assert digest.sha256 == hashlib.sha256(data).hexdigest()


def test_direct_starts_at_the_descriptors_offset(tmp_path: Path) -> None:
    """A writer made after a restart (ftruncate, lseek 0) or at an aligned offset keeps going."""
    path = tmp_path / "out"
    first, second = os.urandom(2 * CHUNK), os.urandom(2 * CHUNK + 1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        writer = HashingWriter(fd, chunk=CHUNK, direct=True)
        _feed(writer, first)
        writer.finish()
        writer = HashingWriter(fd, chunk=CHUNK, direct=True)
        _feed(writer, second)
        assert writer.finish().sha256 == hashlib.sha256(second).hexdigest()
    finally:
        os.close(fd)
    assert path.read_bytes() == first + second


def test_a_write_error_surfaces_as_one_clear_error(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "out", os.O_RDONLY | os.O_CREAT, 0o600)  # not writable
    try:
        writer = HashingWriter(fd, chunk=CHUNK, depth=1, direct=True)
        with pytest.raises(SidekickError, match="writing the snapshot failed: Bad file descriptor"):
            _feed(writer, os.urandom(4 * CHUNK))
            writer.finish()
    finally:
        os.close(fd)


def test_without_direct_buffers_are_ordinary_and_the_flag_untouched(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 5)
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        writer = HashingWriter(fd, chunk=CHUNK)
        assert isinstance(writer.get_buffer(), bytearray) and not _o_direct(fd)
        writer.submit(bytearray(CHUNK), 0)  # the buffer taken above goes back unused
        _feed(writer, data)
        assert writer.finish().sha256 == hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == data
