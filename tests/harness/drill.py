"""The restore drill: three etcd nodes in network namespaces, a snapshot, RKE's restore flow.

Shared by ``tests/etcd/test_restore_drill.py`` and the README demo (``demo/etcd_drill.py``),
so both run exactly the same drill. Each node is a network namespace with its own address and
its own SIDEKICK_ROOT (its ``/``); etcd runs on 2379/2380 in each, with TLS, as RKE runs it.
:func:`prepare` builds the cluster, writes the data and takes the snapshots with the real
``save --once``; then, as ``rke etcd snapshot-restore`` does (CONTRACT 3.3-3.9):

- :func:`local_flow`: ``extractstatefile`` on the source, etcd stopped everywhere, ``serve`` on
  the source (default ``0.0.0.0:2379``, nothing overridden), ``download --local-endpoint`` on
  the others; :func:`s3_flow`: ``download --s3-backup`` on every node from a moto S3 on the
  host's leg;
- RKE's exact ``md5sum`` checksum line on every node: equal, stderr empty;
- ``etcdctl snapshot restore`` on every node into new data dirs with RKE's flags, the restored
  cluster starts, and every key written before the snapshot reads back (and none after).

Every check raises :class:`DrillFailure` (an ``AssertionError``: a failed test under pytest, a
failed step in the demo). Every process, namespace and veth is registered on the caller's
``ExitStack`` the moment it exists, so closing the stack cleans up after any failure.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.env import clean_env
from tests.harness.etcd import ETCDCTL, EtcdServer
from tests.harness.etcd_backup import node_root, rke_s3_env, rke_s3_flags
from tests.harness.netns import NamespaceError, Network, Node
from tests.harness.pki import CertificateAuthority, RkeSsl
from tests.harness.ports import port_open, wait_for
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

SIDEKICK = Path(sys.executable).with_name("sidekick")
LOCAL = "rke_etcd_snapshot_2024-10-04T14:00:00+02:00"
REMOTE = "c-abcde-rs-x7k2p_2024-10-04T12:00:00Z"
AGE_KEY = "/etc/sidekick/age.key"
CERTS = [
    "--cacert", "/etc/kubernetes/ssl/kube-ca.pem",
    "--cert", "/etc/kubernetes/ssl/kube-node.pem",
    "--key", "/etc/kubernetes/ssl/kube-node-key.pem",
]
STATE = {"desiredState": {"rkeConfig": {"nodes": ["n1", "n2", "n3"]}}, "currentState": {}}
BULK_KEYS = 300
BULK_VALUE_SIZE = 512
AFTER_SNAPSHOT = "/registry/drill/after-snapshot"


class DrillFailure(AssertionError):
    """A drill check failed; the message says which and shows the tool's own last line."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise DrillFailure(what)


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def checksum_line(name: str) -> str:
    """``etcd-checksum-checker``'s command, verbatim (CONTRACT 3.8)."""
    return (
        f" if [ -f '/opt/rke/etcd-snapshots/{name}' ]; then md5sum '/opt/rke/etcd-snapshots/{name}' "
        "| cut -f1 -d' ' | tr -d '\\n'; else echo 'snapshot file does not exist' >&2; fi"
    )


