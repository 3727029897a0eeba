"""entrypoint.sh for real: the kubelet preparation inside a private mount namespace.

Each test builds a node tree (tmpfs mounts standing in for the Docker root's layers, /run
and /var/run mounts, /host/dev, a read-only cgroup v1 tree, this namespace's /proc with a
private ``net`` sysctl directory) inside ``unshare --mount``, then runs the installed
``sidekick`` as ``entrypoint.sh kubelet ...`` with SIDEKICK_ROOT at that tree. The
``kubelet`` on PATH is a stand-in that records its argv and the mount table it sees, so the
test checks what the real process would have been started with, in the namespace it got.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidekick.host.mounts import Mount, parse_mountinfo
from sidekick.kubelet import to_host_space
from tests.conftest import SIDEKICK, last_line
from tests.entrypoint import standins
from tests.entrypoint.fakes import DockerApi, Ec2Imds
from tests.harness.ports import wait_for

pytestmark = pytest.mark.integration

PREPARE = r"""
set -eu
R="$SIDEKICK_ROOT"
m() { mkdir -p "$R$1"; mount -t tmpfs -o "${2:-rw}" "sk-$(basename "$1")" "$R$1"; }
m /var/lib/docker/overlay2
m /var/lib/docker/overlay2/abc/merged
m /var/lib/docker/overlay2/abc/merged/dev rw,nosuid
m /var/lib/docker/containers/c1/mounts/shm rw,nosuid,nodev,noexec
m /run/nscd
m /run/user/1000 rw,nosuid,nodev
m /run/netns/cni-1
m /run/netns/cni-1
m /var/run/secrets
m /host/dev
touch "$R/host/dev/marker"
m /host/dev/shm
mkdir -p "$R/dev"
m /sys/fs/cgroup rw,nosuid,nodev,noexec,size=4m,mode=755
for d in ${CGROUP_DIRS}; do mkdir -p "$R/sys/fs/cgroup/$d"; done
mount -o remount,ro,nosuid,nodev,noexec,size=4m "$R/sys/fs/cgroup"
mkdir -p "$R/proc"
mount --rbind /proc "$R/proc"
m /proc/sys/net
mkdir -p "$R/proc/sys/net/bridge"
echo 0 > "$R/proc/sys/net/bridge/bridge-nf-call-iptables"
exec "$@"
"""
V1_DIRS = "cpu cpuacct cpu,cpuacct memory net_cls,net_prio systemd"
KUBELET_ARGS = [
    "--cloud-provider=", "--hostname-override=node-1", "--v=2", "--resolv-conf=/etc/resolv.conf",
    "--pod-infra-container-image=rancher/mirrored-pause:3.7", "--root-dir=/var/lib/kubelet",
    "--kubeconfig=/etc/kubernetes/ssl/kubecfg-kube-node.yaml",
]  # fmt: skip
REGISTRY_JSON = json.dumps({"auths": {"registry.example.com": {"auth": base64.b64encode(b"robot:S3cret-Pass!").decode()}}})


@dataclass
class Node:
    base: Path
    root: Path
    bin: Path
    log: Path
    docker: DockerApi

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDEKICK_", "RKE_", "STANDIN_"))}
        env.update(
            SIDEKICK_ROOT=str(self.root), PATH=f"{self.bin}:{os.environ['PATH']}", STANDIN_LOG=str(self.log),
            CGROUP_DIRS=V1_DIRS, SIDEKICK_AWS_METADATA_URL="http://127.0.0.1:9",
        )  # fmt: skip
        env.update(extra)
        return env

    def argv(self, *args: str) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "bash", "-c", PREPARE, "_", str(SIDEKICK), "entrypoint.sh", *args]

    def run(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env=self.env(**env), capture_output=True, text=True, timeout=timeout)

    def records(self, name: str | None = None) -> list[dict[str, object]]:
        return [r for r in standins.read_log(self.log) if name is None or r["name"] == name]

    def mounts_seen(self) -> dict[str, list[Mount]]:
        """The kubelet stand-in's mount table, as host paths under the node root."""
        start = next(r for r in self.records("kubelet") if r["event"] == "start")
        table: dict[str, list[Mount]] = {}
        for mount in parse_mountinfo(str(start["mountinfo"])):
            point = to_host_space(mount.point, str(self.root))
            if point is not None:
                table.setdefault(point, []).append(mount)
        return table


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    root = tmp_path / "root"
    for d in ("var/lib/docker/containers", "var/lib/kubelet", "etc", "opt/rke-tools/bin", "usr/lib", "var/run", "run/systemd/resolve"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "run/systemd/resolve/resolv.conf").write_text("nameserver 10.0.0.2\n")
    (root / "host/usr/lib").mkdir(parents=True)
    (root / "host/usr/lib/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    bin_dir = tmp_path / "bin"
    for component in ("kubelet", "kube-proxy"):
        standins.install(bin_dir / component, standins.KUBELET)
    for tool in ("update-alternatives", "modprobe", "chcon"):
        standins.install(bin_dir / tool, standins.TOOL)
    standins.install(root / "opt/rke-tools/bin/cri-dockerd", standins.CRI_DOCKERD)
    docker = DockerApi(cgroup_driver="cgroupfs", cgroup_version="1")
    with docker.serve_unix(root / "var/run/docker.sock"):
        yield Node(tmp_path, root, bin_dir, tmp_path / "standins.log", docker)


@pytest.fixture
def fake_resolved() -> Iterator[None]:
    """A process whose command line says systemd-resolved, as pgrep -f would find it."""
    proc = subprocess.Popen(["bash", "-c", "exec -a systemd-resolved sleep 60"])
    try:
        wait_for(lambda: b"systemd-resolved" in Path(f"/proc/{proc.pid}/cmdline").read_bytes(), timeout=5, what="fake resolved")
        yield
    finally:
        proc.kill()
        proc.wait()


def test_kubelet_preparation_on_a_cgroup_v1_node(node: Node, fake_resolved: None) -> None:
    probe = ":".join(str(node.root / p) for p in (
        "dev", "usr/lib/os-release", "proc/sys/net/bridge/bridge-nf-call-iptables", "sys/fs/cgroup/memory",
        "sys/fs/cgroup/cpuacct,cpu", "var/lib/kubelet/config.json", "opt/cni", "etc/cni",
    ))  # fmt: skip
    encoded = base64.b64encode(REGISTRY_JSON.encode()).decode()
    result = node.run(
        "kubelet", *KUBELET_ARGS, STANDIN_PROBE=probe,
        RKE_KUBELET_DOCKER_CONFIG=encoded, RKE_KUBELET_DOCKER_FILE="/var/lib/kubelet/config.json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    start = node.records("kubelet")[0]
    # the exec: the arguments as given, then the added flags
    assert start["argv"] == [*KUBELET_ARGS, "--cgroup-driver=cgroupfs", "--resolv-conf=/run/systemd/resolve/resolv.conf"]
    assert start["env"]["RKE_KUBELET_DOCKER_CONFIG"] == encoded  # type: ignore[index]
    table = node.mounts_seen()
    # unmounted: other containers' layers, /run and /var/run mounts; kept: nscd, the overlay2 disk
    for gone in ("/var/lib/docker/overlay2/abc/merged", "/var/lib/docker/overlay2/abc/merged/dev",
                 "/var/lib/docker/containers/c1/mounts/shm", "/run/user/1000", "/run/netns/cni-1", "/var/run/secrets"):  # fmt: skip
        assert gone not in table, gone
    assert "/run/nscd" in table and "/var/lib/docker/overlay2" in table
    # /dev is the host's /dev, recursively (its shm sub-mount came along)
    assert table["/dev"][-1].source == "sk-dev" and "/dev/shm" in table
    probed = start["probe"]
    assert "marker" in probed[str(node.root / "dev")]["list"]  # type: ignore[index]
    # cgroup root writable again, its other options kept; v1 layout made
    cgroup_root = table["/sys/fs/cgroup"][-1]
    assert {"rw", "nosuid", "nodev", "noexec"} <= cgroup_root.options
    assert cgroup_root.super_options.split(",")[:3] == ["rw", "size=4096k", "mode=755"]
    assert "kubepods" in probed[str(node.root / "sys/fs/cgroup/memory")]["list"]  # type: ignore[index]
    assert "/sys/fs/cgroup/cpuacct,cpu" in table and "/sys/fs/cgroup/net_prio,net_cls" in table
    assert "kubepods" in probed[str(node.root / "sys/fs/cgroup/cpuacct,cpu")]["list"]  # type: ignore[index]
    # sysctl, os-release, CNI dirs
    assert probed[str(node.root / "proc/sys/net/bridge/bridge-nf-call-iptables")]["text"].strip() == "1"  # type: ignore[index]
    assert probed[str(node.root / "usr/lib/os-release")]["link"] == str(node.root / "host/usr/lib/os-release")  # type: ignore[index]
    assert probed[str(node.root / "opt/cni")]["exists"] and probed[str(node.root / "etc/cni")]["exists"]  # type: ignore[index]
    # registry credentials: written 0600, never printed
    config = node.root / "var/lib/kubelet/config.json"
    assert config.read_text() == REGISTRY_JSON and stat.S_IMODE(config.stat().st_mode) == 0o600
    for secret in ("S3cret-Pass", encoded, base64.b64encode(b"robot:S3cret-Pass!").decode()):
        assert secret not in result.stderr and secret not in result.stdout
    # the iptables wrapper selected inside this root; no SELinux here, so no chcon
    tools = {r["name"]: r["argv"] for r in node.records() if r["event"] == "run"}
    assert tools == {"update-alternatives": ["--root", str(node.root), "--set", "iptables", "/usr/sbin/iptables-wrapper"]}
    assert not list((node.root / "var/lib/kubelet").glob(".sidekick-tmp-*"))
    assert "level=warning" not in result.stderr, result.stderr


def test_kubelet_on_cgroup_v2_with_selinux_and_a_custom_docker_root(node: Node) -> None:
    node.docker.info.update(CgroupDriver="systemd", CgroupVersion="2", DockerRootDir="/data/docker")
    (node.root / "sys/fs/selinux").mkdir(parents=True)
    (node.root / "sys/fs/selinux/enforce").write_text("1")
    (node.root / "host/usr/lib/os-release").unlink()
    (node.root / "host/etc").mkdir(parents=True)
    (node.root / "host/etc/os-release").write_text("ID=rhel\n")
    args = [a for a in KUBELET_ARGS if not a.startswith("--resolv-conf")]
    probe = f"{node.root}/sys/fs/cgroup/memory:{node.root}/usr/lib/os-release"
    result = node.run("kubelet", *args, CGROUP_DIRS="kubepods.slice memory", STANDIN_PROBE=probe)
    assert result.returncode == 0, result.stderr
    start = node.records("kubelet")[0]
    assert start["argv"] == [*args, "--cgroup-driver=systemd"]
    table = node.mounts_seen()
    assert "rw" in table["/sys/fs/cgroup"][-1].options
    assert "/sys/fs/cgroup/cpuacct,cpu" not in table
    assert start["probe"][f"{node.root}/sys/fs/cgroup/memory"]["list"] == []  # type: ignore[index]
    assert start["probe"][f"{node.root}/usr/lib/os-release"]["link"] == f"{node.root}/host/etc/os-release"  # type: ignore[index]
    # not the engine's root any more: its overlay2 disk goes as well
    assert "/var/lib/docker/overlay2" not in table and "/run/nscd" in table
    chcon = [r["argv"] for r in node.records("chcon")]
    assert chcon == [["-R", "-t", "svirt_sandbox_file_t", f"{node.root}/opt/cni"], ["-R", "-t", "svirt_sandbox_file_t", f"{node.root}/etc/cni"]]


def test_failed_steps_are_warnings_and_kubelet_still_starts(node: Node) -> None:
    """No bridge sysctl (br_netfilter not loaded), failing tools: the original carried on too."""
    prepare_without_bridge = PREPARE.replace('mkdir -p "$R/proc/sys/net/bridge"\n', "").replace(
        'echo 0 > "$R/proc/sys/net/bridge/bridge-nf-call-iptables"\n', ""
    )
    argv = node.argv("kubelet", *KUBELET_ARGS)
    argv[argv.index(PREPARE)] = prepare_without_bridge
    result = subprocess.run(argv, env=node.env(STANDIN_TOOL_CODE="2"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert node.records("kubelet")[0]["argv"] == [*KUBELET_ARGS, "--cgroup-driver=cgroupfs"]
    warnings = [line for line in result.stderr.splitlines() if "level=warning" in line]
    assert any("iptables wrapper" in w for w in warnings)
    assert any("step=sysctl" in w for w in warnings)


def test_docker_engine_unreachable_is_one_fatal_line(node: Node) -> None:
    (node.root / "var/run/docker.sock").unlink()
    result = node.run("kubelet", *KUBELET_ARGS)
    assert result.returncode == 1
    assert "cannot reach the Docker engine" in last_line(result.stderr) and "level=fatal" in last_line(result.stderr)
    assert node.records("kubelet") == []


def test_kube_proxy_loads_br_netfilter_and_takes_the_ec2_hostname(node: Node) -> None:
    imds = Ec2Imds(hostname="ip-10-1-2-3.ec2.internal")
    with imds.serve() as base:
        result = node.run(
            "kube-proxy", "--cluster-cidr=10.42.0.0/16", "--v=2",
            RKE_KUBE_PROXY_BR_NETFILTER="true", SIDEKICK_AWS_METADATA_URL=base,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [s.method for s in imds.seen] == ["PUT", "GET"]
    proxy = node.records("kube-proxy")[0]
    assert proxy["argv"] == ["--cluster-cidr=10.42.0.0/16", "--v=2", "--hostname-override=ip-10-1-2-3.ec2.internal"]
    seen = {to_host_space(m.point, str(node.root)) for m in parse_mountinfo(str(proxy["mountinfo"]))}
    assert "/run/user/1000" in seen  # kube-proxy gets no kubelet preparation
    tools = [(r["name"], r["argv"]) for r in node.records() if r["event"] == "run"]
    assert ("modprobe", ["-d", str(node.root), "br_netfilter"]) in tools
    assert tools[0][0] == "update-alternatives"


def test_br_netfilter_failure_is_a_warning(node: Node) -> None:
    args = ["--hostname-override=node-1", "--v=2"]
    result = node.run("kube-proxy", *args, RKE_KUBE_PROXY_BR_NETFILTER="true", STANDIN_TOOL_CODE="1")
    assert result.returncode == 0, result.stderr
    assert node.records("kube-proxy")[0]["argv"] == args
    assert any("could not load br_netfilter" in line and "level=warning" in line for line in result.stderr.splitlines())
    assert [r["name"] for r in node.records() if r["event"] == "run"] == ["update-alternatives", "modprobe"]


def test_kubelet_without_imds_falls_back_to_the_fqdn_quickly(node: Node) -> None:
    args = [a for a in KUBELET_ARGS if not a.startswith("--hostname-override")]
    started = time.monotonic()
    result = node.run("kubelet", *args)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    argv = node.records("kubelet")[0]["argv"]
    assert isinstance(argv, list)
    override = [a for a in argv if a.startswith("--hostname-override=")]
    assert len(override) == 1 and override[0] != "--hostname-override="
    assert argv.index(override[0]) == len(args)  # after the given arguments, before --cgroup-driver


# --- cri-dockerd --------------------------------------------------------------------------
CRI_ARGS = [*KUBELET_ARGS, "--container-runtime-endpoint=unix:///var/run/cri-dockerd.sock"]


def test_cri_dockerd_dies_so_the_container_exits_with_its_code(node: Node) -> None:
    """rancher-archives/rke#3292: kubelet must not be started again without its flags."""
    encoded = base64.b64encode(REGISTRY_JSON.encode()).decode()
    result = node.run(
        "kubelet", *CRI_ARGS, RKE_KUBELET_CRIDOCKERD="true", STANDIN_KUBELET="wait",
        STANDIN_CRI_EXIT_AFTER="1.0", STANDIN_CRI_CODE="3",
        RKE_KUBELET_DOCKER_CONFIG=encoded, RKE_KUBELET_DOCKER_FILE="/var/lib/kubelet/config.json",
        STANDIN_PROBE=f"{node.root}/.docker/config.json",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    cri = node.records("cri-dockerd")
    assert cri[0]["argv"] == [
        "--network-plugin=cni", "--cni-conf-dir=/etc/cni/net.d", "--cni-bin-dir=/opt/cni/bin",
        "--pod-infra-container-image=rancher/mirrored-pause:3.7",
        "--container-runtime-endpoint=unix:///var/run/cri-dockerd.sock", "--streaming-bind-addr=127.0.0.1:10010",
    ]  # fmt: skip
    kubelet = node.records("kubelet")
    starts = [r for r in kubelet if r["event"] == "start"]
    assert len(starts) == 1 and starts[0]["argv"] == [*CRI_ARGS, "--cgroup-driver=cgroupfs"]
    assert [r["signal"] for r in kubelet if r["event"] == "signal"] == [signal.SIGTERM]
    assert starts[0]["probe"][f"{node.root}/.docker/config.json"]["text"] == REGISTRY_JSON  # type: ignore[index]
    assert "S3cret-Pass" not in result.stderr


def test_sigterm_is_forwarded_to_both(node: Node) -> None:
    proc = subprocess.Popen(
        node.argv("kubelet", *CRI_ARGS),
        env=node.env(RKE_KUBELET_CRIDOCKERD="true", STANDIN_KUBELET="wait", STANDIN_TERM_CODE="0"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: any(r["event"] == "start" for r in node.records("kubelet")), timeout=20, what="kubelet stand-in")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    for name in ("kubelet", "cri-dockerd"):
        assert [r["signal"] for r in node.records(name) if r["event"] == "signal"] == [signal.SIGTERM], name


def test_supervisor_cases_with_stand_ins(tmp_path: Path) -> None:
    """kubelet exits first; cri-dockerd exits before it is ready; cri-dockerd never answers."""
    from sidekick.host.supervise import Pair, socket_answers

    log = tmp_path / "log"
    cri = standins.install(tmp_path / "cri-dockerd", standins.CRI_DOCKERD)
    kubelet = standins.install(tmp_path / "kubelet", standins.KUBELET)
    sock = tmp_path / "var/run/cri-dockerd.sock"
    sock.parent.mkdir(parents=True)
    env = {**os.environ, "STANDIN_LOG": str(log), "SIDEKICK_ROOT": str(tmp_path)}

    def run(**extra: str) -> int:
        log.unlink(missing_ok=True)
        return Pair({**env, **extra}, stop_timeout=5).run(
            [str(cri)], [str(kubelet), "--v=2"], ready=lambda: socket_answers(sock), ready_timeout=float(extra.get("T", "20"))
        )

    def events() -> list[tuple[object, object]]:
        return [(r["name"], r["event"]) for r in standins.read_log(log)]

    assert run(STANDIN_KUBELET="exit:5", STANDIN_KUBELET_DELAY="0.3") == 5
    assert ("cri-dockerd", "signal") in events()
    assert run(STANDIN_CRI="mute", STANDIN_CRI_EXIT_AFTER="0.2", STANDIN_CRI_CODE="4") == 4
    assert ("kubelet", "start") not in events()
    started = time.monotonic()
    assert run(STANDIN_CRI="mute", T="0.5", STANDIN_KUBELET="exit:0") == 0
    assert 0.5 <= time.monotonic() - started < 10
    assert events()[:2] == [("cri-dockerd", "start"), ("kubelet", "start")]


# --- the fast path and the tools as RKE calls them -----------------------------------------
def test_scheduler_execs_with_its_arguments_and_imports_nothing_heavy(tmp_path: Path) -> None:
    args = ["kube-scheduler", "--profiling=", "--v=2", "--kubeconfig=/etc/kubernetes/ssl/kubecfg-kube-scheduler.yaml"]
    code = (
        "import sys, json\n"
        "from sidekick import entrypoint\n"
        f"entrypoint.main({args!r}, exec_fn=lambda argv: print(json.dumps([argv, sorted(sys.modules)])) or 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    argv, modules = json.loads(out.stdout)
    assert argv == args
    heavy = {"click", "requests", "boto3", "botocore", "jinja2", "cryptography", "subprocess", "http.client", "ctypes"}
    assert not heavy & set(modules)


def test_entrypoint_link_execs_the_component(tool_link, tmp_path: Path) -> None:
    link = tool_link("entrypoint.sh")
    out = tmp_path / "argv"
    script = standins.install(tmp_path / "bin/kube-apiserver", f"import sys\nopen({str(out)!r}, 'w').write(repr(sys.argv[1:]))\n")
    env = {**os.environ, "PATH": f"{script.parent}:{os.environ['PATH']}"}
    args = ["--cloud-provider=", "--etcd-servers=https://10.0.0.1:2379", "--v=2"]
    result = subprocess.run([str(link), "kube-apiserver", *args], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == repr(args)
    missing = subprocess.run([str(link), "kube-nothing"], env=env, capture_output=True, text=True, timeout=30)
    assert missing.returncode == 127 and "cannot exec kube-nothing" in last_line(missing.stderr)
