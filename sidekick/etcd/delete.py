"""``etcd-backup delete --name N [--cleanup] [--s3-backup ...]`` (CONTRACT 3.10).

Without ``--cleanup``: remove ``/backup/N.zip`` and ``/backup/N``, then with ``--s3-backup`` the
objects of that snapshot in the bucket (``[folder/]N`` and ``[folder/]N.<ext>``, one
DeleteObjects call per 1,000 keys). With ``--cleanup`` (after a restore): remove only
``/backup/N``, and only when ``/backup/N.zip`` exists; never S3 objects. Only the snapshot's
own keys are deleted, never another snapshot whose name merely starts with ``N``
(docs/differences.md).
"""

from __future__ import annotations

import logging

from sidekick.errors import SidekickError, UsageError
from sidekick.etcd import layout
from sidekick.etcd.budgets import Budgets
from sidekick.etcd.crypto import AGE_SUFFIX
from sidekick.etcd.options import Options
from sidekick.etcd.retention import s3_snapshot_keys
from sidekick.etcd.s3 import S3Config, S3Error, S3Store
from sidekick.host.signals import stop_on_signals
from sidekick.log import kv
from sidekick.paths import host_path

log = logging.getLogger(__name__)


def _remove(path_text: str) -> bool:
    path = host_path(path_text)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        raise SidekickError(f"{path_text} is a directory, not a snapshot") from None
    except OSError as err:
        raise SidekickError(f"cannot delete {path_text}: {err.strerror}") from None
    log.info("Deleted local backup", extra=kv(name=path_text))
    return True


def run_delete(opts: Options) -> int:
    name = opts.name
    if not name:
        raise UsageError("snapshot name is required")
    compressed, uncompressed = layout.archive_entry(name), layout.snapshot_entry(name)
    sealed = compressed + AGE_SUFFIX  # the archive age-encrypted (--age-encrypt-local)
    if opts.cleanup:
        if host_path(compressed).is_file() or host_path(sealed).is_file():
            _remove(uncompressed)
        else:
            log.info("no local archive: keeping the uncompressed snapshot; --cleanup never deletes S3 objects",
                     extra=kv(name=name))
        return 0
    _remove(compressed)
    _remove(sealed)
    _remove(uncompressed)
    if not opts.s3_backup:
        return 0

    try:
        with stop_on_signals() as stop, S3Store(S3Config.from_options(opts), budgets=Budgets.from_options(opts),
                                                stop=stop) as store:
            store.check_bucket()
            prefix = store.config.key(name)
            keys = s3_snapshot_keys((o.key for o in store.list_objects(prefix, recursive=False)), prefix=prefix)
            deleted = store.delete_keys(keys)
    except S3Error as err:
        raise SidekickError(f"failed to delete snapshot {name} from S3: {err}") from None
    if len(deleted) != len(keys):
        refused = sorted(set(keys) - set(deleted))
        raise SidekickError(f"S3 refused to delete {', '.join(refused)}")
    log.info("removed backups from object store", extra=kv(keys=", ".join(deleted) or "none"))
    return 0
