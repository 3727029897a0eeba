"""The S3 layer: settings decoding (unit) and listing/retention/download against moto."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sidekick.errors import SidekickError
from sidekick.etcd.budgets import Budgets
from sidekick.etcd.options import Options
from sidekick.etcd.retention import rolling_name
from sidekick.etcd.s3 import (
    PART_SIZE,
    S3Config,
    S3Error,
    S3Store,
    addressing_style,
    decode_maybe_base64,
    download_snapshot,
    endpoint_url,
    load_endpoint_ca,
    part_ranges,
    stripped_ext,
)
from sidekick.etcd.save import Saver
from sidekick.host.proc import Runner
from sidekick.host.signals import StopRequest
from sidekick.log import redact
from tests.harness.faults import Fault, FaultyHttp
from tests.harness.pki import CertificateAuthority
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server


# --- unit ------------------------------------------------------------------------------
def test_keys_are_decoded_when_they_are_base64() -> None:
    assert decode_maybe_base64(base64.b64encode(b"AKIAEXAMPLE").decode()) == "AKIAEXAMPLE"
    assert decode_maybe_base64("not base64!") == "not base64!"
    assert decode_maybe_base64("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY") != ""  # raw keys survive when invalid
    assert decode_maybe_base64("") == ""
    # As the original: a raw key that happens to be valid base64 of UTF-8 is decoded.
    assert decode_maybe_base64("YWJj") == "abc"


def test_decoded_keys_become_log_secrets() -> None:
    opts = Options(s3_access_key=base64.b64encode(b"decoded-access-key").decode(),
                   s3_secret_key=base64.b64encode(b"decoded-secret-key").decode(), s3_bucket_name="b")
    config = S3Config.from_options(opts)
    assert config.access_key == "decoded-access-key"
    assert "decoded-secret-key" not in redact("oops decoded-secret-key leaked")
    assert "decoded-secret-key" not in repr(config)


class _Sent(Exception):
    """Raised by a ``before-send`` hook: the request was built and signed, and goes no further."""


def signed_requests(session: Any, region: str, endpoint: str, style: str) -> list[tuple[str, str, str, list[str]]]:
    """What an S3 client of ``session`` would send for our operations: method, URL, credential
    scope and header names (minus the ones that change with time), stopped before the network."""
    from botocore.config import Config

    client = session.create_client("s3", endpoint_url=endpoint, region_name=region, aws_access_key_id="AK",
                                   aws_secret_access_key="SK", config=Config(s3={"addressing_style": style}))
    sent: list[tuple[str, str, str, list[str]]] = []

    def stop(request: Any, **_kwargs: Any) -> None:
        auth = request.headers.get("Authorization", b"").decode()
        scope = auth.split("Credential=", 1)[-1].split(",", 1)[0]
        names = sorted(k for k in request.headers if k.lower() not in ("x-amz-date", "authorization", "user-agent",
                                                                        "amz-sdk-invocation-id", "amz-sdk-request"))
        sent.append((request.method, request.url, scope, names))
        raise _Sent

    client.meta.events.register("before-send", stop)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("head_bucket", {}), ("list_objects_v2", {"Prefix": "f/"}), ("head_object", {"Key": "f/s.zip"}),
        ("get_object", {"Key": "f/s.zip", "Range": "bytes=0-9"}), ("put_object", {"Key": "f/s.zip", "Body": b"x"}),
        ("delete_objects", {"Delete": {"Objects": [{"Key": "f/s.zip"}]}})]
    for operation, params in calls:
        with pytest.raises(_Sent):
            getattr(client, operation)(Bucket="bkt", **params)
    client.close()
    return sent


def test_our_model_loader_makes_the_client_botocore_makes() -> None:
    """Plain dicts and the trimmed endpoint table (:func:`sidekick.etcd.s3._data_loader`) change
    no request: same URL, signing scope and headers as a stock botocore session's client."""
    import botocore.session

    from sidekick.etcd.s3 import ENDPOINT_PREFIXES, _data_loader

    ours = botocore.session.get_session()
    ours.register_component("data_loader", _data_loader(None))
    stock = botocore.session.get_session()
    for region in ("us-east-1", "us-west-2", "cn-north-1", "us-gov-west-1", "aws-global", "minio-region"):
        for endpoint in ("https://s3.amazonaws.com", "https://s3.eu-west-1.amazonaws.com",
                         "https://s3.cn-north-1.amazonaws.com.cn", "https://minio.local:9000",
                         "https://oss-cn-hangzhou.aliyuncs.com"):
            for style in ("path", "virtual", "auto"):
                assert signed_requests(ours, region, endpoint, style) == signed_requests(stock, region, endpoint, style)
    table = ours.get_component("data_loader").load_data("endpoints")
    assert {name for partition in table["partitions"] for name in partition["services"]} <= ENDPOINT_PREFIXES
    assert type(table) is dict


