"""etcdctl (v3 API) through the host's process runner: health, snapshot save, key count; and
etcd's hash trailer rule.

The argv is the original's: ``etcdctl --endpoints=<as given> --cacert=... --cert=... --key=...``
with ``ETCDCTL_API=3`` in the environment, and without the S3 and cloud credentials of ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from sidekick.deadline import Deadline, DeadlineExceeded, Stopped
from sidekick.errors import SidekickError
from sidekick.etcd.budgets import (
    HEALTH_TIMEOUT,
    SNAPSHOT_STALL,
    SNAPSHOT_TIMEOUT,
    Budgets,
)
from sidekick.etcd.progress import Progress
from sidekick.host.guard import Guard
from sidekick.host.proc import Runner
from sidekick.host.signals import StopRequest
from sidekick.paths import host_path

ETCDCTL = "etcdctl"
# Environment variables a child process never needs: S3 and cloud credentials.
_PRIVATE_PREFIXES = ("S3_", "AWS_")
HASH_SIZE = 32  # etcd appends the sha256 of the db to a snapshot (size % 512 == 32)


class EtcdError(SidekickError):
    pass


def container_path(path: str) -> str:
    """Certificate paths arrive as the container sees them; map absolute ones under the root."""
    return str(host_path(path)) if path.startswith("/") else path


@dataclass
class Etcdctl:
    runner: Runner
    endpoints: str
    cacert: str
    cert: str
    key: str
    budgets: Budgets = field(default_factory=Budgets)
    binary: str = ETCDCTL

    def _argv(self, *args: str) -> list[str]:
        return [
            self.binary,
            f"--endpoints={self.endpoints}",
            f"--cacert={container_path(self.cacert)}",
            f"--cert={container_path(self.cert)}",
            f"--key={container_path(self.key)}",
            *args,
        ]

    @staticmethod
    def _env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_PREFIXES)}
        return {**env, "ETCDCTL_API": "3"}

    def health(self) -> None:
        """Raise EtcdError unless the endpoint reports healthy."""
        try:
            result = self.runner.run(self._argv("endpoint", "health"), timeout=self.budgets.seconds(HEALTH_TIMEOUT),
                                     env=self._env(), check=False)
        except SidekickError as err:
            raise EtcdError(f"etcd health check failed: {err}") from None
        output = (result.stdout + result.stderr).decode(errors="replace")
        if result.returncode != 0 or "unhealthy" in output:
            raise EtcdError(f"etcd is not healthy: {_last_line(output) or f'exit {result.returncode}'}")

    def snapshot_save(self, dest: Path, *, stop: StopRequest, progress: Progress | None = None) -> None:
        """``etcdctl snapshot save dest``; etcdctl itself writes ``dest.part`` then renames.

        A watcher thread turns the file's growth into progress and into a moving deadline:
        etcdctl is killed when :data:`SNAPSHOT_STALL` seconds pass without a new byte (or on
        a stop request), whatever the database's size.
        """
        done = threading.Event()
        part = dest.with_name(dest.name + ".part")
        stall = self.budgets.seconds(SNAPSHOT_STALL)
        deadline = Deadline(stall, what="etcd snapshot (no new byte)")
        seen = [0]

        def watch() -> None:
            while not done.wait(0.5):
                size = _size(part) or _size(dest)
                if size > seen[0]:
                    deadline.restart()
                    if progress is not None:
                        progress.add(size - seen[0])
                    seen[0] = size

        watcher = threading.Thread(target=watch, name="etcdctl-progress", daemon=True)
        watcher.start()
        try:
            with Guard(deadline, stop):
                result = self.runner.run(self._argv("snapshot", "save", str(dest)),
                                         timeout=self.budgets.seconds(SNAPSHOT_TIMEOUT), env=self._env(), check=False)
        except (Stopped, DeadlineExceeded):
            raise
        except SidekickError as err:
            raise EtcdError(f"etcd snapshot failed: {err}") from None
        finally:
            done.set()
            watcher.join()
        if result.returncode != 0:
            text = (result.stderr + result.stdout).decode(errors="replace")
            raise EtcdError(f"etcd snapshot failed: {_last_line(text) or f'exit {result.returncode}'}")
        size = _size(dest)
        if progress is not None and size > seen[0]:
            progress.add(size - seen[0])

    def key_count(self, revision: int) -> int:
        """Live keys at ``revision``: RangeResponse's ``count`` (all keys, whatever ``--limit``)."""
        result = self.runner.run(self._argv(*KEY_COUNT_ARGS, f"--rev={revision}"),
                                 timeout=self.budgets.seconds(HEALTH_TIMEOUT), env=self._env(), check=False)
        return parse_key_count(result.returncode, result.stdout, result.stderr)


# A range over every key that returns at most one, keys only: etcd still reports the count.
KEY_COUNT_ARGS = ("get", "", "--prefix", "--keys-only", "--limit=1", "-w", "json")


def parse_key_count(returncode: int, stdout: bytes, stderr: bytes) -> int:
    """The ``count`` of ``etcdctl get ... -w json`` (absent when zero), or EtcdError."""
    if returncode != 0:
        text = (stderr + stdout).decode(errors="replace")
        raise EtcdError(f"cannot count keys: {_last_line(text) or f'exit {returncode}'}")
    try:
        answer = json.loads(stdout.decode(errors="replace"))
        count = int(answer.get("count") or 0)
    except (ValueError, AttributeError, TypeError):
        raise EtcdError("cannot count keys: etcdctl printed no JSON answer") from None
    return count


def has_hash_trailer(size: int) -> bool:
    """etcd's rule (``snapshot restore``): a file whose size is 32 more than a multiple of 512
    ends with the sha256 of what precedes it."""
    return size >= HASH_SIZE and size % 512 == HASH_SIZE


def check_hash_trailer(size: int, head_sha256: bytes | None, tail: bytes) -> bool | None:
    """True when the trailer matches, None when the file has none; EtcdError when it does not
    match. ``head_sha256`` is the digest of all but the last 32 bytes, ``tail`` those bytes."""
    if not has_hash_trailer(size):
        return None
    if head_sha256 is None or head_sha256 != tail:
        raise EtcdError("snapshot check failed: the sha256 etcd appended does not match the content")
    return True


def check_snapshot_hash(path: Path, *, chunk: int = 1 << 20) -> bool | None:
    """:func:`check_hash_trailer` of a file, read once (for a snapshot no other pass reads)."""
    size = _size(path)
    if not has_hash_trailer(size):
        return None
    sha = hashlib.sha256()
    remaining = size - HASH_SIZE
    with open(path, "rb") as source:
        while remaining > 0:
            data = source.read(min(chunk, remaining))
            if not data:
                break
            sha.update(data)
            remaining -= len(data)
        trailer = source.read(HASH_SIZE)
    return check_hash_trailer(size, sha.digest() if remaining == 0 else None, trailer)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
