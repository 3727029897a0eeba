"""``etcd-backup save``: one snapshot (``--once``) or a snapshot every ``--creation`` tick.

A snapshot, step by step (CONTRACT 3.1, 3.2, 3.11):

1. ``etcdctl endpoint health``, then ``etcdctl snapshot save`` to a temp name in /backup;
2. the file is checked so a corrupt snapshot never replaces a good archive and is never
   uploaded: its bbolt structure and what ``etcdctl snapshot status`` would report
   (:mod:`sidekick.etcd.bolt`, page by page), and the sha256 etcd appends, hashed by the
   archive's own pass over the file: the archive is only renamed into place when it matches;
3. ``/backup/<name>.zip`` is written under a temp name and renamed when complete, with the
   entries ``/backup/<name>`` and, when present, ``/etc/kubernetes/<name>.rkestate``;
   then the raw file and the state file go;
4. steps 1-3 are retried (``--backup-retries``) within the etcd budget
   (:mod:`sidekick.etcd.budgets`);
5. with ``--s3-backup`` the archive is uploaded within the S3 budget. EVERY S3 failure
   (unreachable, silent, bad CA, wrong keys, missing bucket, rejected upload) ends the one-shot
   run with a last line containing ``failed to upload etcd snapshot file`` and keeps the local
   archive: RKE reads those words to tell a failed upload from a failed snapshot.

Rolling mode adds the cluster state file before the snapshot, local retention after it, then
S3 upload and S3 retention; a failed tick is logged and the loop goes on.

SIGTERM or SIGINT (:mod:`sidekick.host.signals`) ends any step within a second or so: waits
end, etcdctl is killed, sockets are shut down (:mod:`sidekick.host.guard`), temp files go,
and the last line says what exists (no snapshot, or the snapshot kept locally with the
upload interrupted).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sidekick import __version__
from sidekick.deadline import Deadline, DeadlineExceeded, Stopped
from sidekick.errors import SidekickError, UsageError
from sidekick.etcd import bolt, crypto, layout, prune, retention, s3
from sidekick.etcd.archive import ArchiveResult, EntryResult, write_archive
from sidekick.etcd.budgets import LOCK_WAIT, SPACE_MARGIN, Budgets
from sidekick.etcd.etcdctl import Etcdctl, EtcdError, check_hash_trailer
from sidekick.etcd.facts import SnapshotFacts
from sidekick.etcd.options import Options, format_go_duration
from sidekick.etcd.progress import Progress
from sidekick.etcd.s3 import (
    AGE_CONTENT_TYPE,
    ARCHIVE_SHA_META,
    ENCRYPTION_META,
    SNAPSHOT_SHA_META,
    S3Config,
    S3Error,
    S3Store,
)
from sidekick.host.files import describe_os_error, remove_leftovers, temp_path
from sidekick.host.memory import bound_malloc
from sidekick.host.proc import Runner
from sidekick.host.signals import StopRequest, stop_on_signals
from sidekick.log import kv
from sidekick.retry import BudgetSpent

if TYPE_CHECKING:
    from sidekick.etcd.telemetry import Outcome, Telemetry

log = logging.getLogger(__name__)

UPLOAD_FAILED = "failed to upload etcd snapshot file"
# botocore and the S3 models take about 0.2 s and 20 MiB to load. On a thread while etcd works
# they cost a small snapshot no wall time; beside a large archive their memory would add to the
# archive's buffers (whose size is that of the snapshot up to the engine's bound), so they load
# early only for a snapshot known to be at most this large, else just before the upload.
WARM_UP_LIMIT = 8 << 20


def warm_up_early(snapshot_size: int | None) -> bool:
    """Whether S3 may load beside a snapshot of ``snapshot_size`` bytes (None: not known yet)."""
    return snapshot_size is not None and snapshot_size <= WARM_UP_LIMIT


class WarmUp:
    """:func:`sidekick.etcd.s3.warm_up` on a thread, started by the first size that allows it."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self._thread: threading.Thread | None = None

    def consider(self, snapshot_size: int | None) -> None:
        if self.enabled and self._thread is None and warm_up_early(snapshot_size):
            self._thread = threading.Thread(target=s3.warm_up, name="s3-warm-up", daemon=True)
            self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


