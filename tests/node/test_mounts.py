"""share-mnt / share-root.sh: host namespace discovery (fake /proc and state roots), then real
make-shared inside a private mount namespace made by ``unshare --mount``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from sidekick.errors import SidekickError, UsageError
from sidekick.host.mountns import (
    container_id,
    find_init_pid,
    host_namespace_pid,
    mount_fields,
    parent_pid,
)
from sidekick.mounts import CURRENT_NAMESPACE, parse_args
from tests.conftest import SIDEKICK, last_line, run_sidekick
from tests.harness.ports import wait_for

CID = "4f2a" + "0" * 56 + "beef"
CGROUP_V1 = f"12:devices:/docker/{CID}\n11:memory:/docker/{CID}\n"
CGROUP_SYSTEMD = f"0::/system.slice/docker-{CID}.scope\n"
MOUNTINFO_DOCKER = (
    "600 500 0:50 / / rw,relatime master:1 - overlay overlay rw\n"
    f"610 600 254:1 /var/lib/docker/containers/{CID}/resolv.conf /etc/resolv.conf rw - ext4 /dev/vda rw\n"
)


@pytest.mark.parametrize(
    ("cgroup", "mountinfo"),
    [(CGROUP_V1, ""), (CGROUP_SYSTEMD, ""), ("0::/\n", MOUNTINFO_DOCKER)],
)
def test_container_id(cgroup: str, mountinfo: str) -> None:
    assert container_id(cgroup, mountinfo) == CID


def test_no_container_id_outside_a_container() -> None:
    assert container_id("0::/user.slice/user-0.slice/session-1.scope\n", "1 0 8:1 / / rw - ext4 /dev/sda rw\n") is None


def test_parent_pid_with_parens_in_the_name() -> None:
    assert parent_pid("4242 (containerd-shim) S 4100 4242 4100 0 -1") == 4100
    assert parent_pid("4242 (we(ird) name) S 77 4242 4100 0 -1") == 77


def write_state(root: Path, name: str, pid: int) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "state.json").write_text(json.dumps({"init_process_pid": pid, "config": {"rootfs": "/x"}}))


def test_state_found_in_a_later_root(tmp_path: Path) -> None:
    write_state(tmp_path / "run/docker/runtime-runc/moby", CID, 4242)
    write_state(tmp_path / "run/runc", "someone-else", 1)
    roots = [tmp_path / "run/runc", tmp_path / "missing", tmp_path / "run/docker/runtime-runc/moby"]
    assert find_init_pid(roots, CID) == 4242


def test_no_state_names_the_roots(tmp_path: Path) -> None:
    with pytest.raises(SidekickError, match=f"no runc state.json for container {CID} under {tmp_path}/run/runc"):
        find_init_pid([tmp_path / "run/runc"], CID)


def test_host_namespace_is_the_parent_of_the_container_init(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self/cgroup").write_text(CGROUP_SYSTEMD)
    (proc / "self/mountinfo").write_text("")
    (proc / "4242").mkdir()
    (proc / "4242/stat").write_text("4242 (sh) S 4100 4242 4100 0 -1\n")
    write_state(tmp_path / "host/run/docker/runtime-runc/moby", CID, 4242)
    assert host_namespace_pid([tmp_path / "run/runc", tmp_path / "host/run/docker/runtime-runc/moby"], proc=proc) == 4100


def test_mount_fields() -> None:
    mountinfo = (
        "30 1 254:1 / / rw - ext4 /dev/vda rw\n"
        "40 30 254:1 /a /mnt/with\\040space rw shared:7 - ext4 /dev/vda rw\n"
        "41 30 254:1 /b /mnt/b rw - ext4 /dev/vda rw\n"
        "42 41 254:1 /c /mnt/b rw shared:9 master:2 - ext4 /dev/vda rw\n"
    )
    assert mount_fields(mountinfo, "/mnt/with space") == ["shared:7"]
    assert mount_fields(mountinfo, "/mnt/b") == ["shared:9", "master:2"]  # the top mount wins
    assert mount_fields(mountinfo, "/") == []
    assert mount_fields(mountinfo, "/nope") is None


def test_parse_args() -> None:
    assert parse_args(["/a", "/b", "--", "norun"], prog="p") == (None, ["/a", "/b"])
    assert parse_args(["--target-pid", "12", "/a"], prog="p") == (12, ["/a"])
    assert parse_args(["--target-pid=12", "/a"], prog="p") == (12, ["/a"])
    assert parse_args(["--stage2", "/a"], prog="p") == (CURRENT_NAMESPACE, ["/a"])
    for bad, message in ((["relative"], "not an absolute path"), (["--target-pid", "x"], "needs a process id"),
                         (["--bogus"], "unknown option")):
        with pytest.raises(UsageError, match=message):
            parse_args(bad, prog="p")


def shared_in(mountinfo: str, path: Path) -> bool:
    fields = mount_fields(mountinfo, str(path))
    return fields is not None and any(f.startswith("shared:") for f in fields)


def unshared_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEKICK_")}
    env.update(SIDEKICK=str(SIDEKICK), SIDEKICK_ROOT=str(root))
    return env


@pytest.mark.integration
def test_share_mnt_in_a_private_namespace_through_nsenter(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/kubelet").mkdir(parents=True)
    # The tool enters the namespace of the shell (pid $$), as it would enter the host's.
    script = '"$SIDEKICK" share-mnt --target-pid $$ /var/lib/kubelet /new/dir -- norun && cat /proc/self/mountinfo'
    env = {**unshared_env(root), "RANCHER_DEBUG": "true"}
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert shared_in(result.stdout, root / "var/lib/kubelet")
    assert shared_in(result.stdout, root / "new/dir")  # created, then shared
    assert (root / "new/dir").is_dir()
    assert "verified=yes" in result.stderr
    assert "run nsenter --mount=/proc/" in result.stderr  # the namespace was entered, not assumed
    # It all happened in the private namespace, not in the test's own.
    assert mount_fields(Path("/proc/self/mountinfo").read_text(), str(root / "var/lib/kubelet")) is None


@pytest.mark.integration
def test_share_mnt_outside_a_container_says_why(tmp_path: Path) -> None:
    result = run_sidekick(["share-mnt", "/x"], root=tmp_path, timeout=30)
    assert result.returncode == 1
    line = last_line(result.stderr)
    assert "level=fatal" in line
    assert "container" in line  # no container id, or no state.json for it
    assert not (tmp_path / "x").exists()


@pytest.mark.integration
def test_share_root_shares_root_and_waits_for_sigterm(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    out = tmp_path / "out"
    script = (
        '"$SIDEKICK" share-root.sh --stage2 /extra & pid=$!; '
        f'while ! grep -q "waiting for SIGTERM" {tmp_path}/log 2>/dev/null; do sleep 0.05; done; '
        f'cat /proc/self/mountinfo > {out}; kill -TERM $pid; wait $pid; echo "rc=$?" >> {out}'
    )
    with open(tmp_path / "log", "wb") as log:
        process = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                   stdout=log, stderr=log, env=unshared_env(root))
    try:
        assert process.wait(timeout=60) == 0, (tmp_path / "log").read_text()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
    wait_for(lambda: "rc=" in out.read_text(), timeout=5, what="result")
    text = out.read_text()
    assert shared_in(text, root) and shared_in(text, root / "extra")
    assert text.strip().endswith("rc=0")
    assert "signal=SIGTERM" in (tmp_path / "log").read_text()
