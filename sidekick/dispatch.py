"""The multi-call entry point: one executable, many tool names (busybox style).

``basename(argv[0])`` picks the tool; called as ``sidekick TOOL ARGS...`` the first argument
does. Only the chosen tool's module is imported, so the hot path (``entrypoint.sh`` before
every Kubernetes component) pays for nothing else. This is also the one place that turns
errors into exit codes.

Start-up cost matters on that path, so this module imports neither ``logging`` nor
``typing`` nor even ``os`` (not loaded at interpreter start): the logging setup runs only for
tools whose module uses ``logging``, and the final error line is written by
:mod:`sidekick.logline`.
"""

from __future__ import annotations

import sys

from sidekick import logline
from sidekick.errors import SidekickError

PROG = "sidekick"
# Names this executable answers to as itself: the console script and launcher, ``python -m``.
OWN_NAMES = {PROG, "__main__.py"}
HELP_FLAGS = (["--help"], ["-h"])
APPLET_NOT_FOUND = 127  # busybox's (and the shell's) code for a command that does not exist


class Tool:
    """``target`` is "module:function"; the function takes argv without the tool name.

    ``usage`` names the module attribute holding the tool's help, printed for a lone
    ``--help``/``-h`` by tools that take no such flag themselves; None leaves the arguments
    to the tool (a click or argparse command, or entrypoint.sh, whose argv is a component's).
    """

    __slots__ = ("summary", "target", "usage")

    def __init__(self, target: str, summary: str, *, usage: str | None = None) -> None:
        self.target = target
        self.summary = summary
        self.usage = usage


# The original image's names. A name appears here only once its module exists.
TOOLS: dict[str, Tool] = {
    "cert-deployer": Tool("sidekick.certs:main", "write the KUBE_*/KUBECFG_* certificates RKE passes into /etc/kubernetes/ssl", usage="USAGE"),
    "cloud-provider.sh": Tool("sidekick.cloud_provider:main", "complete /etc/kubernetes/cloud-config from Azure instance metadata and Resource Manager"),
    "entrypoint.sh": Tool("sidekick.entrypoint:main", "prepare the node for a Kubernetes component (kubelet, kube-proxy, Azure, AWS), then exec it"),
    "install": Tool("sidekick.install:main", "lay out the image's file tree (links to this executable) under --prefix"),
    "nginx-proxy": Tool("sidekick.nginx.cli:main", "proxy TCP to the control planes in CP_HOSTS with nginx (optional active health checks)", usage="USAGE"),
    "rke-etcd-backup": Tool("sidekick.etcd.cli:main", "etcd snapshots: etcd-backup save|delete|download|serve|extractstatefile (local and S3)"),
    "share-mnt": Tool("sidekick.mounts:share_mnt", "make host paths shared mounts in the host's mount namespace (legacy)", usage="SHARE_MNT_USAGE"),
    "share-root.sh": Tool("sidekick.mounts:share_root", "make / shared in the host's mount namespace, then wait for SIGTERM (legacy)", usage="SHARE_ROOT_USAGE"),
    "weave-plugins-cni.sh": Tool("sidekick.cni:main", "install the loopback and portmap CNI plugins into /opt/cni/bin, then wait for SIGTERM", usage="USAGE"),
}


class _AppletNotFound(SidekickError):
    exit_code = APPLET_NOT_FOUND

    def __init__(self, name: str) -> None:
        super().__init__(f"{name}: applet not found")


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
    """Return (tool name, its arguments); name None means "print help".

    A link named after no tool is refused like busybox refuses an unknown applet, rather than
    answered with this executable's help and success.
    """
    name = argv[0].rpartition("/")[2] if argv else PROG  # os.path.basename, without loading os
    if name in TOOLS:
        return name, argv[1:]
    if name not in OWN_NAMES:
        raise _AppletNotFound(name)
    rest = argv[1:]
    if not rest or rest[0] in {"-h", "--help", "help"}:
        return None, []
    return rest[0], rest[1:]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        name, args = _select(argv)
    except _AppletNotFound as err:
        logline.emit("fatal", str(err))
        return err.exit_code
    if name is None:
        sys.stdout.write(_usage())
        return 0
    if name == "--version":
        from sidekick.version import describe

        sys.stdout.write(describe())
        return 0
    tool = TOOLS.get(name)
    if tool is None:
        logline.emit("fatal", f"unknown tool {name!r}; run '{PROG} --help' for the list")
        return 2
    module_name, _, func_name = tool.target.partition(":")
    try:
        logline.check_format()
        __import__(module_name)
        if tool.usage and args in HELP_FLAGS:
            sys.stdout.write(getattr(sys.modules[module_name], tool.usage))
            return 0
        if "logging" in sys.modules:  # the tool logs: give it the logrus handler first
            from sidekick import log

            log.setup()
        return int(getattr(sys.modules[module_name], func_name)(args) or 0)
    except SidekickError as err:
        logline.emit("fatal", str(err))
        return err.exit_code
    except KeyboardInterrupt:
        logline.emit("fatal", "interrupted")
        return 130
    except Exception as err:  # the last line must still say what went wrong
        _debug_traceback()
        logline.emit("fatal", f"unexpected error in {name}: {type(err).__name__}: {err}")
        return 1


def _debug_traceback() -> None:
    import logging

    from sidekick import log

    log.setup()
    logging.getLogger("sidekick").debug("traceback of the unexpected error", exc_info=True)


def run(argv: list[str] | None = None) -> None:
    """The executable's entry (console script, ``python -m sidekick``, the volume's launcher):
    the one place that ends the process."""
    _exit(main(argv))


def _exit(code: int) -> None:
    """End the process without the interpreter's teardown once nothing is left to finish.

    Teardown frees every object one at a time: after an S3 command that is botocore's models,
    about 0.1 s (a quarter of a small ``save --once``) spent on memory the kernel takes back
    anyway. By now the tool has returned: its files are written, synced and renamed, and its
    last line is out. atexit handlers still run (logging's flush) and stdio is flushed; while
    a non-daemon thread is alive, the interpreter's own exit joins it as usual.
    """
    threading = sys.modules.get("threading")
    if threading is not None and any(
        not t.daemon and t.is_alive() and t is not threading.main_thread() for t in threading.enumerate()
    ):
        sys.exit(code)
    import atexit
    import contextlib
    import posix

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said on it
            stream.flush()
    posix._exit(code)
