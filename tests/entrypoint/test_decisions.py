"""The pure decisions of entrypoint.sh: which flags, which steps, in which order."""

from __future__ import annotations

import base64
import json
import random

import pytest

from sidekick import argv, entrypoint, kubelet
from sidekick.host.docker import DockerInfo
from sidekick.host.mounts import Mount, mount_flags, parse_mountinfo, remount_data
from sidekick.kubelet import (
    Bind,
    Facts,
    Mkdir,
    Relabel,
    RemountRw,
    Symlink,
    Sysctl,
    Touch,
    WriteSecret,
)

KUBELET_ARGS = [
    "--client-ca-file=/etc/kubernetes/ssl/kube-ca.pem", "--cloud-provider=", "--cluster-dns=10.43.0.10",
    "--cluster-domain=cluster.local", "--fail-swap-on=false", "--hostname-override=node-1",
    "--kubeconfig=/etc/kubernetes/ssl/kubecfg-kube-node.yaml",
    "--pod-infra-container-image=rancher/mirrored-pause:3.7", "--root-dir=/var/lib/kubelet",
    "--container-runtime-endpoint=unix:///var/run/cri-dockerd.sock", "--resolv-conf=/etc/resolv.conf", "--v=2",
]  # fmt: skip


def shuffled(args: list[str], seed: int) -> list[str]:
    copy = list(args)
    random.Random(seed).shuffle(copy)
    return copy


def facts(**overrides: object) -> Facts:
    base: dict[str, object] = {"docker": DockerInfo(cgroup_driver="systemd", root_dir="/var/lib/docker", cgroup_version="1")}
    base.update(overrides)
    return Facts(**base)  # type: ignore[arg-type]


# --- flags -----------------------------------------------------------------------------
def test_flag_values_handle_empty_values_repeats_and_prefixes() -> None:
    args = ["--cloud-provider=", "--cloud-provider-x=1", "--v=2", "--cloud-provider=aws", "--cloud-provider"]
    assert argv.flag_values(args, "--cloud-provider") == ["", "aws", ""]
    assert argv.has_flag(["--hostname-override="], "--hostname-override")
    assert not argv.has_flag(["--hostname-override-x=a"], "--hostname-override")


@pytest.mark.parametrize("seed", range(5))
def test_azure_is_detected_in_any_position_for_its_three_components(seed: int) -> None:
    args = shuffled([*KUBELET_ARGS, "--cloud-provider=azure", "--cloud-config=/etc/kubernetes/cloud-config"], seed)
    for component in ("kubelet", "kube-apiserver", "kube-controller-manager"):
        assert entrypoint.wants_azure([component, *args])
    for component in ("kube-proxy", "kube-scheduler"):
        assert not entrypoint.wants_azure([component, *args])
    assert not entrypoint.wants_azure(["kubelet", *KUBELET_ARGS])
    assert not entrypoint.wants_azure([])


def test_iptables_wrapper_and_br_netfilter_choices() -> None:
    assert entrypoint.wants_iptables_wrapper("kubelet") and entrypoint.wants_iptables_wrapper("kube-proxy")
    assert not entrypoint.wants_iptables_wrapper("kube-apiserver")
    assert entrypoint.wants_br_netfilter("kube-proxy", {"RKE_KUBE_PROXY_BR_NETFILTER": "true"})
    for value in ("", "True", "1", "false"):
        assert not entrypoint.wants_br_netfilter("kube-proxy", {"RKE_KUBE_PROXY_BR_NETFILTER": value})
    assert not entrypoint.wants_br_netfilter("kubelet", {"RKE_KUBE_PROXY_BR_NETFILTER": "true"})


def test_host_commands_stay_inside_a_non_default_root() -> None:
    assert entrypoint.iptables_wrapper_argv("/") == ["update-alternatives", "--set", "iptables", "/usr/sbin/iptables-wrapper"]
    assert entrypoint.iptables_wrapper_argv("/tmp/n") == [
        "update-alternatives", "--root", "/tmp/n", "--set", "iptables", "/usr/sbin/iptables-wrapper",
    ]  # fmt: skip
    assert entrypoint.modprobe_argv("br_netfilter", "/") == ["modprobe", "br_netfilter"]
    assert entrypoint.modprobe_argv("br_netfilter", "/tmp/n") == ["modprobe", "-d", "/tmp/n", "br_netfilter"]


