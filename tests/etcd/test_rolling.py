"""Rolling mode (``etcd-rolling-snapshots``): ticks, the state file from the apiserver, local and
S3 retention, failed ticks, SIGTERM between steps."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidekick.etcd.clusterstate import StateError, fetch_state, load_kubeconfig, render_state
from tests.conftest import SIDEKICK
from tests.harness.env import clean_env
from tests.harness.etcd import EtcdServer
from tests.harness.etcd_backup import Apiserver, node_root, rke_s3_env, rke_s3_flags, rke_save_argv
from tests.harness.pki import CertificateAuthority, RkeSsl
from tests.harness.ports import free_port, wait_for
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.integration

STATE = {"desiredState": {"certificatesBundle": {"kube-ca": {"key": "-----BEGIN RSA PRIVATE KEY-----\nTOPSECRETSTATE\n"
                                                                   "-----END RSA PRIVATE KEY-----\n"}},
                          "rkeConfig": {"nodes": [{"address": "10.0.0.1"}]}},
         "currentState": {"marker": "state-secret-marker-7f3a"}}
OLD = "2020-01-01T00:00:00Z_etcd"


@pytest.fixture
def apiserver(tmp_path: Path, kube_ca: CertificateAuthority) -> Iterator[Apiserver]:
    server = Apiserver(kube_ca, tmp_path / "apiserver", state=STATE)
    (tmp_path / "apiserver").mkdir()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def root(tmp_path: Path, etcd_ssl: RkeSsl) -> Path:
    return node_root(tmp_path, etcd_ssl)


def start_rolling(root: Path, endpoint: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = clean_env()
    full_env.update({"SIDEKICK_ROOT": str(root), "SIDEKICK_RETRY_WAIT": "0", **(env or {})})
    argv = rke_save_argv(endpoint, "etcd-rolling-snapshots", "--creation=1s", *extra)
    return subprocess.Popen([str(SIDEKICK), "rke-etcd-backup", *argv], env=full_env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def rolling_zips(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root / "backup") if n.endswith("_etcd.zip") and n != f"{OLD}.zip")


def test_rolling_with_state_file_retention_and_s3(root: Path, etcd_server: EtcdServer, apiserver: Apiserver,
                                                   s3_https: S3Server) -> None:
    apiserver.write_kubeconfig(root)
    backup = root / "backup"
    for name in (f"{OLD}.zip", "rke_etcd_snapshot_2020-01-01T00:00:00Z.zip", "2020-01-01T00:00:00Z_keep"):
        (backup / name).write_bytes(b"old")
    (backup / "2020-01-01T00:00:00Z_dir").mkdir()
    (backup / "2020-01-01T00:00:00Z_keep").rename(backup / "unrelated.txt")
    bucket = s3_https.new_bucket()
    client = s3_https.client()
    for key in (f"f/{OLD}.zip", f"f/{OLD}", "f/rke_etcd_snapshot_2020-01-01T00:00:00Z.zip", f"{OLD}.zip",
                "f/2020-01-01T00:00:00Z_other.zip"):
        client.put_object(Bucket=bucket, Key=key, Body=b"old")
    assert s3_https.ca_path is not None
    flags = rke_s3_flags(s3_https.endpoint, bucket, ca_pem=s3_https.ca_path.read_bytes(), folder="f")

    proc = start_rolling(root, etcd_server.endpoint, "--retention=1h", *flags,
                         env={**rke_s3_env(ACCESS_KEY, SECRET_KEY), "RANCHER_DEBUG": "true"})
    try:
        wait_for(lambda: len(rolling_zips(root)) >= 2 and proc.poll() is None, timeout=60, what="two rolling snapshots")
        wait_for(lambda: len([k for k in keys(client, bucket) if k.startswith("f/20") and k.endswith("Z_etcd.zip")
                              and not k.startswith("f/2020")]) >= 2, timeout=60, what="two uploads")
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "stopped" in err.splitlines()[-1]

    names = rolling_zips(root)
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert all(n.startswith(today) for n in names)
    with zipfile.ZipFile(backup / names[0]) as zf:
        stem = names[0][: -len(".zip")]
        assert zf.namelist() == [f"/backup/{stem}", f"/etc/kubernetes/{stem}.rkestate"]
        state_text = zf.read(f"/etc/kubernetes/{stem}.rkestate").decode()
    assert state_text == json.dumps(STATE, indent=2)
    assert json.loads(state_text) == STATE
    assert not list((root / "etc/kubernetes").glob("*.rkestate"))  # archived, then removed

    left = sorted(os.listdir(backup))
    assert f"{OLD}.zip" not in left  # expired by name
    assert {"rke_etcd_snapshot_2020-01-01T00:00:00Z.zip", "unrelated.txt", "2020-01-01T00:00:00Z_dir"} <= set(left)
    assert not [n for n in left if n.startswith(".sidekick-tmp-")]

    remaining = keys(client, bucket)
    assert f"f/{OLD}.zip" not in remaining and f"f/{OLD}" not in remaining
    assert {"f/rke_etcd_snapshot_2020-01-01T00:00:00Z.zip", f"{OLD}.zip", "f/2020-01-01T00:00:00Z_other.zip"} <= set(remaining)

    assert apiserver.requests and all(r.endswith("/secrets/full-cluster-state") for r in apiserver.requests)
    assert all("system:node" in s for s in apiserver.client_subjects)
    for secret in ("TOPSECRETSTATE", "state-secret-marker-7f3a", ACCESS_KEY, SECRET_KEY):
        assert secret not in err


def keys(client: object, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)  # type: ignore[attr-defined]
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_failed_ticks_never_stop_the_loop(root: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    proc = start_rolling(root, dead, "--retention=1h", "--backup-retries=0")
    try:
        deadline = time.monotonic() + 30
        failures = 0
        lines: list[str] = []
        assert proc.stderr is not None
        while failures < 2 and time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            failures += "rolling snapshot failed" in line
        assert failures == 2, "".join(lines)
        assert proc.poll() is None
    finally:
        code, _ = stop(proc)
    assert code == 0
    # No apiserver kubeconfig on this node: a warning, then the snapshot is still attempted.
    assert "Error while trying to retrieve cluster state" in "".join(lines)
    assert [n for n in os.listdir(root / "backup") if n != ".sidekick"] == []  # only the run lock's directory


def test_sigterm_mid_snapshot_leaves_nothing_partial(root: Path, etcd_server: EtcdServer) -> None:
    proc = start_rolling(root, etcd_server.endpoint, "--retention=1h")
    try:
        wait_for(lambda: len(rolling_zips(root)) >= 1, timeout=60, what="a rolling snapshot")
    finally:
        code, err = stop(proc)
    assert code == 0, err
    for name in os.listdir(root / "backup"):
        if name == ".sidekick":  # the run lock's directory
            continue
        assert name.endswith("_etcd.zip"), name
        with zipfile.ZipFile(root / "backup" / name) as zf:
            assert zf.testzip() is None


# --- the state file on its own -----------------------------------------------------------
def test_state_from_secret_and_configmap_fallback(root: Path, apiserver: Apiserver) -> None:
    kubeconfig = apiserver.write_kubeconfig(root)
    os.environ["SIDEKICK_ROOT"] = str(root)
    try:
        assert json.loads(fetch_state(kubeconfig)) == STATE
        apiserver.as_configmap = True
        assert json.loads(fetch_state(kubeconfig)) == STATE
        assert apiserver.requests[-2:] == ["/api/v1/namespaces/kube-system/secrets/full-cluster-state",
                                           "/api/v1/namespaces/kube-system/configmaps/full-cluster-state"]
        apiserver.state = None
        with pytest.raises(StateError, match=r"not found|404"):
            fetch_state(kubeconfig)
    finally:
        del os.environ["SIDEKICK_ROOT"]


def test_kubeconfig_with_inline_data(tmp_path: Path, apiserver: Apiserver, etcd_ssl: RkeSsl) -> None:
    b64 = lambda p: base64.b64encode(p.read_bytes()).decode()  # noqa: E731
    path = tmp_path / "inline.yaml"
    path.write_text(
        f"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {apiserver.url}\n"
        f"    certificate-authority-data: {b64(etcd_ssl.cacert)}\n"
        f"users:\n- name: u\n  user:\n    client-certificate-data: {b64(etcd_ssl.node_cert)}\n"
        f"    client-key-data: {b64(etcd_ssl.node_key)}\n"
        "contexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n"
    )
    assert load_kubeconfig(path).server == apiserver.url
    assert json.loads(fetch_state(path)) == STATE


def test_render_state_is_two_space_json() -> None:
    assert render_state('{"a":{"b":[1,2]},"c":"é"}') == '{\n  "a": {\n    "b": [\n      1,\n      2\n    ]\n  },\n  "c": "é"\n}'.encode()
    with pytest.raises(StateError):
        render_state("{not json")


# --- SIGTERM in the middle of a long step ---------------------------------------------------
def test_stop_during_upload_aborts_it(tmp_path: Path, s3_http: S3Server) -> None:
    from sidekick.deadline import Stopped
    from sidekick.etcd.archive import write_archive
    from sidekick.etcd.options import Options
    from sidekick.etcd.s3 import S3Config, S3Store
    from sidekick.etcd.save import Saver, Snapshot
    from sidekick.host.proc import Runner
    from sidekick.host.signals import StopRequest

    raw = tmp_path / "raw"
    with open(raw, "wb") as out:
        for _ in range(40):
            out.write(os.urandom(1 << 20))
    archive = write_archive(tmp_path / "2024-10-04T12:00:00Z_etcd.zip", [("/backup/2024-10-04T12:00:00Z_etcd", raw)])
    bucket = s3_http.new_bucket()
    stop_flag = StopRequest()
    saver = Saver(Options(s3_bucket_name=bucket, retry_wait=0), Runner(), stop_flag)
    config = S3Config(endpoint=f"http://{s3_http.endpoint}", bucket=bucket, access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    with S3Store(config, stop=stop_flag) as store:
        real_upload = store.upload_file

        def upload_then_sigterm(path: Path, key: str, *, metadata: dict[str, str], on_bytes: object) -> None:
            sent = [0]

            def counting(count: int) -> None:
                sent[0] += count
                if sent[0] > 20 << 20:
                    stop_flag.set()  # what the SIGTERM handler does
                on_bytes(count)  # type: ignore[operator]

            real_upload(path, key, metadata=metadata, on_bytes=counting)

        store.upload_file = upload_then_sigterm  # type: ignore[method-assign]
        started = time.monotonic()
        with pytest.raises(Stopped):
            saver.upload(store, Snapshot("2024-10-04T12:00:00Z_etcd", archive))
        assert time.monotonic() - started < 30
    client = s3_http.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


# --- S3 catch-up ------------------------------------------------------------------------------
def test_catch_up_after_an_s3_outage_then_nothing_more(root: Path, etcd_server: EtcdServer, s3_http: S3Server) -> None:
    import hashlib
    import threading

    from tests.harness.faults import Fault, FaultyHttp

    bucket = s3_http.new_bucket()
    down = threading.Event()
    down.set()
    proxy = FaultyHttp(s3_http.port, lambda method, path: Fault(status=503) if down.is_set() else None)
    lines: list[str] = []
    proc = start_rolling(root, etcd_server.endpoint, "--retention=1h", "--s3-catch-up=10",
                         *rke_s3_flags(proxy.endpoint, bucket),
                         env={**rke_s3_env(ACCESS_KEY, SECRET_KEY), "SIDEKICK_BUDGET_SCALE": "0.02"})
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()

    def ends_of_ticks() -> int:
        return sum("S3 snapshots" in line for line in list(lines))  # "no expired"/"deleted expired"

    try:
        wait_for(lambda: len(rolling_zips(root)) >= 3, timeout=90, what="three snapshots while S3 is down")
        assert ends_of_ticks() == 0 and "failed to upload etcd snapshot file" in "".join(lines)
        down.clear()  # S3 is back
        wait_for(lambda: ends_of_ticks() >= 1, timeout=60, what="a tick with S3 back")
        local = rolling_zips(root)
        stored = {o["Key"] for o in s3_http.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
        assert set(local) <= stored  # every snapshot of the outage caught up, in one tick
        for name in local:
            head = s3_http.client().head_object(Bucket=bucket, Key=name)
            assert head["Metadata"]["archive-sha256"] == hashlib.sha256((root / "backup" / name).read_bytes()).hexdigest()
        before = dict(proxy.requests)
        wait_for(lambda: ends_of_ticks() >= 2, timeout=60, what="the following tick")
        after = dict(proxy.requests)
    finally:
        code, _ = stop(proc)
        proxy.close()
    assert code == 0
    # The following tick: its own snapshot only (HeadBucket, HeadObject, one PUT), and listings.
    assert after.get("PUT", 0) - before.get("PUT", 0) == 1, (before, after)
    assert after.get("HEAD", 0) - before.get("HEAD", 0) == 2, (before, after)
    assert "caught up" in "".join(lines)
