"""``/opt/rke-tools/entrypoint.sh COMPONENT ARGS...``: prepare, then become the component.

RKE starts every Kubernetes container through this (contract section 2). It runs the
command it is given, replacing itself (exec), with the arguments as given plus:

* kubelet, kube-proxy: the iptables wrapper selected (``update-alternatives``) each start;
  kube-proxy with ``RKE_KUBE_PROXY_BR_NETFILTER=true``: ``br_netfilter`` loaded (a failure
  is a warning);
* kubelet, kube-apiserver, kube-controller-manager with ``cloud-provider=azure`` in any
  argument: ``/etc/kubernetes/cloud-config`` completed from Azure (:mod:`sidekick.cloud_provider`);
* kubelet, kube-proxy without ``--hostname-override``: ``--hostname-override=`` from EC2
  metadata (IMDSv2; the lookup ends within 4 s however the service answers), else the host's
  FQDN; an answer that is not an RFC 1123 host name (an error page) is not used;
* kubelet: the container prepared and ``--cgroup-driver=`` added (:mod:`sidekick.kubelet`).

Flag order is random and values may be empty (RKE renders a Go map), so nothing here
depends on position. Components that need none of this (kube-scheduler, kube-apiserver
without Azure) take the fast path: this module imports nothing heavy, and the others
are imported only on the branch that needs them.

Environment for tests: ``SIDEKICK_AWS_METADATA_URL`` (default ``http://169.254.169.254``)
moves the EC2 metadata service; see :mod:`sidekick.cloud_provider` for Azure's.
``SIDEKICK_BUDGET_SCALE`` multiplies the metadata time budgets (0.001-100); a bad value stops
the preparation with one line before any step.
"""

from __future__ import annotations

import posix

from sidekick import logline
from sidekick.argv import has_flag
from sidekick.errors import SidekickError, UsageError

# The fast path imports no module that is not already loaded at interpreter start: typing,
# collections.abc (all of collections) and even os (with _collections_abc) each cost it more
# than everything else it does. Annotations are strings, so only mypy needs these names.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Mapping, Sequence

    from sidekick.argv import ExecFn

AZURE_COMPONENTS = frozenset({"kubelet", "kube-apiserver", "kube-controller-manager"})
IPTABLES_COMPONENTS = frozenset({"kubelet", "kube-proxy"})
HOSTNAME_COMPONENTS = frozenset({"kubelet", "kube-proxy"})
IPTABLES_WRAPPER = "/usr/sbin/iptables-wrapper"
USAGE = "usage: entrypoint.sh COMMAND [ARGS...]"


# --- decisions -----------------------------------------------------------------------
def wants_azure(args: Sequence[str]) -> bool:
    """The original grepped the whole command line for ``cloud-provider=azure``."""
    return bool(args) and args[0] in AZURE_COMPONENTS and any("cloud-provider=azure" in a for a in args)


def wants_iptables_wrapper(component: str) -> bool:
    return component in IPTABLES_COMPONENTS


def wants_br_netfilter(component: str, env: Mapping[str, str]) -> bool:
    """Opt-in by RKE (rancher/rancher#49246); only the exact value ``true`` counts, as before."""
    return component == "kube-proxy" and env.get("RKE_KUBE_PROXY_BR_NETFILTER") == "true"


def wants_hostname(args: Sequence[str]) -> bool:
    """RKE drops ``--hostname-override`` for AWS with instance-metadata hostnames (an empty
    value still counts as given)."""
    return bool(args) and args[0] in HOSTNAME_COMPONENTS and not has_flag(args, "--hostname-override")


def host_name(answer: str) -> str | None:
    """The first name of an EC2 ``hostname`` answer (names separated by spaces), or None when
    the answer is not a list of RFC 1123 host names, as an HTML error page is not.

    Each label: 1-63 letters, digits or hyphens, not starting or ending with a hyphen; at most
    253 characters in all; the last label not all digits (so no IPv4 address, no "502").
    """
    names = answer.split()
    for name in names:
        labels = name.split(".")
        if len(name) > 253 or labels[-1].isdigit():
            return None
        for label in labels:
            if not (0 < len(label) <= 63 and label.isascii() and label.replace("-", "").isalnum()):
                return None
            if label.startswith("-") or label.endswith("-"):
                return None
    return names[0] if names else None


def iptables_wrapper_argv(root: str) -> list[str]:
    """Select the wrapper that picks legacy or nft iptables to match the host's rules.

    Under a non-default root (tests, the demo) the alternatives of that tree are changed.
    """
    scope = ["--root", root] if root.rstrip("/") else []
    return ["update-alternatives", *scope, "--set", "iptables", IPTABLES_WRAPPER]


def modprobe_argv(module: str, root: str) -> list[str]:
    scope = ["-d", root] if root.rstrip("/") else []
    return ["modprobe", *scope, module]