def test_endpoint_scheme_and_addressing() -> None:
    assert endpoint_url("minio.local:9000") == "https://minio.local:9000"
    assert endpoint_url("") == "https://s3.amazonaws.com"
    assert endpoint_url("http://127.0.0.1:9000/") == "http://127.0.0.1:9000"
    assert addressing_style("oss-cn-hangzhou.aliyuncs.com") == "virtual"
    assert addressing_style("s3.eu-west-1.amazonaws.com") == "auto"
    assert addressing_style("10.0.0.1:9000") == "path"
    assert addressing_style("minio.local") == "path"


def test_endpoint_ca_forms(tmp_path: Path) -> None:
    pem = CertificateAuthority("s3-unit-ca").cert_pem
    assert load_endpoint_ca(base64.b64encode(pem).decode()) == pem
    path = tmp_path / "ca.pem"
    path.write_bytes(pem)
    assert load_endpoint_ca(str(path)) == pem
    with pytest.raises(S3Error, match="not a valid x509 certificate"):
        load_endpoint_ca(base64.b64encode(b"hello").decode())
    with pytest.raises(S3Error, match="neither base64 PEM nor a readable file"):
        load_endpoint_ca(str(tmp_path / "missing.pem"))


def test_an_endpoint_that_is_not_a_url_is_one_s3_error() -> None:
    with pytest.raises(S3Error, match="cannot set up the S3 client"):
        S3Store(S3Config(endpoint="bad host:99999", bucket="b", access_key="a", secret_key="s"))


def test_folder_keys_and_extension_stripping() -> None:
    assert S3Config(endpoint="e", bucket="b", folder="f").key("x.zip") == "f/x.zip"
    assert S3Config(endpoint="e", bucket="b").key("x.zip") == "x.zip"
    assert stripped_ext("f/snap.zip") == "f/snap"
    assert stripped_ext("f.d/snap") == "f.d/snap"
    assert stripped_ext("a.b.zip") == "a.b"


# --- against moto ----------------------------------------------------------------------
def store_for(server: S3Server, bucket: str, folder: str = "") -> S3Store:
    config = S3Config(endpoint=f"http://{server.endpoint}", bucket=bucket, folder=folder,
                      access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    return S3Store(config, budgets=Budgets(retry_wait=0))


def test_download_parts_cover_the_object_once() -> None:
    assert part_ranges(0) == [] and part_ranges(PART_SIZE) == []  # one plain GET
    assert part_ranges(2 * PART_SIZE + 1) == [(0, PART_SIZE - 1), (PART_SIZE, 2 * PART_SIZE - 1),
                                              (2 * PART_SIZE, 2 * PART_SIZE)]
    for size in (PART_SIZE + 1, 3 * PART_SIZE, 5 * PART_SIZE - 7):
        spans = part_ranges(size)
        assert spans[0][0] == 0 and spans[-1][1] == size - 1
        assert all(later[0] == earlier[1] + 1 for earlier, later in itertools.pairwise(spans))
        assert all(0 < last - first + 1 <= PART_SIZE for first, last in spans)


def request_params(store: S3Store, operation: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def hook(params: dict[str, Any], **_kwargs: Any) -> None:
        seen.append(dict(params))

    store.client.meta.events.register(f"before-parameter-build.s3.{operation}", hook)
    return seen


def count_calls(store: S3Store, operation: str) -> list[int]:
    calls: list[int] = []

    def hook(**_kwargs: Any) -> None:
        calls.append(1)

    store.client.meta.events.register(f"before-call.s3.{operation}", hook)
    return calls


@pytest.fixture(scope="module")
def crowded(s3_http: S3Server) -> tuple[str, list[str], list[str]]:
    """A bucket with 10,000 rolling snapshots (5 min apart) plus objects retention must skip."""
    bucket = s3_http.new_bucket("crowd")
    client = s3_http.client()
    tick = dt.datetime(2024, 10, 4, 12, 0, tzinfo=dt.UTC)
    rolling = [f"f/{rolling_name(tick - dt.timedelta(minutes=5 * i))}.zip" for i in range(10_000)]
    others = ["f/rke_etcd_snapshot_2020-01-01T00:00:00Z.zip", "f/c-abcde-rl-x_2020-01-01T00:00:00Z.zip",
              "2020-01-01T00:00:00Z_etcd.zip", "f/sub/2020-01-01T00:00:00Z_etcd.zip", "f/notes.txt"]

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=b"")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, rolling + others))
    return bucket, rolling, others


