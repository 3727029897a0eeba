"""``etcd-backup download``: fetch a snapshot from the serving peer (3.7) or from S3 (3.5).

From a peer: ``GET https://<local-endpoint>:2379/<name>`` with the node's client certificate,
written to ``/backup/<name>`` (mode 0600). Better than the original, which trusted any server
and wrote straight to the final path:

- the server's certificate chain is verified against ``--cacert`` before the request is sent
  (:mod:`sidekick.etcd.tlsverify` explains why host name and purpose are not checked);
- bytes go to a temporary name, renamed only when the size matches ``Content-Length`` and the
  SHA-256 matches the server's ``Repr-Digest`` when it sends one; a truncated or tampered
  transfer is an error that leaves any previous file untouched;
- transient failures (refused, reset, timeout, 5xx, truncation) are retried with capped
  exponential backoff, resuming with ``Range``/``If-Range`` where the last attempt stopped;
  a 404, an untrusted peer or a refused client certificate are not retried;
- receiving, hashing and writing overlap on three threads (:mod:`sidekick.etcd.stream`):
  memory is ``DEPTH * CHUNK`` (8 MiB) whatever the size; progress lines every few seconds.

From S3: list ``[folder/]<name>``, download the matching key to ``/backup/<basename>`` (verified
against its ``archive-sha256`` metadata), and for a ``.zip`` extract ``/backup/<name>`` (CRC and
manifest SHA-256 checked) as the original does.

``SIDEKICK_SERVE_PORT`` (tests only) changes the peer port from 2379.
"""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import os
import signal
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from sidekick.errors import SidekickError, UsageError
from sidekick.etcd import tlsverify, verified
from sidekick.etcd.extract import (
    SNAPSHOT_DIR,
    clear_stale_temps,
    destination,
    extract_snapshot,
    snapshot_entry,
    stop_on_signal,
)
from sidekick.etcd.options import Options
from sidekick.etcd.progress import Progress
from sidekick.etcd.retry import Backoff, s3_backoff
from sidekick.etcd.serve import serve_port
from sidekick.etcd.stream import HashingWriter
from sidekick.etcd.verified import Digest
from sidekick.host.files import atomic_output
from sidekick.log import kv
from sidekick.paths import host_path

log = logging.getLogger(__name__)

RETRIES = 4  # attempts after the first, as the original's --backup-retries default
CONNECT_TIMEOUT = 10.0
IO_TIMEOUT = 60.0
MAX_HEAD = 64 << 10
CHUNK = 2 << 20
DEPTH = 4
USER_AGENT = "sidekick-etcd-download"

# TLS alerts that mean "the peer will not accept us": retrying cannot help.
# (DECRYPT_ERROR: the server could not verify our certificate's signature, another CA.)
_REFUSED_ALERTS = (
    "CERTIFICATE", "UNKNOWN_CA", "DECRYPT_ERROR", "ACCESS_DENIED", "HANDSHAKE_FAILURE", "PROTOCOL_VERSION",
)


class Transient(Exception):
    """Worth another attempt (the message says what happened)."""


class Restart(Transient):
    """Worth another attempt from byte zero (the server's file changed or a range failed)."""


class Fatal(SidekickError):
    """Not worth retrying."""


@dataclass
class Peer:
    host: str
    port: int
    name: str

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    @property
    def path(self) -> str:
        return "/" + urllib.parse.quote(self.name, safe=":+@=,_-.~")

    @property
    def url(self) -> str:
        return f"https://{self.netloc}{self.path}"


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    leftover: bytes

    def content_length(self) -> int:
        text = self.headers.get("content-length", "")
        if not text.isdigit():
            raise Fatal(f"peer sent no valid Content-Length ({text!r}); refusing a body of unknown size")
        return int(text)