@pytest.mark.parametrize("seed", range(3))
def test_hostname_is_looked_up_only_when_no_override_is_given(seed: int) -> None:
    without = [a for a in KUBELET_ARGS if not a.startswith("--hostname-override")]
    assert entrypoint.wants_hostname(["kubelet", *shuffled(without, seed)])
    assert entrypoint.wants_hostname(["kube-proxy", "--v=2", "--cluster-cidr=10.42.0.0/16"])
    assert not entrypoint.wants_hostname(["kubelet", *shuffled(KUBELET_ARGS, seed)])
    assert not entrypoint.wants_hostname(["kube-proxy", "--hostname-override="])
    assert not entrypoint.wants_hostname(["kube-apiserver", "--v=2"])


def test_only_components_with_work_leave_the_fast_path() -> None:
    assert not entrypoint.needs_preparation(["kube-scheduler", "--v=2"])
    assert not entrypoint.needs_preparation(["kube-apiserver", "--cloud-provider="])
    assert entrypoint.needs_preparation(["kube-apiserver", "--cloud-provider=azure"])
    assert entrypoint.needs_preparation(["kube-proxy", "--hostname-override=n1"])
    assert entrypoint.needs_preparation(["kubelet", "--hostname-override=n1"])


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    from sidekick.errors import UsageError

    with pytest.raises(UsageError):
        entrypoint.main([])
    assert entrypoint.main(["--help"]) == 0
    assert "entrypoint.sh COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize("seed", range(3))
def test_plain_components_exec_exactly_the_given_argv(seed: int) -> None:
    calls: list[list[str]] = []

    def record(argv: list[str]) -> int:
        calls.append(argv)
        return 0

    args = ["kube-scheduler", *shuffled(["--kubeconfig=/etc/kubernetes/ssl/kubecfg-kube-scheduler.yaml", "--v=2", "--profiling=", "--leader-elect=true"], seed)]
    assert entrypoint.main(list(args), exec_fn=record) == 0
    assert calls == [args]
    api = ["kube-apiserver", "--cloud-provider=", "--etcd-servers=https://10.0.0.1:2379", "--v=2"]
    assert entrypoint.main(list(api), exec_fn=record) == 0
    assert calls[-1] == api


# --- mounts ----------------------------------------------------------------------------
MOUNTINFO = """\
22 1 0:21 / / rw,relatime - overlay overlay rw
30 22 0:30 / /var/lib/docker rw,relatime shared:2 - ext4 /dev/vda rw
31 30 0:31 / /var/lib/docker/overlay2 rw,relatime - xfs /dev/vdb rw
32 31 0:32 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw
33 32 0:33 / /var/lib/docker/overlay2/abc/merged/dev rw,nosuid - tmpfs tmpfs rw
34 30 0:34 / /var/lib/docker/containers/x/mounts/shm rw,nosuid,nodev,noexec - tmpfs shm rw
40 22 0:40 / /run rw,nosuid,nodev - tmpfs tmpfs rw
41 40 0:41 / /run/nscd rw - tmpfs tmpfs rw
42 40 0:42 / /run/user/1000 rw,nosuid,nodev - tmpfs tmpfs rw
43 40 0:43 / /run/netns/cni-1 rw - nsfs nsfs rw
44 40 0:44 / /run/netns/cni-1 rw - nsfs nsfs rw
45 40 0:45 / /run/with\\040space rw - tmpfs tmpfs rw
50 22 0:50 / /var/run rw - tmpfs tmpfs rw
51 50 0:51 / /var/run/nscd rw - tmpfs tmpfs rw
52 50 0:52 / /var/run/secrets/kubernetes.io ro - tmpfs tmpfs rw
60 22 0:60 / /data/docker rw - ext4 /dev/vdc rw
61 60 0:61 / /data/docker/volumes rw - ext4 /dev/vdd rw
62 61 0:62 / /data/docker/volumes/v1/_data rw - tmpfs tmpfs rw
70 22 0:70 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro
"""