@pytest.mark.integration
def test_listing_is_paginated(s3_http: S3Server, crowded: tuple[str, list[str], list[str]]) -> None:
    bucket, rolling, _ = crowded
    with store_for(s3_http, bucket, "f") as store:
        calls = count_calls(store, "ListObjectsV2")
        keys = [o.key for o in store.list_objects("f/", recursive=False)]
    assert len(keys) == 10_000 + 2 + 1  # the sub-folder is not listed
    assert set(rolling) <= set(keys)
    assert len(calls) >= 10


@pytest.mark.integration
def test_retention_over_10000_objects_in_batches(s3_http: S3Server, crowded: tuple[str, list[str], list[str]]) -> None:
    bucket, rolling, others = crowded
    tick = dt.datetime(2024, 10, 4, 12, 0, tzinfo=dt.UTC)
    opts = Options(retention=dt.timedelta(hours=24), s3_bucket_name=bucket)
    saver = Saver(opts, Runner(), StopRequest())
    with store_for(s3_http, bucket, "f") as store:
        deletes = count_calls(store, "DeleteObjects")
        saver.s3_retention(store, tick)
    remaining = {o["Key"] for page in s3_http.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
                 for o in page.get("Contents", [])}
    kept_rolling = sorted(k for k in rolling if k in remaining)
    assert len(kept_rolling) == 24 * 12 + 1  # everything up to the cutoff inclusive
    assert set(others) <= remaining
    assert len(deletes) == 10  # 9,711 keys, 1,000 a call


@pytest.mark.integration
def test_download_snapshot_verified(tmp_path: Path, s3_http: S3Server) -> None:
    bucket = s3_http.new_bucket()
    client = s3_http.client()
    body = b"PK-archive-bytes" * 1000
    good = hashlib.sha256(body).hexdigest()
    client.put_object(Bucket=bucket, Key="f/snap.zip", Body=body, Metadata={"archive-sha256": good})
    client.put_object(Bucket=bucket, Key="f/snap-longer.zip", Body=b"other")
    client.put_object(Bucket=bucket, Key="f/bad.zip", Body=body, Metadata={"archive-sha256": "0" * 64})
    backup = tmp_path / "backup"
    backup.mkdir()
    with store_for(s3_http, bucket, "f") as store:
        path = download_snapshot(store, "snap", backup)
        assert path == backup / "snap.zip"
        assert path.read_bytes() == body
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

        with pytest.raises(S3Error, match="does not match its archive-sha256"):
            download_snapshot(store, "bad", backup)
        assert not (backup / "bad.zip").exists()

        with pytest.raises(S3Error, match="no backups found"):
            download_snapshot(store, "absent", backup)
    assert sorted(p.name for p in backup.iterdir()) == ["snap.zip"]


@pytest.mark.integration
def test_a_large_download_comes_in_ranged_gets_of_one_version(tmp_path: Path, s3_http: S3Server) -> None:
    bucket = s3_http.new_bucket()
    client = s3_http.client()
    body = os.urandom(2 * PART_SIZE + 12345)
    digest = hashlib.sha256(body).hexdigest()
    client.put_object(Bucket=bucket, Key="big.zip", Body=body, Metadata={"archive-sha256": digest})
    backup = tmp_path / "backup"
    backup.mkdir()
    received: list[int] = []
    with store_for(s3_http, bucket) as store:
        gets = request_params(store, "GetObject")
        assert store.download_to("big.zip", backup / "big.zip", on_bytes=received.append) == digest
        head = store.head("big.zip")
        assert (backup / "big.zip").read_bytes() == body and sum(received) == len(body)
        assert sorted(g["Range"] for g in gets) == sorted(f"bytes={a}-{b}" for a, b in part_ranges(len(body)))
        assert {g["IfMatch"] for g in gets} == {head.etag} and head.etag

        # Replaced between the HeadObject and the GETs: no file made of two versions.
        client.put_object(Bucket=bucket, Key="big.zip", Body=body[::-1])
        with pytest.raises(S3Error, match=r"failed to download big\.zip: .*PreconditionFailed"):
            store.fetch("big.zip", backup / "again.zip", size=head.size, expected=digest, etag=head.etag)
    assert sorted(p.name for p in backup.iterdir()) == ["big.zip"]


