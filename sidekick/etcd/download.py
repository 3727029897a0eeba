"""The peer side of a restore: fetch ``/backup/<name>`` from the node that serves it (3.7).

``GET https://<local-endpoint>:2379/<name>`` with the node's client certificate, written to
``/backup/<name>`` (mode 0600):

- the server's certificate chain is verified against ``--cacert`` before the request is sent
  (:mod:`sidekick.etcd.tlsverify` explains why host name and purpose are not checked);
- bytes go to a temporary name, renamed only when the size matches ``Content-Length`` and the
  SHA-256 matches the server's ``Repr-Digest`` when it sends one; a truncated or tampered
  transfer is an error that leaves any previous file untouched;
- transient failures (refused, reset, timeout, 5xx, truncation, a stalled peer) are retried
  under the peer policy of :mod:`sidekick.etcd.budgets`, resuming with ``Range``/``If-Range``
  where the last attempt stopped; a 404, an untrusted peer or a refused client certificate
  are not retried. The whole download has a total deadline, extended by the time the bytes
  need at the slowest acceptable rate once their number is known; progress lines show while
  it runs;
- HTTP framing is ``http.client``'s, over TLS records decrypted from memory
  (:mod:`sidekick.etcd.tlsbio`: one ``recv`` per socket-buffer-full); receiving, hashing and writing overlap on three threads
  (:mod:`sidekick.etcd.stream`): memory is ``DEPTH * CHUNK`` (4 MiB) whatever the size, and
  whole chunks go to the disk with ``O_DIRECT`` (the file is fsync-ed before its rename
  anyway; copying it through the page cache was the client's largest CPU cost).
"""

from __future__ import annotations

import base64
import binascii
import errno
import http.client
import logging
import os
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sidekick.deadline import Deadline, DeadlineExceeded
from sidekick.errors import SidekickError
from sidekick.etcd import layout, tlsverify, verified
from sidekick.etcd.budgets import PEER_CONNECT, PEER_IO, Budgets
from sidekick.etcd.progress import Progress
from sidekick.etcd.stream import HashingWriter
from sidekick.etcd.tlsbio import BioHTTPSConnection, BioSocket
from sidekick.etcd.verified import Digest
from sidekick.host.files import atomic_output, remove_leftovers
from sidekick.host.signals import StopRequest
from sidekick.log import kv
from sidekick.retry import BudgetSpent, Policy

log = logging.getLogger(__name__)

CHUNK = 1 << 20
DEPTH = 4
USER_AGENT = "sidekick-etcd-download"

# TLS alerts that mean "the peer will not accept us": retrying cannot help.
# (DECRYPT_ERROR: the server could not verify our certificate's signature, another CA.)
_REFUSED_ALERTS = (
    "CERTIFICATE", "UNKNOWN_CA", "DECRYPT_ERROR", "ACCESS_DENIED", "HANDSHAKE_FAILURE", "PROTOCOL_VERSION",
)


class Transient(SidekickError):
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
        self.writer = HashingWriter(self.fd, chunk=CHUNK, depth=DEPTH, direct=True)
        self.etag = self.total = self.sha256 = None