@dataclass
class Phases:
    """Wall-clock seconds per phase, in the order they ran (the demo prints them)."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - began

    def line(self) -> str:
        return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.seconds.items())


def stop_process(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 10 s: for cleanup paths only (the flows stop it properly)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Machine:
    node: Node
    root: Path
    member: str  # etcd member name, RKE's etcd-<hostname>
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. the age identity of an encrypted drill

    @property
    def ip(self) -> str:
        return self.node.address

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = clean_env()
        env.update(SIDEKICK_ROOT=str(self.root), SIDEKICK_RETRY_WAIT="0.3", **self.extra_env, **(extra or {}))
        return env

    def argv(self, *args: str) -> list[str]:
        """``rke-etcd-backup etcd-backup ...`` on this node, as its container would run it."""
        return [*self.node.prefix(), str(SIDEKICK), "rke-etcd-backup", "etcd-backup", *args]

    def tool(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env(env), timeout=timeout)

    def must(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the tool; exit 0 or a failure quoting its last line (the line RKE reads)."""
        done = self.tool(*args, env=env)
        check(done.returncode == 0, f"{args[0]} on {self.ip} exited {done.returncode}: {last_line(done.stderr)}")
        return done

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
    s3: S3Server
    bucket: str
    stack: ExitStack
    written: dict[str, str] = field(default_factory=dict)
    snapshot_zip_bytes: int = 0  # the local snapshot's archive, on the source
    phases: Phases = field(default_factory=Phases)

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.member}=https://{m.ip}:2380" for m in self.machines)

    def s3_flags(self) -> list[str]:
        assert self.s3.ca_path is not None
        return rke_s3_flags(self.s3.endpoint, self.bucket, ca_pem=self.s3.ca_path.read_bytes(), folder="drill")

    def cluster(self, tag: str, data_dirs: Sequence[Path | None] = (None, None, None)) -> list[EtcdServer]:
        """Start one member per node and wait until all are healthy (a quorum formed)."""
        members = [
            EtcdServer(self.workdir / f"{tag}-{m.member}", self.ssl, name=m.member, host=m.ip, client_port=2379,
                       peer_port=2380, initial_cluster=self.initial_cluster, netns=m.node.name, data_dir=data_dir)
            for m, data_dir in zip(self.machines, data_dirs, strict=True)
        ]
        self.stack.callback(stop_all, members)
        for member in members:
            member.start(wait=False)
        try:
            for member in members:
                member.wait_healthy(timeout=60)
        except BaseException:
            stop_all(members)
            raise
        return members


@dataclass
class FlowResult:
    """What one restore flow did, with the figures the demo prints and the test asserts on."""

    name: str
    state: Any  # /tmp/cluster.rkestate as extractstatefile wrote it
    downloaded_by: list[str]  # node addresses
    modes: list[str]  # /backup/<name> mode on each downloading node
    md5: list[str]  # RKE's checksum line's output, one per node
    snapshot_bytes: int
    restored: list[dict[str, str]]  # every /registry/ key read back, one dict per restored member
    after_snapshot: str | None  # the key written after the snapshot, on the restored cluster
    phases: Phases
    serve_log: str = ""  # local flow: serve's stderr


def stop_all(members: Sequence[EtcdServer]) -> None:
    """One member after another (SIGTERM all at once is slower: each leader transfer times out)."""
    for member in members:
        member.stop()


def read_all(member: EtcdServer, prefix: str = "/registry/") -> dict[str, str]:
    out = member.ctl("get", prefix, "--prefix", "-w", "json").stdout
    kvs = json.loads(out).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode() for kv in kvs}


def open_network(stack: ExitStack, count: int = 3) -> Network:
    """The namespaces; ``NamespaceError`` (and only then) when this machine cannot build them."""
    network = Network(count)
    stack.callback(network.close)
    try:
        return network.create()
    except OSError as err:  # no ip binary, no permission to exec it
        raise NamespaceError(str(err)) from err


def no_secrets(done: subprocess.CompletedProcess[str], what: str) -> None:
    check(ACCESS_KEY not in done.stderr and SECRET_KEY not in done.stderr, f"{what} logged an S3 key")


def age_key(machines: Sequence[Machine], base: Path) -> str:
    """One ``age-keygen`` identity at /etc/sidekick/age.key on every node (the operator's key);
    every node's tools find it through ``SIDEKICK_AGE_IDENTITY_FILE``. Returns the recipient."""
    key = base / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    for m in machines:
        (m.root / "etc/sidekick").mkdir(parents=True, exist_ok=True)
        shutil.copy(key, m.root / AGE_KEY.lstrip("/"))
        m.extra_env["SIDEKICK_AGE_IDENTITY_FILE"] = AGE_KEY
    return next(line.split(": ")[1] for line in key.read_text().splitlines() if line.startswith("# public key: "))