def test_parse_mountinfo_reads_ids_options_and_escapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 19
    by_point = {m.point: m for m in mounts}
    assert "/run/with space" in by_point
    cg = by_point["/sys/fs/cgroup"]
    assert (cg.mount_id, cg.parent_id, cg.fstype) == (70, 22, "tmpfs")
    assert mount_flags(cg.options) == 1 | 2 | 4 | 8
    shm = by_point["/var/lib/docker/containers/x/mounts/shm"]
    assert shm.options == {"rw", "nosuid", "nodev", "noexec"}


def test_remount_repeats_the_filesystem_options() -> None:
    mounts = {m.point: m for m in parse_mountinfo(MOUNTINFO + "71 22 0:71 / /sys/fs/cgroup/unified ro - cgroup2 cgroup2 rw,nsdelegate\n")}
    assert mounts["/sys/fs/cgroup/unified"].super_options == "rw,nsdelegate"
    assert remount_data(mounts["/sys/fs/cgroup/unified"].super_options) == "nsdelegate"
    assert remount_data("ro") is None and remount_data("") is None
    assert remount_data("rw,size=1024k,mode=755") == "size=1024k,mode=755"


def test_unmount_order_children_first_keeping_nscd_and_docker_root_children() -> None:
    order = kubelet.unmount_order(parse_mountinfo(MOUNTINFO), "/var/lib/docker")
    assert "/run/nscd" not in order and "/var/run/nscd" not in order
    assert "/var/lib/docker/overlay2" not in order  # a disk on the Docker root's own sub-directory
    assert "/var/lib/docker" not in order and "/run" not in order
    assert not [p for p in order if p.startswith("/data/")]  # not this engine's root
    assert order.count("/run/netns/cni-1") == 2  # stacked: both go
    for child, parent in [
        ("/var/lib/docker/overlay2/abc/merged/dev", "/var/lib/docker/overlay2/abc/merged"),
    ]:
        assert order.index(child) < order.index(parent)
    assert set(order) == {
        "/var/lib/docker/overlay2/abc/merged/dev", "/var/lib/docker/overlay2/abc/merged",
        "/var/lib/docker/containers/x/mounts/shm", "/run/user/1000", "/run/netns/cni-1",
        "/run/with space", "/var/run/secrets/kubernetes.io",
    }  # fmt: skip


def test_unmount_order_with_a_custom_docker_root() -> None:
    order = kubelet.unmount_order(parse_mountinfo(MOUNTINFO), "/data/docker")
    assert "/data/docker/volumes" not in order  # own sub-directory: kept
    assert "/data/docker/volumes/v1/_data" in order
    assert "/var/lib/docker/overlay2" in order  # no longer the engine's root: its layers go too
    assert order.index("/var/lib/docker/overlay2/abc/merged") < order.index("/var/lib/docker/overlay2")


def test_unmount_order_puts_a_later_covering_mount_first() -> None:
    """A mount hidden under a later one can only be reached once the later one is gone."""
    mounts = [
        Mount(1, 0, "/", frozenset()),
        Mount(2, 1, "/run", frozenset()),
        Mount(3, 2, "/run/a/b/c", frozenset()),
        Mount(4, 2, "/run/a", frozenset()),
    ]
    assert kubelet.unmount_order(mounts, "") == ["/run/a", "/run/a/b/c"]


def test_to_host_space_maps_and_filters_by_root() -> None:
    assert kubelet.to_host_space("/tmp/r/run/x", "/tmp/r") == "/run/x"
    assert kubelet.to_host_space("/tmp/r", "/tmp/r/") == "/"
    assert kubelet.to_host_space("/tmp/rx/run", "/tmp/r") is None
    assert kubelet.to_host_space("/run/x", "/") == "/run/x"


# --- cgroups ---------------------------------------------------------------------------
V1_DIRS = ("blkio", "cpu", "cpu,cpuacct", "cpuacct", "memory", "net_cls", "net_cls,net_prio", "systemd")