class PeerDownload:
    """One peer download: attempts, resume, verification. ``run()`` returns the digest."""

    def __init__(self, peer: Peer, dest: Path, *, roots: Sequence[bytes], context: ssl.SSLContext,
                 budgets: Budgets, policy: Policy, stop: StopRequest) -> None:
        self.peer = peer
        self.dest = dest
        self.roots = roots
        self.context = context
        self.budgets = budgets
        self.policy = policy
        self.stop = stop

    def run(self) -> Digest:
        known = verified.recall(self.dest)
        if known is not None and self._already_here(known):
            log.info("snapshot already here and verified as the peer's: not downloaded again",
                     extra=kv(path=self.dest, size=known.size, sha256=known.sha256))
            return known
        progress = Progress(log, "download", peer=self.peer.netloc, name=self.peer.name)
        with atomic_output(self.dest, mode=0o600) as pending:
            fd = pending.file.fileno()
            state = _State(fd, HashingWriter(fd, chunk=CHUNK, depth=DEPTH, direct=True))
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
        attempts = [0]
        total = Deadline(self.policy.budget, what=f"download of {self.peer.name} from {self.peer.netloc}")

        def attempt(deadline: Deadline) -> None:
            attempts[0] += 1
            self._attempt(state, progress, deadline, total)

        def on_retry(_n: int, err: Exception, wait: float) -> None:
            if isinstance(err, Restart) and state.received:
                state.restart()
                progress.done = 0
            log.warning("download attempt failed, retrying",
                        extra=kv(peer=self.peer.netloc, error=str(err), received=state.received,
                                 retry_in=f"{wait:.1f}s"))

        try:
            self.policy.run(attempt, what=total.what, stop=self.stop, budget=total, on_retry=on_retry,
                            retryable=lambda err: isinstance(err, Transient | DeadlineExceeded))
        except (Transient, DeadlineExceeded) as err:
            tries = "1 attempt" if attempts[0] == 1 else f"{attempts[0]} attempts"
            cause: Exception = err
            if isinstance(err, BudgetSpent):
                tries, cause = f"{tries} in {total.seconds:.0f}s", err.last
            raise SidekickError(f"failed to download snapshot {self.peer.name} from {self.peer.url} after "
                                f"{tries}: {cause}") from None

    def _connect(self) -> BioHTTPSConnection:
        """A connection whose server chain is verified before anything is sent."""
        host = self.peer.host.strip("[]")
        conn = BioHTTPSConnection(host, self.peer.port, context=self.context,
                                  timeout=self.budgets.seconds(PEER_CONNECT))
        try:
            conn.connect()
        except ssl.SSLError as err:
            conn.close()
            raise _classify_tls(err, self.peer) from None
        except OSError as err:
            conn.close()
            raise Transient(f"cannot connect to {self.peer.netloc}: {err.strerror or err}") from None
        sock = conn.sock
        assert isinstance(sock, BioSocket)
        try:
            self._subject = tlsverify.verify_chain(tlsverify.peer_chain(sock.tls), self.roots)
        except BaseException:
            conn.close()
            raise
        sock.settimeout(self.budgets.seconds(PEER_IO))
        return conn

    def _request(self, conn: http.client.HTTPSConnection, method: str,
                 headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        try:
            conn.request(method, self.peer.path, headers={
                "User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Connection": "close", **(headers or {})})
            return conn.getresponse()
        except ssl.SSLError as err:
            raise _classify_tls(err, self.peer) from None
        except http.client.RemoteDisconnected:
            raise Transient("peer closed the connection before answering") from None
        except http.client.HTTPException as err:
            raise Fatal(f"peer {self.peer.netloc} did not answer HTTP: {type(err).__name__}") from None
        except OSError as err:
            raise Transient(f"connection to {self.peer.netloc} failed: {err.strerror or err}") from None

    def _already_here(self, known: Digest) -> bool:
        """A verified copy exists (an earlier restore attempt): HEAD says if it is the same."""
        deadline = Deadline(self.budgets.seconds(PEER_CONNECT), what="HEAD")
        from sidekick.host.guard import Guard

        try:
            with Guard(deadline, self.stop):
                conn = self._connect()
                try:
                    response = self._request(conn, "HEAD")
                finally:
                    conn.close()
        except (Transient, DeadlineExceeded):
            return False  # the GET attempts will retry and report
        same_size = response.getheader("content-length") == str(known.size)
        sha = repr_digest_sha256(response.getheader("repr-digest"))
        return response.status == 200 and same_size and sha == known.sha256

    def _attempt(self, state: _State, progress: Progress, deadline: Deadline, total: Deadline) -> None:
        conn = self._connect()
        try:
            state.subject = self._subject
            resume = {"Range": f"bytes={state.received}-", "If-Range": state.etag} \
                if state.received and state.etag else {}
            response = self._request(conn, "GET", resume)
            first = state.total is None
            length = self._accept_response(state, response)
            if first and state.total is not None:
                # Now that the size is known, the bytes get their time on top of the budget.
                extra = self.budgets.for_bytes(state.total)
                total.extend(extra)
                deadline.extend(extra)
            progress.total = state.total
            self._receive(response, state, length, progress)
        finally:
            conn.close()

    def _accept_response(self, state: _State, response: http.client.HTTPResponse) -> int:
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
        text = response.getheader("content-length") or ""
        if not text.isdigit():
            raise Fatal(f"peer sent no valid Content-Length ({text!r}); refusing a body of unknown size")
        length = int(text)
        etag = response.getheader("etag")
        sha = repr_digest_sha256(response.getheader("repr-digest"))
        if status == 206:
            span = parse_content_range(response.getheader("content-range"))
            if (
                span is None
                or span[0] != state.received
                or span[2] != state.total
                or span[1] - span[0] + 1 != length
                or etag != state.etag
            ):
                raise Restart(f"peer sent an unexpected range ({response.getheader('content-range')!r})")
        else:
            state.total = length
            state.etag = etag
            _reserve(state.fd, length)
        state.sha256 = sha or state.sha256
        return length

    def _receive(self, response: http.client.HTTPResponse, state: _State, length: int, progress: Progress) -> None:
        writer = state.writer
        left = length
        try:
            while left > 0:
                buffer = writer.get_buffer()
                view = memoryview(buffer)
                want = min(len(buffer), left)
                filled = 0
                try:
                    while filled < want:
                        got = response.readinto(view[filled:want])
                        if not got:
                            break
                        filled += got
                except http.client.IncompleteRead:
                    pass  # what arrived is counted below; the shortfall is reported
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
            raise Fatal(f"not enough space in {layout.BACKUP_DIR} for the {length} byte snapshot") from None
        log.debug("cannot preallocate the download: %s", err)  # e.g. a filesystem without fallocate


def _classify_tls(err: ssl.SSLError, peer: Peer) -> SidekickError:
    reason = str(err.reason or err)
    if any(word in reason.upper() for word in _REFUSED_ALERTS):
        return Fatal(f"peer {peer.netloc} refused our TLS client certificate or protocol: {reason}")
    return Transient(f"TLS error with {peer.netloc}: {reason}")


def download_from_peer(name: str, host: str, *, cacert: Path, cert: Path, key: Path, port: int,
                       budgets: Budgets, stop: StopRequest, policy: Policy | None = None) -> Digest:
    """Download ``/backup/<name>`` from the peer ``host``, verified; return its digest."""
    dest = layout.snapshot_path(name)
    peer = Peer(host.strip(), port, name)
    roots = tlsverify.load_roots(cacert)
    context = tlsverify.client_context(cert, key)
    for stale in remove_leftovers(dest.parent, names=[dest.name]):
        log.info("removed a leftover of an interrupted run", extra=kv(path=stale))
    log.info("downloading snapshot from peer", extra=kv(url=peer.url, dest=layout.snapshot_entry(name)))
    return PeerDownload(peer, dest, roots=roots, context=context, budgets=budgets,
                        policy=policy or budgets.peer(), stop=stop).run()
