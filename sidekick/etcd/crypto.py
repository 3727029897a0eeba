"""Client-side encryption of snapshot archives with age (https://age-encryption.org/v1).

An etcd snapshot holds every Secret of the cluster and RKE's archive also holds the
``.rkestate`` with the cluster's CA keys, so ``save`` can encrypt the archive before it leaves
the node: opt-in by recipients (``SIDEKICK_AGE_RECIPIENTS`` / ``--age-recipient``, or a file of
them, ``SIDEKICK_AGE_RECIPIENTS_FILE``), decrypted by ``download``, ``extractstatefile`` and
``serve`` with an identity file (``SIDEKICK_AGE_IDENTITY_FILE``). The format is age's, so
Debian's ``age -d -i key.txt`` decrypts what sidekick wrote, and sidekick decrypts what
``age -r`` wrote.

Names: the encrypted archive of ``<name>`` is ``<name>.zip.age``. RKE's restore and the
original tool look for the key whose last extension stripped equals the name (``<name>.zip``
or ``<name>``); ``<name>.zip.age`` strips to ``<name>.zip``, so no RKE flow mistakes it for a
plain zip, while the name still says what is inside. ``download`` writes the decrypted result
to ``/backup/<name>.zip``, where RKE looks.

Integrity: age authenticates every 64 KiB chunk (ChaCha20-Poly1305) and the end of the
stream, so a tampered or truncated object fails to decrypt; on top of that the plaintext's
SHA-256 must match the ``archive-sha256`` metadata written at upload, and the zip's own
manifest covers the entries.

Library: ``pyrage`` (Python bindings of rage, the Rust implementation of age), through its
streaming ``encrypt_io``/``decrypt_io``: the data pass through in 64 KiB chunks, so memory is a
few buffers whatever the snapshot size, and the reader below checks the stop request on every
read, which is how a stop interrupts a long encryption. Measured on one 165 MB archive
(bench/etcd_crypto.py, best of three): encrypt_io 460 MB/s, decrypt_io 291 MB/s; Debian's
``age`` through a pipe 565 and 458 MB/s; pyrage's ``encrypt_file``/``decrypt_file`` 434 and
340 MB/s. The binary is faster, but either is several times the S3 rate, so the whole
encrypted save and download stay within a few percent of plain ones; in-process wins on what
matters more: no binary to ship in the image, no child process to guard, a stop checked on
every read. ``encrypt_file``/``decrypt_file`` hold the GIL for the whole file (no progress
line, no telemetry answer, no signal handled meanwhile), so they are not used.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from sidekick import log as sklog
from sidekick.deadline import Stopped
from sidekick.errors import SidekickError, UsageError
from sidekick.etcd.layout import ARCHIVE_SUFFIX
from sidekick.host.files import atomic_output, temp_path
from sidekick.host.signals import StopRequest
from sidekick.log import kv
from sidekick.paths import host_path

log = logging.getLogger(__name__)

AGE_SUFFIX = ".age"
ENCRYPTION_META = "sidekick-encryption"  # S3 metadata: how the object is encrypted
AGE = "age"
BUFFER = 1 << 20
RECIPIENTS_ENV = "SIDEKICK_AGE_RECIPIENTS"
RECIPIENTS_FILE_ENV = "SIDEKICK_AGE_RECIPIENTS_FILE"
IDENTITY_FILE_ENV = "SIDEKICK_AGE_IDENTITY_FILE"
ENCRYPT_LOCAL_ENV = "SIDEKICK_AGE_ENCRYPT_LOCAL"
_SECRET_PREFIX = "AGE-SECRET-KEY-"


class CryptoError(SidekickError):
    """An encryption or decryption failure; the message says why in one line."""


def encrypted_name(filename: str) -> str:
    return filename + AGE_SUFFIX


def is_encrypted_name(filename: str) -> bool:
    return filename.endswith(AGE_SUFFIX)


def is_encrypted_archive(filename: str) -> bool:
    """``<name>.zip.age``: the one encrypted form the S3 and peer flows recognise."""
    return filename.endswith(ARCHIVE_SUFFIX + AGE_SUFFIX)


def plain_name(filename: str) -> str:
    return filename[: -len(AGE_SUFFIX)] if is_encrypted_name(filename) else filename


# --- keys -------------------------------------------------------------------------------
def _key_lines(text: str) -> list[str]:
    """Non-empty lines that are not ``#`` comments, as age's recipients and identity files."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def parse_recipients(text: str, *, source: str) -> list[Any]:
    """age recipients (``age1...`` X25519, or ``ssh-ed25519``/``ssh-rsa`` public keys),
    separated by commas or newlines; a bad one is a usage error naming ``source``."""
    import pyrage

    recipients: list[Any] = []
    for line in _key_lines(text.replace(",", "\n")):
        try:
            if line.startswith("ssh-"):
                recipients.append(pyrage.ssh.Recipient.from_str(line))
            else:
                recipients.append(pyrage.x25519.Recipient.from_str(line))
        except Exception as err:  # pyrage.RecipientError
            shown = line if len(line) <= 80 else line[:77] + "..."
            raise UsageError(f"{source}: {shown!r} is not an age recipient ({err})") from None
    return recipients


