"""Kernel knobs and the process table: sysctl writes, "is this daemon running"."""

from __future__ import annotations

import contextlib
import os

from sidekick.paths import host_path


def sysctl_path(name: str) -> str:
    """``net.bridge.bridge-nf-call-iptables`` -> ``/proc/sys/net/bridge/bridge-nf-call-iptables``."""
    return "/proc/sys/" + name.replace(".", "/")


class Kernel:
    """Writes sysctls through ``/proc/sys`` (what ``sysctl -w`` does, without the binary)."""

    def sysctl(self, name: str, value: str) -> None:
        with open(host_path(sysctl_path(name)), "w") as knob:
            knob.write(value)


def process_running(name: str) -> bool:
    """True when some process's command line contains ``name`` (what ``pgrep -f`` does).

    Reads ``/proc`` through the root; kubelet runs with the host's PID namespace, so this
    sees the host's daemons. Our own process is skipped, as pgrep skips itself.
    """
    proc = host_path("/proc")
    own = str(os.getpid())
    try:
        entries = os.listdir(proc)
    except OSError:
        return False
    for entry in entries:
        if not entry.isdigit() or entry == own:
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if name.encode() in cmdline:
                return True
    return False
