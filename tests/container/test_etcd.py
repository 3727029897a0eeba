"""Every container RKE runs from the image for etcd snapshots (CONTRACT 3), against a real
etcd and a real S3 endpoint, with host paths under a temp directory.

The one deviation from RKE's configs: the serve/peer-download pair gets
``SIDEKICK_SERVE_PORT`` (a free port instead of 2379, which a shared machine may be using).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.container.docker import Containers, copy_file_out, docker, running, wait_until
from tests.harness.etcd import EtcdServer
from tests.harness.etcd_backup import rke_s3_env, rke_s3_flags, rke_save_argv
from tests.harness.pki import RkeSsl
from tests.harness.ports import free_port
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.container

BACKUP = "/opt/rke-tools/rke-etcd-backup"
CERT_ARGS = ["--cacert", "/etc/kubernetes/ssl/kube-ca.pem", "--cert", "/etc/kubernetes/ssl/kube-node.pem",
             "--key", "/etc/kubernetes/ssl/kube-node-key.pem"]
S3_ENV = rke_s3_env(ACCESS_KEY, SECRET_KEY)


@dataclass
class Node:
    """One host's paths: /etc/kubernetes (RKE's certs) and /opt/rke/etcd-snapshots."""

    root: Path

    @classmethod
    def make(cls, base: Path, name: str, ssl: RkeSsl) -> Node:
        node = cls(base / name)
        (node.root / "etc/kubernetes/ssl").mkdir(parents=True)
        node.snapshots.mkdir(parents=True)
        for pem in ("kube-ca.pem", "kube-node.pem", "kube-node-key.pem"):
            shutil.copy(ssl.directory / pem, node.root / "etc/kubernetes/ssl" / pem)
        return node

    @property
    def snapshots(self) -> Path:
        return self.root / "opt/rke/etcd-snapshots"

    @property
    def kubernetes(self) -> Path:
        return self.root / "etc/kubernetes"

    def binds(self) -> list[str]:
        """``/opt/rke/etcd-snapshots/:/backup:z`` and ``<prefix>/etc/kubernetes:/etc/kubernetes:z``
        (RKE strips ``z`` for Kubernetes >= 1.22)."""
        return [f"{self.snapshots}/:/backup", f"{self.kubernetes}:/etc/kubernetes"]


def checksum_line(name: str) -> str:
    """``etcd-checksum-checker``'s command, verbatim from RKE (CONTRACT 3.8)."""
    path = f"/opt/rke/etcd-snapshots/{name}"
    return (f" if [ -f '{path}' ]; then md5sum '{path}' | cut -f1 -d' ' | tr -d '\\n'; "
            f"else echo 'snapshot file does not exist' >&2; fi")


