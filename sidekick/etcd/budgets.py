"""Every time bound of the etcd wing, in one place, sized to fit RKE's own waits.

RKE gives a one-shot snapshot container ``backup_config.timeout`` (300 s by default) and
reads its last line only if it ended by then (CONTRACT 1.4, 3.2); restore containers get
the same 300 s. So, with the default flags:

- etcd: attempts (``--backup-retries`` + 1) start within :data:`ETCD_BUDGET` (40 s), waits
  ``retry_wait * 2/15`` doubling to ``retry_wait`` (2, 4, 8, 15 s at the default 15 s); an
  unreachable etcd fails each health check within :data:`HEALTH_TIMEOUT`, so a save with etcd
  down ends in under 45 s. A running ``etcdctl snapshot save`` is bounded by its progress
  (:data:`SNAPSHOT_STALL` without a byte), not by a clock, since its length depends on the data.
- S3: one phase (bucket check, upload or download, retention) of :data:`S3_PHASE` (200 s)
  plus :data:`MIN_RATE` time for the bytes; each control request gets :data:`S3_REQUEST`, each
  transfer attempt :data:`S3_TRANSFER` plus the bytes at ``MIN_RATE``. With a small snapshot a
  ``save --once`` therefore ends within about 200 s under any S3 fault, well before RKE stops
  waiting, and its last line carries ``failed to upload etcd snapshot file``.
- The cluster state fetch and the peer download have their own budgets below.
- ``verify`` fetches within the S3 or peer budget, then bounds each local step: the restore
  by :meth:`Budgets.restore`, the throwaway member by :data:`VERIFY_START`,
  :data:`VERIFY_QUERY` and :data:`VERIFY_STOP` (the snapshot check reads the local file,
  :mod:`sidekick.etcd.bolt`, and ends on a stop request).

``SIDEKICK_BUDGET_SCALE`` (default 1) multiplies every budget, so tests run the same logic
in seconds; ``SIDEKICK_RETRY_WAIT`` (default 15) sets the waits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidekick.retry import Policy
from sidekick.settings import budget_scale

if TYPE_CHECKING:
    from sidekick.etcd.options import Options

ETCD_BUDGET = 40.0
HEALTH_TIMEOUT = 10.0
SNAPSHOT_STALL = 60.0
SNAPSHOT_TIMEOUT = 3600.0
S3_PHASE = 200.0
S3_REQUEST = 30.0
S3_CONNECT = 10.0
S3_TRANSFER = 60.0
MIN_RATE = 1_000_000  # bytes per second a transfer may not fall below on average
STATE_ATTEMPTS = 3
STATE_REQUEST = 15.0
STATE_BUDGET = 40.0
PEER_ATTEMPTS = 5
PEER_BUDGET = 200.0
PEER_CONNECT = 10.0
PEER_IO = 60.0
HANDSHAKE = 5.0  # serve: a client that cannot finish TLS in this time is dropped
LOCK_WAIT = 60.0  # a second save or prune on the node waits this long for the first
SPACE_MARGIN = 1.5  # free space needed before a snapshot: the last snapshot's size times this
# verify (a trial restore): etcdctl snapshot restore, plus VERIFY_RATE time for the bytes; the
# throwaway member's start; each query of it; its stop (SIGTERM, then SIGKILL).
VERIFY_RESTORE = 120.0
VERIFY_RATE = 20_000_000  # bytes per second a restore (a local copy and a bolt rewrite) keeps up
VERIFY_START = 60.0
VERIFY_QUERY = 15.0
VERIFY_STOP = 10.0
LIST_S3 = 60.0  # list: every S3 request of one listing (pages, and HEADs with --details)


@dataclass(frozen=True)
class Budgets:
    retry_wait: float = 15.0
    scale: float = 1.0

    @classmethod
    def from_options(cls, opts: Options) -> Budgets:
        return cls(retry_wait=opts.retry_wait, scale=budget_scale(os.environ))

    def seconds(self, base: float) -> float:
        return base * self.scale

    def for_bytes(self, size: int) -> float:
        """Time for ``size`` bytes at the slowest rate still called progress."""
        return size / MIN_RATE * self.scale

    def restore(self, size: int) -> float:
        """``etcdctl snapshot restore`` of ``size`` bytes: :data:`VERIFY_RESTORE` plus the bytes."""
        return (VERIFY_RESTORE + size / VERIFY_RATE) * self.scale

    def etcd(self, retries: int) -> Policy:
        return Policy(attempts=retries + 1, first_wait=self.retry_wait * 2 / 15, max_wait=self.retry_wait,
                      budget=self.seconds(ETCD_BUDGET), attempt_budget=self.seconds(SNAPSHOT_TIMEOUT),
                      attempts_within_budget=False)

    def s3(self, retries: int) -> Policy:
        """Requests of one S3 step: at most ``retries + 1`` attempts of one request each (or
        one transfer each: a single PUT/GET, or the parts of a multipart upload)."""
        return Policy(attempts=retries + 1, first_wait=self.retry_wait / 15, max_wait=self.retry_wait,
                      budget=self.seconds(S3_PHASE), attempt_budget=self.seconds(S3_REQUEST))

    def state(self) -> Policy:
        return Policy(attempts=STATE_ATTEMPTS, first_wait=self.retry_wait / 15, max_wait=self.retry_wait / 3,
                      budget=self.seconds(STATE_BUDGET), attempt_budget=self.seconds(STATE_REQUEST))

    def peer(self) -> Policy:
        return Policy(attempts=PEER_ATTEMPTS, first_wait=self.retry_wait / 15, max_wait=self.retry_wait,
                      budget=self.seconds(PEER_BUDGET), attempt_budget=self.seconds(PEER_BUDGET))