@dataclass
class Snapshot:
    name: str
    archive: ArchiveResult
    facts: SnapshotFacts = field(default_factory=SnapshotFacts)
    encrypted: Path | None = None  # /backup/<name>.zip.age in place of the zip (--age-encrypt-local)

    @property
    def snapshot_sha256(self) -> str:
        return self.archive.manifest.get(layout.snapshot_entry(self.name), "")


@dataclass
class Saver:
    """Everything one run needs; effects go through ``runner`` and the S3 store factory."""

    opts: Options
    runner: Runner
    stop: StopRequest
    budgets: Budgets = field(default_factory=Budgets)
    store_factory: Callable[..., S3Store] = S3Store
    progress_interval: float = 5.0
    telemetry: Telemetry | None = None
    _ticks: int = 0  # rolling ticks so far (--verify-every counts them)
    age: crypto.AgeSettings = field(default_factory=crypto.AgeSettings)
    warm: WarmUp = field(default_factory=WarmUp)

    def __post_init__(self) -> None:
        self.policy = prune.policy_of(self.opts)

    def stage(self, name: str) -> contextlib.AbstractContextManager[Outcome]:
        """Report a rolling stage to the telemetry, when it is on (a stop is no failure)."""
        if self.telemetry is None:
            from sidekick.etcd.telemetry import Outcome

            return contextlib.nullcontext(Outcome())
        return self.telemetry.stage(name, ignore=(Stopped,))

    @property
    def backup_dir(self) -> Path:
        return layout.backup_dir()

    def etcdctl(self) -> Etcdctl:
        o = self.opts
        return Etcdctl(self.runner, endpoints=o.endpoints, cacert=o.cacert, cert=o.cert, key=o.key,
                       budgets=self.budgets)

    def checkpoint(self) -> None:
        if self.stop.is_set():
            raise Stopped(f"stopped by {self.stop.signal_name or 'a stop request'}")

    def _interruptible(self, add: Callable[[int], None]) -> Callable[[int], None]:
        """A progress callback that ends a long archive soon after a stop request (the
        archive's temp file is then removed)."""

        def callback(count: int) -> None:
            self.checkpoint()
            add(count)

        return callback

    # --- the snapshot ---------------------------------------------------------------------
    def take_snapshot(self, name: str) -> Snapshot:
        ctl = self.etcdctl()
        policy = self.budgets.etcd(self.opts.backup_retries)
        attempts = [0]

        def attempt(_deadline: Deadline) -> Snapshot:
            attempts[0] += 1
            try:
                return self._attempt(ctl, name)
            except EtcdError as err:
                log.warning("snapshot attempt failed", extra=kv(name=name, attempt=attempts[0], error=str(err)))
                raise

        try:
            return policy.run(attempt, what=f"etcd snapshot {name}", stop=self.stop,
                              retryable=lambda err: isinstance(err, EtcdError | DeadlineExceeded),
                              on_retry=lambda n, err, wait: log.info(
                                  "retrying the snapshot", extra=kv(name=name, attempt=n + 1, wait=f"{wait:.1f}s")))
        except BudgetSpent as err:
            raise SidekickError(f"failed to take etcd snapshot {name} after {attempts[0]} attempts "
                                f"in {policy.budget:g}s: {err.last}") from None
        except (EtcdError, DeadlineExceeded) as err:
            raise SidekickError(f"failed to take etcd snapshot {name} after {attempts[0]} attempts: {err}") from None

    def _attempt(self, ctl: Etcdctl, name: str) -> Snapshot:
        ctl.health()
        self.check_space()
        raw = temp_path(self.backup_dir / name)
        try:
            progress = Progress(log, "etcd snapshot", interval=self.progress_interval, name=name)
            ctl.snapshot_save(raw, stop=self.stop, progress=progress)
            size = raw.stat().st_size
            progress.finish(size=size)
            self.warm.consider(size)
            started = time.monotonic()
            status = bolt.status(raw, self.checkpoint).as_etcdctl()
            seconds = time.monotonic() - started
            return self._archive(name, raw, status, self._key_count(ctl, status), check_seconds=seconds)
        finally:
            for leftover in (raw, raw.with_name(raw.name + ".part")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    @staticmethod
    def _key_count(ctl: Etcdctl, status: dict[str, object]) -> int | None:
        """Live keys at the snapshot's revision, for ``verify`` to compare; None if etcd cannot say."""
        revision = status.get("revision")
        if not isinstance(revision, int):
            return None
        try:
            return ctl.key_count(revision)
        except SidekickError as err:
            log.warning("cannot count the snapshot's keys (verify will compare the revision only)",
                        extra=kv(revision=revision, error=str(err)))
            return None

    def _archive(self, name: str, raw: Path, status: dict[str, object] | None = None,
                 keys: int | None = None, *, check_seconds: float = 0.0) -> Snapshot:
        state = layout.state_path(name)
        facts: list[SnapshotFacts] = []

        def manifest_facts(results: list[EntryResult]) -> dict[str, object]:
            entry = results[0]
            # etcd's hash trailer, from the pass that just read the file: a mismatch raises
            # before the archive is renamed into place.
            trailer = check_hash_trailer(entry.size, entry.head_sha256, entry.tail)
            log.info("snapshot checked", extra=kv(revision=(status or {}).get("revision"),
                                                  keys=(status or {}).get("totalKey"),
                                                  hash_trailer="ok" if trailer else "absent",
                                                  seconds=f"{check_seconds:.2f}"))
            facts.append(SnapshotFacts.from_status(status or {}, keys=keys, size=entry.size, sha256=entry.sha256,
                                                   version=__version__))
            return facts[0].to_manifest()

        entries = [(layout.snapshot_entry(name), raw)]
        if state.is_file():
            entries.append((layout.state_entry(name), state))
        progress = Progress(log, "archive", total=raw.stat().st_size, interval=self.progress_interval,
                            name=f"{name}.zip")
        try:
            result = write_archive(layout.archive_path(name), entries, on_input=self._interruptible(progress.add),
                                   facts=manifest_facts)
        except OSError as err:
            raise SidekickError(f"cannot write {describe_os_error(err, layout.archive_entry(name))}") from None
        snapshot_sha = result.manifest[layout.snapshot_entry(name)]
        progress.finish(size=result.input_size, sha256=snapshot_sha, archive_size=result.size,
                        ratio=f"{result.size / max(1, result.input_size):.3f}")
        # The archive is complete: the raw file (an old one may sit at the final name) and
        # the state file are now inside it, as the original leaves things.
        with contextlib.suppress(FileNotFoundError):
            layout.snapshot_path(name).unlink()
        if len(entries) > 1:
            with contextlib.suppress(FileNotFoundError):
                state.unlink()
        log.info("Created local backup", extra=kv(name=name, path=layout.archive_entry(name), size=result.size,
                                                  snapshot_sha256=snapshot_sha, archive_sha256=result.sha256))
        return Snapshot(name, result, facts[0] if facts else SnapshotFacts())

    # --- encryption ---------------------------------------------------------------------------
    def seal(self, snap: Snapshot) -> None:
        """With ``--age-encrypt-local``, ``/backup/<name>.zip.age`` replaces the plain archive."""
        if not self.age.encrypt_local:
            return
        plain = snap.archive.path
        sealed = plain.with_name(crypto.encrypted_name(plain.name))
        crypto.encrypt_file(plain, sealed, self.age.recipients, stop=self.stop)
        plain.unlink()
        snap.encrypted = sealed

    @contextlib.contextmanager
    def upload_source(self, snap: Snapshot) -> Iterator[Path]:
        """The file to upload: the archive, or its age encryption (a temp copy beside it,
        removed afterwards, unless the local copy is the encrypted one)."""
        if not self.age.encrypts:
            yield snap.archive.path
            return
        if snap.encrypted is not None:
            yield snap.encrypted
            return
        temp = temp_path(snap.archive.path.with_name(crypto.encrypted_name(snap.archive.path.name)))
        try:
            crypto.encrypt_file(snap.archive.path, temp, self.age.recipients, stop=self.stop)
            yield temp
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def check_space(self) -> None:
        """Refuse to start a snapshot that cannot fit: the last one's size (and its archive)
        times a margin must be free, else one line says how much is needed and what is there."""
        last = layout.last_snapshot_size(self.backup_dir)
        if last is None:
            return
        need = int(last * SPACE_MARGIN)
        st = os.statvfs(self.backup_dir)
        have = st.f_bavail * st.f_frsize
        if have < need:
            raise SidekickError(f"not enough space for a snapshot: need {_mb(need)}, have {_mb(have)} "
                                f"on {layout.BACKUP_DIR}")

    # --- S3 -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def s3(self) -> Iterator[S3Store]:
        """A store whose bucket exists, within one S3 budget; every failure here is an
        upload failure for RKE."""
        try:
            store = self.store_factory(S3Config.from_options(self.opts), budgets=self.budgets,
                                       retries=self.opts.s3_retries, stop=self.stop)
        except S3Error as err:
            raise SidekickError(f"{UPLOAD_FAILED}: {err}") from None
        try:
            try:
                store.check_bucket()
            except S3Error as err:
                raise SidekickError(f"{UPLOAD_FAILED}: {err}") from None
            yield store
        finally:
            store.close()

    def upload(self, store: S3Store, snap: Snapshot) -> None:
        from sidekick.etcd import catchup

        filename = snap.archive.path.name
        if self.age.encrypts:
            filename = crypto.encrypted_name(filename)  # <name>.zip.age: never taken for a zip
        key = store.config.key(filename)
        try:
            existing = store.object_size(key)
            if existing and not store.versioning_enabled():
                log.info("Skipping upload to s3 because snapshot already exists and versioning is not enabled "
                         "for the bucket", extra=kv(name=snap.name, key=key))
                return
            metadata = {**snap.facts.to_metadata(), SNAPSHOT_SHA_META: snap.snapshot_sha256,
                        ARCHIVE_SHA_META: snap.archive.sha256}
            if self.age.encrypts:  # the digests stay those of the plaintext
                metadata[ENCRYPTION_META] = crypto.AGE
            with self.upload_source(snap) as path:
                size = path.stat().st_size
                progress = Progress(log, "upload", total=size, interval=self.progress_interval,
                                    key=key, bucket=store.config.bucket)
                if self.age.encrypts:
                    store.upload_file(path, key, metadata=metadata, on_bytes=progress.add,
                                      content_type=AGE_CONTENT_TYPE)
                else:
                    store.upload_file(path, key, metadata=metadata, on_bytes=progress.add)
        except (S3Error, crypto.CryptoError) as err:
            raise SidekickError(f"{UPLOAD_FAILED}: {err}") from None
        progress.finish(size=size, sha256=snap.archive.sha256)
        catchup.remember(snap.encrypted or snap.archive.path, key, snap.archive.sha256)
        log.info("Successfully uploaded", extra=kv(key=key, size=size))

    def catch_up(self, store: S3Store, snap: Snapshot) -> None:
        """Opt-in: upload what S3 missed while it was down; a failure here only warns (this
        run's own snapshot is already safe in the bucket)."""
        if not self.opts.s3_catch_up:
            return
        from sidekick.etcd import catchup

        try:
            catchup.catch_up(store, self.backup_dir, limit=self.opts.s3_catch_up,
                             skip=(snap.encrypted or snap.archive.path).name, age=self.age)
        except S3Error as err:
            log.warning("S3 catch-up failed: the next run tries again", extra=kv(error=str(err)))

    def s3_retention(self, store: S3Store, tick: dt.datetime) -> int:
        """Delete what the policy no longer keeps in the bucket (folder); return how many went."""
        plan = retention.plan(prune.s3_snapshots(store), self.policy, tick)
        if not plan.deleted:
            log.info("no expired S3 snapshots", extra=kv(policy=self.policy.describe()))
            return 0
        started = time.monotonic()
        deleted = prune.delete_s3(store, [s.name for s in plan.deleted], now=tick)
        log.info("deleted expired S3 snapshots", extra=kv(count=deleted, refused=len(plan.deleted) - deleted,
                                                        seconds=f"{time.monotonic() - started:.2f}"))
        return deleted

    # --- local retention --------------------------------------------------------------------
    def local_retention(self, tick: dt.datetime) -> int:
        snapshots = retention.local_rolling(prune.local_files(self.backup_dir))
        return prune.delete_local(self.backup_dir, [s.name for s in retention.plan(snapshots, self.policy,
                                                                                   tick).deleted])

    def rancher_retention(self, name: str) -> None:
        """After a one-shot save of a Rancher-named snapshot: that cluster's recurring local
        snapshots (by mtime), as RKE's rotation does (CONTRACT 3.2)."""
        if not retention.rancher_prefix(name):
            return
        snapshots = retention.local_rancher(prune.local_files(self.backup_dir), name=name)
        plan = retention.plan(snapshots, self.policy, dt.datetime.now(dt.UTC))
        prune.delete_local(self.backup_dir, [s.name for s in plan.deleted])

    def clean_leftovers(self) -> None:
        """Temp files of an interrupted run (old enough not to be another process's)."""
        for path in remove_leftovers(self.backup_dir):
            log.info("removed a leftover of an interrupted run", extra=kv(name=path.name))

    # --- the two modes ----------------------------------------------------------------------
    def one_at_a_time(self, what: str) -> contextlib.AbstractContextManager[None]:
        return layout.one_run_at_a_time(what, stop=self.stop, wait=self.budgets.seconds(LOCK_WAIT),
                                        note=f"{what} (pid {os.getpid()})")

    def once(self) -> int:
        with self.one_at_a_time(f"save --once {self.opts.name}".rstrip()):
            return self._once()

    def _once(self) -> int:
        name = self.opts.name or retention.rolling_name(dt.datetime.now(dt.UTC))
        log.info("Initializing Onetime Backup", extra=kv(name=name))
        try:
            snap = self.take_snapshot(name)
        except Stopped:
            raise Stopped(f"interrupted by {self.stop.signal_name or 'a stop request'}: "
                          "no snapshot was written") from None
        self.seal(snap)
        kept = snap.encrypted or snap.archive.path
        if self.opts.s3_backup:
            self.warm.join()
            try:
                with self.s3() as store:
                    self.upload(store, snap)
                    self.catch_up(store, snap)
            except Stopped:
                raise Stopped(f"interrupted by {self.stop.signal_name or 'a stop request'} during the S3 upload: "
                              f"snapshot kept locally at {layout.BACKUP_DIR}/{kept.name}; {UPLOAD_FAILED}") from None
        self.rancher_retention(name)
        return 0

    def tick(self, when: dt.datetime) -> None:
        name = retention.rolling_name(when)
        self._ticks += 1
        self._tick(when, name)
        every = verify_period(self.opts)
        if every and self._ticks % every == 0:
            self.checkpoint()
            self.verify(name)

    def verify(self, name: str) -> None:
        """The trial restore of the local archive just written (``--verify``)."""
        from sidekick.etcd.verify import Verifier, VerifyFailed

        with self.stage("verify"):
            try:
                Verifier(self.runner, self.budgets, self.stop).local(name)
            except VerifyFailed as err:
                raise SidekickError(f"verify {name} failed: {err}") from None

    def _tick(self, when: dt.datetime, name: str) -> None:
        from sidekick.etcd.clusterstate import StateError, write_statefile

        log.info("rolling snapshot", extra=kv(name=name))
        self.clean_leftovers()  # a crashed run restarted by Docker left them
        try:
            write_statefile(name, budgets=self.budgets, stop=self.stop)
        except StateError as err:
            # A snapshot without the state file beats no snapshot at all.
            log.warning("Error while trying to retrieve cluster state from cluster",
                        extra=kv(name=name, error=str(err)))
        self.checkpoint()
        with self.stage("snapshot") as outcome:
            snap = self.take_snapshot(name)
            self.seal(snap)
            outcome.size = snap.archive.size
        self.checkpoint()
        with self.stage("retention") as outcome:
            outcome.deleted = self.local_retention(when)
            if not self.opts.s3_backup:
                return
        self.checkpoint()
        with contextlib.ExitStack() as stack:
            with self.stage("upload"):
                store = stack.enter_context(self.s3())
                self.upload(store, snap)
                self.catch_up(store, snap)
            self.checkpoint()
            with self.stage("retention") as outcome:
                try:
                    outcome.deleted = self.s3_retention(store, when)
                except S3Error as err:
                    raise SidekickError(f"S3 retention failed: {err}") from None

    def rolling(self) -> int:
        creation = self.opts.creation.total_seconds()
        log.info("Initializing Rolling Backups", extra=kv(creation=format_go_duration(self.opts.creation),
                                                          retention=format_go_duration(self.opts.retention)))
        next_tick = time.monotonic() + creation
        while True:
            if self.stop.wait(next_tick - time.monotonic()):
                break
            when = dt.datetime.now(dt.UTC).replace(microsecond=0)
            try:
                with self.one_at_a_time("rolling snapshot"):
                    self.tick(when)
            except Stopped:
                break
            except SidekickError as err:
                log.error("rolling snapshot failed", extra=kv(error=str(err)))
            except Exception as err:  # a failed tick never stops the loop
                log.debug("traceback", exc_info=True)
                log.error("rolling snapshot failed", extra=kv(error=f"{type(err).__name__}: {err}"))
            # Ticks missed while a long tick ran are dropped, as Go's ticker does.
            now = time.monotonic()
            next_tick += creation
            if next_tick <= now:
                next_tick += creation * ((now - next_tick) // creation + 1)
        log.info("stopped", extra=kv(reason=self.stop.signal_name or "stop request"))
        return 0


def verify_period(opts: Options) -> int:
    """Verify every Nth rolling snapshot: ``--verify-every N``, or 1 with ``--verify``, else 0 (never)."""
    return opts.verify_every or (1 if opts.verify else 0)


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB" if size >= 10_000_000 else f"{size / 1e6:.1f} MB"


def _validate(opts: Options) -> None:
    if opts.once and verify_period(opts):
        raise UsageError("--verify and --verify-every apply to rolling snapshots; for one snapshot run "
                         "'etcd-backup verify --name NAME' after it")
    if opts.creation <= dt.timedelta(0) or opts.retention <= dt.timedelta(0):
        raise UsageError(
            f"Creation period and/or retention are not set (creation={format_go_duration(opts.creation)}, "
            f"retention={format_go_duration(opts.retention)})"
        )
    if not (opts.cert and opts.cacert and opts.key):
        raise UsageError("Failed to find etcd cert or key paths (--cacert, --cert and --key are required)")


def prepare_backup_dir() -> Path:
    """``/backup`` exists, is a directory and is writable, or one line says which is not."""
    directory = layout.backup_dir()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise SidekickError(f"{layout.BACKUP_DIR}: not a directory") from None
    except OSError as err:
        raise SidekickError(f"cannot use {describe_os_error(err, layout.BACKUP_DIR)}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        read_only = os.statvfs(directory).f_flag & os.ST_RDONLY
        cause = os.strerror(errno.EROFS if read_only else errno.EACCES).lower()
        raise SidekickError(f"cannot write to {layout.BACKUP_DIR}: {cause}")
    return directory


def run_save(opts: Options, *, runner: Runner | None = None) -> int:
    _validate(opts)
    bound_malloc()  # before any thread allocates
    age = crypto.AgeSettings.load(recipients=opts.age_recipient, recipients_file=opts.age_recipients_file,
                                  encrypt_local=opts.age_encrypt_local)
    if opts.s3_backup:
        S3Config.from_options(opts)  # bad S3 settings (files, SSE, checksum): one line before any snapshot
    directory = prepare_backup_dir()
    warm = WarmUp(opts.once and opts.s3_backup)
    warm.consider(layout.last_snapshot_size(directory))  # a node's snapshots keep their size
    telemetry = None
    if not opts.once:
        from sidekick.etcd.telemetry import Telemetry

        telemetry = Telemetry.from_env(opts.creation, s3_backup=opts.s3_backup)
    with stop_on_signals() as stop, telemetry or contextlib.nullcontext():
        saver = Saver(opts, runner or Runner(), stop, Budgets.from_options(opts), telemetry=telemetry, age=age,
                      warm=warm)
        if telemetry is not None:
            telemetry.start()
        saver.clean_leftovers()
        return saver.once() if opts.once else saver.rolling()
