"""Client-side age encryption: the streams and names (unit), then the real executable through
moto S3 and through ``serve``/``download``, checked with Debian's ``age``."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest

from sidekick.deadline import Stopped
from sidekick.errors import UsageError
from sidekick.etcd import crypto, retention
from sidekick.etcd.archive import write_archive
from sidekick.host.signals import StopRequest
from sidekick.log import redact
from tests.conftest import SIDEKICK, last_line, run_sidekick
from tests.harness.env import clean_env
from tests.harness.etcd import EtcdServer
from tests.harness.etcd_backup import node_root, rke_s3_env, rke_s3_flags, rke_save_argv
from tests.harness.pki import RkeSsl
from tests.harness.ports import free_port, port_open, wait_for
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

NAME = "c-abcde-rs-x7k2p_2024-10-04T12:00:00Z"
AGE_MAGIC = b"age-encryption.org/v1\n"
KEY_PATH = "/etc/sidekick/age.key"
CERTS = ["--cacert", "/etc/kubernetes/ssl/kube-ca.pem", "--cert", "/etc/kubernetes/ssl/kube-node.pem",
         "--key", "/etc/kubernetes/ssl/kube-node-key.pem"]


# --- unit --------------------------------------------------------------------------------
def keypair() -> tuple[object, str, str]:
    identity = pyrage.x25519.Identity.generate()
    return identity, str(identity), str(identity.to_public())


def test_recipients_and_identities_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    _, secret, public = keypair()
    _, _, other = keypair()
    (tmp_path / "recipients").write_text(f"# ops team\n{public}\n\n{other}\n")
    (tmp_path / "key").write_text(f"# created: today\n# public key: {public}\n{secret}\n")
    age = crypto.AgeSettings.load(recipients_file="/recipients", identity_file="/key")
    assert len(age.recipients) == 2 and len(age.identities) == 1 and age.encrypts
    assert secret not in redact(f"oops {secret}") and secret not in repr(age)
    assert len(crypto.AgeSettings.load(recipients=f"{public}, {other}").recipients) == 2
    with pytest.raises(UsageError, match="is not an age recipient"):
        crypto.AgeSettings.load(recipients="age1notakey")
    (tmp_path / "bad").write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    with pytest.raises(UsageError, match="/bad: a line is not a valid age identity") as err:
        crypto.AgeSettings.load(identity_file="/bad")
    assert "NOTAKEY" not in str(err.value)
    with pytest.raises(UsageError, match="cannot read the age identity file /absent"):
        crypto.AgeSettings.load(identity_file="/absent")
    with pytest.raises(UsageError, match="needs age recipients"):
        crypto.AgeSettings.load(encrypt_local=True)
    with pytest.raises(crypto.CryptoError, match="is encrypted with age: give its identity file"):
        crypto.AgeSettings().require_identities("snapshot x")


def test_stream_round_trip_and_failures() -> None:
    identity, _, _ = keypair()
    stranger, _, _ = keypair()
    plain = os.urandom(300_000)
    sealed = io.BytesIO()
    digest = crypto.encrypt_stream(io.BytesIO(plain), sealed, [identity.to_public()])  # type: ignore[attr-defined]
    assert digest == hashlib.sha256(plain).hexdigest()
    data = sealed.getvalue()
    assert data.startswith(AGE_MAGIC) and plain[:64] not in data
    out = io.BytesIO()
    assert crypto.decrypt_stream(io.BytesIO(data), out, [identity], what="x") == (digest, len(plain))
    assert out.getvalue() == plain
    with pytest.raises(crypto.CryptoError, match="no identity in the age identity file matches"):
        crypto.decrypt_stream(io.BytesIO(data), io.BytesIO(), [stranger], what="x")
    with pytest.raises(crypto.CryptoError, match="not a valid age file"):
        crypto.decrypt_stream(io.BytesIO(b"PK\x03\x04" + plain), io.BytesIO(), [identity], what="x")
    with pytest.raises(crypto.CryptoError, match="truncated or tampered"):
        crypto.decrypt_stream(io.BytesIO(data[:-1000]), io.BytesIO(), [identity], what="x")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    with pytest.raises(crypto.CryptoError, match="truncated or tampered"):
        crypto.decrypt_stream(io.BytesIO(bytes(flipped)), io.BytesIO(), [identity], what="x")


def test_a_failed_decryption_writes_nothing(tmp_path: Path) -> None:
    identity, _, _ = keypair()
    stranger, _, _ = keypair()
    (tmp_path / "in").write_bytes(os.urandom(200_000))
    crypto.encrypt_file(tmp_path / "in", tmp_path / "s.zip.age", [identity.to_public()])  # type: ignore[attr-defined]
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt_file(tmp_path / "s.zip.age", tmp_path / "s.zip", [stranger], what="s.zip.age")
    with pytest.raises(crypto.CryptoError, match="does not match its archive-sha256"):
        crypto.decrypt_file(tmp_path / "s.zip.age", tmp_path / "s.zip", [identity], what="s", expected_sha256="0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "s.zip.age"]
    assert oct((tmp_path / "s.zip.age").stat().st_mode & 0o777) == "0o600"


def test_a_stop_interrupts_encryption(tmp_path: Path) -> None:
    identity, _, _ = keypair()
    (tmp_path / "in").write_bytes(os.urandom(1 << 20))
    stop = StopRequest()
    stop.request("SIGTERM")
    with pytest.raises(Stopped, match="SIGTERM"):
        crypto.encrypt_file(tmp_path / "in", tmp_path / "out.age", [identity.to_public()], stop=stop)  # type: ignore[attr-defined]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_the_encrypted_name_is_the_same_snapshot() -> None:
    assert crypto.is_encrypted_archive("f/x.zip.age") and not crypto.is_encrypted_archive("f/x.age")
    tick = dt.datetime(2024, 10, 4, 12, 0, tzinfo=dt.UTC)
    old, new = "2024-10-01T00:00:00Z_etcd", "2024-10-04T11:00:00Z_etcd"
    keys = [f"f/{old}.zip.age", f"f/{old}.zip", f"f/{new}.zip.age", f"f/{old}.age", f"f/{old}.zip.age.bak"]
    assert retention.s3_expired(keys, folder="f", tick=tick, retention=dt.timedelta(hours=24)) == \
        [f"f/{old}.zip.age", f"f/{old}.zip"]
    assert retention.s3_snapshot_keys(["f/snap", "f/snap.zip", "f/snap.zip.age", "f/snap1.zip.age"],
                                      prefix="f/snap") == ["f/snap", "f/snap.zip", "f/snap.zip.age"]
    name = "c-abcde-rl-x7k2p_2024-10-04T12:00:00Z"
    files = [retention.LocalFile(f"{name}.zip.age", tick - dt.timedelta(days=9))]
    assert retention.rancher_expired(files, name=name, now=tick, retention=dt.timedelta(hours=1)) == []


# --- the real executable ------------------------------------------------------------------
def age_keygen(root: Path) -> tuple[str, str]:
    """``age-keygen`` (Debian's) into ``root/etc/sidekick/age.key``: (secret line, public key)."""
    path = root / KEY_PATH.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    text = path.read_text()
    secret = next(line for line in text.splitlines() if line.startswith("AGE-SECRET-KEY-"))
    public = next(line.split(": ")[1] for line in text.splitlines() if line.startswith("# public key: "))
    return secret, public


def age_decrypt(data: bytes, key: Path) -> bytes:
    return subprocess.run(["age", "-d", "-i", str(key)], input=data, capture_output=True, check=True).stdout


def listing(directory: Path) -> list[str]:
    """What RKE sees in /backup (sidekick's own state lives in the dot-directory .sidekick)."""
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def s3_flags(s3: S3Server, bucket: str, folder: str = "") -> list[str]:
    assert s3.ca_path is not None
    return rke_s3_flags(s3.endpoint, bucket, ca_pem=s3.ca_path.read_bytes(), folder=folder)


def with_state(root: Path, name: str = NAME) -> bytes:
    state = b'{"desiredState": {"certificatesBundle": {"kube-ca": {"key": "-----BEGIN RSA PRIVATE KEY-----"}}}}'
    (root / "etc/kubernetes").mkdir(parents=True, exist_ok=True)
    (root / f"etc/kubernetes/{name}.rkestate").write_bytes(state)
    return state


ENV = {**rke_s3_env(ACCESS_KEY, SECRET_KEY), "SIDEKICK_RETRY_WAIT": "0.15", "RANCHER_DEBUG": "true"}


@pytest.mark.integration
def test_encrypted_save_to_s3_then_download_and_extract(tmp_path: Path, etcd_ssl: RkeSsl, etcd_server: EtcdServer,
                                                        s3_https: S3Server) -> None:
    bucket = s3_https.new_bucket()
    saver = node_root(tmp_path / "saver", etcd_ssl)
    secret, public = age_keygen(saver)
    state = with_state(saver)
    etcd_server.put("/registry/secrets/kube-system/encrypted", "top-secret-value")
    saved = run_sidekick(["rke-etcd-backup", *rke_save_argv(etcd_server.endpoint, NAME, "--once",
                                                             *s3_flags(s3_https, bucket, "cluster-a"))],
                         root=saver, env={**ENV, "SIDEKICK_AGE_RECIPIENTS": public})
    assert saved.returncode == 0, saved.stderr
    local = saver / "backup" / f"{NAME}.zip"
    assert listing(saver / "backup") == [f"{NAME}.zip"]  # plain locally, no ciphertext left
    assert zipfile.is_zipfile(local)

    client = s3_https.client()
    key = f"cluster-a/{NAME}.zip.age"
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["Metadata"]["sidekick-encryption"] == "age"
    assert head["Metadata"]["archive-sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body.startswith(AGE_MAGIC) and not zipfile.is_zipfile(io.BytesIO(body))
    assert b"top-secret-value" not in body and state not in body
    assert age_decrypt(body, saver / KEY_PATH.lstrip("/")) == local.read_bytes()  # Debian's age agrees

    restorer = node_root(tmp_path / "restorer", etcd_ssl)
    (restorer / "etc/sidekick").mkdir(parents=True)
    (restorer / "etc/sidekick/age.key").write_bytes((saver / KEY_PATH.lstrip("/")).read_bytes())
    done = run_sidekick(["rke-etcd-backup", "etcd-backup", "download", "--name", NAME,
                         *s3_flags(s3_https, bucket, "cluster-a")],
                        root=restorer, env={**ENV, "SIDEKICK_AGE_IDENTITY_FILE": KEY_PATH})
    assert done.returncode == 0, done.stderr
    assert listing(restorer / "backup") == [NAME, f"{NAME}.zip"]  # where RKE looks
    assert (restorer / "backup" / f"{NAME}.zip").read_bytes() == local.read_bytes()
    with zipfile.ZipFile(local) as zf:
        assert (restorer / "backup" / NAME).read_bytes() == zf.read(f"/backup/{NAME}")

    statefile = run_sidekick(["rke-etcd-backup", "etcd-backup", "extractstatefile", "--name", NAME,
                              "--age-identity-file", KEY_PATH, *s3_flags(s3_https, bucket, "cluster-a")],
                             root=restorer, env=ENV)
    assert statefile.returncode == 0, statefile.stderr
    assert (restorer / "tmp/cluster.rkestate").read_bytes() == state
    for run in (saved, done, statefile):  # debug on: no key material anywhere
        assert "debug" in run.stderr
        assert secret not in run.stderr and secret.lower() not in run.stderr.lower()
        assert "AGE-SECRET-KEY" not in run.stderr.upper()


@pytest.fixture
def made_by_age(tmp_path: Path, s3_https: S3Server) -> tuple[str, Path, bytes, Path]:
    """An archive encrypted by Debian's ``age -r`` and uploaded as ``<name>.zip.age`` without
    sidekick's metadata: (bucket, the plain zip, the db, the node root with the key)."""
    work = tmp_path / "work"
    work.mkdir()
    db = os.urandom(2 << 20)
    (work / NAME).write_bytes(db)
    plain = work / f"{NAME}.zip"
    write_archive(plain, [(f"/backup/{NAME}", work / NAME)])
    root = tmp_path / "restorer" / "node"
    (root / "backup").mkdir(parents=True)
    _, public = age_keygen(root)
    subprocess.run(["age", "-r", public, "-o", str(work / "sealed"), str(plain)], check=True)
    bucket = s3_https.new_bucket()
    s3_https.client().put_object(Bucket=bucket, Key=f"{NAME}.zip.age", Body=(work / "sealed").read_bytes())
    return bucket, plain, db, root


@pytest.mark.integration
def test_sidekick_decrypts_what_age_made(made_by_age: tuple[str, Path, bytes, Path], s3_https: S3Server) -> None:
    bucket, plain, db, root = made_by_age
    done = run_sidekick(["rke-etcd-backup", "etcd-backup", "download", "--name", NAME, *s3_flags(s3_https, bucket)],
                        root=root, env={**ENV, "SIDEKICK_AGE_IDENTITY_FILE": KEY_PATH})
    assert done.returncode == 0, done.stderr
    assert (root / "backup" / f"{NAME}.zip").read_bytes() == plain.read_bytes()
    assert (root / "backup" / NAME).read_bytes() == db


@pytest.mark.integration
def test_wrong_or_missing_identity_is_one_line_and_writes_nothing(
        made_by_age: tuple[str, Path, bytes, Path], s3_https: S3Server, tmp_path: Path) -> None:
    bucket, _, _, root = made_by_age
    wrong = tmp_path / "wrong" / "node"
    wrong_secret, _ = age_keygen(wrong)
    (root / "etc/sidekick/wrong.key").write_bytes((wrong / KEY_PATH.lstrip("/")).read_bytes())
    argv = ["rke-etcd-backup", "etcd-backup", "download", "--name", NAME, *s3_flags(s3_https, bucket)]
    bad = run_sidekick(argv, root=root, env={**ENV, "SIDEKICK_AGE_IDENTITY_FILE": "/etc/sidekick/wrong.key"})
    assert bad.returncode != 0
    assert "level=fatal" in last_line(bad.stderr) and "no identity in the age identity file matches" in \
        last_line(bad.stderr)
    assert bad.stderr.count("level=fatal") == 1 and "Traceback" not in bad.stderr
    assert wrong_secret not in bad.stderr
    missing = run_sidekick(argv, root=root, env=ENV)
    assert missing.returncode != 0
    assert "is encrypted with age: give its identity file" in last_line(missing.stderr)
    assert listing(root / "backup") == []


class Serving:
    """``serve`` as RKE starts it, with an identity for the encrypted local archive."""

    def __init__(self, root: Path, port: int) -> None:
        env = clean_env()
        env.update(SIDEKICK_ROOT=str(root), SIDEKICK_SERVE_ADDRESS="127.0.0.1", SIDEKICK_SERVE_PORT=str(port),
                   SIDEKICK_AGE_IDENTITY_FILE=KEY_PATH, RANCHER_DEBUG="true")
        self.port = port
        self.process = subprocess.Popen([str(SIDEKICK), "rke-etcd-backup", "etcd-backup", "serve", "--name", NAME,
                                         *CERTS], env=env, stderr=subprocess.PIPE, text=True)

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {self.process.stderr.read() if self.process.stderr else ''}")
            return port_open(self.port)

        wait_for(ready, timeout=60, what="serve listening")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
        _, err = self.process.communicate(timeout=15)
        return err


@pytest.fixture
def sealed_node(tmp_path: Path, etcd_ssl: RkeSsl, etcd_server: EtcdServer) -> Iterator[tuple[Path, str, bytes]]:
    """A node that saved with ``--age-encrypt-local``: (root, secret key line, state)."""
    root = node_root(tmp_path / "source", etcd_ssl)
    secret, public = age_keygen(root)
    state = with_state(root)
    etcd_server.put("/registry/secrets/kube-system/local", "local-secret")
    saved = run_sidekick(["rke-etcd-backup", *rke_save_argv(etcd_server.endpoint, NAME, "--once",
                                                             "--age-encrypt-local", "--age-recipient", public)],
                         root=root, env=ENV)
    assert saved.returncode == 0, saved.stderr
    assert secret not in saved.stderr
    yield root, secret, state


@pytest.mark.integration
def test_encrypted_local_archive_serves_peers_and_gives_the_state(
        sealed_node: tuple[Path, str, bytes], tmp_path: Path, etcd_ssl: RkeSsl) -> None:
    root, secret, state = sealed_node
    sealed = root / "backup" / f"{NAME}.zip.age"
    assert listing(root / "backup") == [sealed.name]  # no plain zip on disk
    plain = age_decrypt(sealed.read_bytes(), root / KEY_PATH.lstrip("/"))
    with zipfile.ZipFile(io.BytesIO(plain)) as zf:
        db = zf.read(f"/backup/{NAME}")

    statefile = run_sidekick(["rke-etcd-backup", "etcd-backup", "extractstatefile", "--name", NAME],
                             root=root, env={**ENV, "SIDEKICK_AGE_IDENTITY_FILE": KEY_PATH})
    assert statefile.returncode == 0, statefile.stderr
    assert (root / "tmp/cluster.rkestate").read_bytes() == state

    server = Serving(root, free_port())
    try:
        peer = node_root(tmp_path / "peer", etcd_ssl)
        done = run_sidekick(["rke-etcd-backup", "etcd-backup", "download", "--name", NAME,
                             "--local-endpoint", "127.0.0.1", *CERTS],
                            root=peer, env={"SIDEKICK_SERVE_PORT": str(server.port)})
        assert done.returncode == 0, done.stderr
        assert (peer / "backup" / NAME).read_bytes() == db
    finally:
        err = server.stop()
    assert "snapshot sent" in err and secret not in err
    # the serving node keeps its encrypted archive and the extracted db only
    assert listing(root / "backup") == sorted([NAME, sealed.name])


@pytest.mark.integration
def test_catch_up_uploads_what_s3_missed_encrypted(tmp_path: Path, s3_http: S3Server) -> None:
    """Plain local archives go up as ``.zip.age`` with the plaintext's digest; a local
    ``.zip.age`` goes up as it is; a second run finds everything there and uploads nothing."""
    from sidekick.etcd.budgets import Budgets
    from sidekick.etcd.catchup import catch_up
    from sidekick.etcd.s3 import S3Config, S3Store

    identity, _, _ = keypair()
    age = crypto.AgeSettings(recipients=(identity.to_public(),))  # type: ignore[attr-defined]
    backup = tmp_path / "backup"
    backup.mkdir()
    names = ["2024-10-04T11:00:00Z_etcd", "2024-10-04T11:05:00Z_etcd"]
    for name in names:
        (tmp_path / name).write_bytes(os.urandom(100_000))
        write_archive(backup / f"{name}.zip", [(f"/backup/{name}", tmp_path / name)])
    sealed = backup / "2024-10-04T11:10:00Z_etcd.zip.age"
    crypto.encrypt_file(backup / f"{names[0]}.zip", sealed, age.recipients)
    bucket = s3_http.new_bucket()
    config = S3Config(endpoint=s3_http.url, bucket=bucket, folder="f", access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    with S3Store(config, budgets=Budgets(retry_wait=0)) as store:
        assert catch_up(store, backup, limit=10, age=age) == 3
        assert catch_up(store, backup, limit=10, age=age) == 0
    client = s3_http.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"f/{names[0]}.zip.age", f"f/{names[1]}.zip.age", f"f/{sealed.name}"]
    for name in names:
        head = client.head_object(Bucket=bucket, Key=f"f/{name}.zip.age")
        plain = (backup / f"{name}.zip").read_bytes()
        assert head["Metadata"]["archive-sha256"] == hashlib.sha256(plain).hexdigest()
        body = client.get_object(Bucket=bucket, Key=f"f/{name}.zip.age")["Body"].read()
        out = io.BytesIO()
        crypto.decrypt_stream(io.BytesIO(body), out, [identity], what=name)
        assert out.getvalue() == plain
    assert client.get_object(Bucket=bucket, Key=f"f/{sealed.name}")["Body"].read() == sealed.read_bytes()
    assert listing(backup) == sorted([f"{n}.zip" for n in names] + [sealed.name])  # no temp left


@pytest.mark.integration
def test_verify_restores_encrypted_snapshots(tmp_path: Path, etcd_ssl: RkeSsl, etcd_server: EtcdServer,
                                             s3_https: S3Server) -> None:
    """``verify`` of a ``.zip.age`` in S3 and of a local ``--age-encrypt-local`` one: decrypted
    with the identity, restored for real; without the identity, one line."""
    bucket = s3_https.new_bucket()
    node = node_root(tmp_path / "node", etcd_ssl)
    secret, public = age_keygen(node)
    saved = run_sidekick(["rke-etcd-backup", *rke_save_argv(etcd_server.endpoint, NAME, "--once",
                                                             "--age-encrypt-local", *s3_flags(s3_https, bucket))],
                         root=node, env={**ENV, "SIDEKICK_AGE_RECIPIENTS": public})
    assert saved.returncode == 0, saved.stderr
    assert listing(node / "backup") == [f"{NAME}.zip.age"]
    for source in ([], s3_flags(s3_https, bucket)):
        done = run_sidekick(["rke-etcd-backup", "etcd-backup", "verify", "--name", NAME, *source,
                             "--age-identity-file", KEY_PATH], root=node, env=ENV)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"verified {NAME} revision=")
        assert secret not in done.stderr
        refused = run_sidekick(["rke-etcd-backup", "etcd-backup", "verify", "--name", NAME, *source],
                               root=node, env=ENV)
        assert refused.returncode == 1 and "give its identity file" in last_line(refused.stderr), refused.stderr
    assert listing(node / "backup") == [f"{NAME}.zip.age"]  # nothing left behind


@pytest.mark.integration
def test_list_shows_an_encrypted_snapshot_once(tmp_path: Path, etcd_ssl: RkeSsl, etcd_server: EtcdServer,
                                              s3_https: S3Server) -> None:
    import json

    bucket = s3_https.new_bucket()
    node = node_root(tmp_path / "node", etcd_ssl)
    _, public = age_keygen(node)
    saved = run_sidekick(["rke-etcd-backup", *rke_save_argv(etcd_server.endpoint, NAME, "--once",
                                                             "--age-encrypt-local", *s3_flags(s3_https, bucket))],
                         root=node, env={**ENV, "SIDEKICK_AGE_RECIPIENTS": public})
    assert saved.returncode == 0, saved.stderr
    done = run_sidekick(["rke-etcd-backup", "etcd-backup", "list", "--output=json", *s3_flags(s3_https, bucket)],
                        root=node, env=ENV)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["snapshots"]
    assert [(r["name"], r["where"], r["local"]["format"]) for r in rows] == [(NAME, "both", "zip.age")]
    assert rows[0]["s3"]["key"] == f"{NAME}.zip.age"
