"""One root for every host path; atomic writes with their final mode."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from sidekick import paths
from sidekick.host import files


def test_root_defaults_to_slash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.ROOT_ENV, raising=False)
    assert paths.host_path("/backup/x") == Path("/backup/x")


def test_root_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(paths.ROOT_ENV, str(tmp_path))
    assert paths.host_path("/etc/kubernetes/ssl") == tmp_path / "etc/kubernetes/ssl"
    with pytest.raises(ValueError):
        paths.host_path("relative/path")


def test_atomic_write_sets_the_mode_despite_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        files.atomic_write(tmp_path / "ca.pem", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ca.pem").stat().st_mode) == 0o644


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "nginx.conf"
    target.write_text("old")

    def chunks():  # type: ignore[no-untyped-def]
        yield b"new part"
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.atomic_write(target, chunks())
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["nginx.conf"]


def test_atomic_write_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "key.pem").symlink_to(victim)
    files.atomic_write(tmp_path / "key.pem", b"secret")
    assert victim.read_text() == "keep"
    assert not (tmp_path / "key.pem").is_symlink()


def test_leftovers_are_removed(tmp_path: Path) -> None:
    old = time.time() - files.LEFTOVER_AGE - 60
    for name in (f"{files.TEMP_PREFIX}x.zip.1234", f"{files.TEMP_PREFIX}x.zip.5678",
                 f"{files.TEMP_PREFIX}x.zip.9abc", f"{files.TEMP_PREFIX}x.y.0badf00d.part", "keep.zip"):
        (tmp_path / name).write_text("partial")
        os.utime(tmp_path / name, (old, old))
    os.utime(tmp_path / f"{files.TEMP_PREFIX}x.zip.5678")  # another writer's, in flight
    removed = files.remove_leftovers(tmp_path, names=["x.zip"])
    assert sorted(p.name for p in removed) == [f"{files.TEMP_PREFIX}x.zip.1234", f"{files.TEMP_PREFIX}x.zip.9abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{files.TEMP_PREFIX}x.y.0badf00d.part", f"{files.TEMP_PREFIX}x.zip.5678", "keep.zip"]
    # Any final name, no age rule: every temp name of ours goes, nothing else.
    assert len(files.remove_leftovers(tmp_path, min_age=0)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.zip"]


def test_atomic_output_exposes_its_temp_until_the_rename(tmp_path: Path) -> None:
    target = tmp_path / "nginx.conf"
    with files.atomic_output(target, mode=0o644) as pending:
        pending.file.write(b"events {}")
        pending.file.flush()
        assert pending.temp.parent == tmp_path and pending.temp.read_bytes() == b"events {}"
        assert files.leftover_of(pending.temp.name) == "nginx.conf"
        assert not target.exists()
    assert target.read_bytes() == b"events {}" and not pending.temp.exists()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_atomic_symlink_replaces_a_link(tmp_path: Path) -> None:
    link = tmp_path / "d" / "os-release"
    files.atomic_symlink(Path("/a"), link)
    files.atomic_symlink(Path("/b"), link)
    assert os.readlink(link) == "/b" and [p.name for p in link.parent.iterdir()] == ["os-release"]