def read_head(sock: ssl.SSLSocket) -> Response:
    """Read the response head; bytes after it (the body's start) are kept in ``leftover``."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise Fatal("peer response head is larger than 64 KiB")
        piece = sock.recv(16384)
        if not piece:
            raise Transient("peer closed the connection before answering")
        data += piece
    head, _, leftover = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise Fatal(f"peer did not answer HTTP: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, leftover)


def repr_digest_sha256(header: str | None) -> str | None:
    """The SHA-256 hex from ``Repr-Digest: sha-256=:<base64>:`` (RFC 9530), if any."""
    for member in (header or "").split(","):
        algorithm, _, value = member.strip().partition("=")
        if algorithm.strip().lower() == "sha-256" and value.startswith(":") and value.endswith(":"):
            try:
                raw = base64.b64decode(value[1:-1], validate=True)
            except (binascii.Error, ValueError):
                return None
            return raw.hex() if len(raw) == 32 else None
    return None


def parse_content_range(header: str | None) -> tuple[int, int, int] | None:
    """``bytes START-END/TOTAL`` -> (start, end, total)."""
    if not header or not header.startswith("bytes "):
        return None
    span, _, total = header[6:].partition("/")
    first, _, last = span.partition("-")
    if not (first.isdigit() and last.isdigit() and total.isdigit()):
        return None
    return int(first), int(last), int(total)


@dataclass
class _State:
    """What survives between attempts: the temp file, how far it got, and what it is of."""

    fd: int
    writer: HashingWriter
    etag: str | None = None
    total: int | None = None
    sha256: str | None = None
    subject: str = ""

    @property
    def received(self) -> int:
        return self.writer.size

    def restart(self) -> None:
        self.writer.abort()
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.writer = HashingWriter(self.fd, chunk=CHUNK, depth=DEPTH)
        self.etag = self.total = self.sha256 = None


class PeerDownload:
    """One peer download: attempts, resume, verification. ``run()`` returns the digest."""

    def __init__(
        self,
        peer: Peer,
        dest: Path,
        *,
        roots: Sequence[x509.Certificate],
        context: ssl.SSLContext,
        retries: int = RETRIES,
        backoff: Backoff,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.peer = peer
        self.dest = dest
        self.roots = roots
        self.context = context
        self.retries = retries
        self.backoff = backoff
        self.sleep = sleep

    def run(self) -> Digest:
        known = verified.recall(self.dest)
        if known is not None and self._already_here(known):
            log.info("snapshot already here and verified as the peer's: not downloaded again",
                     extra=kv(path=self.dest, size=known.size, sha256=known.sha256))
            return known
        progress = Progress(log, "download", peer=self.peer.netloc, name=self.peer.name)
        with atomic_output(self.dest, mode=0o600) as pending:
            fd = pending.file.fileno()
            state = _State(fd, HashingWriter(fd, chunk=CHUNK, depth=DEPTH))
            try:
                self._attempts(state, progress)
                digest = state.writer.finish()
            except BaseException:
                state.writer.abort()
                raise
            self._verify(state, digest)
        progress.finish(size=digest.size, sha256=digest.sha256, subject=state.subject)
        verified.record(self.dest, digest)
        return digest

    def _attempts(self, state: _State, progress: Progress) -> None:
        delays = iter(self.backoff.delays(self.retries))
        while True:
            try:
                self._attempt(state, progress)
                return
            except Transient as err:
                if isinstance(err, Restart) and state.received:
                    state.restart()
                    progress.done = 0
                delay = next(delays, None)
                if delay is None:
                    raise SidekickError(
                        f"failed to download snapshot {self.peer.name} from {self.peer.url} after "
                        f"{self.retries + 1} attempts: {err}"
                    ) from None
                log.warning("download attempt failed, retrying",
                            extra=kv(peer=self.peer.netloc, error=str(err), received=state.received,
                                     retry_in=f"{delay:.1f}s"))
                self.sleep(delay)

    def _connect(self) -> ssl.SSLSocket:
        try:
            raw = socket.create_connection((self.peer.host, self.peer.port), timeout=CONNECT_TIMEOUT)
        except OSError as err:
            raise Transient(f"cannot connect to {self.peer.netloc}: {err.strerror or err}") from None
        raw.settimeout(IO_TIMEOUT)
        try:
            return self.context.wrap_socket(raw)
        except ssl.SSLError as err:
            raw.close()
            raise _classify_tls(err, self.peer) from None
        except OSError as err:
            raw.close()
            raise Transient(f"TLS handshake with {self.peer.netloc} failed: {err.strerror or err}") from None

    def _request(self, sock: ssl.SSLSocket, method: str, headers: Sequence[str] = ()) -> Response:
        lines = [
            f"{method} {self.peer.path} HTTP/1.1",
            f"Host: {self.peer.netloc}",
            f"User-Agent: {USER_AGENT}",
            "Accept-Encoding: identity",
            "Connection: close",
            *headers,
        ]
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            return read_head(sock)
        except ssl.SSLError as err:
            raise _classify_tls(err, self.peer) from None
        except OSError as err:
            raise Transient(f"connection to {self.peer.netloc} failed: {err.strerror or err}") from None

    def _already_here(self, known: Digest) -> bool:
        """A verified copy exists (an earlier restore attempt): HEAD says if it is the same."""
        try:
            with self._connect() as sock:
                tlsverify.verify_chain(tlsverify.peer_chain(sock), self.roots)
                response = self._request(sock, "HEAD")
        except Transient:
            return False  # the GET attempts will retry and report
        same_size = response.headers.get("content-length") == str(known.size)
        sha = repr_digest_sha256(response.headers.get("repr-digest"))
        return response.status == 200 and same_size and sha == known.sha256

    def _attempt(self, state: _State, progress: Progress) -> None:
        with self._connect() as sock:
            leaf = tlsverify.verify_chain(tlsverify.peer_chain(sock), self.roots)
            state.subject = tlsverify.subject_of(leaf)
            resume = [f"Range: bytes={state.received}-", f"If-Range: {state.etag}"] if state.received and state.etag else []
            response = self._request(sock, "GET", resume)
            length = self._accept_response(state, response)
            progress.total = state.total
            self._receive(sock, state, response.leftover, length, progress)

    def _accept_response(self, state: _State, response: Response) -> int:
        """Check the status against what we asked; return the body length to read."""
        status = response.status
        if status == 404:
            raise Fatal(f"snapshot {self.peer.name} not found on peer {self.peer.netloc} (HTTP 404)")
        if status == 416 or (status == 200 and state.received):
            raise Restart(f"peer answered {status} to a resume request: starting over")
        if status >= 500:
            raise Transient(f"peer answered HTTP {status} {response.reason}")
        if status not in (200, 206):
            raise Fatal(f"peer {self.peer.netloc} answered HTTP {status} {response.reason}")
        length = response.content_length()
        etag = response.headers.get("etag")
        sha = repr_digest_sha256(response.headers.get("repr-digest"))
        if status == 206:
            span = parse_content_range(response.headers.get("content-range"))
            if (
                span is None
                or span[0] != state.received
                or span[2] != state.total
                or span[1] - span[0] + 1 != length
                or etag != state.etag
            ):
                raise Restart(f"peer sent an unexpected range ({response.headers.get('content-range')!r})")
        else:
            state.total = length
            state.etag = etag
            _reserve(state.fd, length)
        state.sha256 = sha or state.sha256
        return length

    def _receive(self, sock: ssl.SSLSocket, state: _State, leftover: bytes, length: int, progress: Progress) -> None:
        writer = state.writer
        left = length
        if leftover:
            buffer = writer.get_buffer()
            count = min(len(leftover), left)
            buffer[:count] = leftover[:count]
            writer.submit(buffer, count)
            left -= count
            progress.add(count)
        try:
            while left > 0:
                buffer = writer.get_buffer()
                view = memoryview(buffer)
                want = min(len(buffer), left)
                filled = 0
                try:
                    while filled < want:
                        got = sock.recv_into(view[filled:want])
                        if not got:
                            break
                        filled += got
                finally:
                    writer.submit(buffer, filled)  # whatever arrived is kept for a resume
                left -= filled
                progress.add(filled)
                if filled < want:
                    raise Transient(f"peer closed the connection with {left} of {length} bytes still to come")
        except ssl.SSLError as err:
            raise _classify_tls(err, self.peer) from None
        except OSError as err:
            raise Transient(f"transfer from {self.peer.netloc} broke off: {err.strerror or err}") from None

    def _verify(self, state: _State, digest: Digest) -> None:
        if state.total is not None and digest.size != state.total:
            raise SidekickError(f"downloaded {digest.size} bytes of snapshot {self.peer.name}, expected {state.total}")
        if state.sha256 and digest.sha256 != state.sha256:
            raise SidekickError(
                f"snapshot {self.peer.name} from {self.peer.netloc} does not match the SHA-256 the peer "
                f"announced (got {digest.sha256}, expected {state.sha256}); previous file kept"
            )


def _reserve(fd: int, length: int) -> None:
    """Claim the disk space before the transfer: a full disk fails now, in one clear line."""
    try:
        os.posix_fallocate(fd, 0, length)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise Fatal(f"not enough space in {SNAPSHOT_DIR} for the {length} byte snapshot") from None
        log.debug("cannot preallocate the download: %s", err)  # e.g. a filesystem without fallocate


def _classify_tls(err: ssl.SSLError, peer: Peer) -> Exception:
    reason = str(err.reason or err)
    if any(word in reason.upper() for word in _REFUSED_ALERTS):
        return Fatal(f"peer {peer.netloc} refused our TLS client certificate or protocol: {reason}")
    return Transient(f"TLS error with {peer.netloc}: {reason}")


def download_from_peer(
    name: str,
    host: str,
    *,
    cacert: Path,
    cert: Path,
    key: Path,
    port: int | None = None,
    retries: int = RETRIES,
    backoff: Backoff,
    sleep: Callable[[float], None] = time.sleep,
) -> Digest:
    """Download ``/backup/<name>`` from the peer ``host``, verified; return its digest."""
    dest = destination(snapshot_entry(name), SNAPSHOT_DIR)
    peer = Peer(host.strip(), port or serve_port(), name)
    roots = tlsverify.load_roots(cacert)
    context = tlsverify.client_context(cert, key)
    clear_stale_temps(dest)
    log.info("downloading snapshot from peer", extra=kv(url=peer.url, dest=dest))
    return PeerDownload(peer, dest, roots=roots, context=context, retries=retries, backoff=backoff,
                        sleep=sleep).run()


def fetch_from_s3(opts: Options, *, extract: bool) -> Path:
    """Download the snapshot object into /backup (retried); with ``extract``, unzip /backup/<name>."""
    from sidekick.etcd import s3

    config = s3.S3Config.from_options(opts)
    backup = host_path(SNAPSHOT_DIR)
    delays = iter(s3_backoff(opts.retry_wait).delays(RETRIES))
    with s3.S3Store(config) as store:
        store.check_bucket()
        s3.find_snapshot_key(store, opts.name)  # "no backups found" is final: not retried
        while True:
            progress = Progress(log, "S3 download", name=opts.name)
            try:
                path = s3.download_snapshot(store, opts.name, backup, on_bytes=progress.add)
                break
            except s3.S3Error as err:
                delay = next(delays, None)
                if delay is None:
                    raise
                log.warning("S3 download failed, retrying", extra=kv(error=str(err), retry_in=f"{delay:.1f}s"))
                time.sleep(delay)
    progress.finish(size=path.stat().st_size)
    if extract and path.name.endswith(".zip"):
        snapshot = extract_snapshot(opts.name, path)
        assert snapshot.digest is not None
        log.info("snapshot ready", extra=kv(path=f"{SNAPSHOT_DIR}/{opts.name}", size=snapshot.digest.size,
                                            sha256=snapshot.digest.sha256, source=snapshot.origin))
    return path


def run_download(opts: Options) -> int:
    if not opts.name:
        raise UsageError("--name is required: the snapshot to download")
    signal.signal(signal.SIGTERM, stop_on_signal)
    if opts.s3_backup:
        fetch_from_s3(opts, extract=True)
        return 0
    if not opts.local_endpoint:
        raise UsageError("give --local-endpoint (the serving peer) or --s3-backup")
    for flag, value in (("--cacert", opts.cacert), ("--cert", opts.cert), ("--key", opts.key)):
        if not value:
            raise UsageError(f"{flag} is required to download from a peer over mutual TLS")
    download_from_peer(
        opts.name,
        opts.local_endpoint,
        cacert=host_path(opts.cacert),
        cert=host_path(opts.cert),
        key=host_path(opts.key),
        backoff=s3_backoff(opts.retry_wait),
    )
    return 0
