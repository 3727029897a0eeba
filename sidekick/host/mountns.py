"""The host's mount namespace, seen from a privileged container, and mounts made inside it.

A container started with ``--pid host`` finds its own runc ``state.json`` (the container id
comes from ``/proc/self/cgroup``), takes the init process's parent (the shim, which lives in
the host's mount namespace) and enters that namespace with ``nsenter --mount`` to run the
host's own ``mkdir``/``mountpoint``/``mount``. This is how rancher/share-mnt found the host.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from sidekick.errors import SidekickError
from sidekick.host.proc import Runner

# runc state roots: Docker's (old and containerd-managed), plain runc, boot2docker's /var prefix.
STATE_ROOTS = (
    "/run/runc",
    "/var/run/runc",
    "/run/docker/execdriver/native",
    "/var/run/docker/execdriver/native",
    "/run/docker/runtime-runc/moby",
    "/var/run/docker/runtime-runc/moby",
    "/run/docker/runtime-nvidia/moby",
    "/var/run/docker/runtime-nvidia/moby",
    "/run/containerd/runc/moby",
)

_SCOPE = re.compile(r"docker-([0-9a-f]{12,64})\.scope")
_DOCKER_PATH = re.compile(r"/docker/([0-9a-f]{12,64})(?:/|$)")
_CONTAINERS_DIR = re.compile(r"/containers/([0-9a-f]{64})/")


def container_id(cgroup: str, mountinfo: str) -> str | None:
    """This container's id: from the cgroup path (v1 or systemd scope), else Docker's bind mounts."""
    for line in cgroup.splitlines():
        for pattern in (_DOCKER_PATH, _SCOPE):
            if match := pattern.search(line.partition(":")[2].partition(":")[2]):
                return match.group(1)
    # cgroup v2 with a private cgroup namespace shows "0::/": Docker's resolv.conf/hostname
    # bind mounts still name /var/lib/docker/containers/<id>/.
    if match := _CONTAINERS_DIR.search(mountinfo):
        return match.group(1)
    return None


def find_init_pid(roots: Iterable[Path], cid: str) -> int:
    """``init_process_pid`` from the first ``<root>/<id...>/state.json`` (prefix match, like the original)."""
    looked = []
    for root in roots:
        looked.append(str(root))
        try:
            entries = sorted(root.iterdir())
        except OSError:
            continue
        for entry in entries:
            if not entry.name.startswith(cid):
                continue
            try:
                state = json.loads((entry / "state.json").read_text())
                return int(state["init_process_pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
    raise SidekickError(f"no runc state.json for container {cid} under {', '.join(looked)}")


def parent_pid(stat: str) -> int:
    """Field 4 of ``/proc/<pid>/stat``; the command name may itself contain ')'."""
    return int(stat.rpartition(")")[2].split()[1])


def mount_fields(mountinfo: str, mount_point: str) -> list[str] | None:
    """Optional fields (``shared:N``, ``master:N``) of the top mount at ``mount_point``, or None."""
    found = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 6 and _unescape(fields[4]) == mount_point:
            found = fields[6 : fields.index("-")]
    return found


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


class MountNamespace:
    """Runs the mount commands in a target mount namespace (or in our own when pid is None)."""

    def __init__(self, runner: Runner, pid: int | None, *, proc: Path = Path("/proc")) -> None:
        self.runner = runner
        self.pid = pid
        self.proc = proc

    @property
    def prefix(self) -> list[str]:
        if self.pid is None:
            return []
        return ["nsenter", f"--mount={self.proc}/{self.pid}/ns/mnt", "--"]

    def describe(self) -> str:
        return "this mount namespace" if self.pid is None else f"the mount namespace of pid {self.pid}"

    def make_shared(self, path: Path) -> None:
        """Create ``path`` if missing, bind it onto itself if it is no mount point, make it shared."""
        self.runner.run([*self.prefix, "mkdir", "-p", "--", str(path)], timeout=30)
        probe = self.runner.run([*self.prefix, "mountpoint", "-q", "--", str(path)], timeout=30, check=False)
        if probe.returncode != 0:
            # mount(2) only changes propagation on a mount point (docker's pkg/mount did the same).
            self.runner.run([*self.prefix, "mount", "--bind", "--", str(path), str(path)], timeout=30)
        self.runner.run([*self.prefix, "mount", "--make-shared", "--", str(path)], timeout=30)

    def shared(self, path: Path) -> bool:
        pid = "self" if self.pid is None else str(self.pid)
        fields = mount_fields((self.proc / pid / "mountinfo").read_text(), str(path))
        return bool(fields) and any(f.startswith("shared:") for f in fields or [])


def host_namespace_pid(state_roots: Iterable[Path], *, proc: Path = Path("/proc")) -> int:
    """The pid whose mount namespace is the host's: the parent of this container's init."""
    cid = container_id((proc / "self/cgroup").read_text(), (proc / "self/mountinfo").read_text())
    if cid is None:
        raise SidekickError("cannot tell this container's id from /proc/self/cgroup or /proc/self/mountinfo")
    init = find_init_pid(state_roots, cid)
    try:
        return parent_pid((proc / str(init) / "stat").read_text())
    except OSError as err:
        raise SidekickError(
            f"cannot read {proc}/{init}/stat ({err.strerror}); the container needs --pid host") from None
