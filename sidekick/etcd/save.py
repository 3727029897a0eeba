"""``etcd-backup save``: one snapshot (``--once``) or a snapshot every ``--creation`` tick.

A snapshot, step by step (CONTRACT 3.1, 3.2, 3.11):

1. ``etcdctl endpoint health``, then ``etcdctl snapshot save`` to a temp name in /backup;
2. the file is checked (``etcdctl snapshot status`` and the sha256 etcd appends) so a corrupt
   snapshot never replaces a good archive and is never uploaded;
3. ``/backup/<name>.zip`` is written under a temp name and renamed when complete, with the
   entries ``/backup/<name>`` and, when present, ``/etc/kubernetes/<name>.rkestate``;
   then the raw file and the state file go;
4. steps 1-3 are retried ``--backup-retries`` times with capped exponential backoff;
5. with ``--s3-backup`` the archive is uploaded. EVERY S3 failure (unreachable, bad CA, wrong
   keys, missing bucket, rejected upload) ends the one-shot run with a last line containing
   ``failed to upload etcd snapshot file`` and keeps the local archive: RKE reads those words
   to tell a failed upload from a failed snapshot (CONTRACT 12: the original printed them only
   for the upload call itself).

Rolling mode adds the cluster state file before the snapshot, local retention after it, then
S3 upload and S3 retention; a failed tick is logged and the loop goes on; SIGTERM stops it
between steps.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from sidekick.errors import SidekickError, UsageError
from sidekick.etcd import retention
from sidekick.etcd.archive import ArchiveResult, write_archive
from sidekick.etcd.etcdctl import Etcdctl, EtcdError, verify_snapshot
from sidekick.etcd.options import Options, format_go_duration
from sidekick.etcd.progress import Progress
from sidekick.etcd.retry import StopFlag, etcd_backoff, s3_backoff
from sidekick.etcd.s3 import ARCHIVE_SHA_META, SNAPSHOT_SHA_META, S3Config, S3Error, S3Store
from sidekick.host.files import TEMP_PREFIX
from sidekick.host.proc import Runner
from sidekick.log import kv
from sidekick.paths import host_path

log = logging.getLogger(__name__)

BACKUP_DIR = "/backup"
K8S_DIR = "/etc/kubernetes"
UPLOAD_FAILED = "failed to upload etcd snapshot file"
LEFTOVER_AGE = 15 * 60.0  # seconds: an in-flight temp file of another process is younger


class Terminated(BaseException):
    """SIGTERM in one-shot mode: a BaseException so no ``except Exception`` swallows it."""


class Stopped(Exception):
    """SIGTERM arrived: leave the rolling loop between two steps."""


@dataclass
class Snapshot:
    name: str
    archive: ArchiveResult

    @property
    def snapshot_sha256(self) -> str:
        return self.archive.manifest.get(f"{BACKUP_DIR}/{self.name}", "")


@dataclass
class Saver:
    """Everything one run needs; effects go through ``runner`` and the S3 store factory."""

    opts: Options
    runner: Runner
    stop: StopFlag
    store_factory: Callable[[S3Config], S3Store] = S3Store
    progress_interval: float = 5.0

    @property
    def backup_dir(self) -> Path:
        return host_path(BACKUP_DIR)

    def etcdctl(self) -> Etcdctl:
        o = self.opts
        return Etcdctl(self.runner, endpoints=o.endpoints, cacert=o.cacert, cert=o.cert, key=o.key)

    def checkpoint(self) -> None:
        if self.stop.is_set():
            raise Stopped()

    def _interruptible(self, add: Callable[[int], None]) -> Callable[[int], None]:
        """A progress callback that ends a long archive or upload soon after SIGTERM (rolling
        mode): the archive's temp file is removed, the multipart upload aborted."""

        def callback(count: int) -> None:
            self.checkpoint()
            add(count)

        return callback

    # --- the snapshot ---------------------------------------------------------------------
    def take_snapshot(self, name: str) -> Snapshot:
        ctl = self.etcdctl()
        attempts = self.opts.backup_retries + 1
        delays = list(etcd_backoff(self.opts.retry_wait).delays(self.opts.backup_retries))
        last: SidekickError | None = None
        for attempt in range(attempts):
            if attempt:
                log.info("retrying the snapshot", extra=kv(name=name, attempt=attempt + 1,
                                                           wait=f"{delays[attempt - 1]:g}s"))
                if self.stop.wait(delays[attempt - 1]):
                    raise Stopped()
            try:
                return self._attempt(ctl, name)
            except EtcdError as err:
                last = err
                log.warning("snapshot attempt failed", extra=kv(name=name, attempt=attempt + 1, error=str(err)))
        raise SidekickError(f"failed to take etcd snapshot {name} after {attempts} attempts: {last}")

    def _attempt(self, ctl: Etcdctl, name: str) -> Snapshot:
        ctl.health()
        raw = self.backup_dir / f"{TEMP_PREFIX}{name}.{secrets.token_hex(4)}"
        try:
            progress = Progress(log, "etcd snapshot", interval=self.progress_interval, name=name)
            ctl.snapshot_save(raw, progress=progress)
            progress.finish(size=raw.stat().st_size)
            verify_snapshot(ctl, raw)
            return self._archive(name, raw)
        finally:
            for leftover in (raw, raw.with_name(raw.name + ".part")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def _archive(self, name: str, raw: Path) -> Snapshot:
        state = host_path(f"{K8S_DIR}/{name}.rkestate")
        entries = [(f"{BACKUP_DIR}/{name}", raw)]
        if state.is_file():
            entries.append((f"{K8S_DIR}/{name}.rkestate", state))
        dest = self.backup_dir / f"{name}.zip"
        progress = Progress(log, "archive", total=raw.stat().st_size, interval=self.progress_interval,
                            name=f"{name}.zip")
        try:
            result = write_archive(dest, entries, on_input=self._interruptible(progress.add))
        except OSError as err:
            reason = "no space left on device" if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) \
                else (err.strerror or str(err))
            raise SidekickError(f"cannot write {BACKUP_DIR}/{name}.zip: {reason}") from None
        progress.finish(size=result.input_size, sha256=result.manifest[f"{BACKUP_DIR}/{name}"],
                        archive_size=result.size, ratio=f"{result.size / max(1, result.input_size):.3f}")
        # The archive is complete: the raw file (an old one may sit at the final name) and
        # the state file are now inside it, as the original leaves things.
        with contextlib.suppress(FileNotFoundError):
            (self.backup_dir / name).unlink()
        if len(entries) > 1:
            with contextlib.suppress(FileNotFoundError):
                state.unlink()
        log.info("Created local backup", extra=kv(name=name, path=f"{BACKUP_DIR}/{name}.zip", size=result.size,
                                                  snapshot_sha256=result.manifest[f"{BACKUP_DIR}/{name}"],
                                                  archive_sha256=result.sha256))
        return Snapshot(name, result)

    # --- S3 -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def s3(self) -> Iterator[S3Store]:
        """A store whose bucket exists; every failure here is an upload failure for RKE."""
        try:
            store = self.store_factory(S3Config.from_options(self.opts))
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
        path = snap.archive.path
        key = store.config.key(path.name)
        existing = store.object_size(key)
        if existing and not store.versioning_enabled():
            log.info("Skipping upload to s3 because snapshot already exists and versioning is not enabled "
                     "for the bucket", extra=kv(name=snap.name, key=key))
            return
        metadata = {SNAPSHOT_SHA_META: snap.snapshot_sha256, ARCHIVE_SHA_META: snap.archive.sha256}
        delays = list(s3_backoff(self.opts.retry_wait).delays(self.opts.s3_retries))
        last: S3Error | None = None
        for attempt in range(self.opts.s3_retries + 1):
            if attempt and self.stop.wait(delays[attempt - 1]):
                raise Stopped()
            progress = Progress(log, "upload", total=snap.archive.size, interval=self.progress_interval,
                                key=key, bucket=store.config.bucket)
            try:
                store.upload_file(path, key, metadata=metadata, on_bytes=self._interruptible(progress.add))
            except S3Error as err:
                if self.stop.is_set():  # the stop came through the callback: multipart aborted
                    raise Stopped() from None
                last = err
                log.warning(f"{UPLOAD_FAILED}: {err}, retried {attempt} times", extra=kv(key=key))
                continue
            progress.finish(size=snap.archive.size, sha256=snap.archive.sha256)
            log.info("Successfully uploaded", extra=kv(key=key, size=snap.archive.size))
            return
        raise SidekickError(f"{UPLOAD_FAILED}: {last}")

    def s3_retention(self, store: S3Store, tick: dt.datetime) -> None:
        folder = store.config.folder
        prefix = f"{folder}/" if folder else ""
        keys = (o.key for o in store.list_objects(prefix, recursive=False))
        expired = retention.s3_expired(keys, folder=folder, tick=tick, retention=self.opts.retention)
        if not expired:
            log.info("no expired S3 snapshots", extra=kv(retention=format_go_duration(self.opts.retention)))
            return
        started = time.monotonic()
        deleted = store.delete_keys(expired)
        log.info("deleted expired S3 snapshots", extra=kv(count=len(deleted), refused=len(expired) - len(deleted),
                                                        seconds=f"{time.monotonic() - started:.2f}"))

    # --- local retention --------------------------------------------------------------------
    def _local_files(self) -> list[retention.LocalFile]:
        files = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.backup_dir) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                files.append(retention.LocalFile(entry.name, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC),
                                                 is_file=entry.is_file(follow_symlinks=False)))
        return files

    def _delete_local(self, names: list[str]) -> None:
        for name in names:
            try:
                (self.backup_dir / name).unlink()
            except FileNotFoundError:
                continue
            except OSError as err:
                log.warning("Delete local backup failed", extra=kv(name=name, error=err.strerror))
                continue
            log.info("Deleted local backup", extra=kv(name=name))

    def local_retention(self, tick: dt.datetime) -> None:
        self._delete_local(retention.local_expired(self._local_files(), tick=tick, retention=self.opts.retention))

    def rancher_retention(self, name: str) -> None:
        now = dt.datetime.now(dt.UTC)
        self._delete_local(retention.rancher_expired(self._local_files(), name=name, now=now,
                                                     retention=self.opts.retention))

    def clean_leftovers(self) -> None:
        """Temp files of an interrupted run (old enough not to be another process's)."""
        now = time.time()
        with contextlib.suppress(FileNotFoundError), os.scandir(self.backup_dir) as entries:
            for entry in entries:
                if not entry.name.startswith(TEMP_PREFIX) or not entry.is_file(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat(follow_symlinks=False).st_mtime >= LEFTOVER_AGE:
                        os.unlink(entry.path)
                        log.info("removed a leftover of an interrupted run", extra=kv(name=entry.name))

    # --- the two modes ----------------------------------------------------------------------
    def once(self) -> int:
        name = self.opts.name or retention.rolling_name(dt.datetime.now(dt.UTC))
        log.info("Initializing Onetime Backup", extra=kv(name=name))
        snap = self.take_snapshot(name)
        if self.opts.s3_backup:
            with self.s3() as store:
                self.upload(store, snap)
        self.rancher_retention(name)
        return 0

    def tick(self, when: dt.datetime) -> None:
        from sidekick.etcd.clusterstate import StateError, write_statefile

        name = retention.rolling_name(when)
        log.info("rolling snapshot", extra=kv(name=name))
        self.clean_leftovers()  # a crashed run restarted by Docker left them less than 15 min ago
        try:
            write_statefile(name, backoff=s3_backoff(self.opts.retry_wait), stop=self.stop)
        except StateError as err:
            # A snapshot without the state file beats no snapshot at all.
            log.warning("Error while trying to retrieve cluster state from cluster",
                        extra=kv(name=name, error=str(err)))
        self.checkpoint()
        snap = self.take_snapshot(name)
        self.checkpoint()
        self.local_retention(when)
        if not self.opts.s3_backup:
            return
        self.checkpoint()
        with self.s3() as store:
            self.upload(store, snap)
            self.checkpoint()
            self.s3_retention(store, when)

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
        log.info("stopped", extra=kv(reason="SIGTERM"))
        return 0


def _validate(opts: Options) -> None:
    if opts.creation <= dt.timedelta(0) or opts.retention <= dt.timedelta(0):
        raise UsageError(
            f"Creation period and/or retention are not set (creation={format_go_duration(opts.creation)}, "
            f"retention={format_go_duration(opts.retention)})"
        )
    if not (opts.cert and opts.cacert and opts.key):
        raise UsageError("Failed to find etcd cert or key paths (--cacert, --cert and --key are required)")


def run_save(opts: Options, *, runner: Runner | None = None, stop: StopFlag | None = None) -> int:
    _validate(opts)
    saver = Saver(opts, runner or Runner(), stop or StopFlag())
    saver.backup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    saver.clean_leftovers()
    if opts.once:
        # SIGTERM (docker stop) unwinds the stack, so etcdctl is killed and temp files go.
        def on_term_once(signum: int, _frame: FrameType | None) -> None:
            raise Terminated(signum)

        previous_term = signal.signal(signal.SIGTERM, on_term_once)
        try:
            return saver.once()
        except Terminated:
            raise SidekickError("interrupted by SIGTERM: no snapshot was written", exit_code=143) from None
        finally:
            signal.signal(signal.SIGTERM, previous_term)

    def on_term(signum: int, _frame: FrameType | None) -> None:
        log.info("received a stop signal: finishing the current step", extra=kv(signal=signum))
        saver.stop.set()

    previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return saver.rolling()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
