"""The restore drill: three etcd nodes in network namespaces, a snapshot, RKE's restore flow.

Each node is a network namespace with its own address and its own SIDEKICK_ROOT (its ``/``);
etcd runs on 2379/2380 in each, with TLS, as RKE runs it. One node takes a snapshot with the
real ``save --once``; then, as ``rke etcd snapshot-restore`` does (CONTRACT 3.3-3.9):

- local flow: ``extractstatefile`` on the source, etcd stopped everywhere, ``serve`` on the
  source (default ``0.0.0.0:2379``, no test overrides), ``download --local-endpoint`` on the
  others; S3 flow: ``download --s3-backup`` on every node from a moto S3 on the host's leg;
- RKE's exact ``md5sum`` checksum line on every node: equal, stderr empty;
- ``etcdctl snapshot restore`` on every node into new data dirs with RKE's flags, the restored
  cluster starts, and every key written before the snapshot reads back (and none after).

Namespaces that cannot be built fail the test with the reason: the drill never skips.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SIDEKICK, last_line
from tests.harness.etcd import ETCDCTL, EtcdServer
from tests.harness.etcd_backup import node_root, rke_s3_env, rke_s3_flags
from tests.harness.netns import NamespaceError, Network, Node, leftover_namespaces
from tests.harness.pki import CertificateAuthority, RkeSsl
from tests.harness.ports import port_open, wait_for
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

LOCAL = "rke_etcd_snapshot_2024-10-04T14:00:00+02:00"
REMOTE = "c-abcde-rs-x7k2p_2024-10-04T12:00:00Z"
CERTS = [
    "--cacert", "/etc/kubernetes/ssl/kube-ca.pem",
    "--cert", "/etc/kubernetes/ssl/kube-node.pem",
    "--key", "/etc/kubernetes/ssl/kube-node-key.pem",
]
STATE = {"desiredState": {"rkeConfig": {"nodes": ["n1", "n2", "n3"]}}, "currentState": {}}


def checksum_line(name: str) -> str:
    """``etcd-checksum-checker``'s command, verbatim (CONTRACT 3.8)."""
    return (
        f" if [ -f '/opt/rke/etcd-snapshots/{name}' ]; then md5sum '/opt/rke/etcd-snapshots/{name}' "
        "| cut -f1 -d' ' | tr -d '\\n'; else echo 'snapshot file does not exist' >&2; fi"
    )


