"""weave-plugins-cni.sh: plugin install decisions on a temp root, then the real long-running tool."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sidekick.cni import install, plan
from sidekick.errors import SidekickError
from tests.conftest import last_line, run_sidekick
from tests.harness.ports import wait_for

REAL_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins, installed by scripts/setup


def fake_plugins(root: Path) -> None:
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    for name in ("loopback", "portmap"):
        (root / "tmp" / name).write_bytes(b"\x7fELF plugin " + name.encode())
        (root / "tmp" / name).chmod(0o644)


def test_moves_both_plugins_executable(tmp_path: Path) -> None:
    fake_plugins(tmp_path)
    target = tmp_path / "opt/cni/bin"
    install(plan(tmp_path / "tmp", target), target)
    assert sorted(p.name for p in target.iterdir()) == ["loopback", "portmap"]
    for name in ("loopback", "portmap"):
        assert (target / name).read_bytes() == b"\x7fELF plugin " + name.encode()
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o755
        assert not (tmp_path / "tmp" / name).exists()


def test_second_run_finds_them_in_place(tmp_path: Path) -> None:
    fake_plugins(tmp_path)
    target = tmp_path / "opt/cni/bin"
    install(plan(tmp_path / "tmp", target), target)
    (target / "portmap").chmod(0o700)
    steps = plan(tmp_path / "tmp", target)
    assert [s.action for s in steps] == ["in-place", "in-place"]
    install(steps, target)
    assert stat.S_IMODE((target / "portmap").stat().st_mode) == 0o755


def test_existing_target_is_replaced_whole(tmp_path: Path) -> None:
    fake_plugins(tmp_path)
    target = tmp_path / "opt/cni/bin"
    target.mkdir(parents=True)
    (target / "loopback").write_bytes(b"old version")
    (target / ".sidekick-tmp-loopback.dead").write_bytes(b"half written by a crashed run")
    install(plan(tmp_path / "tmp", target), target)
    assert (target / "loopback").read_bytes() == b"\x7fELF plugin loopback"
    assert sorted(p.name for p in target.iterdir()) == ["loopback", "portmap"]


def test_missing_source_without_target_names_it(tmp_path: Path) -> None:
    fake_plugins(tmp_path)
    (tmp_path / "tmp/portmap").unlink()
    with pytest.raises(SidekickError) as err:
        plan(tmp_path / "tmp", tmp_path / "opt/cni/bin")
    assert f"CNI plugin missing: {tmp_path}/tmp/portmap (and no {tmp_path}/opt/cni/bin/portmap)" == str(err.value)
    assert (tmp_path / "tmp/loopback").exists()  # nothing moved


@pytest.mark.integration
def test_real_plugins_installed_then_waits_for_sigterm(tmp_path: Path, tool_link: Callable[[str], Path]) -> None:
    (tmp_path / "root/tmp").mkdir(parents=True)
    for name in ("loopback", "portmap"):
        shutil.copy(REAL_PLUGINS / name, tmp_path / "root/tmp" / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEKICK_")}
    env["SIDEKICK_ROOT"] = str(tmp_path / "root")
    log_path = tmp_path / "weave.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(tool_link("weave-plugins-cni.sh"))], stdout=log, stderr=log, env=env)
    try:
        wait_for(lambda: "waiting for SIGTERM" in log_path.read_text(), timeout=20, what="plugins installed")
        assert process.poll() is None  # still running: the DaemonSet pod stays up
        portmap = tmp_path / "root/opt/cni/bin/portmap"
        assert stat.S_IMODE(portmap.stat().st_mode) == 0o755
        assert portmap.read_bytes() == (REAL_PLUGINS / "portmap").read_bytes()
        # The installed plugins are the real, runnable CNI binaries.
        for name in ("loopback", "portmap"):
            version = subprocess.run([str(tmp_path / "root/opt/cni/bin" / name)], env={"CNI_COMMAND": "VERSION"},
                                     capture_output=True, text=True, timeout=10, check=True)
            assert "0.4.0" in json.loads(version.stdout)["supportedVersions"]
        assert not (tmp_path / "root/tmp/loopback").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert "signal=SIGTERM" in log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.integration
def test_missing_plugin_fails_with_one_line(tmp_path: Path) -> None:
    result = run_sidekick(["weave-plugins-cni.sh"], root=tmp_path, timeout=20)
    assert result.returncode == 1
    line = last_line(result.stderr)
    assert "level=fatal" in line and f"CNI plugin missing: {tmp_path}/tmp/loopback" in line
