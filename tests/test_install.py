"""``sidekick install --prefix``: the image's tree of links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidekick import install
from sidekick.errors import SidekickError


@pytest.fixture
def exe(tmp_path: Path) -> Path:
    target = tmp_path / "prefix/opt/rke-tools/bin/sidekick"
    target.parent.mkdir(parents=True)
    target.write_text("#!/bin/sh\n")
    return target


def test_lays_out_every_name(tmp_path: Path, exe: Path) -> None:
    prefix = tmp_path / "prefix"
    assert install.install(prefix, exe) == 0
    for name in install.LAYOUT:
        link = prefix / name
        assert link.is_symlink()
        assert link.resolve() == exe.resolve()


def test_links_inside_the_prefix_are_relative(tmp_path: Path, exe: Path) -> None:
    prefix = tmp_path / "prefix"
    install.install(prefix, exe)
    assert os.readlink(prefix / "opt/rke-tools/entrypoint.sh") == "bin/sidekick"
    assert not os.readlink(prefix / "usr/bin/cert-deployer").startswith("/")


def test_idempotent(tmp_path: Path, exe: Path) -> None:
    prefix = tmp_path / "prefix"
    install.install(prefix, exe)
    assert install.plan(prefix, exe) == []
    install.install(prefix, exe)


def test_never_clobbers_unrelated_files(tmp_path: Path, exe: Path) -> None:
    prefix = tmp_path / "prefix"
    (prefix / "usr/bin").mkdir(parents=True)
    (prefix / "usr/bin/nginx-proxy").write_text("someone else's")
    with pytest.raises(SidekickError, match="nginx-proxy"):
        install.install(prefix, exe)
    assert (prefix / "usr/bin/nginx-proxy").read_text() == "someone else's"
    assert not (prefix / "opt/rke-tools/entrypoint.sh").exists(), "nothing changes on conflict"


def test_missing_target_is_a_usage_error(tmp_path: Path) -> None:
    from sidekick.errors import UsageError

    with pytest.raises(UsageError, match="does not exist"):
        install.main(["--prefix", str(tmp_path), "--target", str(tmp_path / "nope")])