def parse_identities(text: str, *, source: str) -> list[Any]:
    """``AGE-SECRET-KEY-1...`` lines of an age identity file (age-keygen's output); each is
    registered as a log secret before anything can log it."""
    import pyrage

    identities: list[Any] = []
    for line in _key_lines(text):
        sklog.register_secret(line)
        sklog.register_secret(line.lower())  # Bech32 is case-insensitive
        if not line.upper().startswith(_SECRET_PREFIX):
            raise UsageError(f"{source}: a line is not an age identity (AGE-SECRET-KEY-1...)")
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except Exception:  # pyrage.IdentityError: never show the line
            raise UsageError(f"{source}: a line is not a valid age identity") from None
    if not identities:
        raise UsageError(f"{source}: no age identity (AGE-SECRET-KEY-1...) in the file")
    return identities


def _read_key_file(path: str, what: str) -> str:
    try:
        return host_path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        cause = err.strerror if isinstance(err, OSError) and err.strerror else "not UTF-8 text"
        raise UsageError(f"cannot read the {what} file {path}: {cause.lower()}") from None


@dataclass(frozen=True)
class AgeSettings:
    """What the command line says about encryption. ``recipients``: for ``save`` (empty: no
    encryption); ``identities``: for the reading commands (empty: an encrypted snapshot is an
    error); ``encrypt_local``: the archive under /backup is kept encrypted only."""

    recipients: tuple[Any, ...] = ()
    identities: tuple[Any, ...] = field(default=(), repr=False)
    identity_file: str = ""
    encrypt_local: bool = False

    @property
    def encrypts(self) -> bool:
        return bool(self.recipients)

    @classmethod
    def load(cls, *, recipients: str = "", recipients_file: str = "", identity_file: str = "",
             encrypt_local: bool = False) -> AgeSettings:
        found: list[Any] = []
        if recipients.strip():
            found += parse_recipients(recipients, source=f"--age-recipient ({RECIPIENTS_ENV})")
        if recipients_file:
            text = _read_key_file(recipients_file, "age recipients")
            found += parse_recipients(text, source=recipients_file)
            if not found:
                raise UsageError(f"{recipients_file}: no age recipient in the file")
        if encrypt_local and not found:
            raise UsageError(f"--age-encrypt-local ({ENCRYPT_LOCAL_ENV}) needs age recipients "
                             f"(--age-recipient or --age-recipients-file)")
        identities: list[Any] = []
        if identity_file:
            identities = parse_identities(_read_key_file(identity_file, "age identity"), source=identity_file)
        return cls(tuple(found), tuple(identities), identity_file, encrypt_local)

    def require_identities(self, what: str) -> Sequence[Any]:
        if not self.identities:
            raise CryptoError(f"{what} is encrypted with age: give its identity file with "
                              f"--age-identity-file or {IDENTITY_FILE_ENV}")
        return self.identities


# --- streams ------------------------------------------------------------------------------
class _Reader:
    """A file reader for pyrage that counts, hashes when asked, and raises on a stop: the Rust
    loop ends there, and since pyrage may wrap the exception in an IO error, the reader keeps
    it (``stopped``) for the caller to raise as it is."""

    def __init__(self, source: BinaryIO, *, stop: StopRequest | None,
                 on_bytes: Callable[[int], None] | None, hasher: Any = None) -> None:
        self.source = source
        self.stop = stop
        self.on_bytes = on_bytes
        self.hasher = hasher
        self.stopped: Stopped | None = None

    def read(self, size: int = -1) -> bytes:
        if self.stop is not None and self.stop.is_set():
            self.stopped = Stopped(f"stopped by {self.stop.signal_name or 'a stop request'}")
            raise self.stopped
        data = self.source.read(size)
        if data:
            if self.hasher is not None:
                self.hasher.update(data)
            if self.on_bytes is not None:
                self.on_bytes(len(data))
        return data