def test_cgroup_v1_creates_kubepods_and_the_alias_binds() -> None:
    actions = kubelet.cgroup_actions(facts(cgroup_dirs=V1_DIRS))
    assert actions[0] == RemountRw("/sys/fs/cgroup")
    assert [a.path for a in actions if isinstance(a, Mkdir) and a.path.endswith("/kubepods")] == [
        f"/sys/fs/cgroup/{d}/kubepods" for d in V1_DIRS
    ]
    assert Bind("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuacct,cpu") in actions
    assert Bind("/sys/fs/cgroup/net_cls,net_prio", "/sys/fs/cgroup/net_prio,net_cls") in actions
    assert actions.index(Mkdir("/sys/fs/cgroup/cpuacct,cpu")) < actions.index(Bind("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuacct,cpu"))


def test_cgroup_v1_alias_bind_only_when_the_pair_exists() -> None:
    actions = kubelet.cgroup_actions(facts(cgroup_dirs=("cpu", "memory")))
    assert not [a for a in actions if isinstance(a, Bind)]


def test_cgroup_v2_only_remounts() -> None:
    """rancher-archives/rke#3280: no v1 layout on a v2 host."""
    assert kubelet.cgroup_actions(facts(cgroup_v2=True, cgroup_dirs=("kubepods.slice", "system.slice"))) == [
        RemountRw("/sys/fs/cgroup")
    ]


@pytest.mark.parametrize(
    ("version", "controllers", "v2"),
    [("2", False, True), ("1", True, False), ("", True, True), ("", False, False)],
)
def test_cgroup_version_from_docker_else_from_sysfs(version: str, controllers: bool, v2: bool) -> None:
    info = DockerInfo(cgroup_driver="systemd", root_dir="/var/lib/docker", cgroup_version=version)
    assert kubelet.cgroup_v2_from(info, controllers) is v2


# --- resolv.conf -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "running", "present", "expected"),
    [
        (["--resolv-conf=/etc/resolv.conf"], True, True, ["--resolv-conf=/run/systemd/resolve/resolv.conf"]),
        (["--resolv-conf=/etc/resolv.conf"], False, True, []),
        (["--resolv-conf=/etc/resolv.conf"], True, False, []),
        (["--resolv-conf=/etc/custom.conf"], True, True, []),
        (["--resolv-conf=/etc/resolv.conf.bak"], True, True, []),
        ([], True, True, []),
    ],
)
def test_resolv_conf_rule(args: list[str], running: bool, present: bool, expected: list[str]) -> None:
    assert kubelet.resolv_conf_flags(["kubelet", "--v=2", *args], facts(resolved_running=running, resolved_conf=present)) == expected


# --- docker config ---------------------------------------------------------------------
DOCKER_JSON = {"auths": {"registry.example.com": {"auth": base64.b64encode(b"robot:Pa55-w0rd!").decode()}}}


def test_docker_config_is_decoded_into_a_0600_write_and_registered_secret() -> None:
    from sidekick.log import redact

    encoded = base64.b64encode(json.dumps(DOCKER_JSON).encode()).decode()
    env = {"RKE_KUBELET_DOCKER_CONFIG": encoded, "RKE_KUBELET_DOCKER_FILE": "/var/lib/kubelet/config.json"}
    actions, warnings = kubelet.docker_config_actions(env)
    assert warnings == []
    assert actions == [Mkdir("/var/lib/kubelet"), WriteSecret("/var/lib/kubelet/config.json", json.dumps(DOCKER_JSON).encode())]
    write = actions[1]
    assert isinstance(write, WriteSecret) and write.mode == 0o600
    assert "robot" not in repr(actions) and "data=" not in repr(actions[1])
    assert "REDACTED" in redact(f"x {encoded} y") and encoded not in redact(f"x {encoded} y")
    assert kubelet.describe(actions[1])["data"] == f"{len(json.dumps(DOCKER_JSON))} bytes"


def test_docker_config_for_cri_dockerd_is_bound_to_the_default_location() -> None:
    encoded = base64.b64encode(b'{"auths":{}}').decode()
    env = {"RKE_KUBELET_DOCKER_CONFIG": encoded, "RKE_KUBELET_DOCKER_FILE": "/var/lib/kubelet/config.json", "RKE_KUBELET_CRIDOCKERD": "true"}
    actions, _ = kubelet.docker_config_actions(env)
    assert actions[-3:] == [Mkdir("/.docker"), Touch("/.docker/config.json"), Bind("/var/lib/kubelet/config.json", "/.docker/config.json")]


