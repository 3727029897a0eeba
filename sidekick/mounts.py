"""``share-mnt`` and ``share-root.sh``: make host paths shared mounts (CONTRACT section 7).

Legacy helpers from the boot2docker era (RKE no longer calls them). ``share-mnt PATH... [--
ignored...]`` creates each path if missing and makes it a shared mount in the host's mount
namespace, found through this container's runc ``state.json`` as rancher/share-mnt did (the
container needs ``--privileged --pid host``). ``share-root.sh [PATH...]`` does the same for
``/`` (and any PATH), then stays up until SIGTERM.

Paths are host paths: they go through ``SIDEKICK_ROOT`` like every other path, and the state
roots are looked up both at their place and under ``/host`` (the original's ``-v /:/host``).

Options (before the paths):
  ``--target-pid PID``  use the mount namespace of PID instead of discovering the host's
                        (tests use their own private namespace: ``unshare --mount``)
  ``--stage2``          the original's second stage: act in this process's own namespace
"""

from __future__ import annotations

import logging

from sidekick.errors import UsageError
from sidekick.host.mountns import STATE_ROOTS, MountNamespace, host_namespace_pid
from sidekick.host.proc import Runner
from sidekick.host.signals import wait_for_termination
from sidekick.log import kv
from sidekick.paths import host_path

log = logging.getLogger(__name__)

_OPTIONS = """
options:
  --target-pid PID   act in the mount namespace of PID instead of the host's
  --stage2           act in this process's own mount namespace
"""
SHARE_MNT_USAGE = f"""\
usage: share-mnt [--target-pid PID | --stage2] PATH... [-- IGNORED...]

Create each host PATH if missing and make it a shared mount in the host's mount namespace.
{_OPTIONS}"""
SHARE_ROOT_USAGE = f"""\
usage: share-root.sh [--target-pid PID | --stage2] [PATH...]

Make / (and each host PATH) a shared mount in the host's mount namespace, then wait for SIGTERM.
{_OPTIONS}"""

CURRENT_NAMESPACE = -1  # --stage2: no nsenter at all


def parse_args(argv: list[str], *, prog: str) -> tuple[int | None, list[str]]:
    """(target pid, None to discover, CURRENT_NAMESPACE for our own namespace; host paths before ``--``)."""
    target: int | None = None
    paths: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            break
        if arg == "--stage2":
            target = CURRENT_NAMESPACE
        elif arg == "--target-pid" or arg.startswith("--target-pid="):
            value = arg.partition("=")[2] if "=" in arg else next(args, "")
            if not value.isdigit() or int(value) < 1:
                raise UsageError(f"{prog}: --target-pid needs a process id, got {value!r}")
            target = int(value)
        elif arg.startswith("-"):
            raise UsageError(f"{prog}: unknown option {arg!r}")
        elif not arg.startswith("/"):
            raise UsageError(f"{prog}: {arg!r} is not an absolute path")
        else:
            paths.append(arg)
    return target, paths


def namespace(target: int | None) -> MountNamespace:
    runner = Runner()
    if target == CURRENT_NAMESPACE:
        return MountNamespace(runner, None)
    if target is None:
        roots = [host_path(prefix + root) for prefix in ("", "/host") for root in STATE_ROOTS]
        target = host_namespace_pid(roots)
    return MountNamespace(runner, target)


def share(paths: list[str], ns: MountNamespace) -> None:
    for text in paths:
        path = host_path(text)
        ns.make_shared(path)
        log.info("shared mount", extra=kv(path=path, namespace=ns.describe(),
                                          verified="yes" if ns.shared(path) else "not found in mountinfo"))


def share_mnt(argv: list[str]) -> int:
    target, paths = parse_args(argv, prog="share-mnt")
    if not paths:
        raise UsageError("usage: share-mnt [--target-pid PID | --stage2] PATH... [-- ...]")
    share(paths, namespace(target))
    return 0


def share_root(argv: list[str]) -> int:
    target, paths = parse_args(argv, prog="share-root.sh")
    share(["/", *paths], namespace(target))
    log.info("waiting for SIGTERM")
    received = wait_for_termination()
    log.info("stopping", extra=kv(signal=received))
    return 0
