"""``save --once`` end to end as RKE runs it: real etcd over TLS, real S3 (moto) over HTTPS."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import stat
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import last_line, run_sidekick
from tests.harness.env import clean_env
from tests.harness.etcd import ETCDCTL, EtcdServer
from tests.harness.etcd_backup import node_root, rke_s3_env, rke_s3_flags, rke_save_argv
from tests.harness.pki import CertificateAuthority, RkeSsl
from tests.harness.ports import free_port
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.integration

UPLOAD_FAILED = "failed to upload etcd snapshot file"
FAST = {"SIDEKICK_RETRY_WAIT": "0"}


@pytest.fixture
def root(tmp_path: Path, etcd_ssl: RkeSsl) -> Path:
    return node_root(tmp_path, etcd_ssl)


def save(root: Path, endpoint: str, name: str, *extra: str, env: dict[str, str] | None = None,
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return run_sidekick(["rke-etcd-backup", *rke_save_argv(endpoint, name, *extra)], root=root,
                        env={**FAST, **(env or {})}, timeout=timeout)


def listing(root: Path) -> list[str]:
    """/backup as RKE addresses it (our private ``.sidekick`` directory left out)."""
    return sorted(n for n in os.listdir(root / "backup") if n != ".sidekick")


def ca_b64(server: S3Server) -> str:
    assert server.ca_path is not None
    return base64.b64encode(server.ca_path.read_bytes()).decode()


def test_once_local_archive_with_state_file(root: Path, etcd_server: EtcdServer) -> None:
    etcd_server.put("/registry/test/once", "value-1")
    state = root / "etc/kubernetes/snap-local.rkestate"
    state.write_text('{\n  "desiredState": {"x": 1}\n}')

    done = save(root, etcd_server.endpoint, "snap-local", "--once")

    assert done.returncode == 0, done.stderr
    assert listing(root) == ["snap-local.zip"]  # no raw file, no temp file
    archive = root / "backup/snap-local.zip"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert not state.exists()  # inside the archive now, as the original leaves it
    with zipfile.ZipFile(archive) as zf:
        assert zf.namelist() == ["/backup/snap-local", "/etc/kubernetes/snap-local.rkestate"]
        assert zf.read("/etc/kubernetes/snap-local.rkestate") == b'{\n  "desiredState": {"x": 1}\n}'
        raw = root / "extracted.db"
        raw.write_bytes(zf.read("/backup/snap-local"))
    status = subprocess.run([ETCDCTL, "snapshot", "status", str(raw), "-w", "json"], capture_output=True,
                            text=True, env={**os.environ, "ETCDCTL_API": "3"}, check=True)
    assert '"totalKey"' in status.stdout
    assert "Created local backup" in done.stderr
    assert "snapshot_sha256=" in done.stderr and "archive_sha256=" in done.stderr


def test_once_s3_https_with_folder_as_rke_calls_it(root: Path, etcd_server: EtcdServer, s3_https: S3Server) -> None:
    bucket = s3_https.new_bucket()
    assert s3_https.ca_path is not None
    flags = rke_s3_flags(s3_https.endpoint, bucket, ca_pem=s3_https.ca_path.read_bytes(), folder="cluster-a")
    env = {**rke_s3_env(ACCESS_KEY, SECRET_KEY), "RANCHER_DEBUG": "true"}

    done = save(root, etcd_server.endpoint, "snap-s3", "--once", "--creation=12h", "--retention=72h", *flags, env=env)

    assert done.returncode == 0, done.stderr
    client = s3_https.client()
    head = client.head_object(Bucket=bucket, Key="cluster-a/snap-s3.zip")
    assert head["ContentType"] == "application/zip"
    local = (root / "backup/snap-s3.zip").read_bytes()
    assert head["ContentLength"] == len(local)
    body = client.get_object(Bucket=bucket, Key="cluster-a/snap-s3.zip")["Body"].read()
    assert body == local
    assert head["Metadata"]["archive-sha256"] == hashlib.sha256(local).hexdigest()
    with zipfile.ZipFile(root / "backup/snap-s3.zip") as zf:
        snap = zf.read("/backup/snap-s3")
    assert head["Metadata"]["snapshot-sha256"] == hashlib.sha256(snap).hexdigest()
    # Secrets never reach the logs, even at debug level, raw or base64.
    for secret in (ACCESS_KEY, SECRET_KEY, *rke_s3_env(ACCESS_KEY, SECRET_KEY).values()):
        assert secret not in done.stderr
    assert "BEGIN CERTIFICATE" not in done.stderr

    # A second save of the same name does not upload again (versioning is off).
    again = save(root, etcd_server.endpoint, "snap-s3", "--once", *flags, env=env)
    assert again.returncode == 0, again.stderr
    assert "Skipping upload to s3" in again.stderr


def test_versioned_bucket_gets_a_new_version(root: Path, etcd_server: EtcdServer, s3_http: S3Server) -> None:
    bucket = s3_http.new_bucket()
    client = s3_http.client()
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    flags = rke_s3_flags(f"http://{s3_http.endpoint}", bucket)
    for _ in range(2):
        done = save(root, etcd_server.endpoint, "snap-versioned", "--once", *flags, env=rke_s3_env(ACCESS_KEY, SECRET_KEY))
        assert done.returncode == 0, done.stderr
        assert "Skipping upload" not in done.stderr
    versions = client.list_object_versions(Bucket=bucket, Prefix="snap-versioned.zip").get("Versions", [])
    assert len(versions) == 2


def test_etcd_down_retries_then_fails_clearly(root: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = save(root, dead, "snap-down", "--once", "--backup-retries=2")
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert "level=fatal" in line and "failed to take etcd snapshot snap-down after 3 attempts" in line
    assert done.stderr.count("snapshot attempt failed") == 3
    assert UPLOAD_FAILED not in line
    assert listing(root) == []
    assert time.monotonic() - started < 60


def test_etcd_without_quorum_is_unhealthy(root: Path, tmp_path: Path, etcd_ssl: RkeSsl) -> None:
    # A member of a two-member cluster whose peer never comes: up, but no leader.
    lonely = EtcdServer(tmp_path / "lonely", etcd_ssl, name="etcd-a")
    lonely.initial_cluster = f"etcd-a={lonely.peer_url},etcd-b=https://127.0.0.1:{free_port()}"
    lonely.start(wait=False)
    try:
        done = save(root, lonely.endpoint, "snap-unhealthy", "--once", "--backup-retries=1")
    finally:
        lonely.stop()
    assert done.returncode == 1
    assert done.stderr.count("snapshot attempt failed") == 2
    assert "failed to take etcd snapshot snap-unhealthy after 2 attempts: etcd is not healthy" in last_line(done.stderr)
    assert listing(root) == []


def test_s3_unreachable_keeps_local_and_says_upload_failed(root: Path, etcd_server: EtcdServer) -> None:
    dead = f"127.0.0.1:{free_port()}"
    done = save(root, etcd_server.endpoint, "snap-nos3", "--once", *rke_s3_flags(dead, "bucket"),
                env=rke_s3_env(ACCESS_KEY, SECRET_KEY))
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert UPLOAD_FAILED in line and "level=fatal" in line
    assert "cannot reach S3" in line or "failed to check s3 bucket" in line
    assert listing(root) == ["snap-nos3.zip"]


def test_missing_bucket(root: Path, etcd_server: EtcdServer, s3_https: S3Server) -> None:
    flags = rke_s3_flags(s3_https.endpoint, "no-such-bucket", ca_pem=s3_https.ca_path.read_bytes()  # type: ignore[union-attr]
                         )
    done = save(root, etcd_server.endpoint, "snap-nobucket", "--once", *flags, env=rke_s3_env(ACCESS_KEY, SECRET_KEY))
    assert done.returncode == 1
    assert f"{UPLOAD_FAILED}: bucket no-such-bucket is not found" in last_line(done.stderr)
    assert listing(root) == ["snap-nobucket.zip"]


def test_invalid_and_wrong_ca(root: Path, etcd_server: EtcdServer, s3_https: S3Server) -> None:
    bucket = s3_https.new_bucket()
    garbage = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n").decode()
    done = save(root, etcd_server.endpoint, "snap-badca", "--once", *rke_s3_flags(s3_https.endpoint, bucket),
                f"--s3-endpoint-ca={garbage}", env=rke_s3_env(ACCESS_KEY, SECRET_KEY))
    assert done.returncode == 1
    assert f"{UPLOAD_FAILED}: s3-endpoint-ca is not a valid x509 certificate" in last_line(done.stderr)

    other = CertificateAuthority("not-the-s3-ca")
    done = save(root, etcd_server.endpoint, "snap-wrongca", "--once",
                *rke_s3_flags(s3_https.endpoint, bucket, ca_pem=other.cert_pem), env=rke_s3_env(ACCESS_KEY, SECRET_KEY))
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert UPLOAD_FAILED in line and ("TLS" in line or "certificate" in line)
    assert "snap-wrongca.zip" in listing(root)

    # Without any CA the system trust is used (never AWS_CA_BUNDLE from the environment).
    done = save(root, etcd_server.endpoint, "snap-noca", "--once", *rke_s3_flags(s3_https.endpoint, bucket),
                env={**rke_s3_env(ACCESS_KEY, SECRET_KEY), "AWS_CA_BUNDLE": str(s3_https.ca_path)})
    assert done.returncode == 1 and UPLOAD_FAILED in last_line(done.stderr)


@pytest.fixture(scope="module")
def s3_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto enforcing signatures: access keys it does not know are refused."""
    server = S3Server(tmp_path_factory.mktemp("s3-auth"), env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}).start()
    yield server
    server.stop()