@pytest.mark.parametrize(
    ("env", "warning"),
    [
        ({}, None),
        ({"RKE_KUBELET_DOCKER_CONFIG": "not base64 !!", "RKE_KUBELET_DOCKER_FILE": "/var/lib/kubelet/config.json"}, "not valid base64"),
        ({"RKE_KUBELET_DOCKER_CONFIG": "e30=", "RKE_KUBELET_DOCKER_FILE": ""}, "not an absolute path"),
    ],
)
def test_docker_config_problems_are_warnings_without_the_value(env: dict[str, str], warning: str | None) -> None:
    actions, warnings = kubelet.docker_config_actions(env)
    assert actions == []
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning in warnings[0]
        assert env["RKE_KUBELET_DOCKER_CONFIG"] not in warnings[0]


# --- cri-dockerd -----------------------------------------------------------------------
def test_cri_dockerd_argv_defaults() -> None:
    argv = kubelet.cri_dockerd_argv(KUBELET_ARGS, {})
    assert argv == [
        "/opt/rke-tools/bin/cri-dockerd", "--network-plugin=cni", "--cni-conf-dir=/etc/cni/net.d",
        "--cni-bin-dir=/opt/cni/bin", "--pod-infra-container-image=rancher/mirrored-pause:3.7",
        "--container-runtime-endpoint=unix:///var/run/cri-dockerd.sock", "--streaming-bind-addr=127.0.0.1:10010",
    ]  # fmt: skip
    assert kubelet.cri_dockerd_socket(KUBELET_ARGS) == "/var/run/cri-dockerd.sock"


def test_cri_dockerd_argv_dockershim_path_stream_settings_and_dual_stack() -> None:
    args = ["--container-runtime-endpoint=/var/run/dockershim.sock", "--v=2"]
    env = {"CRIDOCKERD_STREAM_SERVER_ADDRESS": "10.0.0.5", "CRIDOCKERD_STREAM_SERVER_PORT": "10011", "RKE_KUBELET_CRIDOCKERD_DUALSTACK": "true"}
    argv = kubelet.cri_dockerd_argv(args, env)
    assert "--container-runtime-endpoint=unix:///var/run/dockershim.sock" in argv
    assert "--streaming-bind-addr=10.0.0.5:10011" in argv
    assert argv[-1] == "--ipv6-dual-stack"
    assert not [a for a in argv if a.startswith("--pod-infra-container-image")]
    assert kubelet.cri_dockerd_socket(args) == "/var/run/dockershim.sock"
    assert kubelet.stream_address({"CRIDOCKERD_STREAM_SERVER_ADDRESS": "fd00::5"}) == "[fd00::5]:10010"
    assert kubelet.stream_address({"CRIDOCKERD_STREAM_SERVER_ADDRESS": "", "CRIDOCKERD_STREAM_SERVER_PORT": ""}) == "127.0.0.1:10010"


def test_cri_dockerd_without_endpoint_uses_its_default_socket() -> None:
    assert kubelet.cri_dockerd_endpoint(["--container-runtime-endpoint="]) is None
    assert kubelet.cri_dockerd_socket(["--v=2"]) == "/var/run/cri-dockerd.sock"


def test_ready_timeout_env_override() -> None:
    assert kubelet.ready_timeout({}) == kubelet.CRI_DOCKERD_READY_TIMEOUT
    assert kubelet.ready_timeout({kubelet.CRI_DOCKERD_READY_ENV: " "}) == kubelet.CRI_DOCKERD_READY_TIMEOUT
    assert kubelet.ready_timeout({kubelet.CRI_DOCKERD_READY_ENV: "2.5"}) == 2.5
    assert kubelet.ready_timeout({kubelet.CRI_DOCKERD_READY_ENV: "0"}) == 0


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "NaN", "Infinity", "-1", "3601", "1e309", "soon", "10s"])
def test_ready_timeout_that_is_no_bound_is_refused(value: str) -> None:
    from sidekick.errors import UsageError

    with pytest.raises(UsageError, match=kubelet.CRI_DOCKERD_READY_ENV) as refused:
        kubelet.ready_timeout({kubelet.CRI_DOCKERD_READY_ENV: value})
    assert repr(value) in str(refused.value)
    assert refused.value.exit_code == 2


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-2", "101", "x"])
def test_budget_scale_that_is_no_bound_is_refused(value: str) -> None:
    from sidekick.errors import UsageError
    from sidekick.settings import SCALE_ENV, budget_scale

    with pytest.raises(UsageError, match=SCALE_ENV):
        budget_scale({SCALE_ENV: value})
    assert budget_scale({}) == 1.0 and budget_scale({SCALE_ENV: "0.25"}) == 0.25


