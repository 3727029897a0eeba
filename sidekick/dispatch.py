"""The multi-call entry point: one executable, many tool names (busybox style).

``basename(argv[0])`` picks the tool; called as ``sidekick TOOL ARGS...`` the first argument
does. Only the chosen tool's module is imported, so the hot path (``entrypoint.sh`` before
every Kubernetes component) pays for nothing else. This is also the one place that turns
errors into exit codes.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import NamedTuple

from sidekick import log as sklog
from sidekick.errors import SidekickError

PROG = "sidekick"


class Tool(NamedTuple):
    target: str  # "module:function", the function takes argv (without the tool name)
    summary: str


# The original image's names. A name appears here only once its module exists.
TOOLS: dict[str, Tool] = {
    "cert-deployer": Tool("sidekick.certs:main", "write the KUBE_*/KUBECFG_* certificates RKE passes into /etc/kubernetes/ssl"),
    "cloud-provider.sh": Tool("sidekick.cloud_provider:main", "complete /etc/kubernetes/cloud-config from Azure instance metadata and Resource Manager"),
    "entrypoint.sh": Tool("sidekick.entrypoint:main", "prepare the node for a Kubernetes component (kubelet, kube-proxy, Azure, AWS), then exec it"),
    "install": Tool("sidekick.install:main", "lay out the image's file tree (links to this executable) under --prefix"),
    "nginx-proxy": Tool("sidekick.nginx.launcher:main", "render the control-plane TCP proxy config from CP_HOSTS and exec nginx"),
    "rke-etcd-backup": Tool("sidekick.etcd.cli:main", "etcd snapshots: etcd-backup save|delete|download|serve|extractstatefile (local and S3)"),
    "share-mnt": Tool("sidekick.mounts:share_mnt", "make host paths shared mounts in the host's mount namespace (legacy)"),
    "share-root.sh": Tool("sidekick.mounts:share_root", "make / shared in the host's mount namespace, then wait for SIGTERM (legacy)"),
    "weave-plugins-cni.sh": Tool("sidekick.cni:main", "install the loopback and portmap CNI plugins into /opt/cni/bin, then wait for SIGTERM"),
}

log = logging.getLogger("sidekick")


def _usage() -> str:
    width = max(len(name) for name in TOOLS)
    lines = [
        f"usage: {PROG} TOOL [ARGS...]   (or call a link named TOOL)",
        "",
        "tools:",
        *(f"  {name.ljust(width)}  {tool.summary}" for name, tool in sorted(TOOLS.items())),
    ]
    return "\n".join(lines) + "\n"


def _select(argv: list[str]) -> tuple[str | None, list[str]]:
    """Return (tool name, its arguments); name None means "print help"."""
    name = os.path.basename(argv[0]) if argv else PROG
    if name in TOOLS:
        return name, argv[1:]
    rest = argv[1:]
    if not rest or rest[0] in {"-h", "--help", "help"}:
        return None, []
    return rest[0], rest[1:]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    sklog.setup()
    name, args = _select(argv)
    if name is None:
        sys.stdout.write(_usage())
        return 0
    if name == "--version":
        from sidekick import __version__

        sys.stdout.write(f"{PROG} {__version__}\n")
        return 0
    tool = TOOLS.get(name)
    if tool is None:
        log.log(sklog.FATAL, "unknown tool %r; run '%s --help' for the list", name, PROG)
        return 2
    module_name, _, func_name = tool.target.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(args) or 0)
    except SidekickError as err:
        log.log(sklog.FATAL, "%s", err)
        return err.exit_code
    except KeyboardInterrupt:
        log.log(sklog.FATAL, "interrupted")
        return 130
    except Exception as err:  # the last line must still say what went wrong
        log.debug("traceback of the unexpected error", exc_info=True)
        log.log(sklog.FATAL, "unexpected error in %s: %s: %s", name, type(err).__name__, err)
        return 1


def run() -> None:
    """Console-script entry: only this calls ``sys.exit``."""
    sys.exit(main())
