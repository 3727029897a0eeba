"""``weave-plugins-cni.sh``: put the loopback and portmap CNI plugins where kubelet runs them.

Weave's DaemonSet runs this in the rke-tools image with the host's ``/opt`` mounted (CONTRACT
section 7). The original did ``mv /tmp/loopback /tmp/portmap /opt/cni/bin``, ``chmod 755`` and
slept forever. Here each plugin is copied to a temp file beside its target and renamed over it,
so kubelet never finds a half-written plugin (a ``mv`` across file systems is a copy), and
only then is the source removed. A restarted container whose plugins are already in place
does nothing; a plugin found neither in ``/tmp`` nor in ``/opt/cni/bin`` is an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sidekick.errors import SidekickError, UsageError
from sidekick.host.files import atomic_copy, remove_leftovers
from sidekick.host.signals import wait_for_termination
from sidekick.log import kv
from sidekick.paths import host_path

log = logging.getLogger(__name__)

USAGE = """\
usage: weave-plugins-cni.sh

Move the image's loopback and portmap CNI plugins into /opt/cni/bin (mode 0755), then wait
for SIGTERM.
"""

PLUGINS = ("loopback", "portmap")
SOURCE_DIR = "/tmp"
TARGET_DIR = "/opt/cni/bin"
PLUGIN_MODE = 0o755

Action = Literal["install", "in-place"]


@dataclass(frozen=True)
class Step:
    name: str
    source: Path
    target: Path
    action: Action


def plan(source_dir: Path, target_dir: Path) -> list[Step]:
    """What to do per plugin; every missing plugin is named in one error before anything moves."""
    steps, missing = [], []
    for name in PLUGINS:
        source, target = source_dir / name, target_dir / name
        if source.is_file():
            steps.append(Step(name, source, target, "install"))
        elif target.is_file():
            steps.append(Step(name, source, target, "in-place"))
        else:
            missing.append(f"{source} (and no {target})")
    if missing:
        raise SidekickError("CNI plugin missing: " + ", ".join(missing))
    return steps


def install(steps: list[Step], target_dir: Path) -> None:
    target_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    # This installer alone writes these names: its own leftovers go at once.
    remove_leftovers(target_dir, names=[step.target.name for step in steps], min_age=0)
    for step in steps:
        if step.action == "in-place":
            log.info("plugin already installed", extra=kv(plugin=step.name, path=step.target))
            if os.stat(step.target).st_mode & 0o777 != PLUGIN_MODE:
                os.chmod(step.target, PLUGIN_MODE)
            continue
        atomic_copy(step.source, step.target, mode=PLUGIN_MODE)
        step.source.unlink()  # a move: the source goes only once the target is complete
        log.info("plugin installed", extra=kv(plugin=step.name, path=step.target, mode=f"{PLUGIN_MODE:04o}"))


def main(argv: list[str]) -> int:
    if argv:
        raise UsageError(f"weave-plugins-cni.sh takes no arguments (got {argv[0]!r})")
    target_dir = host_path(TARGET_DIR)
    install(plan(host_path(SOURCE_DIR), target_dir), target_dir)
    log.info("CNI plugins in place; waiting for SIGTERM")
    received = wait_for_termination()
    log.info("stopping", extra=kv(signal=received))
    return 0
