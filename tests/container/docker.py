"""Containers the way RKE makes them, through Debian's docker CLI and the real engine.

RKE sets Entrypoint and Cmd as lists through the API; the CLI takes one ``--entrypoint``
word, so the rest of RKE's Entrypoint goes first in the command: the process sees the same
argv. Every container gets a unique suffix (the engine may be shared) and is removed with its
anonymous volumes at the end, as RKE removes them (``Force``, ``RemoveVolumes``).

``Privileged`` is granted where the engine can: this kind of machine withholds a capability
(CAP_SYS_RESOURCE) from its own bounding set, so runc cannot apply the full set and
``--privileged`` fails. There the nearest config stands in: every capability the machine
has, seccomp unconfined (see :func:`privileged_flags`).
"""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DOCKER = "/usr/bin/docker"  # Debian's client, matched to Debian's engine
IMAGE = os.environ.get("SIDEKICK_IMAGE", "sidekick:dev")
# A foreign image: Debian 11 minbase, no Python, glibc 2.31 (scripts/image/base-images).
FOREIGN = "sidekick-base/debian:bullseye"
VOLUME = "/opt/rke-tools"
# The volume's interpreter as its launcher starts it (scripts/image/launcher.c), without BOOT.
VOLUME_PYTHON = (f"{VOLUME}/lib/ld-linux-x86-64.so.2 --library-path {VOLUME}/lib --argv0 {VOLUME}/bin/python3 "
                 f"{VOLUME}/bin/python3 -I -S -X utf8 -OO")


def docker(*args: str, timeout: float = 120, check: bool = True, input: str | None = None,
           ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed ({done.returncode}): {done.stderr.strip()}")
    return done


@dataclass
class Containers:
    """Creates containers from RKE-shaped configs and removes them all at the end."""

    names: list[str] = field(default_factory=list)

    def create(
        self,
        rke_name: str,
        *,
        image: str = IMAGE,
        entrypoint: Sequence[str] = (),
        cmd: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        binds: Sequence[str] = (),
        network: str | None = None,
        volumes_from: Sequence[str] = (),
        privileged: bool = False,
        restart: str | None = None,
        ports: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> str:
        name = f"{rke_name}-{uuid.uuid4().hex[:8]}"
        args = ["create", "--name", name]
        if entrypoint:
            args += ["--entrypoint", entrypoint[0]]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        for bind in binds:
            args += ["--volume", bind]
        if network:
            args += ["--network", network]
        for donor in volumes_from:
            args += ["--volumes-from", donor]
        if privileged:
            args += privileged_flags()
        if restart:
            args += ["--restart", restart]
        for port in ports:
            args += ["--publish", port]
        for key, value in (labels or {}).items():
            args += ["--label", f"{key}={value}"]
        args += [image, *entrypoint[1:], *cmd]
        docker(*args)
        self.names.append(name)
        return name

    def run(self, rke_name: str, **config: object) -> str:
        name = self.create(rke_name, **config)  # type: ignore[arg-type]
        docker("start", name)
        return name

    def run_once(self, rke_name: str, *, timeout: float = 180, **config: object) -> tuple[int, str, str]:
        """``DoRunOnetimeContainer``: create, start, wait; returns (exit code, stdout, stderr)."""
        name = self.run(rke_name, **config)
        code = wait(name, timeout=timeout)
        out = docker("logs", name)
        return code, out.stdout, out.stderr

    def remove_all(self) -> None:
        if self.names:
            docker("rm", "--force", "--volumes", *self.names, check=False)
            self.names.clear()


CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)


@functools.cache
def privileged_flags() -> tuple[str, ...]:
    """``--privileged`` if the engine can start such a container here, else the nearest."""
    if docker("run", "--rm", "--privileged", FOREIGN, "true", check=False).returncode == 0:
        return ("--privileged",)
    status = Path("/proc/self/status").read_text()
    bounding = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapBnd:")), 16)
    missing = [name for bit, name in enumerate(CAPABILITIES) if not bounding >> bit & 1]
    flags = ["--cap-add", "ALL", "--security-opt", "seccomp=unconfined"]
    for name in missing:
        flags += ["--cap-drop", name]
    return tuple(flags)


def wait(name: str, *, timeout: float = 180) -> int:
    return int(docker("wait", name, timeout=timeout).stdout.strip())


def state(name: str) -> dict[str, object]:
    return dict(json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout))


def running(name: str) -> bool:
    return bool(state(name)["Running"])


def copy_file_out(name: str, path: str) -> tuple[bytes, int]:
    """``docker cp`` of one file (RKE's ReadFileFromContainer): content and mode."""
    raw = subprocess.run([DOCKER, "cp", f"{name}:{path}", "-"], capture_output=True, timeout=60, check=True)
    with tarfile.open(fileobj=io.BytesIO(raw.stdout)) as tar:
        member = tar.next()
        assert member is not None and member.isfile(), f"{path} is not a file in {name}"
        extracted = tar.extractfile(member)
        assert extracted is not None
        return extracted.read(), member.mode


def wait_until(check: Callable[[], bool], *, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
