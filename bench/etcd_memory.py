"""Memory of ``save --once`` (local) and the cost of the snapshot facts, on one real snapshot.

Measured in the same run, on the same etcd data (JSON-ish values of 100 kB, as
``bench/etcd_save.py`` loads them):

- ``save --once`` as RKE runs it, without S3: the peak RSS of the whole process tree (the tool
  plus etcdctl, summed at each poll) and of the tool alone;
- ``etcdctl snapshot status -w json`` alone on a snapshot of the same data (what save ran
  before :mod:`sidekick.etcd.bolt`): its peak RSS and wall time;
- the page-by-page reader (:func:`sidekick.etcd.bolt.status`) in a fresh interpreter on the same
  file: its peak RSS and wall time; the two must report the same facts.

- the same ``save --once`` by the sidekick of an earlier revision (``SIDEKICK_BENCH_BASELINE_REV``,
  default ``3599ba3``, which ran ``etcdctl snapshot status``), same interpreter and libraries.

Status and reader runs alternate ``BENCH_ETCD_MEMORY_RUNS`` times (default 3), and so do the two
saves (the order swapped every round); medians of times, the highest of peaks.
Size: ``BENCH_ETCD_MEMORY_MB`` (default 300 MB of values).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.common import Peaks, Row, baseline_tree, measure, tool
from bench.etcd_save import loaded_etcd

# The revision before the page-by-page reader: its save ran etcdctl snapshot status.
BASELINE_REV = os.environ.get("SIDEKICK_BENCH_BASELINE_REV", "3599ba3")
SIZE_MB = int(os.environ.get("BENCH_ETCD_MEMORY_MB", "300"))
RUNS = int(os.environ.get("BENCH_ETCD_MEMORY_RUNS", "3"))
MIB = 2**20
READER = ("import json, sys, time; from pathlib import Path; from sidekick.etcd import bolt; "
          "t = time.perf_counter(); s = bolt.status(Path(sys.argv[1])).as_etcdctl(); "
          "print(json.dumps(s)); print(time.perf_counter() - t)")


@dataclass(frozen=True)
class _Highest:
    """Each peak of a set of runs at its highest."""

    tree: int
    own: int
    child: int

    @classmethod
    def of(cls, runs: list[Peaks]) -> _Highest:
        return cls(max(p.tree for p in runs), max(p.own for p in runs), max(p.child for p in runs))


def run() -> list[Row]:
    from tests.harness.etcd import ETCDCTL
    from tests.harness.etcd_backup import node_root, rke_save_argv

    work = Path(tempfile.mkdtemp(prefix="bench-etcd-memory-"))
    ssl_files, etcd = loaded_etcd(work, SIZE_MB, "etcd_memory")
    try:
        snapshot = work / "plain.db"
        etcd.ctl("snapshot", "save", str(snapshot), timeout=600)
        size_note = f"snapshot {snapshot.stat().st_size / 1e6:.0f} MB"

        env = {**os.environ, "ETCDCTL_API": "3"}
        status_s, status_rss, reader_s, reader_rss, reading_s = [], [], [], [], []
        for _ in range(RUNS):
            seconds, peaks, out, _ = measure([ETCDCTL, "snapshot", "status", str(snapshot), "-w", "json"], env)
            status_s.append(seconds)
            status_rss.append(peaks.tree)
            expected = json.loads(out.strip().splitlines()[-1])
            seconds, peaks, out, _ = measure([sys.executable, "-c", READER, str(snapshot)], env)
            reader_s.append(seconds)
            reader_rss.append(peaks.tree)
            facts, reading = out.splitlines()
            reading_s.append(float(reading))
            if json.loads(facts) != expected:
                raise RuntimeError(f"the reader says {facts}, etcdctl {expected}")

        root = node_root(work, ssl_files)
        save_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("S3_", "SIDEKICK_"))},
                    "SIDEKICK_ROOT": str(root)}
        tree = baseline_tree(work, BASELINE_REV)
        saves: dict[str, list[tuple[float, Peaks]]] = {"ours": [], "old": []}
        for round_ in range(RUNS):  # alternating, the order swapped every round: the same conditions
            order = ["ours", "old"] if round_ % 2 == 0 else ["old", "ours"]
            for who in order:
                if who == "old" and tree is None:
                    continue
                prefix, extra = tool(tree if who == "old" else None)
                name = f"bench-snap-{who}-{round_}"
                seconds, peaks, _, _ = measure([*prefix, "rke-etcd-backup", *rke_save_argv(etcd.endpoint, name, "--once")],
                                               {**save_env, **extra}, timeout=1800)
                saves[who].append((seconds, peaks))
                (root / "backup" / f"{name}.zip").unlink()  # the next save needs the same free space
        save_s = statistics.median(s for s, _ in saves["ours"])
        save_peaks = _Highest.of([p for _, p in saves["ours"]])
        old_rows = []
        if saves["old"]:
            old_s = statistics.median(s for s, _ in saves["old"])
            old_peaks = _Highest.of([p for _, p in saves["old"]])
            old_rows = [
                Row("save --once local: process-tree peak RSS", save_peaks.tree / MIB, "MiB", f"sidekick {BASELINE_REV}",
                    old_peaks.tree / MIB, note="same snapshot, highest of the runs"),
                Row("save --once local: tool peak RSS", save_peaks.own / MIB, "MiB", f"sidekick {BASELINE_REV}",
                    old_peaks.own / MIB),
                Row("save --once local: wall", save_s, "s", f"sidekick {BASELINE_REV}", old_s,
                    note=f"median of {RUNS}, alternating"),
            ]

        status_mib = statistics.median(status_rss) / MIB
        return [
            Row("save --once local: process-tree peak RSS", save_peaks.tree / MIB, "MiB",
                "etcdctl snapshot status alone", status_mib,
                note=f"{size_note}; highest of {RUNS} saves; goal <= 100 MiB"),
            Row("save --once local: tool peak RSS", save_peaks.own / MIB, "MiB",
                note=f"largest child (etcdctl snapshot save) {save_peaks.child / MIB:.0f} MiB"),
            Row("snapshot facts: bolt reader peak RSS", statistics.median(reader_rss) / MIB, "MiB",
                "etcdctl snapshot status", status_mib, note="a fresh interpreter importing sidekick.etcd.bolt"),
            Row("snapshot facts: bolt reader wall", statistics.median(reader_s), "s",
                "etcdctl snapshot status", statistics.median(status_s),
                note=f"median of {RUNS}, alternating; interpreter start and imports included"),
            Row("snapshot facts: bolt reader, the read alone", statistics.median(reading_s), "s",
                "etcdctl snapshot status", statistics.median(status_s),
                note="time inside the interpreter; etcdctl's figure is its whole run"),
            *old_rows,
        ]
    finally:
        etcd.stop()
        shutil.rmtree(work, ignore_errors=True)
