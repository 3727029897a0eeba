"""Carrying out a retention plan, for the rolling loop, ``save --once`` and ``prune``.

:mod:`sidekick.etcd.retention` decides (pure); this module lists what is there, deletes what
a plan says and nothing else, and runs ``rke-etcd-backup etcd-backup prune [--dry-run]``: the
rolling snapshots of /backup and, with ``--s3-backup``, of the bucket (folder), planned with
the same policy as ``save`` (``--retention`` plus the opt-in ``--keep-*`` rules and floor).
``--dry-run`` prints one line per snapshot (``delete local 2024-...Z_etcd.zip (older than
24h0m0s)``) and deletes nothing; a real run deletes exactly the dry run's set for the same
listing, under the node's run lock (never while a ``save`` runs).

An object S3 refuses to delete (Object Lock retention, legal hold, a denied key) is reported
once per run in one warning and skipped; it is not retried, and the rest still go.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from sidekick.errors import SidekickError
from sidekick.etcd import layout, retention
from sidekick.etcd.budgets import LOCK_WAIT, Budgets
from sidekick.etcd.options import Options
from sidekick.etcd.s3 import S3Config, S3Error, S3Store
from sidekick.host.signals import stop_on_signals
from sidekick.log import kv

log = logging.getLogger(__name__)


def policy_of(opts: Options) -> retention.Policy:
    return retention.parse_policy(within=opts.retention, flags=opts.keep, env=os.environ)


def local_files(directory: Path) -> list[retention.LocalFile]:
    files: list[retention.LocalFile] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return files
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        files.append(retention.LocalFile(entry.name, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC),
                                         is_file=entry.is_file(follow_symlinks=False), size=st.st_size))
    return files


def delete_local(directory: Path, names: Iterable[str]) -> int:
    """Delete ``names`` from ``directory``; a failure is a warning and the rest go on."""
    deleted = 0
    for name in names:
        try:
            (directory / name).unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            log.warning("Delete local backup failed", extra=kv(name=name, error=err.strerror))
            continue
        deleted += 1
        log.info("Deleted local backup", extra=kv(name=name))
    return deleted


def s3_snapshots(store: S3Store) -> list[retention.Snapshot]:
    folder = store.config.folder
    listed = store.list_objects(f"{folder}/" if folder else "", recursive=False)
    return retention.s3_rolling(((o.key, o.size) for o in listed), folder=folder)


def delete_s3(store: S3Store, keys: list[str], *, now: dt.datetime) -> int:
    """Delete ``keys``; a locked object (Object Lock retention or legal hold: a delete would
    only hide it behind a delete marker) or one S3 refuses is skipped, all reported in one line."""
    if not keys:
        return 0
    skipped: list[str] = []
    if store.object_lock_enabled():
        locks = {key: store.lock_of(key, now) for key in keys}
        skipped = [f"{key} ({why})" for key, why in locks.items() if why]
        keys = [key for key, why in locks.items() if not why]
    deleted = store.delete_keys(keys) if keys else []
    skipped += sorted(set(keys) - set(deleted))
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log.warning("S3 keeps some expired snapshots (Object Lock, legal hold or permissions): skipped",
                    extra=kv(count=len(skipped), keys=shown))
    return len(deleted)


def run_prune(opts: Options) -> int:
    policy = policy_of(opts)
    budgets = Budgets.from_options(opts)
    now = dt.datetime.now(dt.UTC)
    directory = layout.backup_dir()
    with stop_on_signals() as stop, layout.one_run_at_a_time(
            "prune", stop=stop, wait=budgets.seconds(LOCK_WAIT), note=f"prune (pid {os.getpid()})"):
        snapshots = retention.local_rolling(local_files(directory))
        store = None
        try:
            if opts.s3_backup:
                store = S3Store(S3Config.from_options(opts), budgets=budgets, retries=opts.s3_retries, stop=stop)
                store.check_bucket()
                snapshots += s3_snapshots(store)
            plan = retention.plan(snapshots, policy, now)
            log.info("retention plan", extra=kv(policy=policy.describe(), delete=len(plan.deleted),
                                                keep=len(plan.kept), dry_run=opts.dry_run))
            if opts.dry_run:
                for decision in plan.decisions:
                    if decision.action is not retention.Action.SKIP:
                        print(decision.describe())
                return 0
            local = [s.name for s in plan.deleted if s.where is retention.Where.LOCAL]
            remote = [s.name for s in plan.deleted if s.where is retention.Where.S3]
            deleted = delete_local(directory, local)
            if store is not None:
                deleted += delete_s3(store, remote, now=now)
        except S3Error as err:
            raise SidekickError(f"prune failed: {err}") from None
        finally:
            if store is not None:
                store.close()
    log.info("pruned", extra=kv(deleted=deleted, planned=len(plan.deleted)))
    return 0