class _Writer:
    """A file writer for pyrage that hashes what it writes (the plaintext, when decrypting)."""

    def __init__(self, target: BinaryIO) -> None:
        import hashlib  # as pyrage: only where something is encrypted or decrypted (serve may not)

        self.target = target
        self.hasher = hashlib.sha256()
        self.size = 0
        self.failed: OSError | None = None  # a full disk is no tampering: said apart

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        self.size += len(data)
        try:
            return self.target.write(data)
        except OSError as err:
            self.failed = err
            raise

    def flush(self) -> None:
        self.target.flush()


def encrypt_stream(source: BinaryIO, target: BinaryIO, recipients: Sequence[Any], *,
                   stop: StopRequest | None = None,
                   on_bytes: Callable[[int], None] | None = None) -> str:
    """Encrypt ``source`` into ``target``; return the plaintext's SHA-256."""
    import hashlib

    import pyrage

    hasher = hashlib.sha256()
    reader = _Reader(source, stop=stop, on_bytes=on_bytes, hasher=hasher)
    try:
        pyrage.encrypt_io(reader, target, list(recipients))
    except Exception as err:
        if reader.stopped is not None:
            raise reader.stopped from None
        raise CryptoError(f"age encryption failed: {err}") from None
    return hasher.hexdigest()


def decrypt_stream(source: BinaryIO, target: BinaryIO, identities: Sequence[Any], *, what: str,
                   stop: StopRequest | None = None) -> tuple[str, int]:
    """Decrypt ``source`` into ``target``; return the plaintext's (SHA-256, size)."""
    import pyrage

    writer = _Writer(target)
    reader = _Reader(source, stop=stop, on_bytes=None)
    try:
        pyrage.decrypt_io(reader, writer, list(identities))
    except Exception as err:
        if reader.stopped is not None:
            raise reader.stopped from None
        if writer.failed is not None:
            raise CryptoError(f"cannot write the decrypted {what}: "
                              f"{(writer.failed.strerror or str(writer.failed)).lower()}") from None
        _decrypt_failed(err, what)
    return writer.hasher.hexdigest(), writer.size


def _decrypt_failed(err: Exception, what: str) -> NoReturn:
    import pyrage

    if isinstance(err, pyrage.DecryptError):
        text = str(err)
        if "No matching keys" in text:
            raise CryptoError(f"cannot decrypt {what}: no identity in the age identity file matches "
                              "its recipients (wrong key)") from None
        raise CryptoError(f"cannot decrypt {what}: not a valid age file ({text})") from None
    # truncated or tampered chunks surface as an OSError
    raise CryptoError(f"cannot decrypt {what}: {err} (truncated or tampered)") from None


def encrypt_file(src: Path, dest: Path, recipients: Sequence[Any], *, stop: StopRequest | None = None,
                 on_bytes: Callable[[int], None] | None = None) -> str:
    """``dest`` (mode 0600, written atomically) = ``src`` encrypted; return src's SHA-256."""
    with open(src, "rb", buffering=BUFFER) as source, atomic_output(dest, mode=0o600) as pending:
        digest = encrypt_stream(source, pending.file, recipients, stop=stop, on_bytes=on_bytes)
    log.info("encrypted with age", extra=kv(path=dest.name, size=dest.stat().st_size, recipients=len(recipients)))
    return digest


def decrypt_file(src: Path, dest: Path, identities: Sequence[Any], *, what: str,
                 expected_sha256: str = "", stop: StopRequest | None = None) -> str:
    """``dest`` (mode 0600, atomic) = ``src`` decrypted, only if it decrypts whole and its
    SHA-256 matches ``expected_sha256`` when given; return that SHA-256. On any failure
    nothing is written."""
    with open(src, "rb", buffering=BUFFER) as source, atomic_output(dest, mode=0o600) as pending:
        digest, size = decrypt_stream(source, pending.file, identities, what=what, stop=stop)
        if expected_sha256 and digest != expected_sha256.lower():
            raise CryptoError(f"decrypted {what} does not match its archive-sha256 metadata "
                              f"(got {digest}, expected {expected_sha256.lower()})")
    log.info("decrypted with age", extra=kv(path=dest.name, size=size, sha256=digest))
    return digest


@contextlib.contextmanager
def decrypted_copy(src: Path, identities: Sequence[Any], *, stop: StopRequest | None = None) -> Iterator[Path]:
    """A temporary decrypted copy of ``src`` beside it (a temp name the leftover cleaner
    knows), removed when the block ends."""
    temp = temp_path(src.with_name(plain_name(src.name)))
    try:
        decrypt_file(src, temp, identities, what=src.name, stop=stop)
        yield temp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
