"""S3 for snapshots: client setup, upload, paginated listing, batched delete, download.

Compatibility (CONTRACT 3, 11): TLS by default (RKE passes ``host[:port]`` without a scheme;
an explicit ``http://``/``https://`` is accepted too), keys from flags or env and base64-decoded
when they decode, the instance's IAM role when no keys are given (default endpoint
``s3.amazonaws.com``), ``--s3-endpoint-ca`` as base64 PEM or a file path, virtual-host
addressing for ``aliyun`` endpoints, a missing bucket is ``bucket <name> is not found``.

Better than the original: every call has connect/read timeouts; listings are paginated;
deletes go 1,000 keys per DeleteObjects call; uploads are multipart from the file with parallel
parts and aborted on failure (s3transfer registers the abort when it creates the upload);
downloads go to a temp name and are checked against the ``archive-sha256`` metadata written
at upload. Memory bound of a transfer: parts are read from the file while they are sent
(s3transfer's ``ReadFileChunk``), never held whole, so an upload costs about
``CONCURRENCY`` threads * their 1 MiB read buffers plus the IO queue of a download
(``max_io_queue * io_chunksize`` = 100 * 256 KiB), whatever the archive size; the bench
measures the whole ``save --once`` with upload below 100 MiB RSS.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import posixpath
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidekick import log as sklog
from sidekick.errors import SidekickError
from sidekick.etcd.archive import file_sha256
from sidekick.host.files import atomic_output
from sidekick.log import kv

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from sidekick.etcd.options import Options

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "s3.amazonaws.com"
DEFAULT_REGION = "us-east-1"
CONTENT_TYPE = "application/zip"
SNAPSHOT_SHA_META = "snapshot-sha256"
ARCHIVE_SHA_META = "archive-sha256"
DELETE_BATCH = 1000
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
PART_SIZE = 16 << 20
CONCURRENCY = 4


class S3Error(SidekickError):
    """Any S3 failure; the message is the cause in one line."""


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


@dataclass(frozen=True)
class S3Config:
    endpoint: str
    bucket: str
    region: str = ""
    folder: str = ""
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    endpoint_ca: str = field(default="", repr=False)

    @classmethod
    def from_options(cls, opts: Options) -> S3Config:
        access = decode_maybe_base64(opts.s3_access_key)
        secret = decode_maybe_base64(opts.s3_secret_key)
        sklog.register_secret(access)
        sklog.register_secret(secret)
        return cls(
            endpoint=opts.s3_endpoint,
            bucket=opts.s3_bucket_name,
            region=opts.s3_region,
            folder=opts.s3_folder.strip("/"),
            access_key=access,
            secret_key=secret,
            endpoint_ca=opts.s3_endpoint_ca,
        )

    def key(self, filename: str) -> str:
        return f"{self.folder}/{filename}" if self.folder else filename


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
class ObjectInfo:
    key: str
    size: int


class S3Store:
    """One bucket (and folder) on one endpoint. ``close()`` removes the CA temp file."""

    def __init__(self, config: S3Config, *, client: S3Client | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT) -> None:
        self.config = config
        self._ca_file: str | None = None
        try:
            self.client: S3Client = client or self._make_client(connect_timeout, read_timeout)
        except S3Error:
            self.close()
            raise
        except Exception as err:  # e.g. an endpoint that is not a URL
            self.close()
            raise S3Error(f"cannot set up the S3 client for {config.endpoint or DEFAULT_ENDPOINT}: "
                          f"{describe_error(err)}") from None

    def _make_client(self, connect_timeout: float, read_timeout: float) -> S3Client:
        import boto3
        from botocore.config import Config

        cfg = self.config
        verify: bool | str = True  # explicit: never AWS_CA_BUNDLE from the environment
        if cfg.endpoint_ca:
            pem = load_endpoint_ca(cfg.endpoint_ca)
            fd, self._ca_file = tempfile.mkstemp(prefix="sidekick-s3-ca-", suffix=".pem")
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
            verify = self._ca_file
        kwargs: dict[str, Any] = {}
        if cfg.access_key or cfg.secret_key:
            kwargs = {"aws_access_key_id": cfg.access_key, "aws_secret_access_key": cfg.secret_key}
        else:
            log.info("no S3 keys given: using the instance's IAM role")
        session = boto3.session.Session()
        return session.client(
            "s3",
            endpoint_url=endpoint_url(cfg.endpoint),
            region_name=cfg.region or DEFAULT_REGION,
            verify=verify,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": addressing_style(cfg.endpoint)},  # type: ignore[arg-type]
                max_pool_connections=CONCURRENCY + 4,
                # Newer botocore adds CRC headers to every request; many S3-compatible
                # servers (older minio, Ceph) reject them. Checksums only where required.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
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

    # --- bucket -------------------------------------------------------------------------
    def check_bucket(self) -> None:
        from botocore.exceptions import ClientError

        bucket = self.config.bucket
        if not bucket:
            raise S3Error("no S3 bucket given (--s3-bucketName)")
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(err.response.get("Error", {}).get("Code", ""))
            if status == 404 or code in {"404", "NoSuchBucket"}:
                raise S3Error(f"bucket {bucket} is not found") from None
            if status == 403:
                raise S3Error(f"access to bucket {bucket} denied (check the S3 keys): {describe_error(err)}") from None
            raise S3Error(f"failed to check s3 bucket {bucket}: {describe_error(err)}") from None
        except Exception as err:
            raise S3Error(f"failed to check s3 bucket {bucket}: {describe_error(err)}") from None

    def versioning_enabled(self) -> bool:
        try:
            return self.client.get_bucket_versioning(Bucket=self.config.bucket).get("Status") == "Enabled"
        except Exception as err:
            log.debug("cannot read bucket versioning: %s", describe_error(err))
            return False

    def object_size(self, key: str) -> int | None:
        """Size of ``key``, or None when absent or not readable (the original ignores errors)."""
        try:
            return int(self.client.head_object(Bucket=self.config.bucket, Key=key)["ContentLength"])
        except Exception:
            return None

    # --- upload -------------------------------------------------------------------------
    def upload_file(self, path: Path, key: str, *, metadata: dict[str, str],
                    on_bytes: Callable[[int], None] | None = None) -> None:
        """One multipart upload attempt (parts in parallel, aborted by s3transfer on failure)."""
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                max_concurrency=CONCURRENCY, use_threads=True)
        try:
            self.client.upload_file(
                str(path), self.config.bucket, key,
                ExtraArgs={"ContentType": CONTENT_TYPE, "Metadata": metadata},
                Config=config, Callback=on_bytes,
            )
        except Exception as err:
            cause = err.__cause__ if err.__cause__ is not None and type(err).__name__ == "S3UploadFailedError" else err
            raise S3Error(describe_error(cause)) from None

    # --- listing and delete ---------------------------------------------------------------
    def list_objects(self, prefix: str, *, recursive: bool) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (all pages); non-recursive hides "sub-folders"."""
        paginator = self.client.get_paginator("list_objects_v2")
        params: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": prefix}
        if not recursive:
            params["Delimiter"] = "/"
        try:
            for page in paginator.paginate(**params):
                for item in page.get("Contents", []) or []:
                    yield ObjectInfo(item["Key"], int(item.get("Size", 0)))
        except S3Error:
            raise
        except Exception as err:
            raise S3Error(f"failed to list objects in bucket {self.config.bucket}: {describe_error(err)}") from None

    def delete_keys(self, keys: Iterable[str]) -> list[str]:
        """Delete ``keys`` with DeleteObjects, 1,000 a call; return the keys deleted.

        Keys S3 refused are logged and left out of the result; a failed call raises.
        """
        pending = list(dict.fromkeys(keys))
        deleted: list[str] = []
        for start in range(0, len(pending), DELETE_BATCH):
            batch = pending[start : start + DELETE_BATCH]
            try:
                response = self.client.delete_objects(
                    Bucket=self.config.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except Exception as err:
                if not _not_implemented(err):
                    raise S3Error(f"failed to delete objects in bucket {self.config.bucket}: "
                                  f"{describe_error(err)}") from None
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
            try:
                self.client.delete_object(Bucket=self.config.bucket, Key=key)
            except Exception as err:
                log.warning("S3 refused to delete an object", extra=kv(key=key, error=describe_error(err)))
                continue
            deleted.append(key)
        return deleted

    # --- download -----------------------------------------------------------------------
    def head_metadata(self, key: str) -> tuple[int, dict[str, str]]:
        try:
            head = self.client.head_object(Bucket=self.config.bucket, Key=key)
        except Exception as err:
            raise S3Error(f"cannot read object {key}: {describe_error(err)}") from None
        return int(head.get("ContentLength", 0)), dict(head.get("Metadata", {}) or {})

    def download_to(self, key: str, dest: Path, *, on_bytes: Callable[[int], None] | None = None) -> str:
        """Download ``key`` to ``dest`` (temp name, fsync, rename, mode 0600); return its sha256.

        When the object carries ``archive-sha256`` metadata the bytes must match it, else
        nothing replaces ``dest``.
        """
        from boto3.s3.transfer import TransferConfig

        _, metadata = self.head_metadata(key)
        expected = metadata.get(ARCHIVE_SHA_META, "").lower()
        config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                max_concurrency=CONCURRENCY, use_threads=True)
        with atomic_output(dest, mode=0o600) as pending:
            try:
                self.client.download_fileobj(self.config.bucket, key, pending.file, Config=config,
                                             Callback=on_bytes)
            except Exception as err:
                raise S3Error(f"failed to download {key}: {describe_error(err)}") from None
            pending.file.flush()
            digest = file_sha256(pending.temp)  # parts arrive out of order: hash once complete
            if expected and digest != expected:
                raise S3Error(f"downloaded {key} does not match its archive-sha256 metadata "
                              f"(got {digest}, expected {expected})")
        return digest


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
        stripped = stripped_ext(obj.key)
        log.debug("found key", extra=kv(key=obj.key, stripped=stripped))
        if stripped == prefix:
            return obj.key, posixpath.basename(obj.key)
        unescaped = urllib.parse.unquote_plus(stripped)
        if unescaped == prefix:
            return obj.key, posixpath.basename(urllib.parse.unquote_plus(obj.key))
    raise S3Error("failed to download s3 backup: no backups found")


def download_snapshot(store: S3Store, name: str, backup_dir: Path,
                      *, on_bytes: Callable[[int], None] | None = None) -> Path:
    """Fetch snapshot ``name`` into ``backup_dir/<basename of the key>`` (mode 0600), verified
    against the object's ``archive-sha256`` metadata when present; return the local path."""
    key, filename = find_snapshot_key(store, name)
    if "/" in filename or filename in {"", ".", ".."}:
        raise S3Error(f"refusing to write object {key!r} outside {backup_dir}")
    dest = backup_dir / filename
    log.info("downloading snapshot from S3", extra=kv(key=key, bucket=store.config.bucket, dest=str(dest)))
    digest = store.download_to(key, dest, on_bytes=on_bytes)
    log.info("downloaded snapshot from S3", extra=kv(key=key, size=dest.stat().st_size, sha256=digest))
    return dest
