"""The fault table: time to a clear failure, and the last line, for each network fault.

Every scenario runs the real command at the DEFAULT budgets (as RKE would meet the fault),
all at once on their own threads, against real etcd and moto behind the fault harness of
``tests/harness/faults.py``. The "before" column quotes issue 10's measurements of the code
before the re-plumbing (not measured in this run, so no ratio). Also: the requests one S3
download makes against a failing server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from bench.common import SIDEKICK, Row

QUOTED = "issue 10 (quoted, before)"


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    start = line.find('msg="')
    return line[start + 5 : start + 125] if start >= 0 else line[:120]


def run() -> list[Row]:
    from sidekick.etcd.archive import write_archive
    from tests.harness.env import clean_env
    from tests.harness.etcd import EtcdServer
    from tests.harness.etcd_backup import node_root, rke_s3_env, rke_s3_flags, rke_save_argv
    from tests.harness.faults import BlackHole, Fault, FaultyHttp
    from tests.harness.pki import CertificateAuthority, RkeSsl
    from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    ca = CertificateAuthority("kube-ca")
    ssl_files = RkeSsl.create(work / "ssl", ca, "127.0.0.1")
    etcd = EtcdServer(work / "etcd", ssl_files).start()
    s3 = S3Server(work / "s3").start()
    closers: list[Callable[[], None]] = []
    results: dict[str, tuple[float, str]] = {}
    env_base = {**clean_env(), **rke_s3_env(ACCESS_KEY, SECRET_KEY)}

    def held(method: str, path: str) -> Fault | None:
        return Fault(hold=True) if method in ("PUT", "POST") else None

    def run_save(label: str, endpoint: str, *flags: str, sigterm_after_put: FaultyHttp | None = None) -> None:
        root = node_root(work / label, ssl_files)
        env = {**env_base, "SIDEKICK_ROOT": str(root)}
        argv = [str(SIDEKICK), "rke-etcd-backup", *rke_save_argv(endpoint, label, "--once", *flags)]
        started = time.monotonic()
        process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        if sigterm_after_put is not None:
            while sigterm_after_put.requests["PUT"] == 0 and process.poll() is None:
                time.sleep(0.05)
            time.sleep(4)
            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
        _, err = process.communicate(timeout=600)
        results[label] = (time.monotonic() - started, _last_line(err))

    def s3_flags(endpoint: str, bucket: str) -> list[str]:
        return rke_s3_flags(endpoint, bucket)

    try:
        silent = FaultyHttp(s3.port, held)
        drip = FaultyHttp(s3.port, lambda m, p: Fault(drip=2.0))
        term = FaultyHttp(s3.port, held)
        hole = BlackHole()
        slow = BlackHole(accept=False)
        closers += [silent.close, drip.close, term.close, hole.close, slow.close]

        # One stored snapshot and a server failing every GET of it.
        raw = work / "raw"
        raw.write_bytes(os.urandom(1 << 20))
        archive = write_archive(work / "stored.zip", [("/backup/stored", raw)])
        bucket = s3.new_bucket()
        s3.client().put_object(Bucket=bucket, Key="stored.zip", Body=archive.path.read_bytes())
        failing = FaultyHttp(s3.port, lambda m, p: Fault(status=503) if m == "GET" and
                             urllib.parse.urlsplit(p).path == f"/{bucket}/stored.zip" else None)
        closers.append(failing.close)

        def download() -> None:
            root = node_root(work / "download", ssl_files)
            started = time.monotonic()
            done = subprocess.run([str(SIDEKICK), "rke-etcd-backup", "etcd-backup", "download", "--name", "stored",
                                   *s3_flags(failing.endpoint, bucket)], env={**env_base, "SIDEKICK_ROOT": str(root)},
                                  capture_output=True, text=True, timeout=600)
            results["download-503"] = (time.monotonic() - started, _last_line(done.stderr))

        jobs = [
            lambda: run_save("silent-put", etcd.endpoint, *s3_flags(silent.endpoint, s3.new_bucket())),
            lambda: run_save("drip-2s", etcd.endpoint, *s3_flags(drip.endpoint, s3.new_bucket())),
            lambda: run_save("black-hole", etcd.endpoint, *s3_flags(f"http://{hole.endpoint}", "b")),
            lambda: run_save("etcd-down", slow.endpoint),
            lambda: run_save("sigterm-upload", etcd.endpoint, *s3_flags(term.endpoint, s3.new_bucket()),
                             sigterm_after_put=term),
            download,
        ]
        threads = [threading.Thread(target=job) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        gets = failing.requests["GET"] - 1  # one of them is the listing
    finally:
        for close in closers:
            close()
        s3.stop()
        etcd.stop()

    before = {
        "silent-put": ("S3 accepts, never answers a PUT: save --once", "741 s"),
        "drip-2s": ("S3 drips 1 byte / 2 s: save --once", "> 460 s, still checking the bucket"),
        "black-hole": ("S3 endpoint is a TCP black hole: save --once", "RKE gives up at 300 s"),
        "etcd-down": ("etcd unreachable, default flags: save --once", "108 s"),
        "sigterm-upload": ("SIGTERM 4 s into the upload: signal to exit", "last line 'no snapshot was written'"),
        "download-503": ("download --s3-backup, GET always 503", "40-50 GETs"),
    }
    rows = []
    for label, (title, then) in before.items():
        seconds, line = results.get(label, (float("nan"), "did not run"))
        rows.append(Row(title, seconds, "s", f"{QUOTED}: {then}", note=line))
    rows.append(Row("GETs of one S3 download against a failing server", gets, "requests", f"{QUOTED}: 40-50",
                    note="bound: 5 attempts x 1 GET"))
    print("# etcd_faults: every scenario at the default budgets", file=sys.stderr)
    return rows