# --- effects -------------------------------------------------------------------------
def execvp(file: str, argv: list[str]) -> None:
    """``os.execvp`` on the ``posix`` module, which is loaded at start while ``os`` is not.

    The same search: a name with a slash is used as is; otherwise each ``PATH`` directory in
    turn (``/bin:/usr/bin`` when ``PATH`` is unset; an empty entry is the working directory);
    the first error other than "no such file" wins, else the last one.
    """
    if "/" in file:
        posix.execv(file, argv)
    path = posix.environ.get(b"PATH")
    name = file.encode("utf-8", "surrogateescape")
    found: OSError | None = None
    last: OSError | None = None
    for directory in (b"/bin", b"/usr/bin") if path is None else path.split(b":"):
        candidate = name if not directory else directory.rstrip(b"/") + b"/" + name
        try:
            posix.execv(candidate, argv)
        except (FileNotFoundError, NotADirectoryError) as err:
            last = err
        except OSError as err:
            last = err
            found = found or err
    raise found or last or FileNotFoundError(2, "No such file or directory", file)


def exec_command(argv: list[str]) -> int:
    """Replace this process with ``argv`` (found on PATH); returns only by raising."""
    logline.emit("info", "exec", command=" ".join(argv))
    try:
        execvp(argv[0], argv)
    except OSError as err:
        code = 127 if isinstance(err, FileNotFoundError) else 126
        raise SidekickError(f"cannot exec {argv[0]}: {err.strerror}", exit_code=code) from None
    raise AssertionError("unreachable")  # pragma: no cover


def fqdn(*, timeout: float = 3.0) -> str:
    """What ``hostname -f`` prints, given at most ``timeout`` seconds (DNS may hang)."""
    import socket
    import threading

    short = socket.gethostname()
    found: list[str] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(short, None, flags=socket.AI_CANONNAME)
        except OSError:
            return
        found.extend(info[3] for info in infos if info[3])

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    return found[0] if found else short


def node_hostname(scale: float) -> str:
    """EC2's name for this instance, or the FQDN; the lookup ends within ``4 s * scale``."""
    import os

    from sidekick.host.metadata import (
        AWS_METADATA_ENV,
        AWS_METADATA_URL,
        Ec2Metadata,
        MetadataError,
        service_url,
    )

    url = service_url(os.environ.get(AWS_METADATA_ENV, ""), AWS_METADATA_URL, name=AWS_METADATA_ENV)
    try:
        answer = Ec2Metadata(url, scale=scale).hostname()
    except MetadataError as err:
        _logger().warning("no host name from EC2 metadata, using the FQDN", extra={"fields": {"reason": str(err)}})
        return fqdn()
    name = host_name(answer)
    if name is None:
        shown = answer if len(answer) <= 80 else answer[:77] + "..."
        _logger().warning("EC2 metadata's host name is not an RFC 1123 host name, using the FQDN",
                          extra={"fields": {"answer": shown}})  # fmt: skip
        return fqdn()
    return name


def needs_preparation(args: Sequence[str]) -> bool:
    """False for the fast path: exec at once (kube-scheduler, kube-apiserver without Azure).

    The environment plays no part: its one switch (br_netfilter) is for kube-proxy, which is
    prepared anyway (iptables), so the fast path never reads it.
    """
    component = args[0]
    return wants_iptables_wrapper(component) or wants_azure(args) or wants_hostname(args) or component == "kubelet"


def _logger() -> logging.Logger:
    """``logging`` costs more than the whole fast path, so only the branches that prepare
    something import it (and set up the logrus handler, which the dispatcher skipped)."""
    import logging

    from sidekick import log as sklog

    sklog.setup()
    return logging.getLogger(__name__)


def main(argv: list[str], *, exec_fn: ExecFn = exec_command) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        if argv:
            print(USAGE)
            return 0
        raise UsageError(USAGE)
    args = list(argv)
    if not needs_preparation(args):
        return exec_fn(args)
    import os

    from sidekick.settings import budget_scale

    component = args[0]
    env = os.environ
    _logger()  # the branches below (and the modules they import) log
    scale = budget_scale(env)  # a bad setting stops the start before any step
    if component == "kubelet":
        from sidekick.kubelet import ready_timeout

        ready_timeout(env)
    if wants_iptables_wrapper(component) or wants_br_netfilter(component, env):
        from sidekick.host.proc import Runner
        from sidekick.paths import root

        runner = Runner()
        if wants_iptables_wrapper(component):
            try:
                runner.run(iptables_wrapper_argv(str(root())), timeout=30)
            except SidekickError as err:
                _logger().warning("could not select the iptables wrapper: %s", err)
        if wants_br_netfilter(component, env):
            try:
                runner.run(modprobe_argv("br_netfilter", str(root())), timeout=30)
            except SidekickError as err:
                _logger().warning("could not load br_netfilter: %s", err)
    if wants_azure(args):
        from sidekick.cloud_provider import complete_quietly

        complete_quietly(scale)
    if wants_hostname(args):
        name = node_hostname(scale)
        _logger().info("no --hostname-override given, adding the node's name", extra={"fields": {"hostname": name}})
        args.append(f"--hostname-override={name}")
    if component == "kubelet":
        from sidekick.kubelet import run as run_kubelet

        return run_kubelet(args, env, exec_fn=exec_fn)
    return exec_fn(args)
