"""``etcd-backup verify --name N``: prove that a snapshot restores, by restoring it.

Sources, as ``download`` takes them: the local ``/backup/N.zip`` (or a bare ``/backup/N``),
``--s3-backup`` with the S3 flags, or ``--local-endpoint`` (a peer's ``serve``, mutual TLS
with ``--cacert/--cert/--key``). Steps, each bounded (:mod:`sidekick.etcd.budgets`):

1. fetch into a private work directory ``/backup/.sidekick/verify-<random>/`` (0700): an S3
   object is checked against its ``archive-sha256`` metadata, a peer's bytes against the
   digest it announces; an archive is opened with the safety rules of
   :mod:`sidekick.etcd.extract` (exact entry name, zip-bomb and size limits) and its snapshot
   entry inflated there, CRC-32 and manifest SHA-256 checked. ``/backup/N`` and
   ``/backup/N.zip``, the files RKE uses, are only ever read;
2. the S3 metadata must agree with the archive's manifest (:mod:`sidekick.etcd.facts`);
3. the file must end with etcd's SHA-256 trailer and match it, and what ``etcdctl snapshot
   status`` reports (read page by page by :mod:`sidekick.etcd.bolt`, which checks the bbolt
   structure too) must agree with what ``save`` recorded (revision, key revisions, etcd's hash);
4. ``etcdctl snapshot restore`` into a throwaway data directory, then a throwaway ``etcd``
   member started from it; once it answers, its revision and live key count are read back
   and compared with what ``save`` recorded.

The throwaway member listens on unix sockets inside the 0700 work directory, not on loopback
TCP: the restored data holds every Secret of the cluster, and a loopback port would hand
them to any local user for as long as the member runs (and could race another process for a
"free" port). It is stopped on every path (SIGTERM, then SIGKILL after
:data:`~sidekick.etcd.budgets.VERIFY_STOP`), dies with us even on ``kill -9``
(``PR_SET_PDEATHSIG``), and the work directory is removed; a work directory whose owner died
(its ``flock`` is free) is removed by the next ``verify``.

Memory: the archive is inflated a few chunks at a time (:mod:`sidekick.etcd.extract`), S3
and peer downloads stream to disk, and SHA-256s are computed while reading: a few tens of MiB
whatever the snapshot size (``bench/etcd_verify.py`` measures it). etcd and etcdctl run as
their own processes.

The outcome of every verdict (passed, or failed with its cause) is recorded by
:mod:`sidekick.etcd.trials` for ``list``. A failure to *fetch* (S3 unreachable, no such
snapshot) is an error but no verdict on the snapshot, and is not recorded.

Last line: ``verified <name> revision=<r> keys=<k> sha256=<h>`` (also printed on stdout),
or one ``level=fatal`` line with the cause; exit 0, or 1 (any failure), 2 (usage), 143
(stopped by SIGTERM/SIGINT).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from sidekick.deadline import Deadline, DeadlineExceeded, Stopped
from sidekick.errors import SidekickError, UsageError
from sidekick.etcd import bolt, crypto, layout, trials
from sidekick.etcd.budgets import VERIFY_QUERY, VERIFY_START, VERIFY_STOP, Budgets
from sidekick.etcd.etcdctl import ETCDCTL, EtcdError, check_snapshot_hash
from sidekick.etcd.extract import Archive, ArchiveError, check_free_space, read_manifest_document
from sidekick.etcd.facts import SnapshotFacts, disagreements
from sidekick.etcd.options import Options, serve_port
from sidekick.etcd.verified import Digest, file_sha256
from sidekick.host.files import describe_os_error
from sidekick.host.guard import Guard
from sidekick.host.proc import Runner
from sidekick.host.signals import StopRequest, stop_on_signals
from sidekick.log import kv
from sidekick.paths import host_path

log = logging.getLogger(__name__)

ETCD = "etcd"
WORK_DIR = "/backup/.sidekick"
WORK_PREFIX = "verify-"
SNAPSHOT_FILE = "snapshot.db"
MEMBER = "verify"
# Relative unix socket addresses: etcd creates "localhost:0" and "localhost:1" in its cwd.
CLIENT_URL = "unix://localhost:0"
PEER_URL = "unix://localhost:1"
DOWNLOAD_RETRIES = 4  # as download
POLL = 0.2
_PR_SET_PDEATHSIG = 1


class VerifyFailed(SidekickError):
    """A verdict: the snapshot would not restore, or not as recorded (the message says why)."""


@dataclass
class Candidate:
    """The uncompressed snapshot to try, what it was checked against so far, and the record."""

    path: Path
    digest: Digest
    recorded: SnapshotFacts
    checks: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per step, for the log

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[step] = round(time.monotonic() - started, 2)


# --- the work directory -------------------------------------------------------------------
def _work_base() -> Path:
    return host_path(WORK_DIR)


def remove_abandoned(base: Path) -> list[Path]:
    """Work directories of verifies that died (their lock is free): removed."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(base) as entries:
        for entry in entries:
            if not entry.name.startswith(WORK_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live verify holds it
            finally:
                os.close(fd)
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A private (0700) directory beside the snapshots, locked while in use, always removed."""
    base = _work_base()
    try:
        base.mkdir(mode=0o755, parents=True, exist_ok=True)
        for path in remove_abandoned(base):
            log.info("removed the work directory of an interrupted verify", extra=kv(path=path))
        work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=base))
    except OSError as err:
        raise SidekickError(f"cannot create a work directory: {describe_os_error(err, WORK_DIR)}") from None
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(fd)


# --- fetching -------------------------------------------------------------------------------
def _hash_file(path: Path) -> Digest:
    return Digest(path.stat().st_size, file_sha256(path))


def _copy_hashed(src: Path, dest: Path, *, stop: StopRequest, chunk: int = 1 << 20) -> Digest:
    sha = hashlib.sha256()
    size = 0
    with open(src, "rb") as source, open(dest, "xb") as out:
        while data := source.read(chunk):
            if stop.is_set():
                raise Stopped("copy interrupted")
            sha.update(data)
            out.write(data)
            size += len(data)
    return Digest(size, sha.hexdigest())


def from_archive(zip_path: Path, name: str, work: Path, *, stop: StopRequest, label: str) -> Candidate:
    """Inflate the archive's ``/backup/<name>`` into ``work``: exact name, bomb limits, CRC, manifest."""
    try:
        with Archive(zip_path) as archive:
            info = archive.require(layout.snapshot_entry(name))
            digest = archive.extract(info, work / SNAPSHOT_FILE, stop=stop)
            has_sha = bool(archive.manifest.get(info.filename))
    except ArchiveError as err:
        raise VerifyFailed(str(err).replace(str(zip_path), label)) from None
    manifest = read_manifest_document(zip_path)
    return Candidate(work / SNAPSHOT_FILE, digest, SnapshotFacts.from_manifest(manifest.get("snapshot")),
                     ["zip-crc32", *(["manifest-sha256"] if has_sha else [])])


def fetch_local(name: str, work: Path, *, stop: StopRequest, age: crypto.AgeSettings) -> Candidate:
    zip_path, raw = layout.archive_path(name), layout.snapshot_path(name)
    if zip_path.is_file():
        return from_archive(zip_path, name, work, stop=stop, label=layout.archive_entry(name))
    sealed = zip_path.with_name(crypto.encrypted_name(zip_path.name))
    if sealed.is_file():  # --age-encrypt-local: decrypted into the work directory first
        plain = work / "decrypted.zip"
        crypto.decrypt_file(sealed, plain, age.require_identities(f"verify {name}"), what=sealed.name, stop=stop)
        candidate = from_archive(plain, name, work, stop=stop, label=f"{layout.archive_entry(name)}.age")
        plain.unlink()
        return candidate
    if raw.is_file():  # a bare snapshot (older tools): copied, so nothing ever opens RKE's file but us
        return Candidate(work / SNAPSHOT_FILE, _copy_hashed(raw, work / SNAPSHOT_FILE, stop=stop), SnapshotFacts())
    raise SidekickError(f"snapshot {name} not found: neither {layout.archive_entry(name)} "
                        f"nor {layout.snapshot_entry(name)} exists")


def fetch_s3(opts: Options, work: Path, *, budgets: Budgets, stop: StopRequest, age: crypto.AgeSettings) -> Candidate:
    from sidekick.etcd import s3

    name = opts.name
    with s3.S3Store(s3.S3Config.from_options(opts), budgets=budgets, retries=DOWNLOAD_RETRIES, stop=stop) as store:
        store.check_bucket()
        key, filename = s3.find_snapshot_key(store, name)
        metadata = store.head(key).metadata
        label = f"s3://{store.config.bucket}/{key}"
        encrypted = crypto.is_encrypted_archive(filename)
        plain = crypto.plain_name(filename) if encrypted else filename
        dest = work / ("fetched.zip" if plain.endswith(layout.ARCHIVE_SUFFIX) else SNAPSHOT_FILE)
        log.info("downloading the snapshot to verify", extra=kv(key=key, bucket=store.config.bucket))
        try:
            if encrypted:  # decrypted (and its plaintext digest checked) on the way in
                s3.download_snapshot(store, name, work, age=age).rename(dest)
            else:
                store.download_to(key, dest)
        except s3.S3Error as err:
            if s3.ARCHIVE_SHA_META in str(err):  # the bytes are not what the metadata says
                raise VerifyFailed(f"{label}: {err}") from None
            raise
    if dest.name == SNAPSHOT_FILE:
        candidate = Candidate(dest, _hash_file(dest), SnapshotFacts(), ["s3-archive-sha256"])
    else:
        candidate = from_archive(dest, name, work, stop=stop, label=label)
        dest.unlink()  # only the snapshot is needed from here on
        candidate.checks.append("s3-archive-sha256")
    meta = SnapshotFacts.from_metadata(metadata)
    found = replace(candidate.recorded, sha256=candidate.recorded.sha256 or candidate.digest.sha256)
    diffs = disagreements(found, meta, of="the archive has", by="the S3 metadata says")
    if diffs:
        raise VerifyFailed(f"{label}: the S3 metadata disagrees with the archive ({'; '.join(diffs)})")
    if not meta.empty():
        candidate.checks.append("s3-metadata")
    merged = {f: getattr(candidate.recorded, f) if getattr(candidate.recorded, f) is not None else getattr(meta, f)
              for f in SnapshotFacts.__dataclass_fields__}
    candidate.recorded = SnapshotFacts(**merged)
    return candidate


def fetch_peer(opts: Options, work: Path, *, budgets: Budgets, stop: StopRequest) -> Candidate:
    from sidekick.etcd import tlsverify
    from sidekick.etcd.download import Peer, PeerDownload

    peer = Peer(opts.local_endpoint.strip(), serve_port(), opts.name)
    dest = work / SNAPSHOT_FILE
    log.info("downloading the snapshot to verify", extra=kv(url=peer.url))
    digest = PeerDownload(peer, dest, roots=tlsverify.load_roots(host_path(opts.cacert)),
                          context=tlsverify.client_context(host_path(opts.cert), host_path(opts.key)),
                          budgets=budgets, policy=budgets.peer(), stop=stop).run()
    return Candidate(dest, digest, SnapshotFacts(), ["peer-transfer"])


# --- the throwaway member -------------------------------------------------------------------
def _child_env() -> dict[str, str]:
    """Nothing of the node's etcd configuration: ``ETCD_*``/``ETCDCTL_*`` variables would
    reconfigure the throwaway member or clash with its flags; no S3 or cloud credentials."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "ETCDCTL_API": "3"}
    if os.environ.get("ETCD_UNSUPPORTED_ARCH"):
        env["ETCD_UNSUPPORTED_ARCH"] = os.environ["ETCD_UNSUPPORTED_ARCH"]
    return env


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` making the child get SIGKILL when we die (even by ``kill -9``)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def apply() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return apply


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _etcd_cause(text: str) -> str:
    """The message of etcd's last log line (zap JSON or plain)."""
    line = _last_line(text)
    with contextlib.suppress(ValueError, AttributeError):
        body = json.loads(line)
        return " ".join(str(body.get(k)) for k in ("msg", "error") if body.get(k))
    return line


@dataclass
class Member:
    """One throwaway etcd member in ``work``; ``close()`` stops it, on every path."""

    work: Path
    runner: Runner
    budgets: Budgets
    stop: StopRequest
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.work / "data"

    @property
    def log_path(self) -> Path:
        return self.work / "etcd.log"

    def _run(self, argv: list[str], seconds: float, what: str) -> subprocess.CompletedProcess[bytes]:
        """A bounded etcdctl call: killed at its deadline or on a stop request."""
        with Guard(Deadline(seconds, what=what), self.stop):
            return self.runner.run(argv, timeout=seconds, env=_child_env(), check=False, cwd=self.work)

    def status(self, snapshot: Path) -> dict[str, object]:
        """What ``etcdctl snapshot status`` reports, read page by page (:mod:`sidekick.etcd.bolt`)."""

        def checkpoint() -> None:
            if self.stop.is_set():
                raise Stopped(f"stopped by {self.stop.signal_name or 'a stop request'}")

        try:
            return bolt.status(snapshot, checkpoint).as_etcdctl()
        except EtcdError as err:
            raise VerifyFailed(f"etcd cannot read the snapshot: {str(err).removeprefix('snapshot check failed: ')}") from None

    def restore(self, snapshot: Path, size: int) -> None:
        result = self._run([ETCDCTL, "snapshot", "restore", str(snapshot), f"--data-dir={self.data_dir}",
                            f"--name={MEMBER}", f"--initial-cluster={MEMBER}={PEER_URL}",
                            f"--initial-advertise-peer-urls={PEER_URL}"],
                           self.budgets.restore(size), "etcdctl snapshot restore")
        if result.returncode != 0:
            text = (result.stderr + result.stdout).decode(errors="replace")
            raise VerifyFailed(f"etcdctl snapshot restore failed: {_etcd_cause(text) or f'exit {result.returncode}'}")

    def start(self) -> None:
        argv = [ETCD, f"--name={MEMBER}", f"--data-dir={self.data_dir}",
                f"--listen-client-urls={CLIENT_URL}", f"--advertise-client-urls={CLIENT_URL}",
                f"--listen-peer-urls={PEER_URL}", f"--initial-advertise-peer-urls={PEER_URL}",
                f"--initial-cluster={MEMBER}={PEER_URL}", "--initial-cluster-state=new",
                "--logger=zap", "--log-outputs=stderr"]
        with open(self.log_path, "wb") as out:
            try:
                self.process = subprocess.Popen(argv, cwd=self.work, stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=out, env=_child_env(), preexec_fn=_die_with_parent())
            except FileNotFoundError:
                raise SidekickError(f"{ETCD}: command not found (Debian's etcd-server)") from None

    def read_back(self) -> tuple[int, int]:
        """Wait until the member answers; return its (revision, live key count)."""
        deadline = Deadline(self.budgets.seconds(VERIFY_START), what="the restored member")
        argv = [ETCDCTL, f"--endpoints={CLIENT_URL}", "--dial-timeout=2s", "--command-timeout=5s",
                "get", "", "--prefix", "--keys-only", "--limit=1", "-w", "json"]
        last = ""
        while True:
            if self.stop.is_set():
                raise Stopped(f"stopped by {self.stop.signal_name or 'a stop request'}")
            assert self.process is not None
            if self.process.poll() is not None:
                cause = _etcd_cause(self.log_path.read_text(errors="replace"))
                raise VerifyFailed(f"etcd could not start from the restored snapshot: {cause}")
            if deadline.expired():
                raise VerifyFailed(f"the restored member did not answer within {deadline.seconds:g}s: {last}")
            try:
                result = self._run(argv, min(self.budgets.seconds(VERIFY_QUERY), deadline.remaining() + 1),
                                   "etcdctl get")
            except DeadlineExceeded as err:
                last = str(err)
                continue
            if result.returncode == 0:
                try:
                    answer = json.loads(result.stdout.decode(errors="replace"))
                    return int(answer["header"]["revision"]), int(answer.get("count") or 0)
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise VerifyFailed("the restored member gave an answer etcdctl could not print as JSON") from None
            last = _last_line((result.stderr + result.stdout).decode(errors="replace"))
            self.stop.wait(POLL)

    def close(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(self.budgets.seconds(VERIFY_STOP))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the verification -----------------------------------------------------------------------
@dataclass
class Verifier:
    runner: Runner
    budgets: Budgets
    stop: StopRequest
    age: crypto.AgeSettings = field(default_factory=crypto.AgeSettings)  # decrypts <name>.zip.age

    def verify(self, name: str, source: str, fetch: Callable[[Path], Candidate]) -> trials.Trial:
        """Fetch with ``fetch(work)``, check, restore, read back; record and return the verdict."""
        started = time.monotonic()
        candidate: Candidate | None = None
        with workspace() as work:
            try:
                fetch_started = time.monotonic()
                candidate = fetch(work)
                candidate.seconds["fetch"] = round(time.monotonic() - fetch_started, 2)
                revision, keys = self._trial(candidate, work)
            except VerifyFailed as err:
                facts = candidate.recorded if candidate else SnapshotFacts()
                trials.record(trials.Trial(name, False, trials.now_stamp(), source,
                                           round(time.monotonic() - started, 3),
                                           candidate.digest.sha256 if candidate else None,
                                           facts.revision, facts.keys, str(err)))
                raise
        trial = trials.Trial(name, True, trials.now_stamp(), source, round(time.monotonic() - started, 3),
                             candidate.digest.sha256, revision, keys)
        trials.record(trial)
        log.info(result_line(trial), extra=kv(source=source, checks=",".join(candidate.checks),
                                              seconds=f"{trial.seconds:.2f}",
                                              steps=",".join(f"{k}={v:g}s" for k, v in candidate.seconds.items())))
        return trial

    def _trial(self, candidate: Candidate, work: Path) -> tuple[int, int]:
        recorded = candidate.recorded
        if recorded.sha256 and recorded.sha256 != candidate.digest.sha256:
            raise VerifyFailed(f"the snapshot's SHA-256 is {candidate.digest.sha256}, save recorded {recorded.sha256}")
        try:
            with candidate.timed("trailer"):
                trailer = check_snapshot_hash(candidate.path)
        except EtcdError as err:
            raise VerifyFailed(f"the snapshot is corrupt: {str(err).removeprefix('snapshot check failed: ')}") from None
        if trailer is None:
            raise VerifyFailed("the snapshot has no etcd hash trailer (cut short, or a copy of a member's db "
                               "file): etcd refuses to restore it")
        candidate.checks.append("etcd-hash-trailer")
        member = Member(work, self.runner, self.budgets, self.stop)
        with candidate.timed("status"):
            status = member.status(candidate.path)
        found = SnapshotFacts.from_status(status, keys=None, size=candidate.digest.size,
                                          sha256=candidate.digest.sha256, version=None)
        diffs = disagreements(recorded, found, of="save recorded", by="the file has")
        if diffs:
            raise VerifyFailed(f"the snapshot is not the one save recorded ({'; '.join(diffs)})")
        candidate.checks.append("etcd-status")
        check_free_space(work, candidate.digest.size)  # the restore writes a copy of the db
        with candidate.timed("restore"):
            member.restore(candidate.path, candidate.digest.size)
        try:
            with candidate.timed("member"):
                member.start()
                revision, keys = member.read_back()
        finally:
            with candidate.timed("stop"):
                member.close()
        expected_revision = recorded.revision if recorded.revision is not None else found.revision
        if expected_revision is not None:
            # An empty keyspace: snapshot status says 0 (no key revisions), a member starts at 1.
            expected_revision = max(expected_revision, 1)
        if expected_revision is not None and revision != expected_revision:
            raise VerifyFailed(f"the restored member answers revision {revision}, save recorded {expected_revision}")
        if recorded.keys is not None and keys != recorded.keys:
            raise VerifyFailed(f"the restored member holds {keys} keys, save recorded {recorded.keys}")
        candidate.checks.append("trial-restore")
        return revision, keys

    # --- the sources ---
    def local(self, name: str) -> trials.Trial:
        return self.verify(name, "local", lambda work: fetch_local(name, work, stop=self.stop, age=self.age))

    def s3(self, opts: Options) -> trials.Trial:
        return self.verify(opts.name, "s3", lambda work: fetch_s3(opts, work, budgets=self.budgets, stop=self.stop,
                                                                  age=self.age))

    def peer(self, opts: Options) -> trials.Trial:
        return self.verify(opts.name, "peer",
                           lambda work: fetch_peer(opts, work, budgets=self.budgets, stop=self.stop))


def result_line(trial: trials.Trial) -> str:
    return f"verified {trial.name} revision={trial.revision} keys={trial.keys} sha256={trial.sha256}"


def _check_flags(opts: Options) -> str:
    if not opts.name:
        raise UsageError("--name is required: the snapshot to verify")
    if opts.s3_backup and opts.local_endpoint:
        raise UsageError("give --s3-backup or --local-endpoint, not both")
    if opts.local_endpoint:
        for flag, value in (("--cacert", opts.cacert), ("--cert", opts.cert), ("--key", opts.key)):
            if not value:
                raise UsageError(f"{flag} is required to download from a peer over mutual TLS")
        return "peer"
    return "s3" if opts.s3_backup else "local"


def run_verify(opts: Options) -> int:
    source = _check_flags(opts)
    with stop_on_signals() as stop:
        verifier = Verifier(Runner(), Budgets.from_options(opts), stop,
                            crypto.AgeSettings.load(identity_file=opts.age_identity_file))
        try:
            if source == "peer":
                trial = verifier.peer(opts)
            elif source == "s3":
                trial = verifier.s3(opts)
            else:
                trial = verifier.local(opts.name)
        except Stopped:
            raise Stopped(f"verify of {opts.name} interrupted by {stop.signal_name or 'a stop request'}; "
                          "its work directory and etcd member are gone") from None
        except VerifyFailed as err:
            raise SidekickError(f"verify {opts.name} failed ({source}): {err}") from None
    print(result_line(trial), flush=True)
    return 0