def run_checksum(containers: Containers, node: Node, name: str) -> tuple[int, str, str]:
    return containers.run_once("etcd-checksum-checker", cmd=["sh", "-c", checksum_line(name)],
                               binds=[f"{node.root}/opt/rke/:/opt/rke/"])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_snapshot_extract_serve_download_checksum(
    tmp_path: Path, containers: Containers, etcd_server: EtcdServer, etcd_ssl: RkeSsl, s3_https: S3Server
) -> None:
    """RKE's snapshot-save then its restore preparation, container by container."""
    etcd_server.put("/registry/container-test", "before-snapshot")
    bucket = s3_https.new_bucket("ctr")
    assert s3_https.ca_path is not None
    s3_flags = rke_s3_flags(s3_https.endpoint, bucket, ca_pem=s3_https.ca_path.read_bytes())
    name = "rke_etcd_snapshot_2026-11-25T12:00:00Z"
    node1, node2, node3 = (Node.make(tmp_path, n, etcd_ssl) for n in ("node1", "node2", "node3"))
    # DeployStateFile put the state next to the certs before the snapshot.
    state = {"desiredState": {"rkeConfig": {"nodes": [{"address": "10.0.0.1"}]}}, "currentState": {}}
    (node1.kubernetes / f"{name}.rkestate").write_text(json.dumps(state))

    # etcd-snapshot-once (CONTRACT 3.2)
    code, _, err = containers.run_once(
        "etcd-snapshot-once",
        cmd=[BACKUP, *rke_save_argv(etcd_server.endpoint, name, "--once", "--creation=12h", "--retention=72h",
                                    *s3_flags)],
        env=S3_ENV, binds=node1.binds(), network="host")
    assert code == 0, err
    assert ACCESS_KEY not in err and SECRET_KEY not in err
    archive = node1.snapshots / f"{name}.zip"
    assert mode(archive) == 0o600
    keys = [o["Key"] for o in s3_https.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == [f"{name}.zip"]

    # etcd-extract-statefile (CONTRACT 3.3): only /backup bound; RKE docker-cps the result.
    extractor = containers.create(
        "etcd-extract-statefile", cmd=[BACKUP, "etcd-backup", "extractstatefile", "--name", name],
        binds=[f"{node1.snapshots}/:/backup"], network="host")
    docker("start", extractor)
    assert int(docker("wait", extractor).stdout) == 0
    content, _ = copy_file_out(extractor, "/tmp/cluster.rkestate")
    assert json.loads(content) == state

    # etcd-Serve-backup (CONTRACT 3.6): must still run 5 s after start.
    port = str(free_port())
    server = containers.run(
        "etcd-Serve-backup", cmd=[BACKUP, "etcd-backup", "serve", "--name", name, *CERT_ARGS],
        env={"SIDEKICK_SERVE_PORT": port}, binds=node1.binds(), network="host")
    time.sleep(5)
    assert running(server), docker("logs", server).stderr

    # etcd-download-backup from the peer (CONTRACT 3.7)
    code, _, err = containers.run_once(
        "etcd-download-backup",
        cmd=[BACKUP, "etcd-backup", "download", "--name", name, "--local-endpoint", "127.0.0.1", *CERT_ARGS],
        env={"SIDEKICK_SERVE_PORT": port}, binds=node2.binds(), network="host", restart="on-failure")
    assert code == 0, err
    docker("rm", "--force", server)
    source = node1.snapshots / name  # serve extracted it from the archive
    assert (node2.snapshots / name).read_bytes() == source.read_bytes()
    assert mode(node2.snapshots / name) == 0o600

    # etcd-download-backup from S3 (CONTRACT 3.5)
    code, _, err = containers.run_once(
        "etcd-download-backup",
        cmd=[BACKUP, "etcd-backup", "download", "--name", name, *s3_flags],
        env=S3_ENV, binds=node3.binds(), network="host")
    assert code == 0, err
    assert (node3.snapshots / name).read_bytes() == source.read_bytes()

    # etcd-checksum-checker (CONTRACT 3.8): the md5 on stdout, nothing on stderr, every node equal.
    expected = hashlib.md5(source.read_bytes()).hexdigest()
    for node in (node1, node2, node3):
        code, out, err = run_checksum(containers, node, name)
        assert (code, out, err) == (0, expected, "")
    code, out, err = run_checksum(containers, node1, "no-such-snapshot")
    assert (out, err) == ("", "snapshot file does not exist\n")

    # etcd-restore when the rke-tools image is the restore image (CONTRACT 3.9)
    data = tmp_path / "restored-etcd"
    data.mkdir()
    restore = (
        "rm -rf /opt/rke/etcd-snapshots-restore/ && /usr/local/bin/etcdctl snapshot restore "
        f"/opt/rke/etcd-snapshots/{name} --data-dir=/opt/rke/etcd-snapshots-restore/ --name=etcd-node1 "
        "--initial-cluster=etcd-node1=https://127.0.0.1:2380 --initial-cluster-token=etcd-cluster-1 "
        "--initial-advertise-peer-urls=https://127.0.0.1:2380 "
        "&& mv /opt/rke/etcd-snapshots-restore/* /var/lib/rancher/etcd/ && rm -rf /opt/rke/etcd-snapshots-restore/"
    )
    code, _, err = containers.run_once(
        "etcd-restore", cmd=["sh", "-c", restore], env={"ETCDCTL_API": "3"},
        binds=[f"{node2.root}/opt/rke/:/opt/rke/", f"{data}:/var/lib/rancher/etcd"], network="host")
    assert code == 0, err
    assert (data / "member/snap/db").is_file()


def test_rolling_snapshots_take_a_tick(
    tmp_path: Path, containers: Containers, etcd_server: EtcdServer, etcd_ssl: RkeSsl
) -> None:
    """etcd-rolling-snapshots (CONTRACT 3.1) with a short --creation: the first tick lands."""
    node = Node.make(tmp_path, "node", etcd_ssl)
    name = containers.run(
        "etcd-rolling-snapshots",
        cmd=[BACKUP, *rke_save_argv(etcd_server.endpoint, "etcd-rolling-snapshots", "--retention=1h",
                                    "--creation=3s")],
        binds=node.binds(), network="host", restart="always")

    def ticked() -> bool:
        return any(p.name.endswith("_etcd.zip") for p in node.snapshots.iterdir())

    wait_until(ticked, timeout=90, what="the first rolling snapshot")
    assert running(name)
    snapshot = next(p for p in node.snapshots.iterdir() if p.name.endswith("_etcd.zip"))
    assert mode(snapshot) == 0o600
    assert not [p for p in node.snapshots.iterdir() if p.name.startswith(".sidekick-tmp")]


class BridgeS3(S3Server):
    """moto listening on every address, so a container on Docker's default bridge reaches it
    through the bridge's gateway; the test itself still talks to it over loopback."""

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge (docker0)."""
    done = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "docker0"], capture_output=True, text=True,
                          check=True)
    return done.stdout.split(" inet ")[1].split("/")[0]


@pytest.fixture
def bridge_s3(tmp_path: Path) -> S3Server:
    server = BridgeS3(tmp_path / "s3", host="0.0.0.0").start()
    yield server  # type: ignore[misc]
    server.stop()


def test_remove_snapshot_on_the_default_bridge(
    tmp_path: Path, containers: Containers, etcd_ssl: RkeSsl, bridge_s3: S3Server
) -> None:
    """etcd-remove-snapshot (CONTRACT 3.10): only /backup bound, no network mode."""
    gateway = bridge_gateway()
    node = Node.make(tmp_path, "node", etcd_ssl)
    name = "c-abcde-ml-x7k2p_2026-11-25T12:00:00Z"
    for path in (node.snapshots / f"{name}.zip", node.snapshots / name, node.snapshots / "keep.zip"):
        path.write_bytes(b"snapshot bytes")
    bucket = bridge_s3.new_bucket("rm")
    client = bridge_s3.client()
    for key in (f"{name}.zip", "keep.zip"):
        client.put_object(Bucket=bucket, Key=key, Body=b"snapshot bytes")
    code, _, err = containers.run_once(
        "etcd-remove-snapshot",
        cmd=[BACKUP, "etcd-backup", "delete", "--name", name, "--s3-backup",
             f"--s3-endpoint=http://{gateway}:{bridge_s3.port}", f"--s3-bucketName={bucket}", "--s3-region="],
        env=S3_ENV, binds=[f"{node.snapshots}/:/backup"])
    assert code == 0, err
    assert sorted(p.name for p in node.snapshots.iterdir()) == ["keep.zip"]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["keep.zip"]
