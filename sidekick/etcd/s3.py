"""S3 for snapshots: client setup, upload, paginated listing, batched delete, download.

Compatibility (CONTRACT 3, 11): TLS by default (RKE passes ``host[:port]`` without a scheme;
an explicit ``http://``/``https://`` is accepted too), keys from flags or env and base64-decoded
when they decode, the instance's IAM role when no keys are given (default endpoint
``s3.amazonaws.com``), ``--s3-endpoint-ca`` as base64 PEM or a file path, virtual-host
addressing for ``aliyun`` endpoints, a missing bucket is ``bucket <name> is not found``.

Every call is a step of one retry policy with a total deadline (:class:`S3Store`,
:mod:`sidekick.etcd.budgets`), so a server that accepts and never answers, or answers one
byte at a time, costs a bounded time and a bounded number of requests. Listings are
paginated; deletes go 1,000 keys per DeleteObjects call; uploads are multipart from the file
with parallel parts, and an upload a deadline or a stop cut short is aborted by its UploadId;
downloads go to a temp name and are checked against the ``archive-sha256`` metadata written
at upload.

Cost: botocore alone (not boto3, whose import and session cost a small ``save --once`` about a
third of its time) and one botocore session per process, which keeps the parsed models (as
plain dicts, the endpoint table trimmed: :func:`_data_loader`). An object of at most
``PART_SIZE`` goes in one PutObject streamed from the file, without s3transfer's threads; only
larger uploads import s3transfer. Memory bound of an upload: parts are read from the file
while they are sent (s3transfer's ``ReadFileChunk``), never held whole, so it costs about
``CONCURRENCY`` threads * their 1 MiB read buffers, whatever the size. Downloads never load
s3transfer: :meth:`S3Store.fetch` GETs the object in ranges of ``PART_SIZE``, ``CONCURRENCY``
at a time, each written at its offset ``READ_PIECE`` by ``READ_PIECE`` as it arrives, so a
download holds about ``CONCURRENCY * READ_PIECE`` (1 MiB) of the object, whatever the size.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import functools
import logging
import os
import posixpath
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from sidekick import log as sklog
from sidekick.deadline import Deadline, DeadlineExceeded, Stopped
from sidekick.errors import SidekickError, UsageError
from sidekick.etcd import crypto
from sidekick.etcd.budgets import S3_CONNECT, S3_REQUEST, S3_TRANSFER, Budgets
from sidekick.etcd.verified import file_sha256
from sidekick.host.files import atomic_output, temp_path
from sidekick.host.guard import Guard, bounded
from sidekick.host.memory import collector_paused
from sidekick.host.signals import StopRequest
from sidekick.log import kv

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from s3transfer.subscribers import BaseSubscriber

    from sidekick.etcd.options import Options

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "s3.amazonaws.com"
DEFAULT_REGION = "us-east-1"
CONTENT_TYPE = "application/zip"
SNAPSHOT_SHA_META = "snapshot-sha256"
ARCHIVE_SHA_META = "archive-sha256"
ENCRYPTION_META = crypto.ENCRYPTION_META
AGE_CONTENT_TYPE = "application/octet-stream"
DELETE_BATCH = 1000
PART_SIZE = 16 << 20
CONCURRENCY = 4
READ_PIECE = 256 << 10  # a GET's body is read and written this much at a time
DEFAULT_RETRIES = 3  # as --s3-retries
ABORT_BUDGET = 5.0
T = TypeVar("T")


class S3Error(SidekickError):
    """Any S3 failure; the message is the cause in one line. ``transient``: another attempt
    may succeed (no answer, 5xx, throttling); ``missing``: the object or bucket is absent."""

    def __init__(self, message: str, *, transient: bool = False, missing: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.missing = missing


def _retryable(err: Exception) -> bool:
    return isinstance(err, DeadlineExceeded) or (isinstance(err, S3Error) and err.transient)


_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
                    "Throttling", "ThrottlingException", "RequestLimitExceeded"}


def _error(context: str, err: BaseException) -> S3Error:
    """An :class:`S3Error` for a botocore failure, classified for the retry policy."""
    from botocore import exceptions as bex

    text = f"{context}: {describe_error(err)}" if context else describe_error(err)
    if isinstance(err, bex.ClientError):
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(err.response.get("Error", {}).get("Code", ""))
        return S3Error(text, transient=status >= 500 or status == 429 or code in _TRANSIENT_CODES,
                       missing=status == 404 or code in {"404", "NoSuchKey", "NotFound"})
    if isinstance(err, bex.SSLError | bex.NoCredentialsError | bex.ParamValidationError):
        return S3Error(text)
    if isinstance(err, bex.BotoCoreError | OSError):
        return S3Error(text, transient=True)  # no answer, reset, timeout, truncated body
    return S3Error(text)


def decode_maybe_base64(value: str) -> str:
    """The original decodes keys with base64 whenever they decode (RKE sends them encoded)."""
    if not value:
        return value
    try:
        raw = base64.b64decode(value.replace("\n", "").replace("\r", ""), validate=True)
    except (binascii.Error, ValueError):
        return value
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return value


def load_endpoint_ca(value: str) -> bytes:
    """``--s3-endpoint-ca``: base64 of a PEM (as RKE sends it) or a file path; must hold a cert."""
    from cryptography import x509

    try:
        pem = base64.b64decode(value.replace("\n", "").replace("\r", ""), validate=True)
    except (binascii.Error, ValueError):
        try:
            pem = Path(value).read_bytes()
        except OSError as err:
            raise S3Error(
                f"s3-endpoint-ca is neither base64 PEM nor a readable file: {err.strerror or err}"
            ) from None
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    if not certs:
        raise S3Error("s3-endpoint-ca is not a valid x509 certificate")
    return pem


def endpoint_url(endpoint: str) -> str:
    """RKE passes ``host[:port]``; the original always used TLS. An explicit scheme is kept."""
    endpoint = endpoint.strip() or DEFAULT_ENDPOINT
    if endpoint.startswith(("http://", "https://")):
        return endpoint.rstrip("/")
    return f"https://{endpoint.rstrip('/')}"


def addressing_style(endpoint: str) -> str:
    """Virtual-host for aliyun (its API requires it) and the big clouds; path style otherwise
    (minio, Ceph, moto, IP addresses), as minio-go's automatic lookup chose."""
    host = urllib.parse.urlsplit(endpoint_url(endpoint)).hostname or ""
    if "aliyun" in endpoint:
        return "virtual"
    if host.endswith(("amazonaws.com", "googleapis.com")):
        return "auto"
    return "path"