@dataclass
class Machine:
    node: Node
    root: Path
    member: str  # etcd member name, RKE's etcd-<hostname>

    @property
    def ip(self) -> str:
        return self.node.address

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "ETCD_", "SIDEKICK_"))}
        env.update(SIDEKICK_ROOT=str(self.root), SIDEKICK_RETRY_WAIT="0.3", **(extra or {}))
        return env

    def tool(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``rke-etcd-backup etcd-backup ...`` on this node, as its container would run it."""
        return subprocess.run([*self.node.prefix(), str(SIDEKICK), "rke-etcd-backup", "etcd-backup", *args],
                              capture_output=True, text=True, env=self.env(env), timeout=timeout)

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.node.prefix(), str(SIDEKICK), "rke-etcd-backup", "etcd-backup", *args],
                                env=self.env(), stderr=subprocess.PIPE, text=True)

    def checksum(self, name: str) -> subprocess.CompletedProcess[str]:
        """RKE binds the host's /opt/rke; here the node's /backup is bound there in a private
        mount namespace (a tmpfs hides the real /opt), and the line runs unchanged."""
        setup = (
            "mount -t tmpfs sidekick-drill /opt && mkdir -p /opt/rke/etcd-snapshots && "
            f"mount --bind '{self.root / 'backup'}' /opt/rke/etcd-snapshots && exec sh -c \"$1\""
        )
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "sh",
                               checksum_line(name)], capture_output=True, text=True, timeout=30)


@dataclass
class Drill:
    network: Network
    ssl: RkeSsl
    machines: list[Machine]
    workdir: Path
    written: dict[str, str]
    s3: S3Server
    bucket: str

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.member}=https://{m.ip}:2380" for m in self.machines)

    def cluster(self, tag: str, data_dirs: Sequence[Path | None] = (None, None, None)) -> list[EtcdServer]:
        members = [
            EtcdServer(self.workdir / f"{tag}-{m.member}", self.ssl, name=m.member, host=m.ip, client_port=2379,
                       peer_port=2380, initial_cluster=self.initial_cluster, netns=m.node.name, data_dir=data_dir)
            for m, data_dir in zip(self.machines, data_dirs, strict=True)
        ]
        for member in members:
            member.start(wait=False)
        try:
            for member in members:
                member.wait_healthy(timeout=60)
        except BaseException:
            stop_all(members)
            raise
        return members


def stop_all(members: Sequence[EtcdServer]) -> None:
    for member in members:
        member.stop()


def read_all(member: EtcdServer, prefix: str = "/registry/") -> dict[str, str]:
    out = member.ctl("get", prefix, "--prefix", "-w", "json").stdout
    kvs = json.loads(out).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode() for kv in kvs}


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    net = Network(3)
    try:
        net.create()
    except (NamespaceError, OSError) as err:
        pytest.fail(f"the restore drill needs network namespaces (root, iproute2, veth): {err}")
    try:
        yield net
    finally:
        net.close()
        assert leftover_namespaces(net.tag) == []


@pytest.fixture(scope="module")
def drill(network: Network, tmp_path_factory: pytest.TempPathFactory, kube_ca: CertificateAuthority) -> Iterator[Drill]:
    """Three nodes with data; a local snapshot on node 1 and one uploaded to S3; etcd stopped."""
    base = tmp_path_factory.mktemp("drill")
    ssl = RkeSsl.create(base / "ssl", kube_ca, *(n.address for n in network.nodes))
    machines = [Machine(node, node_root(base / f"n{i + 1}", ssl), f"etcd-n{i + 1}") for i, node in enumerate(network.nodes)]
    s3 = S3Server(base / "s3", tls_ca=CertificateAuthority("drill-s3-ca"), host=network.host_address).start()
    try:
        drill = Drill(network, ssl, machines, base, {}, s3, s3.new_bucket("drill"))
        members = drill.cluster("original")
        try:
            members[0].put_many(300, 512, prefix="/registry/drill/bulk/")
            for m in machines:  # one key through every member
                members[machines.index(m)].put(f"/registry/drill/from/{m.member}", f"written via {m.ip}")
            drill.written = read_all(members[1])
            assert len(drill.written) == 303

            source = machines[0]
            for name in (LOCAL, REMOTE):  # what RKE's cluster-state-deployer puts there first
                (source.root / "etc/kubernetes" / f"{name}.rkestate").write_text(json.dumps(STATE, indent=2))
            saved = source.tool("save", *CERTS, "--name", LOCAL, f"--endpoints={source.ip}:2379", "--once")
            assert saved.returncode == 0, saved.stderr
            assert s3.ca_path is not None
            flags = rke_s3_flags(s3.endpoint, drill.bucket, ca_pem=s3.ca_path.read_bytes(), folder="drill")
            saved = source.tool("save", *CERTS, "--name", REMOTE, f"--endpoints={source.ip}:2379", "--once",
                                "--creation=12h", "--retention=72h", *flags, env=rke_s3_env(ACCESS_KEY, SECRET_KEY))
            assert saved.returncode == 0, saved.stderr
            (source.root / "backup" / f"{REMOTE}.zip").unlink()  # only S3 has it now
            members[2].put("/registry/drill/after-snapshot", "must not come back")
        finally:
            stop_all(members)  # RKE stops etcd on every host before restoring
        yield drill
    finally:
        s3.stop()


def restore_and_check(drill: Drill, name: str, tag: str) -> None:
    """RKE's checksum, ``etcd-restore`` on every node, the restored cluster, every key."""
    sums = []
    for m in drill.machines:
        check = m.checksum(name)
        assert check.returncode == 0 and check.stderr == "", check.stderr
        assert len(check.stdout) == 32, check.stdout
        sums.append(check.stdout)
    assert len(set(sums)) == 1, f"etcd snapshots are not consistent: {sums}"

    data_dirs = []
    for m in drill.machines:
        data_dir = drill.workdir / f"{tag}-{m.member}-restored"
        done = subprocess.run(
            [ETCDCTL, "snapshot", "restore", str(m.root / "backup" / name), f"--data-dir={data_dir}",
             f"--name={m.member}", f"--initial-cluster={drill.initial_cluster}",
             "--initial-cluster-token=etcd-cluster-1", f"--initial-advertise-peer-urls=https://{m.ip}:2380"],
            capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        data_dirs.append(data_dir)
    members = drill.cluster(tag, data_dirs)
    try:
        for member in members:  # every member has the full data set
            assert read_all(member) == drill.written
        assert members[0].get("/registry/drill/after-snapshot") is None
    finally:
        stop_all(members)


def test_local_restore_serve_and_download_between_namespaces(drill: Drill) -> None:
    source, others = drill.machines[0], drill.machines[1:]
    state = source.tool("extractstatefile", "--name", LOCAL)
    assert state.returncode == 0, state.stderr
    assert json.loads((source.root / "tmp/cluster.rkestate").read_text()) == STATE

    serving = source.spawn("serve", "--name", LOCAL, *CERTS)  # RKE's argv: 0.0.0.0:2379
    try:
        wait_for(lambda: serving.poll() is None and port_open(2379, source.ip), timeout=30, what="serve on 2379")
        for m in others:
            done = m.tool("download", "--name", LOCAL, "--local-endpoint", source.ip, *CERTS)
            assert done.returncode == 0, done.stderr
            assert oct((m.root / "backup" / LOCAL).stat().st_mode & 0o777) == "0o600"
        assert serving.poll() is None  # still running: RKE's 5 s check would pass
    finally:
        serving.send_signal(signal.SIGTERM)
        _, err = serving.communicate(timeout=30)
    assert serving.returncode == 0, err
    for m in others:
        assert f'client="{m.ip}:' in err and "snapshot sent" in err
    assert "serve stopped" in last_line(err)
    restore_and_check(drill, LOCAL, "local")


def test_s3_restore_every_node_downloads(drill: Drill) -> None:
    assert drill.s3.ca_path is not None
    flags = rke_s3_flags(drill.s3.endpoint, drill.bucket, ca_pem=drill.s3.ca_path.read_bytes(), folder="drill")
    state = drill.machines[2].tool("extractstatefile", "--name", REMOTE, "--creation=12h", "--retention=72h",
                                   *flags, env=rke_s3_env(ACCESS_KEY, SECRET_KEY))
    assert state.returncode == 0, state.stderr
    assert json.loads((drill.machines[2].root / "tmp/cluster.rkestate").read_text()) == STATE
    began = time.monotonic()
    for m in drill.machines:
        done = m.tool("download", "--name", REMOTE, *flags, env=rke_s3_env(ACCESS_KEY, SECRET_KEY))
        assert done.returncode == 0, done.stderr
        assert ACCESS_KEY not in done.stderr and SECRET_KEY not in done.stderr
        assert sorted(p.name for p in (m.root / "backup").iterdir() if REMOTE in p.name) == [REMOTE, f"{REMOTE}.zip"]
    assert time.monotonic() - began < 60
    restore_and_check(drill, REMOTE, "s3")
