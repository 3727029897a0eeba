"""``sidekick install --prefix DIR``: lay out the image's tool names as links to one executable.

Links whose target lies inside the prefix are relative, so the tree can be copied into a
volume and still work wherever it is mounted. Re-running is a no-op; a path that holds
anything else (a file, a link elsewhere) is a conflict, reported before anything changes.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from sidekick.errors import SidekickError, UsageError
from sidekick.log import kv

log = logging.getLogger(__name__)
# The --help description; not the docstring, which the image's bytecode leaves out (-OO).
DESCRIPTION = "``sidekick install --prefix DIR``: lay out the image's tool names as links to one executable."

LAYOUT = (
    "opt/rke-tools/entrypoint.sh",
    "opt/rke-tools/cloud-provider.sh",
    "opt/rke-tools/weave-plugins-cni.sh",
    "opt/rke-tools/rke-etcd-backup",
    "usr/bin/cert-deployer",
    "usr/bin/nginx-proxy",
    "usr/bin/share-mnt",
)


def default_target() -> Path:
    found = shutil.which("sidekick")
    return Path(found) if found else Path(sys.argv[0]).resolve()


def link_text(link: Path, target: Path, prefix: Path) -> str:
    """The symlink text: relative inside the prefix, absolute otherwise."""
    try:
        target.resolve().relative_to(prefix.resolve())
    except ValueError:
        return str(target)
    return os.path.relpath(target.resolve(), link.parent.resolve())


def plan(prefix: Path, target: Path, names: tuple[str, ...] = LAYOUT) -> list[tuple[Path, str]]:
    """Links still to create; raises when a path is taken by something unrelated."""
    todo, conflicts = [], []
    for name in names:
        link = prefix / name
        text = link_text(link, target, prefix)
        if link.is_symlink():
            if os.readlink(link) != text:
                conflicts.append(f"{link} -> {os.readlink(link)}")
        elif link.exists():
            conflicts.append(str(link))
        else:
            todo.append((link, text))
    if conflicts:
        raise SidekickError("refusing to replace unrelated files: " + ", ".join(conflicts))
    return todo


def install(prefix: Path, target: Path) -> int:
    todo = plan(prefix, target)
    for link, text in todo:
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(text, link)
        log.debug("linked", extra=kv(link=link, target=text))
    log.info("install complete", extra=kv(prefix=prefix, created=len(todo), kept=len(LAYOUT) - len(todo)))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sidekick install", description=DESCRIPTION)
    parser.add_argument("--prefix", required=True, type=Path, help="root of the tree to lay out")
    parser.add_argument("--target", type=Path, help="executable the links point to (default: this one)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # argparse already printed its usage line
        if done.code:
            raise UsageError("sidekick install: bad arguments (see --help)") from None
        return 0
    target = args.target or default_target()
    if not target.exists():
        raise UsageError(f"target executable {target} does not exist")
    return install(args.prefix, target)
