"""The mount table and the mount system calls, for the kubelet preparation.

The calls go straight to libc (``mount(2)``, ``umount2(2)``) rather than through util-linux,
so the container needs no ``mount`` binary and an error comes back as an ``OSError`` with
the kernel's reason. ``parse_mountinfo`` is pure: callers read the text and decide.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from sidekick.paths import host_path

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# Per-mount options as /proc/self/mountinfo spells them; a remount must repeat them or the
# kernel clears them (util-linux does the same merge before it calls mount(2)).
_MOUNT_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "sync": MS_SYNCHRONOUS,
    "mand": MS_MANDLOCK,
    "dirsync": MS_DIRSYNC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
    "lazytime": MS_LAZYTIME,
}


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo; ``point`` is as the reader sees it (octal escapes undone)."""

    mount_id: int
    parent_id: int
    point: str
    options: frozenset[str]
    fstype: str = ""
    source: str = ""
    super_options: str = ""  # the filesystem's own options (``size=``, ``nsdelegate``...)


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse ``/proc/<pid>/mountinfo`` (proc(5)) in the kernel's order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        mounts.append(
            Mount(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                point=_unescape(fields[4]),
                options=frozenset(fields[5].split(",")),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
                super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
            )
        )
    return mounts


def mount_flags(options: frozenset[str]) -> int:
    """The per-mount ``MS_*`` flags that ``options`` (a mountinfo field) stands for."""
    flags = MS_RDONLY if "ro" in options else 0
    for name, flag in _MOUNT_FLAGS.items():
        if name in options:
            flags |= flag
    return flags


def remount_data(super_options: str) -> str | None:
    """The filesystem options to repeat on a remount, without ``ro``/``rw``.

    A legacy remount hands the filesystem a fresh option set: cgroup2 given none drops
    ``nsdelegate`` from the (host-wide) superblock. mount(8) repeats what mountinfo shows.
    """
    kept = [o for o in super_options.split(",") if o and o not in ("ro", "rw")]
    return ",".join(kept) or None


class Mounter:
    """Mount system calls on the current mount namespace."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)

    def table(self) -> list[Mount]:
        """This process's mount table, read through the root (``/proc/self/mountinfo``)."""
        return parse_mountinfo(host_path("/proc/self/mountinfo").read_text())

    def _mount(self, source: str, target: Path, fstype: str | None, flags: int, data: str | None = None) -> None:
        result = self._libc.mount(
            source.encode(), os.fsencode(target), None if fstype is None else fstype.encode(), flags,
            None if data is None else data.encode(),
        )  # fmt: skip
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(target))

    def umount(self, target: Path) -> None:
        if self._libc.umount2(os.fsencode(target), 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(target))

    def bind(self, source: Path, target: Path, *, recursive: bool = False) -> None:
        """``mount --bind`` (``--rbind`` when ``recursive``)."""
        self._mount(os.fsdecode(source), target, None, MS_BIND | (MS_REC if recursive else 0))

    def remount_rw(self, target: Path) -> None:
        """``mount -o rw,remount``: keep the mount's other options, drop read-only."""
        resolved = os.path.realpath(target)
        current = [m for m in self.table() if m.point == resolved]
        options = current[-1].options if current else frozenset()
        data = remount_data(current[-1].super_options) if current else None
        self._mount("none", target, None, MS_REMOUNT | (mount_flags(options) & ~MS_RDONLY), data)