@pytest.mark.integration
def test_a_part_cut_short_fails_the_attempt_and_the_retry_fetches_it_whole(tmp_path: Path, s3_http: S3Server) -> None:
    bucket = s3_http.new_bucket()
    body = os.urandom(PART_SIZE + 4096)
    digest = hashlib.sha256(body).hexdigest()
    s3_http.client().put_object(Bucket=bucket, Key="big.zip", Body=body, Metadata={"archive-sha256": digest})
    gets = 0

    def rule(method: str, path: str) -> Fault | None:
        nonlocal gets
        if method != "GET" or not path.endswith("/big.zip"):
            return None
        gets += 1
        return Fault(reset=4096) if gets == 1 else None  # the connection dies inside the first part's body

    proxy = FaultyHttp(s3_http.port, rule)
    config = S3Config(endpoint=proxy.endpoint, bucket=bucket, access_key=ACCESS_KEY,
                      secret_key=SECRET_KEY)
    try:
        with S3Store(config, budgets=Budgets(retry_wait=0)) as store:
            assert store.download_to("big.zip", tmp_path / "big.zip") == digest
    finally:
        proxy.close()
    assert (tmp_path / "big.zip").read_bytes() == body
    assert 3 <= gets <= 4  # two parts, one of them twice, the other at most twice
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zip"]


@pytest.mark.integration
def test_unreachable_endpoint_has_a_timeout_and_one_line(tmp_path: Path) -> None:
    from tests.harness.ports import free_port

    config = S3Config(endpoint=f"127.0.0.1:{free_port()}", bucket="b", access_key="a", secret_key="s")
    with S3Store(config, budgets=Budgets(retry_wait=0.1, scale=0.05)) as store, \
            pytest.raises(SidekickError) as err:
        store.check_bucket()
    assert "failed to check s3 bucket b" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.integration
def test_failed_multipart_upload_is_aborted(tmp_path: Path, s3_http: S3Server) -> None:
    bucket = s3_http.new_bucket()
    big = tmp_path / "big.zip"
    with open(big, "wb") as out:
        for _ in range(40):
            out.write(os.urandom(1 << 20))
    sent: list[int] = []

    def fail_midway(count: int) -> None:
        sent.append(count)
        if sum(sent) > 20 << 20:
            raise OSError("link lost")

    with store_for(s3_http, bucket) as store:
        created, aborted = count_calls(store, "CreateMultipartUpload"), count_calls(store, "AbortMultipartUpload")
        with pytest.raises(S3Error):
            store.upload_file(big, "big.zip", metadata={}, on_bytes=fail_midway)
        # The store's policy: 4 attempts (--s3-retries 3), each upload aborted.
        assert len(created) == 4 and len(aborted) == 4
        client = s3_http.client()
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
        # The same store uploads fine afterwards, in parts.
        calls = count_calls(store, "UploadPart")
        store.upload_file(big, "big.zip", metadata={"archive-sha256": "x"})
    assert len(calls) == 3
    assert client.head_object(Bucket=bucket, Key="big.zip")["ContentLength"] == 40 << 20


class NoMultiDeleteProxy:
    """HTTP proxy in front of moto answering 501 to DeleteObjects, as GCS's XML API does."""

    def __init__(self, target: S3Server) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self
        self.refused = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "POST" and "delete" in self.path.split("?", 1)[-1].split("&"):
                    owner.refused += 1
                    reply = b"<Error><Code>NotImplemented</Code><Message>multi-object delete</Message></Error>"
                    self.send_response(501)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                    return
                conn = http.client.HTTPConnection(target.host, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in {"content-length", "transfer-encoding", "connection"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.integration
def test_delete_falls_back_without_delete_objects(s3_http: S3Server) -> None:
    bucket = s3_http.new_bucket()
    client = s3_http.client()
    keys = [f"{i}_etcd.zip" for i in range(5)]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    proxy = NoMultiDeleteProxy(s3_http)
    try:
        config = S3Config(endpoint=f"http://{proxy.endpoint}", bucket=bucket, access_key=ACCESS_KEY,
                          secret_key=SECRET_KEY)
        with S3Store(config) as store:
            assert store.delete_keys(keys[:3]) == keys[:3]
    finally:
        proxy.stop()
    assert proxy.refused >= 1
    assert sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]) == keys[3:]
