"""The opt-in S3 settings: settings decoding (unit), then one test per option against moto,
with a recording proxy (tests/harness/faults.py) showing what the client really sent."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidekick.errors import UsageError
from sidekick.etcd import s3 as s3_module
from sidekick.etcd.budgets import Budgets
from sidekick.etcd.options import Options
from sidekick.etcd.s3 import S3Config, S3Error, S3Store, addressing_style
from sidekick.log import redact
from tests.etcd.servers import captured_logs
from tests.harness.faults import FaultyHttp, Seen
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

PART = 16 << 20


def options(**kw: object) -> Options:
    base: dict[str, object] = {"s3_bucket_name": "b", "s3_access_key": ACCESS_KEY, "s3_secret_key": SECRET_KEY}
    base.update(kw)
    return Options(**base)  # type: ignore[arg-type]


# --- unit: settings ------------------------------------------------------------------------
def test_defaults_keep_the_originals_behaviour() -> None:
    config = S3Config.from_options(options(s3_endpoint="minio.local:9000"))
    assert (config.sse, config.sse_c_key, config.checksum, config.addressing, config.proxy, config.insecure) == \
        ("", b"", "", "", "", False)
    assert config.upload_args() == {} and config.sse_c_args() == {}


def test_sse_choices() -> None:
    assert S3Config.from_options(options(s3_sse="aes256")).upload_args() == {"ServerSideEncryption": "AES256"}
    kms = S3Config.from_options(options(s3_sse_kms_key_id="arn:aws:kms:us-east-1:1:key/k"))
    assert kms.upload_args() == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "arn:aws:kms:us-east-1:1:key/k"}
    with pytest.raises(UsageError, match="--s3-sse='DES'"):
        S3Config.from_options(options(s3_sse="DES"))
    with pytest.raises(UsageError, match="needs --s3-sse=aws:kms"):
        S3Config.from_options(options(s3_sse="AES256", s3_sse_kms_key_id="k"))


def test_sse_c_key_file_raw_or_base64(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    key = os.urandom(32)
    (tmp_path / "raw").write_bytes(key)
    (tmp_path / "b64").write_text(base64.b64encode(key).decode() + "\n")
    (tmp_path / "short").write_bytes(b"x" * 16)
    for name in ("raw", "b64"):
        config = S3Config.from_options(options(s3_sse_c_key_file=f"/{name}"))
        assert config.sse_c_args() == {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key}
        assert repr(key) not in repr(config)
        assert base64.b64encode(key).decode() not in redact(f"header {base64.b64encode(key).decode()}")
    with pytest.raises(UsageError, match="must hold 32 bytes"):
        S3Config.from_options(options(s3_sse_c_key_file="/short"))
    with pytest.raises(UsageError, match="cannot read the SSE-C key file /absent"):
        S3Config.from_options(options(s3_sse_c_key_file="/absent"))
    with pytest.raises(UsageError, match="exclusive"):
        S3Config.from_options(options(s3_sse_c_key_file="/raw", s3_sse="AES256"))


def test_keys_from_files_are_raw_and_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    (tmp_path / "access").write_text("YWJj\n")  # valid base64: from a file it stays as written
    (tmp_path / "secret").write_text("file-secret-value\n")
    config = S3Config.from_options(options(s3_access_key_file="/access", s3_secret_key_file="/secret"))
    assert (config.access_key, config.secret_key) == ("YWJj", "file-secret-value")
    assert "file-secret-value" not in redact("leak file-secret-value")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        S3Config.from_options(options(s3_secret_key_file="/empty"))


def test_checksum_addressing_and_proxy_choices() -> None:
    assert S3Config.from_options(options(s3_checksum="crc32c")).upload_args() == {"ChecksumAlgorithm": "CRC32C"}
    with pytest.raises(UsageError, match="--s3-checksum='MD4'"):
        S3Config.from_options(options(s3_checksum="MD4"))
    assert S3Config.from_options(options(s3_addressing_style="Virtual")).addressing == "virtual"
    with pytest.raises(UsageError, match="--s3-addressing-style"):
        S3Config.from_options(options(s3_addressing_style="dns"))
    assert addressing_style("10.0.0.1:9000") == "path"  # the heuristic stays the default
    proxied = S3Config.from_options(options(s3_proxy="http://user:proxy-pass@proxy.local:3128"))
    assert proxied.proxy.endswith("proxy.local:3128")
    assert "proxy-pass" not in redact("via proxy-pass") and "proxy-pass" not in repr(proxied)
    with pytest.raises(UsageError, match="--s3-proxy must be"):
        S3Config.from_options(options(s3_proxy="socks5://proxy.local"))


def test_session_token_is_a_secret() -> None:
    config = S3Config.from_options(options(s3_session_token="FQoGZXIvYXdzEXAMPLETOKEN"))
    assert config.session_token == "FQoGZXIvYXdzEXAMPLETOKEN"
    assert "FQoGZXIvYXdzEXAMPLETOKEN" not in redact("token=FQoGZXIvYXdzEXAMPLETOKEN")


# --- against moto ------------------------------------------------------------------------
@pytest.fixture
def recorder(s3_http: S3Server) -> Iterator[FaultyHttp]:
    proxy = FaultyHttp(s3_http.port, lambda _method, _path: None)
    yield proxy
    proxy.close()


def store(endpoint: str, bucket: str, **kw: object) -> S3Store:
    return S3Store(S3Config.from_options(options(s3_endpoint=endpoint, s3_bucket_name=bucket, **kw)),
                   budgets=Budgets(retry_wait=0.1, scale=0.2))


def blob(tmp_path: Path, size: int, name: str = "snap.zip") -> tuple[Path, str]:
    path = tmp_path / name
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def sent(proxy: FaultyHttp, method: str) -> list[Seen]:
    return [s for s in proxy.seen if s.method == method]


@pytest.mark.integration
def test_sse_c_round_trip(tmp_path: Path, s3_http: S3Server, recorder: FaultyHttp,
                          monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    key = os.urandom(32)
    (tmp_path / "sse-c.key").write_text(base64.b64encode(key).decode())
    bucket = s3_http.new_bucket()
    path, digest = blob(tmp_path, PART + 1024)  # multipart: the key goes with every part
    (tmp_path / "backup").mkdir()
    with captured_logs(caplog), caplog.at_level(logging.DEBUG, logger="sidekick"), \
            store(recorder.endpoint, bucket, s3_sse_c_key_file="/sse-c.key") as s:
        s.upload_file(path, "snap.zip", metadata={"archive-sha256": digest})
        assert s.head("snap.zip").size == PART + 1024
        assert s.download_to("snap.zip", tmp_path / "backup" / "snap.zip") == digest
    md5 = base64.b64encode(hashlib.md5(key).digest()).decode()
    data_calls = [x for x in recorder.seen if x.method in ("PUT", "GET", "HEAD") and "snap.zip" in x.target]
    assert {x.method for x in data_calls} == {"PUT", "GET", "HEAD"}
    for call in data_calls:
        assert call.headers.get("x-amz-server-side-encryption-customer-algorithm") == "AES256", call
        assert call.headers.get("x-amz-server-side-encryption-customer-key-md5") == md5, call
    assert (tmp_path / "backup" / "snap.zip").read_bytes() == path.read_bytes()
    assert base64.b64encode(key).decode() not in caplog.text


@pytest.mark.integration
def test_sse_kms_headers_sent(tmp_path: Path, s3_http: S3Server, recorder: FaultyHttp) -> None:
    bucket = s3_http.new_bucket()
    key_id = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    path, digest = blob(tmp_path, 1 << 20)
    with store(recorder.endpoint, bucket, s3_sse_kms_key_id=key_id) as s:
        s.upload_file(path, "snap.zip", metadata={"archive-sha256": digest})
    (put,) = [x for x in sent(recorder, "PUT") if "snap.zip" in x.target]
    assert put.headers["x-amz-server-side-encryption"] == "aws:kms"
    assert put.headers["x-amz-server-side-encryption-aws-kms-key-id"] == key_id
    assert s3_http.client().head_object(Bucket=bucket, Key="snap.zip")["SSEKMSKeyId"] == key_id


@pytest.mark.integration
def test_sse_s3_header_sent(tmp_path: Path, s3_http: S3Server, recorder: FaultyHttp) -> None:
    bucket = s3_http.new_bucket()
    path, digest = blob(tmp_path, 1024)
    with store(recorder.endpoint, bucket, s3_sse="AES256") as s:
        s.upload_file(path, "snap.zip", metadata={"archive-sha256": digest})
    (put,) = [x for x in sent(recorder, "PUT") if "snap.zip" in x.target]
    assert put.headers["x-amz-server-side-encryption"] == "AES256"


@pytest.mark.integration
def test_object_lock_bucket_upload_and_refused_delete(tmp_path: Path, s3_http: S3Server,
                                                      recorder: FaultyHttp) -> None:
    client = s3_http.client()
    bucket = f"lock-{os.urandom(6).hex()}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}})
    small, small_sha = blob(tmp_path, 4096, "small.zip")
    # Today's default (checksums only where required) is what such a bucket refuses...
    with store(s3_http.url, bucket) as s, pytest.raises(S3Error, match="Content-MD5 or x-amz-sdk-checksum"):
        s.upload_file(small, "plain.zip", metadata={"archive-sha256": small_sha})
    # ...and --s3-checksum puts one on every PUT and every part.
    big, big_sha = blob(tmp_path, PART + 4096)
    with store(recorder.endpoint, bucket, s3_checksum="CRC32") as s:
        s.upload_file(big, "snap.zip", metadata={"archive-sha256": big_sha})
        s.upload_file(small, "small.zip", metadata={"archive-sha256": small_sha})
    puts = [x for x in sent(recorder, "PUT") if "snap.zip" in x.target or "small.zip" in x.target]
    assert len(puts) == 3  # two parts and one single PUT
    for put in puts:
        assert put.headers["x-amz-sdk-checksum-algorithm"] == "CRC32" and put.headers["x-amz-checksum-crc32"], put
    # The bucket's default retention holds what sidekick wrote (moto applies it to single PUTs).
    versions = client.list_object_versions(Bucket=bucket)["Versions"]
    version = next(v["VersionId"] for v in versions if v["Key"] == "small.zip")
    with pytest.raises(Exception, match="AccessDenied"):
        client.delete_object(Bucket=bucket, Key="small.zip", VersionId=version)
    assert client.head_object(Bucket=bucket, Key="small.zip", VersionId=version)["ContentLength"] == 4096
    assert client.head_object(Bucket=bucket, Key="snap.zip")["ContentLength"] == PART + 4096


@pytest.mark.integration
def test_session_token_used(tmp_path: Path, s3_http: S3Server, recorder: FaultyHttp) -> None:
    bucket = s3_http.new_bucket()
    with store(recorder.endpoint, bucket, s3_session_token="IQoJb3JpZ2luX2VjEXAMPLE") as s:
        s.check_bucket()
    (head,) = sent(recorder, "HEAD")
    assert head.headers["x-amz-security-token"] == "IQoJb3JpZ2luX2VjEXAMPLE"
    assert f"Credential={ACCESS_KEY}/" in head.headers["authorization"]


@pytest.mark.integration
def test_keys_from_files_are_used(tmp_path: Path, s3_http: S3Server, recorder: FaultyHttp,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    (tmp_path / "access").write_text("AKIAFROMAFILE0000001\n")
    (tmp_path / "secret").write_text("secret-from-a-file\n")
    bucket = s3_http.new_bucket()
    with store(recorder.endpoint, bucket, s3_access_key_file="/access", s3_secret_key_file="/secret") as s:
        s.check_bucket()
    (head,) = sent(recorder, "HEAD")
    assert "Credential=AKIAFROMAFILE0000001/" in head.headers["authorization"]


@pytest.mark.integration
def test_addressing_style_is_an_explicit_choice(tmp_path: Path, s3_http: S3Server, recorder: FaultyHttp) -> None:
    """Through the proxy, the request line shows the form: the bucket in the path or the host."""
    bucket = s3_http.new_bucket()
    endpoint = f"http://s3.sidekick.test:{s3_http.port}"
    with store(endpoint, bucket, s3_proxy=recorder.endpoint, s3_addressing_style="path") as s:
        s.check_bucket()  # moto answers: the proxy forwards by path
    with store(endpoint, bucket, s3_proxy=recorder.endpoint, s3_addressing_style="virtual") as s, \
            contextlib.suppress(S3Error):
        s.check_bucket()  # what moto makes of a virtual host behind a plain proxy is not the point
    path_head, virtual_head = sent(recorder, "HEAD")[0], sent(recorder, "HEAD")[-1]
    assert path_head.target == f"{endpoint}/{bucket}"
    assert path_head.headers["host"] == f"s3.sidekick.test:{s3_http.port}"
    assert virtual_head.target.startswith(f"http://{bucket}.s3.sidekick.test:{s3_http.port}/")
    assert virtual_head.headers["host"] == f"{bucket}.s3.sidekick.test:{s3_http.port}"


@pytest.mark.integration
def test_proxy_from_the_environment_and_the_override(tmp_path: Path, s3_http: S3Server, recorder: FaultyHttp,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_http.new_bucket()
    endpoint = f"http://s3.sidekick.test:{s3_http.port}"
    monkeypatch.setenv("HTTP_PROXY", recorder.endpoint)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with store(endpoint, bucket, s3_addressing_style="path") as s:
        s.check_bucket()
    assert [x.target for x in sent(recorder, "HEAD")] == [f"{endpoint}/{bucket}"]
    other = FaultyHttp(s3_http.port, lambda _m, _p: None)
    try:
        with store(endpoint, bucket, s3_addressing_style="path", s3_proxy=other.endpoint) as s:
            s.check_bucket()
        assert [x.target for x in sent(other, "HEAD")] == [f"{endpoint}/{bucket}"]
        assert len(sent(recorder, "HEAD")) == 1  # the override wins over HTTP_PROXY
    finally:
        other.close()


@pytest.mark.integration
def test_insecure_skip_verify_warns_every_time(s3_https: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    bucket = s3_https.new_bucket()
    with store(s3_https.endpoint, bucket) as s, pytest.raises(S3Error, match=r"TLS|SSL|certificate"):
        s.check_bucket()  # no CA given: the tests' CA is not trusted
    with captured_logs(caplog), caplog.at_level(logging.WARNING):
        for _ in range(2):
            with store(s3_https.endpoint, bucket, s3_insecure_skip_verify=True) as s:
                s.check_bucket()
    warnings = [r for r in caplog.records if "verification is OFF" in r.getMessage()]
    assert len(warnings) == 2


@pytest.mark.integration
def test_web_identity_through_boto3s_chain(tmp_path: Path, s3_http: S3Server, recorder: FaultyHttp,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """No keys given: boto3 exchanges the IRSA token at STS (moto's) for temporary keys
    (botocore refreshes them before they expire, across rolling ticks)."""
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.irsa-token.signature")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/etcd-backup")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", s3_http.url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = s3_http.new_bucket()
    s3_module._session.cache_clear()  # the process's session resolves the chain once: here, afresh
    try:
        for _ in range(2):
            with store(recorder.endpoint, bucket, s3_access_key="", s3_secret_key="") as s:
                s.check_bucket()
    finally:
        s3_module._session.cache_clear()  # no test after this one inherits the web identity
    heads = sent(recorder, "HEAD")
    keys = [re.search(r"Credential=([A-Z0-9]+)/", h.headers["authorization"]).group(1) for h in heads]  # type: ignore[union-attr]
    assert len(heads) == 2 and all(k.startswith("ASIA") for k in keys)
    assert all(h.headers.get("x-amz-security-token") for h in heads)


# --- the command line ------------------------------------------------------------------------
NEW = {  # flag -> env var, for every setting beyond the original's
    "--s3-accessKey-file": "S3_ACCESS_KEY_FILE", "--s3-secretKey-file": "S3_SECRET_KEY_FILE",
    "--s3-session-token": "S3_SESSION_TOKEN", "--s3-sse": "S3_SSE", "--s3-sse-kms-key-id": "S3_SSE_KMS_KEY_ID",
    "--s3-sse-c-key-file": "S3_SSE_C_KEY_FILE", "--s3-checksum": "S3_CHECKSUM",
    "--s3-addressing-style": "S3_ADDRESSING_STYLE", "--s3-proxy": "S3_PROXY",
    "--s3-insecure-skip-verify": "S3_INSECURE_SKIP_VERIFY",
}
AGE_SAVE = {"--age-recipient": "SIDEKICK_AGE_RECIPIENTS", "--age-recipients-file": "SIDEKICK_AGE_RECIPIENTS_FILE",
            "--age-encrypt-local": "SIDEKICK_AGE_ENCRYPT_LOCAL"}
AGE_READ = {"--age-identity-file": "SIDEKICK_AGE_IDENTITY_FILE"}


def test_every_new_setting_has_a_flag_an_env_var_a_help_line_and_a_readme_row() -> None:
    import click

    from sidekick.etcd.cli import build_command

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    wanted = {"save": {**NEW, **AGE_SAVE}, "download": {**NEW, **AGE_READ}, "extractstatefile": {**NEW, **AGE_READ},
              "delete": NEW, "serve": AGE_READ}
    for name, flags in wanted.items():
        command = build_command(name)
        with click.Context(command) as ctx:
            help_text = command.get_help(ctx)
        declared = {opt: p.envvar for p in command.params if isinstance(p, click.Option) for opt in p.opts}
        for flag, env in flags.items():
            assert declared.get(flag) == env, (name, flag)
            assert flag in help_text and env in help_text, (name, flag)
            assert f"`{env}`" in readme and f"`{flag}`" in readme, flag


def test_new_settings_parse_in_the_go_dialect(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidekick.etcd.cli import build_command

    command = build_command("download")
    monkeypatch.setenv("S3_CHECKSUM", "SHA256")
    monkeypatch.setenv("SIDEKICK_AGE_IDENTITY_FILE", "/keys/age.txt")
    ctx = command.make_context("download", ["-s3-insecure-skip-verify", "--s3-addressing-style", "virtual",
                                            "--s3-sse=aws:kms", "--name", "snap"])
    assert ctx.params["s3_insecure_skip_verify"] is True and ctx.params["s3_addressing_style"] == "virtual"
    assert ctx.params["s3_sse"] == "aws:kms" and ctx.params["s3_checksum"] == "SHA256"
    assert ctx.params["age_identity_file"] == "/keys/age.txt"


@pytest.mark.integration
def test_secrets_from_files_never_reach_a_debug_log(tmp_path: Path, s3_https: S3Server) -> None:
    """The real executable at debug level, with every secret setting given: the SSE-C key,
    the keys from files and the session token appear in no line."""
    from sidekick.etcd.archive import write_archive
    from tests.conftest import run_sidekick
    from tests.harness.etcd_backup import rke_s3_flags

    root = tmp_path / "node"
    (root / "backup").mkdir(parents=True)
    (root / "secrets").mkdir()
    key = os.urandom(32)
    (root / "secrets/sse-c").write_bytes(key)
    (root / "secrets/access").write_text(ACCESS_KEY + "\n")
    (root / "secrets/secret").write_text(SECRET_KEY + "\n")
    (tmp_path / "snap").write_bytes(os.urandom(50_000))
    archive = write_archive(tmp_path / "snap.zip", [("/backup/snap", tmp_path / "snap")])
    bucket = s3_https.new_bucket()
    s3_https.client().put_object(Bucket=bucket, Key="snap.zip", Body=archive.path.read_bytes(),
                                 Metadata={"archive-sha256": archive.sha256},
                                 SSECustomerAlgorithm="AES256", SSECustomerKey=key)
    assert s3_https.ca_path is not None
    token = "IQoJb3JpZ2luX2VjEXAMPLETOKENVALUE"
    done = run_sidekick(["rke-etcd-backup", "etcd-backup", "download", "--name", "snap",
                         *rke_s3_flags(s3_https.endpoint, bucket, ca_pem=s3_https.ca_path.read_bytes())],
                        root=root, env={"RANCHER_DEBUG": "true", "S3_SSE_C_KEY_FILE": "/secrets/sse-c",
                                        "S3_ACCESS_KEY_FILE": "/secrets/access",
                                        "S3_SECRET_KEY_FILE": "/secrets/secret", "S3_SESSION_TOKEN": token})
    assert done.returncode == 0, done.stderr
    assert (root / "backup/snap").read_bytes() == (tmp_path / "snap").read_bytes()
    assert "level=debug" in done.stderr
    for secret in (base64.b64encode(key).decode(), SECRET_KEY, token):
        assert secret not in done.stderr
