"""The restore side's commands: ``download`` (3.5, 3.7) and ``extractstatefile`` (3.3).

``download --s3-backup``: list ``[folder/]<name>``, download the matching key to
``/backup/<basename>`` (verified against its ``archive-sha256`` metadata) within the S3 budget,
and for a ``.zip`` extract ``/backup/<name>`` (CRC and manifest SHA-256 checked). An
age-encrypted ``<name>.zip.age`` is decrypted with ``--age-identity-file`` on the way and lands
as ``/backup/<name>.zip`` (:mod:`sidekick.etcd.crypto`).
``download --local-endpoint <peer>``: fetch ``/backup/<name>`` from the peer's ``serve``
(:mod:`sidekick.etcd.download`). ``extractstatefile``: optionally fetch the archive from S3
first, then write ``/tmp/cluster.rkestate`` from it.

A stop (``docker stop``) ends any of them with a last line that says nothing was replaced.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sidekick.errors import UsageError
from sidekick.etcd import layout
from sidekick.etcd.budgets import Budgets
from sidekick.etcd.options import Options, serve_port
from sidekick.etcd.progress import Progress
from sidekick.etcd.stopping import stoppable
from sidekick.host.memory import bound_malloc
from sidekick.host.signals import StopRequest
from sidekick.log import kv
from sidekick.paths import host_path

if TYPE_CHECKING:
    from sidekick.etcd import crypto

log = logging.getLogger(__name__)

DOWNLOAD_RETRIES = 4  # attempts after the first, as the original's --backup-retries default


def age_settings(opts: Options) -> crypto.AgeSettings:
    """The identity that decrypts ``<name>.zip.age`` (read and checked before any transfer)."""
    from sidekick.etcd import crypto  # S3 and archive paths only: the peer download never needs it

    return crypto.AgeSettings.load(identity_file=opts.age_identity_file)


@contextlib.contextmanager
def local_archive(name: str, age: crypto.AgeSettings, *, stop: StopRequest) -> Iterator[Path | None]:
    """``/backup/<name>.zip``, or a temporary decrypted copy of ``/backup/<name>.zip.age``
    (``--age-encrypt-local``) removed afterwards, or None when neither exists."""
    from sidekick.etcd import crypto

    plain = layout.archive_path(name)
    sealed = plain.with_name(crypto.encrypted_name(plain.name))
    if plain.exists() or not sealed.exists():
        yield plain if plain.exists() else None
        return
    with crypto.decrypted_copy(sealed, age.require_identities(f"snapshot {layout.archive_entry(name)}.age"),
                               stop=stop) as copy:
        yield copy


def fetch_from_s3(opts: Options, *, stop: StopRequest, extract: bool) -> Path:
    """Download the snapshot object into /backup; with ``extract``, unzip /backup/<name>."""
    from sidekick.etcd import s3  # its imports are not the peer download's to carry
    from sidekick.etcd.extract import extract_snapshot

    config = s3.S3Config.from_options(opts)
    age = age_settings(opts)
    with s3.S3Store(config, budgets=Budgets.from_options(opts), retries=DOWNLOAD_RETRIES, stop=stop) as store:
        store.check_bucket()
        progress = Progress(log, "S3 download", name=opts.name)
        path = s3.download_snapshot(store, opts.name, layout.backup_dir(), on_bytes=progress.add, age=age)
    progress.finish(size=path.stat().st_size)
    if extract and path.name.endswith(layout.ARCHIVE_SUFFIX):
        snapshot = extract_snapshot(opts.name, path, stop=stop)
        assert snapshot.digest is not None
        log.info("snapshot ready", extra=kv(path=layout.snapshot_entry(opts.name), size=snapshot.digest.size,
                                            sha256=snapshot.digest.sha256, source=snapshot.origin))
    return path


def run_download(opts: Options) -> int:
    if not opts.name:
        raise UsageError("--name is required: the snapshot to download")
    bound_malloc()
    if not opts.s3_backup:
        if not opts.local_endpoint:
            raise UsageError("give --local-endpoint (the serving peer) or --s3-backup")
        for flag, value in (("--cacert", opts.cacert), ("--cert", opts.cert), ("--key", opts.key)):
            if not value:
                raise UsageError(f"{flag} is required to download from a peer over mutual TLS")
    with stoppable() as stop:
        if opts.s3_backup:
            fetch_from_s3(opts, stop=stop, extract=True)
            return 0
        # Each path imports only its own client: S3 (botocore, zip, age) or the peer's (http.client).
        from sidekick.etcd.download import download_from_peer

        download_from_peer(opts.name, opts.local_endpoint, cacert=host_path(opts.cacert), cert=host_path(opts.cert),
                           key=host_path(opts.key), port=serve_port(), budgets=Budgets.from_options(opts), stop=stop)
    return 0


def run_extractstatefile(opts: Options) -> int:
    """``etcd-backup extractstatefile --name N [S3 flags]``: exit 0 only when the file is written."""
    if not opts.name:
        raise UsageError("--name is required: the snapshot whose state file to extract")
    bound_malloc()
    from sidekick.etcd.extract import extract_state_file

    with contextlib.suppress(FileNotFoundError):
        layout.state_output().unlink()  # a stale file from an earlier run must not be copied out
    with stoppable() as stop:
        if opts.s3_backup:
            fetch_from_s3(opts, stop=stop, extract=False)
        with local_archive(opts.name, age_settings(opts), stop=stop) as zip_path:
            extract_state_file(opts.name, zip_path)
    return 0
