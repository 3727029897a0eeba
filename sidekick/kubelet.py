"""The kubelet container's preparation: what the original's ``kubelet`` branch did.

Three phases, so the decisions are pure and the effects thin:

1. :func:`gather` reads the host once (Docker's ``/info``, the mount table, ``/sys/fs/cgroup``,
   SELinux, os-release, systemd-resolved) into :class:`Facts`;
2. :func:`plan` turns arguments, environment and facts into a list of actions and the flags
   to append; it touches nothing and has most of the tests;
3. :func:`apply` performs the actions. As in the original, a failed step is a warning and
   kubelet still starts: a node with a degraded step beats a node without kubelet.

Every path in facts and actions is a host path as the original spells it (``/run/x``);
:func:`sidekick.paths.host_path` maps it when an action runs.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sidekick import paths
from sidekick.argv import flag_values
from sidekick.host.docker import DockerEngine, DockerInfo
from sidekick.host.files import atomic_symlink, atomic_write
from sidekick.host.kernel import Kernel, process_running
from sidekick.host.mounts import Mount, Mounter
from sidekick.host.proc import Runner
from sidekick.log import kv, register_secret
from sidekick.paths import host_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sidekick.argv import ExecFn

log = logging.getLogger(__name__)

DOCKER_SOCKET = "/var/run/docker.sock"
UNMOUNT_UNDER = ("/var/lib/docker", "/run", "/var/run")
KEEP_MOUNTED = frozenset({"/run/nscd", "/var/run/nscd"})  # the host's name cache stays usable
CGROUP_ROOT = "/sys/fs/cgroup"
# cgroup v1 only: kubelet (cadvisor) looks for the controller pairs under both spellings.
CGROUP_V1_ALIASES = (("cpu,cpuacct", "cpuacct,cpu"), ("net_cls,net_prio", "net_prio,net_cls"))
CNI_DIRS = ("/opt/cni", "/etc/cni")
SELINUX_LABEL = "svirt_sandbox_file_t"
SELINUX_FS = "/sys/fs/selinux/enforce"
BRIDGE_SYSCTL = "net.bridge.bridge-nf-call-iptables"
OS_RELEASE = "/usr/lib/os-release"
OS_RELEASE_SOURCES = ("/host/usr/lib/os-release", "/host/etc/os-release", "/host/usr/share/ros/os-release")
RESOLV_DEFAULT = "--resolv-conf=/etc/resolv.conf"
RESOLVED_CONF = "/run/systemd/resolve/resolv.conf"
DOCKER_CONFIG_MOUNT = "/.docker/config.json"
CRI_DOCKERD = "/opt/rke-tools/bin/cri-dockerd"
CRI_DOCKERD_SOCKET = "/var/run/cri-dockerd.sock"
CRI_DOCKERD_READY_ENV = "SIDEKICK_CRIDOCKERD_READY_TIMEOUT"
CRI_DOCKERD_READY_TIMEOUT = 60.0  # the original slept a fixed 10 s and hoped
CRI_DOCKERD_READY_MAX = 3600.0


# --- actions -------------------------------------------------------------------------
@dataclass(frozen=True)
class Umount:
    path: str


@dataclass(frozen=True)
class Bind:
    source: str
    target: str
    recursive: bool = False


@dataclass(frozen=True)
class RemountRw:
    path: str


@dataclass(frozen=True)
class Mkdir:
    path: str


@dataclass(frozen=True)
class Touch:
    path: str


@dataclass(frozen=True)
class Relabel:
    path: str
    label: str


@dataclass(frozen=True)
class Sysctl:
    name: str
    value: str


@dataclass(frozen=True)
class Symlink:
    target: str
    link: str


@dataclass(frozen=True)
class WriteSecret:
    path: str
    data: bytes = field(repr=False)
    mode: int = 0o600


Action = Umount | Bind | RemountRw | Mkdir | Touch | Relabel | Sysctl | Symlink | WriteSecret


# --- facts ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Facts:
    docker: DockerInfo
    mounts: tuple[Mount, ...] = ()  # mount points as host paths, in the kernel's order
    cgroup_dirs: tuple[str, ...] = ()  # directory names directly under /sys/fs/cgroup
    cgroup_v2: bool = False
    selinux: bool = False
    os_release: str | None = None  # the first of OS_RELEASE_SOURCES that exists
    resolved_running: bool = False
    resolved_conf: bool = False


def to_host_space(point: str, root: str) -> str | None:
    """A mount point as this process sees it -> the host path under ``root`` (None: outside)."""
    root = root.rstrip("/")
    if not root:
        return point
    if point == root:
        return "/"
    if point.startswith(root + "/"):
        return point[len(root) :]
    return None


def cgroup_v2_from(info: DockerInfo, controllers_file_exists: bool) -> bool:
    """Docker says which cgroup version it runs (API >= 1.40); older engines: look at sysfs."""
    if info.cgroup_version in ("1", "2"):
        return info.cgroup_version == "2"
    return controllers_file_exists


def gather(docker: DockerEngine, mounter: Mounter) -> Facts:
    info = docker.info()
    root = str(paths.root())
    mounts = []
    for mount in mounter.table():
        point = to_host_space(mount.point, root)
        if point is not None:
            mounts.append(Mount(mount.mount_id, mount.parent_id, point, mount.options, mount.fstype, mount.source))
    cgroup = host_path(CGROUP_ROOT)
    try:
        cgroup_dirs = tuple(sorted(e.name for e in cgroup.iterdir() if e.is_dir()))
    except OSError:
        cgroup_dirs = ()
    return Facts(
        docker=info,
        mounts=tuple(mounts),
        cgroup_dirs=cgroup_dirs,
        cgroup_v2=cgroup_v2_from(info, (cgroup / "cgroup.controllers").exists()),
        selinux=host_path(SELINUX_FS).exists(),
        os_release=next((p for p in OS_RELEASE_SOURCES if host_path(p).is_file()), None),
        resolved_running=process_running("systemd-resolved"),
        resolved_conf=host_path(RESOLVED_CONF).is_file(),
    )


# --- decisions -----------------------------------------------------------------------
def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return bool(prefix) and path.startswith(prefix + "/")


def unmount_order(mounts: Sequence[Mount], docker_root: str) -> list[str]:
    """Mount points to unmount, children before parents, later mounts before earlier ones.

    Selected: everything under the Docker root, ``/var/lib/docker``, ``/run`` and
    ``/var/run`` (other containers' layers and the host's runtime mounts, which would stay
    busy while kubelet runs), except the nscd socket directories and mounts sitting directly
    on the Docker root's own sub-directories (a separate disk for ``overlay2`` stays).
    The order is the reverse of a depth-first walk of the mount tree, so every mount goes
    before the one it sits on, and of two stacked on one path the upper goes first.
    """
    prefixes = [p for p in (docker_root, *UNMOUNT_UNDER) if p]

    def wanted(mount: Mount) -> bool:
        point = mount.point
        if point in KEEP_MOUNTED or not any(_under(point, p) for p in prefixes):
            return False
        return not (docker_root and os.path.dirname(point) == docker_root.rstrip("/"))

    ids = {m.mount_id for m in mounts}
    children: dict[int, list[Mount]] = {}
    tops: list[Mount] = []
    for mount in mounts:
        if mount.parent_id in ids and mount.parent_id != mount.mount_id:
            children.setdefault(mount.parent_id, []).append(mount)
        else:
            tops.append(mount)
    walk: list[Mount] = []
    stack = list(reversed(tops))
    seen: set[int] = set()
    while stack:
        mount = stack.pop()
        if mount.mount_id in seen:
            continue
        seen.add(mount.mount_id)
        walk.append(mount)
        stack.extend(reversed(children.get(mount.mount_id, [])))
    return [m.point for m in reversed(walk) if wanted(m)]


def cgroup_actions(facts: Facts) -> list[Action]:
    """Remount the cgroup root writable; on cgroup v1 also the kubepods dirs and aliases.

    On cgroup v2 nothing more: kubelet makes ``kubepods.slice`` itself, and creating the
    v1 layout there made every kubelet restart restart all pods (rancher-archives/rke#3280).
    """
    actions: list[Action] = [RemountRw(CGROUP_ROOT)]
    if facts.cgroup_v2:
        return actions
    actions += [Mkdir(f"{CGROUP_ROOT}/{name}/kubepods") for name in facts.cgroup_dirs]
    for existing, alias in CGROUP_V1_ALIASES:
        if existing in facts.cgroup_dirs:
            actions += [Mkdir(f"{CGROUP_ROOT}/{alias}"), Bind(f"{CGROUP_ROOT}/{existing}", f"{CGROUP_ROOT}/{alias}")]
    return actions


def resolv_conf_flags(args: Sequence[str], facts: Facts) -> list[str]:
    """Point kubelet at the real upstream resolvers on systemd-resolved hosts (rancher-archives/rke#827).

    Only when RKE passed the default ``--resolv-conf=/etc/resolv.conf``: that file holds
    the 127.0.0.53 stub, which pods cannot reach.
    """
    if RESOLV_DEFAULT in args and facts.resolved_running and facts.resolved_conf:
        return [f"--resolv-conf={RESOLVED_CONF}"]
    return []


def decode_docker_config(value: str) -> bytes:
    """``RKE_KUBELET_DOCKER_CONFIG`` is base64 JSON; raises ValueError without echoing it."""
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("RKE_KUBELET_DOCKER_CONFIG is not valid base64") from None


def docker_config_actions(env: Mapping[str, str]) -> tuple[list[Action], list[str]]:
    """Write the registry credentials kubelet pulls with; (actions, warnings).

    The original piped them through ``tee``, printing the credentials into the kubelet log.
    """
    value = env.get("RKE_KUBELET_DOCKER_CONFIG", "")
    if not value:
        return [], []
    register_secret(value)
    target = env.get("RKE_KUBELET_DOCKER_FILE", "")
    if not target.startswith("/"):
        return [], ["RKE_KUBELET_DOCKER_CONFIG is set but RKE_KUBELET_DOCKER_FILE is not an absolute path; not written"]
    try:
        data = decode_docker_config(value)
    except ValueError as err:
        return [], [f"{err}; not written"]
    register_secret(data)
    actions: list[Action] = [Mkdir(os.path.dirname(target)), WriteSecret(target, data)]
    if env.get("RKE_KUBELET_CRIDOCKERD") == "true":
        # cri-dockerd pulls images itself and reads the default docker config location.
        actions += [Mkdir(os.path.dirname(DOCKER_CONFIG_MOUNT)), Touch(DOCKER_CONFIG_MOUNT), Bind(target, DOCKER_CONFIG_MOUNT)]
    return actions, []


def stream_address(env: Mapping[str, str]) -> str:
    """``--streaming-bind-addr``: 127.0.0.1:10010 unless RKE's cluster.yml says otherwise."""
    host = env.get("CRIDOCKERD_STREAM_SERVER_ADDRESS") or "127.0.0.1"
    port = env.get("CRIDOCKERD_STREAM_SERVER_PORT") or "10010"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address needs brackets before the port
    return f"{host}:{port}"


def cri_dockerd_endpoint(args: Sequence[str]) -> str | None:
    """kubelet's runtime endpoint as cri-dockerd wants it (the dockershim path lacks ``unix://``)."""
    values = flag_values(args, "--container-runtime-endpoint")
    if not values or not values[-1]:
        return None
    endpoint = values[-1]
    return endpoint if "://" in endpoint else f"unix://{endpoint}"


def cri_dockerd_socket(args: Sequence[str]) -> str:
    endpoint = cri_dockerd_endpoint(args)
    if endpoint and endpoint.startswith("unix://"):
        return endpoint[len("unix://") :]
    return CRI_DOCKERD_SOCKET


def cri_dockerd_argv(args: Sequence[str], env: Mapping[str, str]) -> list[str]:
    argv = [
        str(host_path(CRI_DOCKERD)),
        "--network-plugin=cni",
        "--cni-conf-dir=/etc/cni/net.d",
        "--cni-bin-dir=/opt/cni/bin",
    ]
    pause = flag_values(args, "--pod-infra-container-image")
    if pause and pause[-1]:
        argv.append(f"--pod-infra-container-image={pause[-1]}")
    endpoint = cri_dockerd_endpoint(args)
    if endpoint:
        argv.append(f"--container-runtime-endpoint={endpoint}")
    argv.append(f"--streaming-bind-addr={stream_address(env)}")
    if env.get("RKE_KUBELET_CRIDOCKERD_DUALSTACK") == "true":
        argv.append("--ipv6-dual-stack")
    return argv


@dataclass(frozen=True)
class Plan:
    actions: list[Action]
    flags: list[str]  # appended to kubelet's arguments
    warnings: list[str]
    cri_dockerd: list[str] | None  # argv, when kubelet runs beside cri-dockerd


def plan(args: Sequence[str], env: Mapping[str, str], facts: Facts) -> Plan:
    """Everything the kubelet container does before kubelet starts, in the original's order."""
    actions: list[Action] = [Umount(p) for p in unmount_order(facts.mounts, facts.docker.root_dir)]
    actions.append(Bind("/host/dev", "/dev", recursive=True))
    actions += cgroup_actions(facts)
    actions += [Mkdir(d) for d in CNI_DIRS]
    if facts.selinux:
        actions += [Relabel(d, SELINUX_LABEL) for d in CNI_DIRS]
    # Network plugins need bridged traffic to pass iptables (Kubernetes network plugin requirements).
    actions.append(Sysctl(BRIDGE_SYSCTL, "1"))
    if facts.os_release:
        actions.append(Symlink(facts.os_release, OS_RELEASE))
    config_actions, warnings = docker_config_actions(env)
    actions += config_actions
    flags = [f"--cgroup-driver={facts.docker.cgroup_driver}", *resolv_conf_flags(args, facts)]
    cri = cri_dockerd_argv(args, env) if env.get("RKE_KUBELET_CRIDOCKERD") == "true" else None
    return Plan(actions, flags, warnings, cri)


# --- effects -------------------------------------------------------------------------
class Host:
    """The objects the actions act through."""

    def __init__(self, mounter: Mounter | None = None, kernel: Kernel | None = None, runner: Runner | None = None) -> None:
        self.runner = runner or Runner()
        self.mounter = mounter or Mounter()
        self.kernel = kernel or Kernel()


def _apply_one(action: Action, host: Host) -> None:
    match action:
        case Umount(path):
            host.mounter.umount(host_path(path))
        case Bind(source, target, recursive):
            host.mounter.bind(host_path(source), host_path(target), recursive=recursive)
        case RemountRw(path):
            host.mounter.remount_rw(host_path(path))
        case Mkdir(path):
            host_path(path).mkdir(parents=True, exist_ok=True)
        case Touch(path):
            host_path(path).touch(exist_ok=True)
        case Relabel(path, label):
            host.runner.run(["chcon", "-R", "-t", label, str(host_path(path))], timeout=60)
        case Sysctl(name, value):
            host.kernel.sysctl(name, value)
        case Symlink(target, link):
            atomic_symlink(host_path(target), host_path(link))
        case WriteSecret(path, data, mode):
            atomic_write(host_path(path), data, mode=mode)


def describe(action: Action) -> dict[str, object]:
    """Log fields of an action (``WriteSecret`` shows its path and size, never its data)."""
    fields: dict[str, object] = {"step": type(action).__name__.lower()}
    for name, value in vars(action).items():
        fields[name] = f"{len(value)} bytes" if isinstance(value, bytes) else value
    return fields


def apply(actions: Sequence[Action], host: Host) -> int:
    """Perform the actions in order; a failure is logged and the rest still run. Returns failures."""
    failed = 0
    for action in actions:
        try:
            _apply_one(action, host)
        except Exception as err:
            failed += 1
            log.warning("step failed, continuing: %s", err, extra=kv(**describe(action)))
        else:
            log.debug("step done", extra=kv(**describe(action)))
    return failed


def ready_timeout(env: Mapping[str, str]) -> float:
    """Seconds to wait for cri-dockerd's socket: 0-3600 (60); anything else is a usage error."""
    from sidekick.settings import number

    return number(env, CRI_DOCKERD_READY_ENV, CRI_DOCKERD_READY_TIMEOUT, low=0, high=CRI_DOCKERD_READY_MAX)


def run(args: list[str], env: Mapping[str, str], *, exec_fn: ExecFn, host: Host | None = None) -> int:
    """Prepare the container, then exec kubelet (or supervise it beside cri-dockerd)."""
    wait_ready = ready_timeout(env)  # a bad setting stops us before any step
    host = host or Host()
    docker = DockerEngine(host_path(DOCKER_SOCKET))
    facts = gather(docker, host.mounter)
    log.info(
        "docker engine",
        extra=kv(cgroup_driver=facts.docker.cgroup_driver, root_dir=facts.docker.root_dir, cgroup_v2=facts.cgroup_v2),
    )
    decided = plan(args, env, facts)
    for warning in decided.warnings:
        log.warning(warning)
    apply(decided.actions, host)
    command = [*args, *decided.flags]
    if decided.cri_dockerd is None:
        return exec_fn(command)
    from sidekick.host.supervise import Pair, socket_answers

    socket_path = host_path(cri_dockerd_socket(args))
    return Pair(env).run(
        decided.cri_dockerd,
        command,
        ready=lambda: socket_answers(socket_path),
        ready_timeout=wait_ready,
    )