def prepare(stack: ExitStack, base: Path, ca: CertificateAuthority, *, encrypt: bool = False) -> Drill:
    """Three nodes with data; a local snapshot on node 1 and one uploaded to S3; etcd stopped.

    ``encrypt``: both snapshots age-encrypted (the local one kept only as ``.zip.age``, the S3
    object ``.zip.age``), every node holding the identity.

    Raises ``NamespaceError`` when the namespaces cannot be built (callers say so and fail).
    """
    phases = Phases()
    with phases.timed("namespaces"):
        network = open_network(stack)
    with phases.timed("certs"):
        ssl = RkeSsl.create(base / "ssl", ca, *(n.address for n in network.nodes))
        machines = [Machine(node, node_root(base / f"n{i + 1}", ssl), f"etcd-n{i + 1}")
                    for i, node in enumerate(network.nodes)]
    with phases.timed("s3 start"):
        s3 = S3Server(base / "s3", tls_ca=CertificateAuthority("drill-s3-ca"), host=network.host_address)
        stack.callback(s3.stop)
        s3.start()
        drill = Drill(network, ssl, machines, base, s3, s3.new_bucket("drill"), stack, phases=phases)
    with phases.timed("cluster start"):
        members = drill.cluster("original")
    try:
        with phases.timed("write keys"):
            members[0].put_many(BULK_KEYS, BULK_VALUE_SIZE, prefix="/registry/drill/bulk/")
            for i, m in enumerate(machines):  # one key through every member
                members[i].put(f"/registry/drill/from/{m.member}", f"written via {m.ip}")
            drill.written = read_all(members[1])
        check(len(drill.written) == BULK_KEYS + len(machines),
              f"{len(drill.written)} keys read back after writing {BULK_KEYS + len(machines)}")

        source = machines[0]
        age_save: list[str] = []
        age_env: dict[str, str] = {}
        if encrypt:
            age_env["SIDEKICK_AGE_RECIPIENTS"] = age_key(machines, base)
            age_save = ["--age-encrypt-local"]
        for name in (LOCAL, REMOTE):  # what RKE's cluster-state-deployer puts there first
            (source.root / "etc/kubernetes" / f"{name}.rkestate").write_text(json.dumps(STATE, indent=2))
        with phases.timed("save"):
            source.must("save", *CERTS, "--name", LOCAL, f"--endpoints={source.ip}:2379", "--once", *age_save,
                        env=age_env)
        archive = source.root / "backup" / (f"{LOCAL}.zip.age" if encrypt else f"{LOCAL}.zip")
        drill.snapshot_zip_bytes = archive.stat().st_size
        with phases.timed("save to S3"):
            saved = source.must("save", *CERTS, "--name", REMOTE, f"--endpoints={source.ip}:2379", "--once",
                                "--creation=12h", "--retention=72h", *drill.s3_flags(),
                                env={**rke_s3_env(ACCESS_KEY, SECRET_KEY), **age_env})
        no_secrets(saved, "save to S3")
        (source.root / "backup" / f"{REMOTE}.zip").unlink()  # only S3 has it now
        members[2].put(AFTER_SNAPSHOT, "must not come back")
    finally:
        with phases.timed("etcd stop"):
            stop_all(members)  # RKE stops etcd on every host before restoring
    return drill


def restore(drill: Drill, name: str, tag: str, phases: Phases) -> tuple[list[str], list[dict[str, str]], str | None]:
    """RKE's checksum, ``etcd-restore`` on every node, the restored cluster, every key."""
    sums = []
    with phases.timed("md5sum"):
        for m in drill.machines:
            done = m.checksum(name)
            check(done.returncode == 0 and done.stderr == "", f"checksum on {m.ip}: {done.stderr.strip()}")
            check(len(done.stdout) == 32, f"checksum on {m.ip} printed {done.stdout!r}")
            sums.append(done.stdout)
    check(len(set(sums)) == 1, f"etcd snapshots are not consistent: {sums}")

    data_dirs = []
    with phases.timed("snapshot restore"):
        for m in drill.machines:
            data_dir = drill.workdir / f"{tag}-{m.member}-restored"
            done = subprocess.run(
                [ETCDCTL, "snapshot", "restore", str(m.root / "backup" / name), f"--data-dir={data_dir}",
                 f"--name={m.member}", f"--initial-cluster={drill.initial_cluster}",
                 "--initial-cluster-token=etcd-cluster-1", f"--initial-advertise-peer-urls=https://{m.ip}:2380"],
                capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=120,
            )
            check(done.returncode == 0, f"etcdctl snapshot restore on {m.ip}: {last_line(done.stderr)}")
            data_dirs.append(data_dir)
    with phases.timed("restored cluster start"):
        members = drill.cluster(tag, data_dirs)
    try:
        with phases.timed("read back"):
            restored = [read_all(member) for member in members]
            after = members[0].get(AFTER_SNAPSHOT)
    finally:
        with phases.timed("etcd stop"):
            stop_all(members)
    for m, keys in zip(drill.machines, restored, strict=True):  # every member has the full data set
        missing = sorted(set(drill.written) - set(keys))
        check(keys == drill.written, f"restored {m.member}: {len(keys)} keys, {len(missing)} missing, e.g. {missing[:3]}")
    check(after is None, f"a key written after the snapshot came back: {after!r}")
    return sums, restored, after