SSE_VALUES = {"aes256": "AES256", "aws:kms": "aws:kms"}
CHECKSUMS = ("CRC32", "CRC32C", "SHA1", "SHA256")
ADDRESSING_STYLES = ("path", "virtual")
SSE_C_ALGORITHM = "AES256"


def _secret_file(path: str, what: str) -> bytes:
    """A secret from a file (Kubernetes Secret volumes, Vault agents): read on every use, so
    a rotated file takes effect at the next rolling tick."""
    from sidekick.paths import host_path

    try:
        return host_path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read the {what} file {path}: {(err.strerror or str(err)).lower()}") from None


def _text_secret(path: str, what: str) -> str:
    try:
        value = _secret_file(path, what).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UsageError(f"the {what} file {path} is not UTF-8 text") from None
    if not value:
        raise UsageError(f"the {what} file {path} is empty")
    sklog.register_secret(value)
    return value


def load_sse_c_key(path: str) -> bytes:
    """A 32-byte AES-256 key: the file holds the raw bytes or their base64 (one line)."""
    raw = _secret_file(path, "SSE-C key")
    key = raw
    if len(raw) != 32:
        try:
            key = base64.b64decode(raw.strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
    if len(key) != 32:
        raise UsageError(f"the SSE-C key file {path} must hold 32 bytes (raw, or base64 of 32 bytes)")
    sklog.register_secret(base64.b64encode(key).decode())  # as botocore sends it
    return key


def _choice(value: str, allowed: dict[str, str], flag: str) -> str:
    if not value.strip():
        return ""
    chosen = allowed.get(value.strip().lower())
    if chosen is None:
        raise UsageError(f"{flag}={value!r}: expected one of {', '.join(sorted(set(allowed.values())))}")
    return chosen


@dataclass(frozen=True)
class S3Config:
    """Where and how to reach the bucket. The first fields are the original's flags; the
    rest are opt-in settings whose empty value keeps its behaviour: ``sse`` (``AES256`` or
    ``aws:kms``, with ``sse_kms_key_id``), ``sse_c_key`` (32 bytes, sent on every PUT, part,
    GET and HEAD), ``checksum`` (an algorithm botocore computes on every PUT and part, which
    Object Lock buckets require; empty: checksums only where an operation requires one),
    ``addressing`` (``path``/``virtual``; empty: :func:`addressing_style`'s heuristic),
    ``proxy`` (empty: botocore reads HTTPS_PROXY/HTTP_PROXY/NO_PROXY), ``insecure``
    (no certificate check, a warning each time a client is made)."""

    endpoint: str
    bucket: str
    region: str = ""
    folder: str = ""
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    endpoint_ca: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    sse: str = ""
    sse_kms_key_id: str = ""
    sse_c_key: bytes = field(default=b"", repr=False)
    checksum: str = ""
    addressing: str = ""
    proxy: str = field(default="", repr=False)
    insecure: bool = False

    @classmethod
    def from_options(cls, opts: Options) -> S3Config:
        access = decode_maybe_base64(opts.s3_access_key)
        secret = decode_maybe_base64(opts.s3_secret_key)
        # Files are raw (no base64 guess): they are new, and Secret volumes hold the key itself.
        if opts.s3_access_key_file:
            access = _text_secret(opts.s3_access_key_file, "S3 access key")
        if opts.s3_secret_key_file:
            secret = _text_secret(opts.s3_secret_key_file, "S3 secret key")
        sklog.register_secret(access)
        sklog.register_secret(secret)
        sklog.register_secret(opts.s3_session_token)
        sse = _choice(opts.s3_sse, SSE_VALUES, "--s3-sse")
        if opts.s3_sse_kms_key_id:
            if sse and sse != "aws:kms":
                raise UsageError("--s3-sse-kms-key-id needs --s3-sse=aws:kms (or no --s3-sse)")
            sse = "aws:kms"
        sse_c_key = load_sse_c_key(opts.s3_sse_c_key_file) if opts.s3_sse_c_key_file else b""
        if sse_c_key and sse:
            raise UsageError("--s3-sse-c-key-file and --s3-sse are exclusive: an object has one kind of SSE")
        proxy = opts.s3_proxy.strip()
        if proxy:
            parsed = urllib.parse.urlsplit(proxy)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise UsageError("--s3-proxy must be an http:// or https:// URL")
            sklog.register_secret(parsed.password or "")
        return cls(
            endpoint=opts.s3_endpoint,
            bucket=opts.s3_bucket_name,
            region=opts.s3_region,
            folder=opts.s3_folder.strip("/"),
            access_key=access,
            secret_key=secret,
            endpoint_ca=opts.s3_endpoint_ca,
            session_token=opts.s3_session_token,
            sse=sse,
            sse_kms_key_id=opts.s3_sse_kms_key_id,
            sse_c_key=sse_c_key,
            checksum=_choice(opts.s3_checksum, {c.lower(): c for c in CHECKSUMS}, "--s3-checksum"),
            addressing=_choice(opts.s3_addressing_style, {a: a for a in ADDRESSING_STYLES},
                               "--s3-addressing-style"),
            proxy=proxy,
            insecure=opts.s3_insecure_skip_verify,
        )

    def key(self, filename: str) -> str:
        return f"{self.folder}/{filename}" if self.folder else filename

    def sse_c_args(self) -> dict[str, Any]:
        """SSE-C parameters of every call that reads or writes an object's data or metadata
        (botocore adds the key's MD5)."""
        if not self.sse_c_key:
            return {}
        return {"SSECustomerAlgorithm": SSE_C_ALGORITHM, "SSECustomerKey": self.sse_c_key}

    def upload_args(self) -> dict[str, Any]:
        args: dict[str, Any] = dict(self.sse_c_args())
        if self.sse:
            args["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.sse_kms_key_id
        if self.checksum:
            args["ChecksumAlgorithm"] = self.checksum
        return args


@functools.cache
def _session() -> Any:
    """One botocore session per process: it keeps the parsed S3 models, the costly part of a client."""
    with collector_paused():
        import botocore.session

    core = botocore.session.get_session()
    # botocore parses every LastModified with dateutil (~100 us each): a listing of 10,000
    # objects spent most of its client time there.
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
    core.register_component("data_loader", _data_loader(core.get_config_variable("data_path")))
    return core


# endpoints.json entries the clients of this process read, by endpoint prefix: S3's, and those
# of the services botocore's credential chain calls (STS: web identity, assumed roles; SSO, its
# OIDC, sign-in). A client of any other service would be given botocore's assumed endpoint.
ENDPOINT_PREFIXES = frozenset({"s3", "sts", "portal.sso", "oidc", "signin"})


def _data_loader(search_path: str | None) -> Any:
    """botocore's model loader (``AWS_DATA_PATH`` honoured as botocore does) that parses its
    JSON into plain dicts and keeps of endpoints.json only :data:`ENDPOINT_PREFIXES`.

    botocore builds every JSON object of its models as an ``OrderedDict``, about twice a
    dict's size, and keeps endpoints.json, the legacy endpoint table of all 300 services, for
    the life of the client: of the 11 MiB of models one S3 client held, 6.7 MiB were that
    table. Here the table is parsed whole, trimmed to the services this tool talks to and
    freed before the S3 model is read; one client then costs 7 MiB less RSS (etcd footprint
    bench: a stock botocore client 46.2 MiB, the same client as sidekick makes it 39.2 MiB,
    sidekick.etcd.s3 and the malloc bounds included). Dicts keep insertion order, which the
    models' readers rely on, and none of them uses what only an ``OrderedDict`` has; an S3
    client signs and addresses every request as botocore's own does (tests/etcd/test_s3.py
    compares them).
    """
    import json

    from botocore.loaders import JSONFileLoader, create_loader

    class ModelLoader(JSONFileLoader):
        # The one place botocore turns a model file into objects; if a botocore release
        # renames it, its own (OrderedDict) parsing is used again and only memory changes.
        def _load_file(self, full_path: str, open_method: Callable[..., Any]) -> Any:
            if not os.path.isfile(full_path):
                return None
            with open_method(full_path, "rb") as fp:
                text = fp.read().decode("utf-8")  # the bytes are freed before the parse
            return json.loads(text)

        def load_file(self, file_path: str) -> Any:
            data = super().load_file(file_path)
            if os.path.basename(file_path) == "endpoints" and isinstance(data, dict):
                for partition in data.get("partitions", []):
                    services = partition.get("services")
                    if isinstance(services, dict):
                        partition["services"] = {k: v for k, v in services.items() if k in ENDPOINT_PREFIXES}
            return data

    loader = create_loader(search_path)
    loader.file_loader = ModelLoader()
    return loader


def warm_up() -> None:
    """Import botocore and parse the S3 models ahead of need (``save --once`` runs this on a
    thread while etcd takes a small snapshot). A client with placeholder keys and endpoint:
    nothing is sent, no credential chain is asked."""
    try:
        with collector_paused():
            _session().create_client("s3", region_name=DEFAULT_REGION, endpoint_url="https://127.0.0.1",
                                     aws_access_key_id="warm-up", aws_secret_access_key="warm-up").close()
    except Exception as err:  # the real client will say what is wrong
        log.debug("S3 warm-up failed: %s", err)


def _transfer_config() -> Any:
    """Multipart uploads (downloads do not use s3transfer: :meth:`S3Store.fetch`)."""
    from s3transfer.manager import TransferConfig

    return TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                          max_request_concurrency=CONCURRENCY)


def part_ranges(size: int, part: int = PART_SIZE) -> list[tuple[int, int]]:
    """The inclusive byte ranges of a download in GETs of ``part`` bytes: none when the object
    fits in one GET (it is fetched whole, without a ``Range``)."""
    if size <= part:
        return []
    return [(start, min(start + part, size) - 1) for start in range(0, size, part)]


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class _Progress:
    """An s3transfer subscriber (duck-typed: s3transfer looks up ``on_progress``) that hands
    the bytes sent or received to ``on_bytes``."""

    def __init__(self, on_bytes: Callable[[int], None] | None) -> None:
        self.on_bytes = on_bytes

    def on_progress(self, bytes_transferred: int, **_: Any) -> None:
        if self.on_bytes is not None:
            self.on_bytes(bytes_transferred)


def describe_error(err: BaseException) -> str:
    """One line that says why, for the last stderr line RKE shows."""
    from botocore import exceptions as bex

    if isinstance(err, bex.ClientError):
        error = err.response.get("Error", {})
        code = error.get("Code") or err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = error.get("Message") or ""
        operation = getattr(err, "operation_name", "")
        return f"{operation}: {code}: {message}".strip(": ") if message else f"{operation}: {code}"
    if isinstance(err, bex.SSLError):
        return f"TLS error talking to S3: {err}"
    if isinstance(err, bex.EndpointConnectionError | bex.ConnectionClosedError):
        return f"cannot reach S3: {err}"
    if isinstance(err, bex.ConnectTimeoutError | bex.ReadTimeoutError):
        return f"S3 timed out: {err}"
    if isinstance(err, bex.NoCredentialsError):
        return "no S3 credentials: give --s3-accessKey/--s3-secretKey or run with an IAM role"
    return f"{type(err).__name__}: {err}"


@dataclass(frozen=True)
class ObjectHead:
    """What HeadObject says of an object: its size, user metadata and ETag."""

    size: int
    metadata: dict[str, str]
    etag: str = ""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float | None = None  # LastModified, Unix seconds


class S3Store:
    """One bucket (and folder) on one endpoint, every call bounded by one retry policy.

    Each public method is one step of :class:`sidekick.retry.Policy`: at most ``attempts``
    attempts of one request each (a listing: of one page each; a transfer: of one PUT/GET,
    or of the CreateMultipartUpload, parts and Complete of a multipart upload), within the
    store's ``phase`` deadline. botocore and s3transfer do not retry under it
    (``total_max_attempts=1``, ``num_download_attempts=1``). So a download makes at most
    ``attempts`` HeadObject and ``attempts * ceil(size / PART_SIZE)`` GetObject requests, and
    a bucket check at most ``attempts`` HeadBucket requests. ``close()`` removes the CA file.
    """

    def __init__(self, config: S3Config, *, budgets: Budgets | None = None, retries: int = DEFAULT_RETRIES,
                 stop: StopRequest | None = None, phase: Deadline | None = None,
                 client: S3Client | None = None) -> None:
        self.config = config
        self.budgets = budgets or Budgets()
        self.policy = self.budgets.s3(retries)
        self.stop = stop or StopRequest()
        self.phase = phase or Deadline(self.policy.budget, what="S3")
        self._ca_file: str | None = None
        self._uploads: dict[str, str] = {}  # multipart uploads in flight: UploadId -> key
        try:
            self.client: S3Client = client or self._make_client()
        except S3Error:
            self.close()
            raise
        except Exception as err:  # e.g. an endpoint that is not a URL
            self.close()
            raise S3Error(f"cannot set up the S3 client for {config.endpoint or DEFAULT_ENDPOINT}: "
                          f"{describe_error(err)}") from None
        events = self.client.meta.events
        events.register("after-call.s3.CreateMultipartUpload", self._upload_created)
        for operation in ("CompleteMultipartUpload", "AbortMultipartUpload"):
            events.register(f"before-parameter-build.s3.{operation}", self._note_upload_id)
            events.register(f"after-call.s3.{operation}", self._upload_ended)

    def _make_client(self) -> S3Client:
        from botocore.config import Config

        cfg = self.config
        verify: bool | str = True  # explicit: never AWS_CA_BUNDLE from the environment
        if cfg.endpoint_ca:
            pem = load_endpoint_ca(cfg.endpoint_ca)
            fd, self._ca_file = tempfile.mkstemp(prefix="sidekick-s3-ca-", suffix=".pem")
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
            verify = self._ca_file
        if cfg.insecure:
            verify = False
            log.warning("S3 TLS certificate verification is OFF (--s3-insecure-skip-verify): anyone on the "
                        "path can read and change the snapshots", extra=kv(endpoint=endpoint_url(cfg.endpoint)))
        kwargs: dict[str, Any] = {}
        if cfg.access_key or cfg.secret_key:
            kwargs = {"aws_access_key_id": cfg.access_key, "aws_secret_access_key": cfg.secret_key}
            if cfg.session_token:
                kwargs["aws_session_token"] = cfg.session_token
        else:
            # botocore's chain: AWS_* env, web identity (IRSA: AWS_WEB_IDENTITY_TOKEN_FILE and
            # AWS_ROLE_ARN), shared config, container and instance roles; botocore refreshes
            # the temporary ones (web identity, roles) before they expire, across rolling ticks.
            log.info("no S3 keys given: using the AWS credential chain (web identity, instance role, ...)")
        request = self.budgets.seconds(S3_REQUEST)
        extra: dict[str, Any] = {}
        if cfg.proxy:
            extra["proxies"] = {"http": cfg.proxy, "https": cfg.proxy}
        with collector_paused():  # the S3 models load here unless a warm-up did it
            return _session().create_client(
                "s3",
                endpoint_url=endpoint_url(cfg.endpoint),
                region_name=cfg.region or DEFAULT_REGION,
                verify=verify,
                config=Config(
                    connect_timeout=min(self.budgets.seconds(S3_CONNECT), request),
                    read_timeout=request,
                    retries={"total_max_attempts": 1, "mode": "standard"},  # the store's policy retries
                    s3={"addressing_style": cfg.addressing or addressing_style(cfg.endpoint)},  # type: ignore[arg-type]
                    max_pool_connections=CONCURRENCY + 4,
                    # Newer botocore adds CRC headers to every request; many S3-compatible
                    # servers (older minio, Ceph) reject them. Checksums only where required,
                    # unless --s3-checksum asks for one on every PUT and part (Object Lock).
                    request_checksum_calculation="when_supported" if cfg.checksum else "when_required",
                    response_checksum_validation="when_required",
                    **extra,
                ),
                **kwargs,
            )

    def close(self) -> None:
        if self._ca_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._ca_file)
            self._ca_file = None
        client = getattr(self, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def __enter__(self) -> S3Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _step(self, what: str, call: Callable[[Deadline], T]) -> T:
        """Run ``call`` under the store's policy; any failure becomes one :class:`S3Error`."""
        try:
            return self.policy.run(call, what=what, stop=self.stop, retryable=_retryable, budget=self.phase,
                                   on_retry=lambda n, err, wait: log.warning(
                                       f"{what} failed, retried {n - 1} times",
                                       extra=kv(error=str(err), retry_in=f"{wait:.1f}s")))
        except Stopped:
            raise
        except S3Error:
            raise
        except SidekickError as err:  # DeadlineExceeded
            raise S3Error(str(err), transient=True) from None

    # --- bucket -------------------------------------------------------------------------
    def check_bucket(self) -> None:
        from botocore.exceptions import ClientError

        bucket = self.config.bucket
        if not bucket:
            raise S3Error("no S3 bucket given (--s3-bucketName)")

        def head(_deadline: Deadline) -> None:
            try:
                self.client.head_bucket(Bucket=bucket)
            except ClientError as err:
                status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                code = str(err.response.get("Error", {}).get("Code", ""))
                if status == 404 or code in {"404", "NoSuchBucket"}:
                    raise S3Error(f"bucket {bucket} is not found") from None
                if status == 403:
                    raise S3Error(f"access to bucket {bucket} denied (check the S3 keys): "
                                  f"{describe_error(err)}") from None
                raise _error(f"failed to check s3 bucket {bucket}", err) from None
            except Exception as err:
                raise _error(f"failed to check s3 bucket {bucket}", err) from None

        self._step(f"S3 HeadBucket {bucket}", head)

    def versioning_enabled(self) -> bool:
        def get(_deadline: Deadline) -> bool:
            try:
                status = self.client.get_bucket_versioning(Bucket=self.config.bucket).get("Status")
            except Exception as err:
                raise _error("cannot read bucket versioning", err) from None
            return status == "Enabled"

        try:
            return self._step("S3 GetBucketVersioning", get)
        except S3Error as err:
            log.debug("cannot read bucket versioning: %s", err)
            return False

    def object_size(self, key: str) -> int | None:
        """Size of ``key``, or None when absent (other failures are errors)."""
        try:
            size = self.head(key).size
        except S3Error as err:
            if err.missing:
                return None
            raise
        return size

    def head(self, key: str) -> ObjectHead:
        def head(_deadline: Deadline) -> ObjectHead:
            try:
                answer = self.client.head_object(Bucket=self.config.bucket, Key=key, **self.config.sse_c_args())
            except Exception as err:
                raise _error(f"cannot read object {key}", err) from None
            return ObjectHead(int(answer.get("ContentLength", 0)), dict(answer.get("Metadata", {}) or {}),
                              str(answer.get("ETag", "") or ""))

        return self._step(f"S3 HeadObject {key}", head)

    def object_lock_enabled(self) -> bool:
        """Whether the bucket was created with Object Lock (one request; False when unsure)."""
        def get(_deadline: Deadline) -> bool:
            try:
                config = self.client.get_object_lock_configuration(Bucket=self.config.bucket)
            except Exception as err:
                raise _error("cannot read the bucket's Object Lock configuration", err) from None
            return config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

        try:
            return self._step("S3 GetObjectLockConfiguration", get)
        except S3Error as err:
            log.debug("no Object Lock configuration: %s", err)
            return False

    def lock_of(self, key: str, now: dt.datetime) -> str | None:
        """Why ``key`` may not be deleted now (a retention date, a legal hold), or None."""
        def head(_deadline: Deadline) -> dict[str, Any]:
            try:
                return dict(self.client.head_object(Bucket=self.config.bucket, Key=key))
            except Exception as err:
                raise _error(f"cannot read object {key}", err) from None

        answer = self._step(f"S3 HeadObject {key}", head)
        if answer.get("ObjectLockLegalHoldStatus") == "ON":
            return "legal hold"
        until = answer.get("ObjectLockRetainUntilDate")
        if isinstance(until, dt.datetime) and until > now:
            return f"retained until {until.isoformat()}"
        return None

    # --- upload -------------------------------------------------------------------------
    def upload_file(self, path: Path, key: str, *, metadata: dict[str, str],
                    on_bytes: Callable[[int], None] | None = None, content_type: str = CONTENT_TYPE) -> None:
        """Upload ``path``: one PutObject up to ``PART_SIZE``, else multipart with parts in
        parallel (an unfinished upload is aborted)."""
        size = path.stat().st_size
        self.phase.extend(self.budgets.for_bytes(size))
        args = {"ContentType": content_type, "Metadata": metadata, **self.config.upload_args()}

        def send() -> None:
            if size <= PART_SIZE:
                with open(path, "rb") as body:
                    self.client.put_object(Bucket=self.config.bucket, Key=key, Body=body, **args)
                if on_bytes is not None:
                    on_bytes(size)
                return
            from s3transfer.manager import TransferManager

            with TransferManager(self.client, _transfer_config()) as manager:
                manager.upload(str(path), self.config.bucket, key, extra_args=args,
                               subscribers=[cast("BaseSubscriber", _Progress(on_bytes))]).result()

        def put(deadline: Deadline) -> None:
            deadline.extend(self.budgets.seconds(S3_TRANSFER - S3_REQUEST) + self.budgets.for_bytes(size))
            try:
                bounded(send)
            except Exception as err:
                raise _error("", err) from None

        try:
            self._step(f"S3 upload {key}", put)
        finally:
            self._abort_unfinished()

    def _upload_created(self, parsed: dict[str, Any], **_: Any) -> None:
        if parsed.get("UploadId"):
            self._uploads[str(parsed["UploadId"])] = str(parsed.get("Key", ""))

    @staticmethod
    def _note_upload_id(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["sidekick_upload_id"] = params.get("UploadId")

    def _upload_ended(self, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        status = getattr(http_response, "status_code", 500)
        if status < 300 or status == 404:  # completed, aborted, or already gone
            self._uploads.pop(str(context.get("sidekick_upload_id")), None)

    def _abort_unfinished(self) -> None:
        """Abort this store's multipart uploads a cancelled attempt left (never another
        node's upload of the same key), within a few seconds of its own."""
        if not self._uploads:
            return
        deadline = Deadline(self.budgets.seconds(ABORT_BUDGET), what="S3 AbortMultipartUpload")
        with contextlib.suppress(Exception), Guard(deadline, StopRequest()):
            for upload_id, key in list(self._uploads.items()):
                self.client.abort_multipart_upload(Bucket=self.config.bucket, Key=key, UploadId=upload_id)
                self._uploads.pop(upload_id, None)
                log.info("aborted an unfinished multipart upload", extra=kv(key=key))

    # --- listing and delete ---------------------------------------------------------------
    def list_objects(self, prefix: str, *, recursive: bool) -> list[ObjectInfo]:
        """Every object under ``prefix`` (each page a step); non-recursive hides "sub-folders"."""
        params: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": prefix}
        if not recursive:
            params["Delimiter"] = "/"
        found: list[ObjectInfo] = []
        token: str | None = None
        while True:
            page_params = {**params, "ContinuationToken": token} if token else params

            def page(_deadline: Deadline, page_params: dict[str, Any] = page_params) -> dict[str, Any]:
                try:
                    return dict(self.client.list_objects_v2(**page_params))
                except Exception as err:
                    raise _error(f"failed to list objects in bucket {self.config.bucket}", err) from None

            answer = self._step("S3 ListObjectsV2", page)
            found.extend(ObjectInfo(item["Key"], int(item.get("Size", 0)), _timestamp(item.get("LastModified")))
                         for item in answer.get("Contents", []) or [])
            token = answer.get("NextContinuationToken") if answer.get("IsTruncated") else None
            if not token:
                return found

    def delete_keys(self, keys: Iterable[str]) -> list[str]:
        """Delete ``keys`` with DeleteObjects, 1,000 a call; return the keys deleted.

        Keys S3 refused are logged and left out of the result; a failed call raises.
        """
        pending = list(dict.fromkeys(keys))
        deleted: list[str] = []
        for start in range(0, len(pending), DELETE_BATCH):
            batch = pending[start : start + DELETE_BATCH]

            def delete(_deadline: Deadline, batch: list[str] = batch) -> dict[str, Any] | None:
                try:
                    return dict(self.client.delete_objects(
                        Bucket=self.config.bucket,
                        Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                    ))
                except Exception as err:
                    if _not_implemented(err):
                        return None
                    raise _error(f"failed to delete objects in bucket {self.config.bucket}", err) from None

            response = self._step("S3 DeleteObjects", delete)
            if response is None:
                # Some S3-compatible stores (GCS's XML API) lack DeleteObjects.
                log.info("DeleteObjects not supported here: deleting one object at a time")
                deleted.extend(self._delete_one_by_one(batch))
                continue
            failed = {e.get("Key", ""): e for e in response.get("Errors", []) or []}
            for key, error in failed.items():
                log.warning("S3 refused to delete an object",
                            extra=kv(key=key, code=error.get("Code", ""), error=error.get("Message", "")))
            deleted.extend(k for k in batch if k not in failed)
        return deleted

    def _delete_one_by_one(self, keys: list[str]) -> list[str]:
        deleted = []
        for key in keys:
            def delete(_deadline: Deadline, key: str = key) -> None:
                try:
                    self.client.delete_object(Bucket=self.config.bucket, Key=key)
                except Exception as err:
                    raise _error(f"cannot delete {key}", err) from None

            try:
                self._step(f"S3 DeleteObject {key}", delete)
            except S3Error as err:
                log.warning("S3 refused to delete an object", extra=kv(key=key, error=str(err)))
                continue
            deleted.append(key)
        return deleted

    # --- download -----------------------------------------------------------------------
    def download_to(self, key: str, dest: Path, *, on_bytes: Callable[[int], None] | None = None) -> str:
        """Download ``key`` to ``dest`` (temp name, fsync, rename, mode 0600); return its sha256.

        When the object carries ``archive-sha256`` metadata the bytes must match it, else
        nothing replaces ``dest`` (an age-encrypted object's metadata is of its plaintext:
        :func:`download_snapshot` checks that after decryption).
        """
        found = self.head(key)
        expected = "" if found.metadata.get(ENCRYPTION_META) else found.metadata.get(ARCHIVE_SHA_META, "")
        return self.fetch(key, dest, size=found.size, expected=expected, etag=found.etag, on_bytes=on_bytes)

    def fetch(self, key: str, dest: Path, *, size: int, expected: str, etag: str = "",
              on_bytes: Callable[[int], None] | None = None, scratch: bool = False) -> str:
        """:meth:`download_to` once the object's size, expected sha256 and ETag are known.

        An object larger than ``PART_SIZE`` comes in ranged GETs, ``CONCURRENCY`` at a time,
        each with ``If-Match: etag`` so that parts of two versions never make one file.
        ``scratch``: ``dest`` is a temp name its caller removes once read (the ciphertext of an
        encrypted snapshot, which age authenticates): written in place, neither fsynced nor
        hashed, so it costs one write; the result is then "".
        """
        expected = expected.lower()
        self.phase.extend(self.budgets.for_bytes(size))

        def into(out: BinaryIO) -> None:
            try:
                bounded(lambda: self._receive(key, out.fileno(), size=size, etag=etag, on_bytes=on_bytes))
            except Exception as err:
                raise _error(f"failed to download {key}", err) from None

        def get(deadline: Deadline) -> str:
            deadline.extend(self.budgets.seconds(S3_TRANSFER - S3_REQUEST) + self.budgets.for_bytes(size))
            if scratch:
                with _scratch_output(dest) as out:
                    into(out)
                return ""
            with atomic_output(dest, mode=0o600) as pending:
                into(pending.file)
                pending.file.flush()
                digest = file_sha256(pending.temp)  # parts arrive out of order: hash once complete
                if expected and digest != expected:
                    raise S3Error(f"downloaded {key} does not match its archive-sha256 metadata "
                                  f"(got {digest}, expected {expected})")
            return digest

        return self._step(f"S3 download {key}", get)

    def _receive(self, key: str, fd: int, *, size: int, etag: str,
                 on_bytes: Callable[[int], None] | None) -> None:
        """GET ``key`` into ``fd``: whole, or in :func:`part_ranges` on up to ``CONCURRENCY``
        threads (this one included); the first failure stops the others and is raised.

        Not s3transfer: its download keeps an IO queue of pieces that a separate thread
        writes, makes a HeadObject of its own, and its import pulls in ``multiprocessing``.
        Above the client's RSS, it cost 6 MiB for the footprint bench's 20 MB archive and 12 MiB
        for a 256 MiB object; this way 2.5 MiB for either (each thread writes its own pieces),
        at the same speed against moto.
        """
        ranges = part_ranges(size)
        if not ranges:
            self._get_into(key, fd, None, etag="", on_bytes=on_bytes, failed=threading.Event())
            return
        queue = iter(ranges)
        lock = threading.Lock()
        failed = threading.Event()
        errors: list[BaseException] = []

        def work() -> None:
            while not failed.is_set():
                with lock:
                    span = next(queue, None)
                if span is None:
                    return
                try:
                    self._get_into(key, fd, span, etag=etag, on_bytes=on_bytes, failed=failed)
                except BaseException as err:  # raised on the calling thread below
                    errors.append(err)
                    failed.set()

        helpers = [threading.Thread(target=work, name="s3-get", daemon=True)
                   for _ in range(min(CONCURRENCY, len(ranges)) - 1)]
        for helper in helpers:
            helper.start()
        work()
        for helper in helpers:
            helper.join()
        if errors:
            raise errors[0]

    def _get_into(self, key: str, fd: int, span: tuple[int, int] | None, *, etag: str,
                  on_bytes: Callable[[int], None] | None, failed: threading.Event) -> None:
        """One GetObject (of ``span``, inclusive, when given) written to ``fd`` at its offset."""
        args = dict(self.config.sse_c_args())
        first, length = 0, None
        if span is not None:
            first, length = span[0], span[1] - span[0] + 1
            args["Range"] = f"bytes={span[0]}-{span[1]}"
            if etag:
                args["IfMatch"] = etag
        body = self.client.get_object(Bucket=self.config.bucket, Key=key, **args)["Body"]
        offset = first
        try:
            while piece := body.read(READ_PIECE):  # botocore checks the Content-Length at the end
                if failed.is_set():
                    return
                if length is not None and offset + len(piece) > first + length:
                    raise S3Error(f"S3 sent more than the {length} bytes asked for at offset {first} of {key}")
                _write_at(fd, piece, offset)
                offset += len(piece)
                if on_bytes is not None:
                    on_bytes(len(piece))
        finally:
            body.close()
        if length is not None and offset != first + length:
            raise S3Error(f"S3 sent {offset - first} of the {length} bytes asked for at offset {first} of {key}",
                          transient=True)


def _parse_timestamp(value: object) -> dt.datetime:
    """ISO 8601 (what S3 sends) the fast way; anything else botocore's way."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parsed = dt.datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    from botocore.utils import parse_timestamp

    return parse_timestamp(value)  # type: ignore[arg-type]  # it takes numbers too


def _timestamp(value: object) -> float | None:
    return value.timestamp() if hasattr(value, "timestamp") else None


@contextlib.contextmanager
def _scratch_output(path: Path) -> Iterator[BinaryIO]:
    """``path`` opened for writing from scratch (mode 0600); removed if the block fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise


def _not_implemented(err: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(err, ClientError):
        return False
    code = str(err.response.get("Error", {}).get("Code", ""))
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"NotImplemented", "501"} or status == 501


def stripped_ext(key: str) -> str:
    """Go's ``strings.TrimSuffix(key, path.Ext(key))``: drop the last element's extension."""
    base = posixpath.basename(key)
    dot = base.rfind(".")
    return key[: len(key) - (len(base) - dot)] if dot >= 0 else key


def find_snapshot_key(store: S3Store, name: str) -> tuple[str, str]:
    """The object for snapshot ``name``: (object key, local file name).

    As the original: list ``[folder/]name`` without recursion, take the first key whose
    extension-stripped form equals that prefix, directly or URL-unescaped.
    """
    prefix = store.config.key(name)
    for obj in store.list_objects(prefix, recursive=False):
        # <name>.zip.age (age-encrypted) is the same snapshot as <name>.zip
        plain = obj.key[: -len(crypto.AGE_SUFFIX)] if crypto.is_encrypted_archive(obj.key) else obj.key
        stripped = stripped_ext(plain)
        log.debug("found key", extra=kv(key=obj.key, stripped=stripped))
        if stripped == prefix:
            return obj.key, posixpath.basename(obj.key)
        unescaped = urllib.parse.unquote_plus(stripped)
        if unescaped == prefix:
            return obj.key, posixpath.basename(urllib.parse.unquote_plus(obj.key))
    raise S3Error("failed to download s3 backup: no backups found")


def download_snapshot(store: S3Store, name: str, backup_dir: Path, *, on_bytes: Callable[[int], None] | None = None,
                      age: crypto.AgeSettings | None = None) -> Path:
    """Fetch snapshot ``name`` into ``backup_dir/<basename of the key>`` (mode 0600), verified
    against the object's ``archive-sha256`` metadata when present; return the local path.

    An age-encrypted ``<name>.zip.age`` lands decrypted at ``<name>.zip``, where RKE looks
    (the ciphertext goes to a temp name first and is removed); without an identity, or with
    one that does not match, nothing is written.
    """
    key, filename = find_snapshot_key(store, name)
    if "/" in filename or filename in {"", ".", ".."}:
        raise S3Error(f"refusing to write object {key!r} outside {backup_dir}")
    found = store.head(key)
    size, metadata = found.size, found.metadata
    if not (crypto.is_encrypted_archive(filename) or metadata.get(ENCRYPTION_META)):
        dest = backup_dir / filename
        log.info("downloading snapshot from S3", extra=kv(key=key, bucket=store.config.bucket, dest=str(dest)))
        digest = store.fetch(key, dest, size=size, expected=metadata.get(ARCHIVE_SHA_META, ""), etag=found.etag,
                             on_bytes=on_bytes)
        log.info("downloaded snapshot from S3", extra=kv(key=key, size=dest.stat().st_size, sha256=digest))
        return dest
    identities = (age or crypto.AgeSettings()).require_identities(f"snapshot {name} ({key})")
    dest = backup_dir / crypto.plain_name(filename)
    cipher = temp_path(backup_dir / filename)
    log.info("downloading encrypted snapshot from S3", extra=kv(key=key, bucket=store.config.bucket, dest=str(dest),
                                                                encryption=metadata.get(ENCRYPTION_META, crypto.AGE)))
    try:
        store.fetch(key, cipher, size=size, expected="", etag=found.etag, on_bytes=on_bytes, scratch=True)
        digest = crypto.decrypt_file(cipher, dest, identities, what=key,
                                     expected_sha256=metadata.get(ARCHIVE_SHA_META, ""), stop=store.stop)
    finally:
        with contextlib.suppress(FileNotFoundError):
            cipher.unlink()
    log.info("downloaded snapshot from S3", extra=kv(key=key, size=dest.stat().st_size, sha256=digest))
    return dest
