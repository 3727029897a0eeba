"""``verify`` for real: a snapshot ``save`` took from a real etcd, restored by etcdctl into a
throwaway etcd member, from the local disk, from S3 (moto) and from a peer's ``serve``.

Each broken archive fails with its own one-line cause, and nothing is left behind: no work
directory under /backup/.sidekick, no etcd process, the files RKE uses untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from sidekick.etcd.archive import write_archive
from sidekick.etcd.extract import read_manifest_document
from sidekick.etcd.facts import SnapshotFacts
from tests.conftest import SIDEKICK, last_line, run_sidekick
from tests.etcd.servers import running_server
from tests.harness.env import clean_env
from tests.harness.etcd import EtcdServer
from tests.harness.etcd_backup import node_root, rke_s3_env, rke_s3_flags, rke_save_argv
from tests.harness.pki import RkeSsl
from tests.harness.ports import wait_for
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.integration

NAME = "c-verify_2026-12-01T00:00:00Z"
CERTS = ["--cacert", "/etc/kubernetes/ssl/kube-ca.pem", "--cert", "/etc/kubernetes/ssl/kube-node.pem",
         "--key", "/etc/kubernetes/ssl/kube-node-key.pem"]
ENV = {**rke_s3_env(ACCESS_KEY, SECRET_KEY), "SIDEKICK_RETRY_WAIT": "0"}


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory, etcd_ssl: RkeSsl, etcd_server: EtcdServer) -> bytes:
    """The bytes of ``/backup/<NAME>.zip`` as ``save --once`` wrote them."""
    for i in range(25):
        etcd_server.put(f"/verify/key-{i:03d}", f"value-{i}")
    etcd_server.put("/verify/key-000", "overwritten")  # history: more key revisions than keys
    root = node_root(tmp_path_factory.mktemp("golden"), etcd_ssl)
    done = run_sidekick(["rke-etcd-backup", *rke_save_argv(etcd_server.endpoint, NAME, "--once")], root=root,
                        env={"SIDEKICK_RETRY_WAIT": "0"})
    assert done.returncode == 0, done.stderr
    return (root / "backup" / f"{NAME}.zip").read_bytes()


def recorded(zip_bytes: bytes, tmp: Path) -> SnapshotFacts:
    path = tmp / "probe.zip"
    path.write_bytes(zip_bytes)
    return SnapshotFacts.from_manifest(read_manifest_document(path).get("snapshot"))


# --- the broken archives -------------------------------------------------------------------
def _snapshot(zip_bytes: bytes, tmp: Path) -> bytes:
    path = tmp / "src.zip"
    path.write_bytes(zip_bytes)
    with zipfile.ZipFile(path) as archive:
        return archive.read(f"/backup/{NAME}")


def _archive(entries: list[tuple[str, bytes]], tmp: Path) -> bytes:
    """Our archive of ``entries`` (a fresh manifest of their SHA-256s, no recorded facts)."""
    work = tmp / "build"
    work.mkdir(exist_ok=True)
    files = []
    for i, (entry, data) in enumerate(entries):
        (work / f"e{i}").write_bytes(data)
        files.append((entry, work / f"e{i}"))
    write_archive(work / "out.zip", files)
    return (work / "out.zip").read_bytes()


def truncated(zip_bytes: bytes, tmp: Path) -> bytes:
    return zip_bytes[: len(zip_bytes) // 2]


def flipped(zip_bytes: bytes, tmp: Path) -> bytes:
    db = bytearray(_snapshot(zip_bytes, tmp))
    db[len(db) // 2] ^= 0x01
    return _archive([(f"/backup/{NAME}", bytes(db))], tmp)


def stripped(zip_bytes: bytes, tmp: Path) -> bytes:
    return _archive([(f"/backup/{NAME}", _snapshot(zip_bytes, tmp)[:-32])], tmp)


def wrong_entry(zip_bytes: bytes, tmp: Path) -> bytes:
    return _archive([("/backup/another-snapshot", _snapshot(zip_bytes, tmp))], tmp)


def bomb(zip_bytes: bytes, tmp: Path) -> bytes:
    """20 MiB of zeros deflated to ~20 KiB whose central directory claims almost 4 GiB."""
    path = tmp / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"/backup/{NAME}", bytes(20 << 20))
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 0xFFFFFFF0)  # uncompressed size
    return bytes(data)


def unrestorable(zip_bytes: bytes, tmp: Path) -> bytes:
    """Random bytes with a correct etcd hash trailer: the file checks out, bolt cannot open it."""
    body = os.urandom(512 * 64)
    return _archive([(f"/backup/{NAME}", body + hashlib.sha256(body).digest())], tmp)


BROKEN: dict[str, tuple[Callable[[bytes, Path], bytes], str]] = {
    "truncated zip": (truncated, "is not a readable zip archive"),
    "flipped byte": (flipped, "the sha256 etcd appended does not match the content"),
    "hash trailer stripped": (stripped, "has no etcd hash trailer"),
    "wrong entry name": (wrong_entry, f"entry /backup/{NAME} not found"),
    "zip bomb": (bomb, "zip bomb"),
    "not restorable": (unrestorable, "etcd cannot read the snapshot"),
}


# --- what must hold after every run ----------------------------------------------------------
def etcd_processes(root: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "cwd"]):
        with_root = str(root) in " ".join(proc.info["cmdline"] or []) or str(root) in (proc.info["cwd"] or "")
        if proc.info["name"] in ("etcd", "etcdctl") and with_root:
            found.append(proc)
    return found


def assert_nothing_left(root: Path, before: dict[str, bytes]) -> None:
    hidden = root / "backup" / ".sidekick"
    leftovers = [p.name for p in hidden.iterdir() if p.name.startswith("verify-")] if hidden.exists() else []
    assert leftovers == []
    assert etcd_processes(root) == []
    after = {p.name: p.read_bytes() for p in (root / "backup").iterdir() if p.is_file()}
    assert after == before  # /backup/N and /backup/N.zip untouched, nothing added beside them


def snapshot_of(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (root / "backup").iterdir() if p.is_file()}


def verify(root: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_sidekick(["rke-etcd-backup", "etcd-backup", "verify", "--name", NAME, *extra], root=root,
                        env={**ENV, **(env or {})}, timeout=180)


def trial_record(root: Path) -> dict[str, object]:
    return dict(json.loads((root / "backup/.sidekick/verified" / f"{NAME}.json").read_text()))


@pytest.fixture
def root(tmp_path: Path, etcd_ssl: RkeSsl) -> Path:
    return node_root(tmp_path, etcd_ssl)


# --- local ------------------------------------------------------------------------------------
def test_local_good_archive_verifies(root: Path, golden: bytes, tmp_path: Path) -> None:
    (root / "backup" / f"{NAME}.zip").write_bytes(golden)
    before = snapshot_of(root)
    facts = recorded(golden, tmp_path)
    assert facts.revision and facts.keys and facts.keys >= 25 and facts.total_keys and facts.total_keys > facts.keys

    done = verify(root)

    assert done.returncode == 0, done.stderr
    expected = f"verified {NAME} revision={facts.revision} keys={facts.keys} sha256={facts.sha256}"
    assert done.stdout.strip() == expected
    assert expected in last_line(done.stderr)
    assert_nothing_left(root, before)
    record = trial_record(root)
    assert record["ok"] is True and record["source"] == "local" and record["sha256"] == facts.sha256


@pytest.mark.parametrize("case", list(BROKEN))
def test_local_broken_archive_fails_with_its_cause(root: Path, golden: bytes, tmp_path: Path, case: str) -> None:
    make, cause = BROKEN[case]
    (root / "backup" / f"{NAME}.zip").write_bytes(make(golden, tmp_path))
    before = snapshot_of(root)

    done = verify(root)

    assert done.returncode == 1, done.stderr
    line = last_line(done.stderr)
    assert "level=fatal" in line and f"verify {NAME} failed (local)" in line and cause in line, line
    assert "Traceback" not in done.stderr
    assert_nothing_left(root, before)
    record = trial_record(root)
    assert record["ok"] is False and cause in str(record["cause"])


def test_sigterm_during_the_trial_stops_etcd_and_cleans_up(root: Path, golden: bytes) -> None:
    (root / "backup" / f"{NAME}.zip").write_bytes(golden)
    before = snapshot_of(root)
    env = {**clean_env(), "SIDEKICK_ROOT": str(root)}
    process = subprocess.Popen([str(SIDEKICK), "rke-etcd-backup", "etcd-backup", "verify", "--name", NAME], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(p.info["name"] == "etcd" for p in etcd_processes(root)) or process.poll() is not None,
                 timeout=60, what="the throwaway etcd member")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, err
    assert "interrupted by SIGTERM" in last_line(err)
    assert_nothing_left(root, before)


def test_kill_9_leaves_no_member_and_the_next_verify_cleans_up(root: Path, golden: bytes) -> None:
    (root / "backup" / f"{NAME}.zip").write_bytes(golden)
    before = snapshot_of(root)
    env = {**clean_env(), "SIDEKICK_ROOT": str(root)}
    process = subprocess.Popen([str(SIDEKICK), "rke-etcd-backup", "etcd-backup", "verify", "--name", NAME], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: any(p.info["name"] == "etcd" for p in etcd_processes(root)) or process.poll() is not None,
             timeout=60, what="the throwaway etcd member")
    process.kill()
    process.wait()
    wait_for(lambda: not etcd_processes(root), timeout=10, what="the member dying with its parent")
    assert [p.name for p in (root / "backup/.sidekick").iterdir() if p.name.startswith("verify-")]

    done = verify(root)

    assert done.returncode == 0, done.stderr
    assert "removed the work directory of an interrupted verify" in done.stderr
    assert_nothing_left(root, before)


# --- S3 -----------------------------------------------------------------------------------------
def s3_flags(s3: S3Server, bucket: str) -> list[str]:
    assert s3.ca_path is not None
    return rke_s3_flags(s3.endpoint, bucket, ca_pem=s3.ca_path.read_bytes(), folder="cluster-a")


def put(s3: S3Server, bucket: str, data: bytes, tmp: Path, **overrides: str) -> None:
    """As ``save`` uploads: archive-sha256 and the recorded facts as metadata."""
    metadata = {**recorded(data, tmp).to_metadata(), "archive-sha256": hashlib.sha256(data).hexdigest(), **overrides}
    s3.client().put_object(Bucket=bucket, Key=f"cluster-a/{NAME}.zip", Body=data, Metadata=metadata,
                           ContentType="application/zip")


def test_s3_good_archive_verifies(root: Path, golden: bytes, tmp_path: Path, s3_https: S3Server) -> None:
    bucket = s3_https.new_bucket()
    put(s3_https, bucket, golden, tmp_path)
    before = snapshot_of(root)

    done = verify(root, *s3_flags(s3_https, bucket))

    assert done.returncode == 0, done.stderr
    facts = recorded(golden, tmp_path)
    assert done.stdout.strip() == f"verified {NAME} revision={facts.revision} keys={facts.keys} sha256={facts.sha256}"
    assert "s3-metadata" in done.stderr
    assert_nothing_left(root, before)
    assert trial_record(root)["source"] == "s3"


S3_BROKEN = {**BROKEN, "S3 metadata disagrees": (lambda data, tmp: data, "the S3 metadata disagrees with the archive")}


@pytest.mark.parametrize("case", list(S3_BROKEN))
def test_s3_broken_archive_fails_with_its_cause(root: Path, golden: bytes, tmp_path: Path, s3_https: S3Server,
                                                case: str) -> None:
    make, cause = S3_BROKEN[case]
    bucket = s3_https.new_bucket()
    data = make(golden, tmp_path)
    if case == "S3 metadata disagrees":
        put(s3_https, bucket, data, tmp_path, **{"etcd-revision": "1"})
    else:
        put(s3_https, bucket, data, tmp_path)
    before = snapshot_of(root)

    done = verify(root, *s3_flags(s3_https, bucket))

    assert done.returncode == 1, done.stderr
    line = last_line(done.stderr)
    assert f"verify {NAME} failed (s3)" in line and cause in line, line
    assert_nothing_left(root, before)


def test_s3_archive_that_disagrees_with_its_archive_sha256(root: Path, golden: bytes, tmp_path: Path,
                                                           s3_https: S3Server) -> None:
    bucket = s3_https.new_bucket()
    put(s3_https, bucket, golden, tmp_path, **{"archive-sha256": "0" * 64})
    done = verify(root, *s3_flags(s3_https, bucket))
    assert done.returncode == 1
    assert "does not match its archive-sha256 metadata" in last_line(done.stderr)
    assert_nothing_left(root, {})


# --- a peer's serve -------------------------------------------------------------------------------
PEER_CASES: dict[str, tuple[Callable[[bytes, Path], bytes], str | None]] = {
    "good": (lambda data, tmp: data, None),
    "flipped byte": BROKEN["flipped byte"],
    "hash trailer stripped": BROKEN["hash trailer stripped"],
    "not restorable": BROKEN["not restorable"],
}


@pytest.mark.parametrize("case", list(PEER_CASES))
def test_peer_serve(case: str, tmp_path: Path, etcd_ssl: RkeSsl, golden: bytes,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    make, cause = PEER_CASES[case]
    serving = node_root(tmp_path / "peer", etcd_ssl)
    local = node_root(tmp_path / "local", etcd_ssl)
    (serving / "backup" / f"{NAME}.zip").write_bytes(make(golden, tmp_path))
    monkeypatch.setenv("SIDEKICK_ROOT", str(serving))
    ssl_dir = serving / "etc/kubernetes/ssl"
    with running_server(NAME, ssl_dir / "kube-ca.pem", ssl_dir / "kube-node.pem", ssl_dir / "kube-node-key.pem") as server:
        done = verify(local, "--local-endpoint", "127.0.0.1", *CERTS, env={"SIDEKICK_SERVE_PORT": str(server.port)})
    if cause is None:
        assert done.returncode == 0, done.stderr
        facts = recorded(golden, tmp_path)
        assert done.stdout.strip() == (f"verified {NAME} revision={facts.revision} keys={facts.keys} "
                                       f"sha256={facts.sha256}")
    else:
        assert done.returncode == 1, done.stderr
        line = last_line(done.stderr)
        assert f"verify {NAME} failed (peer)" in line and cause in line, line
    assert_nothing_left(local, {})


# --- rolling save --verify --------------------------------------------------------------------------
def test_rolling_save_verifies_each_tick(root: Path, etcd_server: EtcdServer) -> None:
    env = {**clean_env(), "SIDEKICK_ROOT": str(root), "SIDEKICK_RETRY_WAIT": "0",
           "SIDEKICK_METRICS_ADDRESS": "127.0.0.1:0"}
    argv = [str(SIDEKICK), "rke-etcd-backup", *rke_save_argv(etcd_server.endpoint, "ignored", "--creation=2s",
                                                              "--retention=1h", "--verify")]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    status = root / "backup/.sidekick/status.json"

    def verified_once() -> bool:
        assert process.poll() is None
        return status.exists() and json.loads(status.read_text())["stages"]["verify"]["last_success"] is not None

    try:
        wait_for(verified_once, timeout=90, what="a verified rolling snapshot")
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "msg=\"verified " in err
    records = list((root / "backup/.sidekick/verified").glob("*.json"))
    assert records and all(json.loads(p.read_text())["ok"] for p in records)
    assert_nothing_left(root, snapshot_of(root))



def test_save_uploads_the_facts_and_the_upload_verifies(root: Path, etcd_server: EtcdServer, s3_https: S3Server,
                                                        tmp_path: Path) -> None:
    """The real thing end to end: save --once to S3 records the facts as metadata; verify of
    the S3 copy, on a node without the local archive, checks them and restores."""
    bucket = s3_https.new_bucket()
    name = "c-verify-s3_2026-12-01T01:00:00Z"
    for i in range(3):
        etcd_server.put(f"/verify-s3/key-{i}", "value")
    saved = run_sidekick(["rke-etcd-backup", *rke_save_argv(etcd_server.endpoint, name, "--once",
                                                             *s3_flags(s3_https, bucket))], root=root, env=ENV)
    assert saved.returncode == 0, saved.stderr
    local = root / "backup" / f"{name}.zip"
    facts = recorded(local.read_bytes(), tmp_path)
    metadata = s3_https.client().head_object(Bucket=bucket, Key=f"cluster-a/{name}.zip")["Metadata"]
    assert SnapshotFacts.from_metadata(metadata) == facts and facts.revision and facts.keys
    local.unlink()

    done = run_sidekick(["rke-etcd-backup", "etcd-backup", "verify", "--name", name, *s3_flags(s3_https, bucket)],
                        root=root, env=ENV, timeout=180)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"verified {name} revision={facts.revision} keys={facts.keys} sha256={facts.sha256}"
    assert "checks=\"zip-crc32,manifest-sha256,s3-archive-sha256,s3-metadata," in done.stderr
    assert_nothing_left(root, {})


def test_snapshot_of_an_empty_etcd_verifies(root: Path, etcd_ssl: RkeSsl, tmp_path: Path) -> None:
    """No key at all: snapshot status says revision 0, a member starts at revision 1."""
    empty = EtcdServer(tmp_path / "empty-etcd", etcd_ssl).start()
    try:
        saved = run_sidekick(["rke-etcd-backup", *rke_save_argv(empty.endpoint, NAME, "--once")], root=root,
                             env={"SIDEKICK_RETRY_WAIT": "0"})
    finally:
        empty.stop()
    assert saved.returncode == 0, saved.stderr
    done = verify(root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"verified {NAME} revision=1 keys=0 ")


def test_a_bare_snapshot_file_verifies_from_a_copy(root: Path, golden: bytes, tmp_path: Path) -> None:
    """Older tools left /backup/<name> without an archive: verified from a copy, by etcd's trailer."""
    raw = root / "backup" / NAME
    raw.write_bytes(_snapshot(golden, tmp_path))
    before = snapshot_of(root)
    done = verify(root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"verified {NAME} revision={recorded(golden, tmp_path).revision} ")
    assert_nothing_left(root, before)