def _state(machine: Machine) -> Any:
    state = json.loads((machine.root / "tmp/cluster.rkestate").read_text())
    check(state == STATE, f"/tmp/cluster.rkestate on {machine.ip} is not the archived state: {state}")
    return state


def _mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def local_flow(drill: Drill) -> FlowResult:
    """RKE's local restore: node 1 serves its snapshot, the two others download it from the peer."""
    phases = Phases()
    source, others = drill.machines[0], drill.machines[1:]
    with phases.timed("extractstatefile"):
        source.must("extractstatefile", "--name", LOCAL)
    state = _state(source)

    serving = subprocess.Popen(source.argv("serve", "--name", LOCAL, *CERTS), env=source.env(),  # RKE's argv
                               stderr=subprocess.PIPE, text=True)
    drill.stack.callback(stop_process, serving)
    try:
        with phases.timed("serve start"):
            wait_for(lambda: serving.poll() is None and port_open(2379, source.ip), timeout=30, what="serve on 2379")
        modes = []
        with phases.timed("peer download"):
            for m in others:
                m.must("download", "--name", LOCAL, "--local-endpoint", source.ip, *CERTS)
                modes.append(_mode(m.root / "backup" / LOCAL))
        check(serving.poll() is None, "serve exited during the downloads (RKE's 5 s check would fail)")
    finally:
        serving.send_signal(signal.SIGTERM)
        _, err = serving.communicate(timeout=30)
    check(serving.returncode == 0, f"serve exited {serving.returncode} on SIGTERM: {last_line(err)}")
    check(modes == ["0o600"] * len(others), f"downloaded snapshot modes {modes}, want 0o600")
    for m in others:
        check(f'client="{m.ip}:' in err and "snapshot sent" in err, f"serve did not log the client {m.ip}")
    check("serve stopped" in last_line(err), f"serve's last line: {last_line(err)}")
    sums, restored, after = restore(drill, LOCAL, "local", phases)
    size = (source.root / "backup" / LOCAL).stat().st_size
    return FlowResult(LOCAL, state, [m.ip for m in others], modes, sums, size, restored, after, phases, err)


def s3_flow(drill: Drill) -> FlowResult:
    """RKE's S3 restore: the state file from S3 on one node, then every node downloads the snapshot."""
    phases = Phases()
    flags, env = drill.s3_flags(), rke_s3_env(ACCESS_KEY, SECRET_KEY)
    with phases.timed("extractstatefile"):
        done = drill.machines[2].must("extractstatefile", "--name", REMOTE, "--creation=12h", "--retention=72h",
                                      *flags, env=env)
    no_secrets(done, "extractstatefile")
    state = _state(drill.machines[2])
    modes = []
    with phases.timed("S3 download"):
        for m in drill.machines:
            done = m.must("download", "--name", REMOTE, *flags, env=env)
            no_secrets(done, f"download on {m.ip}")
            files = sorted(p.name for p in (m.root / "backup").iterdir() if REMOTE in p.name)
            check(files == [REMOTE, f"{REMOTE}.zip"], f"/backup on {m.ip} holds {files}")
            modes.append(_mode(m.root / "backup" / REMOTE))
    check(modes == ["0o600"] * len(drill.machines), f"extracted snapshot modes {modes}, want 0o600")
    sums, restored, after = restore(drill, REMOTE, "s3", phases)
    size = (drill.machines[0].root / "backup" / REMOTE).stat().st_size
    return FlowResult(REMOTE, state, [m.ip for m in drill.machines], modes, sums, size, restored, after, phases)