def test_wrong_credentials(root: Path, etcd_server: EtcdServer, s3_auth: S3Server) -> None:
    done = save(root, etcd_server.endpoint, "snap-creds", "--once",
                *rke_s3_flags(f"http://{s3_auth.endpoint}", "bucket"),
                env=rke_s3_env("AKIAWRONGWRONGWRONG1", "wrong-secret-key-value"))
    assert done.returncode == 1
    line = last_line(done.stderr)
    assert UPLOAD_FAILED in line and "denied" in line
    assert "wrong-secret-key-value" not in done.stderr
    assert listing(root) == ["snap-creds.zip"]


@pytest.mark.parametrize("name", ["../escape", "a/b", "snap.zip", ".."])
def test_bad_names_touch_nothing(root: Path, etcd_server: EtcdServer, name: str) -> None:
    done = save(root, etcd_server.endpoint, name, "--once")
    assert done.returncode == 2
    assert "invalid snapshot name" in last_line(done.stderr)
    assert listing(root) == []
    assert sorted(os.listdir(root)) == ["backup", "etc"]


def damaging_etcdctl(tmp_path: Path, code: str) -> str:
    """A PATH whose first etcdctl is the real one, then ``code`` applied to each snapshot it
    saves (``data``: the file's bytes, a bytearray, written back after)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "etcdctl"
    wrapper.write_text(
        "#!/usr/bin/env python3\n"
        "import subprocess, sys\n"
        f"rc = subprocess.call([{ETCDCTL!r}, *sys.argv[1:]])\n"
        "if rc == 0 and 'save' in sys.argv:\n"
        "    path = sys.argv[-1]\n"
        "    data = bytearray(open(path, 'rb').read())\n"
        + "".join(f"    {line}\n" for line in code.splitlines()) +
        "    open(path, 'wb').write(bytes(data))\n"
        "sys.exit(rc)\n"
    )
    wrapper.chmod(0o755)
    return f"{bindir}:{os.environ['PATH']}"


def test_corrupt_snapshot_never_replaces_a_good_archive(root: Path, etcd_server: EtcdServer, tmp_path: Path) -> None:
    good = save(root, etcd_server.endpoint, "snap-corrupt", "--once")
    assert good.returncode == 0, good.stderr
    before = (root / "backup/snap-corrupt.zip").read_bytes()
    # An etcdctl whose snapshots come out damaged (a flipped byte in the middle).
    path = damaging_etcdctl(tmp_path, "data[len(data) // 2] ^= 0xFF\n")
    done = save(root, etcd_server.endpoint, "snap-corrupt", "--once", "--backup-retries=1", env={"PATH": path})
    assert done.returncode == 1
    assert "snapshot check failed" in done.stderr
    assert "failed to take etcd snapshot" in last_line(done.stderr)
    assert (root / "backup/snap-corrupt.zip").read_bytes() == before
    assert listing(root) == ["snap-corrupt.zip"]


# Damage that only one of the two checks can see: both meta pages (trailer recomputed: only
# the bbolt walk notices), or the trailer itself (the db intact: only the archive's pass notices).
DAMAGE = {
    "bbolt structure": (
        "import hashlib\n"
        "db = data[:-32]\n"
        "size = int.from_bytes(db[24:28], 'little')\n"
        "db[16] ^= 1; db[size + 16] ^= 1\n"
        "data = db + hashlib.sha256(db).digest()\n",
        "no valid meta page"),
    "hash trailer": ("data[-1] ^= 1\n", "the sha256 etcd appended does not match the content"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_each_check_alone_stops_a_corrupt_snapshot(root: Path, etcd_server: EtcdServer, tmp_path: Path,
                                                   damage: str) -> None:
    code, cause = DAMAGE[damage]
    path = damaging_etcdctl(tmp_path, code)
    done = save(root, etcd_server.endpoint, "snap-damaged", "--once", "--backup-retries=1", env={"PATH": path})
    assert done.returncode == 1
    assert "failed to take etcd snapshot snap-damaged" in last_line(done.stderr)
    assert "snapshot check failed: " in last_line(done.stderr) and cause in last_line(done.stderr)
    assert "Traceback" not in done.stderr
    assert listing(root) == []


def test_rancher_once_rotation_and_leftovers(root: Path, etcd_server: EtcdServer) -> None:
    backup = root / "backup"
    old = time.time() - 3 * 86400
    for name in ("c-abcde-rl-old01_2024-01-01T00:00:00Z.zip", "c-abcde-ml-old02_2024-01-01T00:00:00Z.zip",
                 "c-zzzzz-rl-old03_2024-01-01T00:00:00Z.zip", ".sidekick-tmp-crashed.zip.0001"):
        (backup / name).write_bytes(b"old")
        os.utime(backup / name, (old, old))
    (backup / ".sidekick-tmp-inflight.zip.0002").write_bytes(b"another process is writing this")

    done = save(root, etcd_server.endpoint, "c-abcde-rl-new01_2024-10-04T12:00:00Z", "--once", "--retention=24h")

    assert done.returncode == 0, done.stderr
    assert listing(root) == [
        ".sidekick-tmp-inflight.zip.0002",
        "c-abcde-ml-old02_2024-01-01T00:00:00Z.zip",
        "c-abcde-rl-new01_2024-10-04T12:00:00Z.zip",
        "c-zzzzz-rl-old03_2024-01-01T00:00:00Z.zip",
    ]


def test_missing_cert_flags_and_zero_durations(root: Path) -> None:
    done = run_sidekick(["rke-etcd-backup", "etcd-backup", "save", "--once", "--name", "x"], root=root)
    assert done.returncode == 2 and "Failed to find etcd cert or key paths" in last_line(done.stderr)
    done = save(root, "127.0.0.1:2379", "x", "--once", "--creation=0h", "--retention=0h")
    assert done.returncode == 2 and "Creation period and/or retention are not set" in last_line(done.stderr)


# --- bigger snapshots: disk full and S3 dying mid-upload ---------------------------------
@pytest.fixture(scope="module")
def big_etcd(tmp_path_factory: pytest.TempPathFactory, kube_ca: CertificateAuthority) -> Iterator[EtcdServer]:
    """An etcd holding ~12 MB of incompressible values (the archive is multipart-sized)."""
    workdir = tmp_path_factory.mktemp("big-etcd")
    ssl_files = RkeSsl.create(workdir / "ssl", kube_ca, "127.0.0.1")
    server = EtcdServer(workdir, ssl_files).start()
    import requests

    session = requests.Session()
    session.trust_env = False
    session.cert = (str(ssl_files.node_cert), str(ssl_files.node_key))
    session.verify = str(ssl_files.cacert)
    for i in range(120):
        value = base64.b64encode(os.urandom(100_000)).decode()
        body = {"key": base64.b64encode(f"/big/{i:04d}".encode()).decode(), "value": value}
        session.post(f"{server.url}/v3/kv/put", json=body, timeout=30).raise_for_status()
    yield server
    server.stop()


def test_disk_full_is_clean(tmp_path: Path, big_etcd: EtcdServer) -> None:
    root = node_root(tmp_path, big_etcd.ssl)
    probe = tmp_path / "probe.db"
    big_etcd.ctl("snapshot", "save", str(probe))
    size = probe.stat().st_size
    probe.unlink()
    previous = b"previous archive"
    (root / "backup/snap-full.zip").write_bytes(previous)
    # Room for the snapshot, not for the snapshot and its archive.
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size + size // 3}", "tmpfs", str(root / "backup")], check=True)
    try:
        (root / "backup/snap-full.zip").write_bytes(previous)
        done = save(root, big_etcd.endpoint, "snap-full", "--once", "--backup-retries=0")
        assert done.returncode == 1
        assert "no space left on device" in last_line(done.stderr)
        assert listing(root) == ["snap-full.zip"]
        assert (root / "backup/snap-full.zip").read_bytes() == previous
    finally:
        subprocess.run(["umount", str(root / "backup")], check=True)


class CuttingProxy:
    """TCP proxy to S3 that dies for good after forwarding ``limit`` request bytes."""

    def __init__(self, target_port: int, limit: int) -> None:
        import threading

        self.limit = limit
        self.sent = 0
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dead = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self.dead.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, counting: bool) -> None:
        try:
            while data := src.recv(65536):
                if counting:
                    self.sent += len(data)
                    if self.sent > self.limit:
                        self.kill()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()

    def kill(self) -> None:
        self.dead.set()
        self.listener.close()
        for sock in self.conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def test_s3_dies_mid_upload(tmp_path: Path, big_etcd: EtcdServer, s3_http: S3Server) -> None:
    root = node_root(tmp_path, big_etcd.ssl)
    bucket = s3_http.new_bucket()
    proxy = CuttingProxy(s3_http.port, limit=4 << 20)
    try:
        done = save(root, big_etcd.endpoint, "snap-cut", "--once", "--s3-retries=1",
                    *rke_s3_flags(f"http://127.0.0.1:{proxy.port}", bucket), env=rke_s3_env(ACCESS_KEY, SECRET_KEY))
    finally:
        proxy.kill()
    assert done.returncode == 1
    assert UPLOAD_FAILED in last_line(done.stderr)
    assert "retried 0 times" in done.stderr  # the first failure was retried
    assert listing(root) == ["snap-cut.zip"]
    assert zipfile.ZipFile(root / "backup/snap-cut.zip").testzip() is None
    # Nothing partial is visible in the bucket.
    assert s3_http.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_sigterm_during_once_leaves_nothing_behind(tmp_path: Path, big_etcd: EtcdServer) -> None:
    import signal

    root = node_root(tmp_path, big_etcd.ssl)
    env = clean_env()
    env["SIDEKICK_ROOT"] = str(root)
    from tests.conftest import SIDEKICK

    proc = subprocess.Popen([str(SIDEKICK), "rke-etcd-backup", *rke_save_argv(big_etcd.endpoint, "snap-term", "--once")],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(n.startswith(".sidekick-tmp-") for n in listing(root)):
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # the snapshot won the race: then it is complete
        assert listing(root) == ["snap-term.zip"]
        assert zipfile.ZipFile(root / "backup/snap-term.zip").testzip() is None
    else:
        assert proc.returncode == 143, err
        assert "interrupted by SIGTERM" in last_line(err)
        time.sleep(1)  # a surviving etcdctl would still be writing its .part file
        assert listing(root) == []


def test_kill_9_mid_save_leaves_no_archive_and_the_next_run_cleans_up(tmp_path: Path, big_etcd: EtcdServer) -> None:
    import signal

    root = node_root(tmp_path, big_etcd.ssl)
    env = clean_env()
    env["SIDEKICK_ROOT"] = str(root)
    from tests.conftest import SIDEKICK

    proc = subprocess.Popen([str(SIDEKICK), "rke-etcd-backup", *rke_save_argv(big_etcd.endpoint, "snap-kill", "--once")],
                            env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(n.startswith(".sidekick-tmp-") for n in listing(root)):
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1)  # the orphaned etcdctl finishes or dies
    assert "snap-kill.zip" not in listing(root)
    leftovers = [n for n in listing(root) if n.startswith(".sidekick-tmp-")]
    assert leftovers
    old = time.time() - 3600
    for name in leftovers:
        os.utime(root / "backup" / name, (old, old))

    done = save(root, big_etcd.endpoint, "snap-kill", "--once")
    assert done.returncode == 0, done.stderr
    assert listing(root) == ["snap-kill.zip"]
    assert "removed a leftover of an interrupted run" in done.stderr


def test_two_saves_at_once_take_turns(root: Path, etcd_server: EtcdServer) -> None:
    from tests.conftest import SIDEKICK

    env = {**clean_env(), "SIDEKICK_ROOT": str(root), **FAST}
    runs = [subprocess.Popen([str(SIDEKICK), "rke-etcd-backup", *rke_save_argv(etcd_server.endpoint, name, "--once")],
                             env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
            for name in ("snap-turn-a", "snap-turn-b")]
    results = [(run.wait(timeout=120), run.stderr.read() if run.stderr else "") for run in runs]
    assert [code for code, _ in results] == [0, 0], results
    assert listing(root) == ["snap-turn-a.zip", "snap-turn-b.zip"]
    assert (root / "backup/.sidekick/lock").is_file()
    for name in ("snap-turn-a", "snap-turn-b"):
        assert zipfile.ZipFile(root / "backup" / f"{name}.zip").testzip() is None


def test_too_little_space_is_refused_before_anything_is_written(tmp_path: Path, big_etcd: EtcdServer) -> None:
    root = node_root(tmp_path, big_etcd.ssl)
    done = save(root, big_etcd.endpoint, "snap-first", "--once")  # the size to expect next time
    assert done.returncode == 0, done.stderr
    previous = (root / "backup/snap-first.zip").read_bytes()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={len(previous) + (1 << 20)}", "tmpfs", str(root / "backup")],
                   check=True)
    try:
        (root / "backup/snap-first.zip").write_bytes(previous)
        done = save(root, big_etcd.endpoint, "snap-second", "--once", "--backup-retries=0")
        assert done.returncode == 1
        line = last_line(done.stderr)
        assert "not enough space for a snapshot: need" in line and "on /backup" in line, line
        assert "etcd snapshot in progress" not in done.stderr and "invoking" not in done.stderr
        assert listing(root) == ["snap-first.zip"]
    finally:
        subprocess.run(["umount", str(root / "backup")], check=True)
