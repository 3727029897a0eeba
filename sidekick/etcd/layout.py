"""Where snapshots live, spelled once (CONTRACT 3): names inside the containers RKE runs.

RKE binds the host's ``/opt/rke/etcd-snapshots`` at ``/backup`` and ``<prefix>/etc/kubernetes``
at ``/etc/kubernetes``. An archive ``/backup/<name>.zip`` holds the entries ``/backup/<name>``
(the etcd database) and ``/etc/kubernetes/<name>.rkestate`` (the cluster state); RKE copies
``/tmp/cluster.rkestate`` out of the extractstatefile container. The ``*_path`` functions map
those names under :func:`sidekick.paths.host_path`; the ``*_entry`` ones are archive entry
names and log names.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sidekick.errors import UsageError
from sidekick.host.files import TEMP_OVERHEAD
from sidekick.host.lock import exclusive
from sidekick.host.signals import StopRequest
from sidekick.paths import host_path

BACKUP_DIR = "/backup"
PRIVATE_DIR = "/backup/.sidekick"  # our own files; a dot name is never a snapshot (validate_name)
LOCK = f"{PRIVATE_DIR}/lock"
STATE_DIR = "/etc/kubernetes"
STATE_OUTPUT = "/tmp/cluster.rkestate"
ARCHIVE_SUFFIX = ".zip"
DEFAULT_NAME_MAX = 255


def backup_dir() -> Path:
    return host_path(BACKUP_DIR)


def snapshot_entry(name: str) -> str:
    return f"{BACKUP_DIR}/{name}"


def archive_entry(name: str) -> str:
    return f"{BACKUP_DIR}/{name}{ARCHIVE_SUFFIX}"


def state_entry(name: str) -> str:
    return f"{STATE_DIR}/{name}.rkestate"


def snapshot_path(name: str) -> Path:
    return host_path(snapshot_entry(name))


def archive_path(name: str) -> Path:
    return host_path(archive_entry(name))


def state_path(name: str) -> Path:
    return host_path(state_entry(name))


def state_output() -> Path:
    return host_path(STATE_OUTPUT)


def one_run_at_a_time(what: str, *, stop: StopRequest, wait: float,
                      note: str) -> contextlib.AbstractContextManager[None]:
    """The node's run lock (/backup/.sidekick/lock): a second ``save`` or ``prune`` on the
    node waits up to ``wait`` seconds for the first, then fails naming it."""
    return exclusive(host_path(LOCK), wait=wait, stop=stop, what=what, note=note)


def last_snapshot_size(directory: Path) -> int | None:
    """The uncompressed size of the newest archive's snapshot entry (from its central
    directory: cheap, and present in archives of every tool), or None without one."""
    import zipfile

    newest: tuple[float, Path] | None = None
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(ARCHIVE_SUFFIX) and not entry.name.startswith(".") and entry.is_file():
                mtime = entry.stat().st_mtime
                if newest is None or mtime > newest[0]:
                    newest = (mtime, Path(entry.path))
    if newest is None:
        return None
    entry_name = snapshot_entry(newest[1].name[: -len(ARCHIVE_SUFFIX)])
    try:
        with zipfile.ZipFile(newest[1]) as archive:
            return archive.getinfo(entry_name).file_size
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


def check_name_fits(name: str) -> None:
    """Refuse up front a ``--name`` whose files (with our temp and ``.zip`` suffixes) the
    filesystem of /backup could not hold, instead of failing half-way with ENAMETOOLONG."""
    try:
        limit = os.pathconf(backup_dir(), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = DEFAULT_NAME_MAX
    longest = len(f"{name}{ARCHIVE_SUFFIX}".encode()) + TEMP_OVERHEAD
    if longest > limit:
        allowed = limit - TEMP_OVERHEAD - len(ARCHIVE_SUFFIX)
        raise UsageError(f"snapshot name is {len(name.encode())} bytes long: at most {allowed} fit "
                         f"in file names on {BACKUP_DIR}")