@pytest.mark.parametrize(
    ("answer", "name"),
    [
        ("ip-10-0-0-7.eu-west-1.compute.internal", "ip-10-0-0-7.eu-west-1.compute.internal"),
        ("ip-10-0-0-7.ec2.internal example.com\n", "ip-10-0-0-7.ec2.internal"),  # several domains: the first
        ("Node-1", "Node-1"),  # RFC 1123 names are case-insensitive; kubelet lowercases
        ("a" * 63 + ".b", "a" * 63 + ".b"),
        ("1node.example", "1node.example"),  # RFC 1123 lets a label start with a digit
        ("<html>\r\n<head><title>502 Bad Gateway</title></head>", None),
        ("502 Bad Gateway", None),  # an all-digit last label is no host name
        ("10.0.0.7", None),
        ("", None),
        ("-node.example", None),
        ("node-.example", None),
        ("node..example", None),
        ("node.example.", None),
        ("a" * 64 + ".b", None),
        (".".join(["abcdefg"] * 32), None),  # 255 characters
        ("nœud.example", None),
        ("node_1.example", None),
        ("ip-10-0-0-7.ec2.internal {\"error\": 1}", None),  # a good first name does not excuse the rest
    ],
)
def test_ec2_host_name_is_rfc_1123_or_not_used(answer: str, name: str | None) -> None:
    assert entrypoint.host_name(answer) == name


# --- the whole plan ----------------------------------------------------------------------
def test_plan_orders_steps_like_the_original() -> None:
    plan = kubelet.plan(
        ["kubelet", *KUBELET_ARGS],
        {},
        facts(
            mounts=tuple(parse_mountinfo(MOUNTINFO)), cgroup_dirs=V1_DIRS, selinux=True,
            os_release="/host/etc/os-release", resolved_running=True, resolved_conf=True,
        ),
    )  # fmt: skip
    kinds = [type(a).__name__ for a in plan.actions]
    first_bind = kinds.index("Bind")
    assert set(kinds[:first_bind]) == {"Umount"}
    assert plan.actions[first_bind] == Bind("/host/dev", "/dev", recursive=True)
    assert plan.actions[first_bind + 1] == RemountRw("/sys/fs/cgroup")
    assert [a for a in plan.actions if isinstance(a, Relabel)] == [
        Relabel("/opt/cni", "svirt_sandbox_file_t"), Relabel("/etc/cni", "svirt_sandbox_file_t"),
    ]  # fmt: skip
    assert Sysctl("net.bridge.bridge-nf-call-iptables", "1") in plan.actions
    assert plan.actions[-1] == Symlink("/host/etc/os-release", "/usr/lib/os-release")
    assert plan.flags == ["--cgroup-driver=systemd", "--resolv-conf=/run/systemd/resolve/resolv.conf"]
    assert plan.cri_dockerd is None and plan.warnings == []


def test_plan_without_selinux_os_release_or_resolved() -> None:
    plan = kubelet.plan(["kubelet", "--v=2"], {"RKE_KUBELET_CRIDOCKERD": "true"}, facts(cgroup_v2=True))
    assert not [a for a in plan.actions if isinstance(a, Relabel | Symlink)]
    assert [a for a in plan.actions if isinstance(a, Mkdir)] == [Mkdir("/opt/cni"), Mkdir("/etc/cni")]
    assert plan.flags == ["--cgroup-driver=systemd"]
    assert plan.cri_dockerd is not None and plan.cri_dockerd[0].endswith("/opt/rke-tools/bin/cri-dockerd")
