"""``verify`` (a trial restore) on a real snapshot, beside etcdctl's own steps alone.

Measured in the same run, on the same snapshot (``BENCH_ETCD_VERIFY_MB``, default 512 MB of
JSON-ish 100 kB values in a real etcd, saved by ``save --once``):

- ``etcdctl snapshot status`` and ``etcdctl snapshot restore`` of the uncompressed file alone,
  wall time and etcdctl's peak RSS;
- ``etcd-backup verify --name N`` of the local archive (inflate with CRC and SHA-256, hash
  trailer, status, restore, throwaway member started and read back): wall time, the peak RSS
  of sidekick's own process (the issue's bound: under 100 MiB for a 1 GiB snapshot) and the
  peak RSS of its children (etcdctl, then etcd, which maps the whole database).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bench.common import SIDEKICK, Row, measure
from bench.etcd_save import loaded_etcd

SIZE_MB = int(os.environ.get("BENCH_ETCD_VERIFY_MB", "512"))


def run() -> list[Row]:
    from tests.harness.etcd import ETCDCTL
    from tests.harness.etcd_backup import node_root, rke_save_argv

    work = Path(tempfile.mkdtemp(prefix="bench-etcd-verify-"))
    ssl_files, etcd = loaded_etcd(work, SIZE_MB, "etcd_verify")
    try:
        root = node_root(work, ssl_files)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("S3_", "SIDEKICK_"))},
               "SIDEKICK_ROOT": str(root)}
        subprocess.run([str(SIDEKICK), "rke-etcd-backup", *rke_save_argv(etcd.endpoint, "bench-verify", "--once")],
                       env=env, check=True, capture_output=True)
        etcd.stop()  # the machine is small: the source member need not compete with the trial
        archive = root / "backup/bench-verify.zip"
        raw = work / "plain.db"
        with zipfile.ZipFile(archive) as zf, zf.open("/backup/bench-verify") as src, open(raw, "wb") as dst:
            shutil.copyfileobj(src, dst, 4 << 20)
        size = raw.stat().st_size
        note = f"snapshot {size / 1e6:.0f} MB, archive {archive.stat().st_size / 1e6:.0f} MB"
        ctl_env = {"PATH": os.environ["PATH"], "ETCDCTL_API": "3"}

        status_s, status_peaks, _, _ = measure([ETCDCTL, "snapshot", "status", str(raw), "-w", "json"], ctl_env)
        restore_s, restore_peaks, _, _ = measure([ETCDCTL, "snapshot", "restore", str(raw),
                                                f"--data-dir={work / 'restored'}"], ctl_env)
        shutil.rmtree(work / "restored")
        raw.unlink()

        verify_s, verify_peaks, _, err = measure([str(SIDEKICK), "rke-etcd-backup", "etcd-backup", "verify",
                                                "--name", "bench-verify"], env)
        print(f"# etcd_verify: {err.strip().splitlines()[-1]}", file=sys.stderr)  # the steps' seconds
        return [
            Row("etcdctl snapshot status", status_s, "s", note=f"etcdctl peak RSS {status_peaks.own / 2**20:.0f} MiB; {note}"),
            Row("etcdctl snapshot restore", restore_s, "s",
                note=f"etcdctl peak RSS {restore_peaks.own / 2**20:.0f} MiB"),
            Row("verify (inflate+check+restore+member)", verify_s, "s", "status + restore alone", status_s + restore_s,
                note="the rest: inflate, SHA-256, hash trailer, member start and read-back"),
            Row("verify, sidekick peak RSS", verify_peaks.own / 2**20, "MiB",
                note="goal < 100 MiB for 1 GiB; children measured apart"),
            Row("verify, largest child peak RSS", verify_peaks.child / 2**20, "MiB",
                "etcdctl restore alone", restore_peaks.own / 2**20, note="etcdctl/etcd (etcd maps the db)"),
        ]
    finally:
        etcd.stop()
        shutil.rmtree(work, ignore_errors=True)
