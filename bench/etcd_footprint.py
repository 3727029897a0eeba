"""The etcd tool's own cost: a small ``save --once`` with S3, and the tool's peak RSS per path.

Measured in the same run, on a real etcd and moto S3 (HTTP):

- ``save --once`` with S3 of a tiny database (50 keys), wall, median of ``BENCH_FOOTPRINT_RUNS``
  (7) runs interleaved with its baselines: a bare ``python -c pass`` of the same interpreter
  (and ``site``) and ``etcdctl snapshot save`` of the same database;
- on that path, the etcdctl processes (through a logging ``etcdctl`` first on PATH) and the
  modules imported (``PYTHONPROFILEIMPORTTIME``: what import statements load, so the command
  module the CLI loads with ``importlib.import_module`` is not counted), in an untimed run;
- the tool's own peak RSS (children not counted) for ``save --once`` without S3, with S3, and
  ``download --s3-backup`` of a ``BENCH_FOOTPRINT_MB`` (64) MB database of Kubernetes-like
  JSON, against the floors: ``python -c pass``, an interpreter that imported boto3 and
  created one S3 client (``boto3.client("s3", ...)``), and one that did so with botocore alone
  (what sidekick loads); the latter's wall time is also the tiny save's floor. Beside them,
  the same botocore client made as sidekick makes it (its model loader, its malloc bounds);
- ``download --s3-backup`` also ``BENCH_FOOTPRINT_DOWNLOADS`` (3) times interleaved with the
  earlier revision's: median wall time, highest peak RSS.

Each of the tool's figures is also measured, in the same run, for the sidekick of an earlier
revision (``SIDEKICK_BENCH_BASELINE_REV``, default ``3599ba3``: before the memory and start-up
work of issue 15), run by the same interpreter with the same libraries.

The tiny runs are steady-state runs: /backup already holds the earlier tiny snapshots, as on a
node that takes snapshots on a schedule. Both sidekicks run from bytecode compiled ahead, as the
image ships it (``bench.common.compile_package``), and as the image runs them: every
interpreter here, the tools' and the floors', has the launcher's ``-OO``
(``bench.common.IMAGE_FLAGS``).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import IMAGE_FLAGS, Row, baseline_tree, compile_libraries, measure, tool

# The revision before issue 15's memory and start-up work: its rows are measured in this run.
BASELINE_REV = os.environ.get("SIDEKICK_BENCH_BASELINE_REV", "3599ba3")
RUNS = int(os.environ.get("BENCH_FOOTPRINT_RUNS", "7"))
DOWNLOADS = int(os.environ.get("BENCH_FOOTPRINT_DOWNLOADS", "3"))
SIZE_MB = int(os.environ.get("BENCH_FOOTPRINT_MB", "64"))
HEAVY = ("boto3", "botocore", "s3transfer", "cryptography", "pyrage", "jinja2", "requests", "yaml")

BOTO3_FLOOR = """
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
             aws_access_key_id="bench", aws_secret_access_key="bench")
"""
# What the tool itself loads for S3: botocore alone, one client (sidekick.etcd.s3.warm_up's work).
BOTOCORE_FLOOR = """
import sys, botocore.session
botocore.session.get_session().create_client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                                             aws_access_key_id="bench", aws_secret_access_key="bench")
"""

# The same client as sidekick makes it: sidekick.etcd.s3's session (plain-dict models, the
# endpoint table trimmed) after the malloc bounds every S3 command sets first.
SIDEKICK_CLIENT_FLOOR = """
import sys
from sidekick.host.memory import bound_malloc
bound_malloc()
from sidekick.etcd import s3
s3._session().create_client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                            aws_access_key_id="bench", aws_secret_access_key="bench")
"""

ETCDCTL_LOG = """#!/bin/sh
echo "$*" >> "{log}"
exec {real} "$@"
"""


def _wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _subcommand(line: str) -> str:
    """``endpoint health``, ``snapshot save``, ``get``: the command, without flags and paths."""
    words = [w for w in line.split() if not w.startswith("-")]
    return " ".join(words[:2] if words and words[0] in {"endpoint", "snapshot"} else words[:1])


def _imports(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")} - {
        "imported package"}


def run() -> list[Row]:
    from bench.etcd_save import _load
    from tests.harness.etcd import ETCDCTL, EtcdServer
    from tests.harness.etcd_backup import node_root, rke_s3_env, rke_s3_flags, rke_save_argv
    from tests.harness.pki import CertificateAuthority, RkeSsl
    from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

    work = Path(tempfile.mkdtemp(prefix="bench-etcd-footprint-"))
    ca = CertificateAuthority("kube-ca")
    ssl_files = RkeSsl.create(work / "ssl", ca, "127.0.0.1")
    tiny = EtcdServer(work / "tiny", ssl_files).start()
    modest = EtcdServer(work / "modest", ssl_files, extra_args=("--quota-backend-bytes=8589934592",)).start()
    s3 = S3Server(work / "s3").start()
    rows: list[Row] = []
    try:
        tiny.put_many(50, 1000)
        loaded = _load(modest, SIZE_MB)
        root = node_root(work, ssl_files)
        bucket = s3.new_bucket("footprint")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "SIDEKICK_", "AWS_"))}
        env.update({"SIDEKICK_ROOT": str(root), **rke_s3_env(ACCESS_KEY, SECRET_KEY)})
        compile_libraries()
        prefix, _ = tool(image=True)
        tree = baseline_tree(work, BASELINE_REV)
        old_prefix, old_extra = tool(tree, image=True)
        old_env = {**env, **old_extra}
        s3_flags = rke_s3_flags(s3.url, bucket)

        def save(endpoint: str, name: str, *extra: str, of: list[str] = prefix) -> list[str]:
            return [*of, "rke-etcd-backup", *rke_save_argv(endpoint, name, "--once", *extra)]

        python_pass = [sys.executable, *IMAGE_FLAGS, "-c", "pass"]
        raw = work / "plain.db"
        etcdctl_save = [ETCDCTL, f"--endpoints={tiny.url}", f"--cacert={ssl_files.cacert}",
                        f"--cert={ssl_files.node_cert}", f"--key={ssl_files.node_key}", "snapshot", "save", str(raw)]
        ctl_env = {**env, "ETCDCTL_API": "3"}

        # One untimed run warms the caches; then the interleaved rounds.
        measure(save(tiny.endpoint, "tiny-first", *s3_flags), env)
        botocore_floor = [sys.executable, *IMAGE_FLAGS, "-c", BOTOCORE_FLOOR, s3.url]
        if tree:
            measure(save(tiny.endpoint, "tiny-old-first", *s3_flags, of=old_prefix), old_env)
        walls: dict[str, list[float]] = {"tool": [], "python": [], "etcdctl": [], "botocore": [], "old": []}
        for i in range(RUNS):
            if tree:
                walls["old"].append(_wall(save(tiny.endpoint, f"tiny-old-{i}", *s3_flags, of=old_prefix), old_env))
            walls["python"].append(_wall(python_pass, env))
            walls["botocore"].append(_wall(botocore_floor, env))
            walls["etcdctl"].append(_wall(etcdctl_save, ctl_env))
            raw.unlink()
            walls["tool"].append(_wall(save(tiny.endpoint, f"tiny-{i}", *s3_flags), env))
        tool_s, python_s, etcdctl_s, botocore_s = (
            statistics.median(walls[k]) for k in ("tool", "python", "etcdctl", "botocore"))
        rows += [
            Row(f"tiny save --once with S3, wall (median of {RUNS})", tool_s, "s", "etcdctl snapshot save", etcdctl_s,
                note="goal <= 0.35 s; Go tool on the issue: 0.18 s"),
            Row(f"tiny save --once with S3, wall (median of {RUNS})", tool_s, "s", "python -c pass", python_s,
                note="same interpreter, with site"),
            *([Row(f"tiny save --once with S3, wall (median of {RUNS})", tool_s, "s", f"sidekick {BASELINE_REV}",
                   statistics.median(walls["old"]), note="the same runs, interleaved")] if tree else []),
            Row(f"tiny save --once with S3, wall (median of {RUNS})", tool_s, "s",
                "botocore imported + one S3 client", botocore_s,
                note="the S3 library's own start, one CPU-bound thread: the floor of any save that uploads"),
        ]

        # What that path runs and imports (untimed: the wrapper and the import log cost time).
        logdir = work / "logged-bin"
        logdir.mkdir()
        calls = work / "etcdctl-calls"
        wrapper = logdir / "etcdctl"
        wrapper.write_text(ETCDCTL_LOG.format(log=calls, real=shutil.which(ETCDCTL) or ETCDCTL))
        wrapper.chmod(0o755)
        logged_env = {**env, "PATH": f"{logdir}:{env.get('PATH', '')}", "PYTHONPROFILEIMPORTTIME": "1"}
        _, _, _, stderr = measure(save(tiny.endpoint, "tiny-counted", *s3_flags), logged_env)
        ctl_calls = calls.read_text().splitlines()
        modules = _imports(stderr)
        heavy = sorted(h for h in HEAVY if h in modules)
        rows += [
            Row("tiny save --once with S3: etcdctl processes", len(ctl_calls), "",
                note="; ".join(_subcommand(c) for c in ctl_calls)),
            Row("tiny save --once with S3: modules imported", len(modules), "",
                note=f"sidekick {sum(m.split('.')[0] == 'sidekick' for m in modules)}; "
                f"third-party roots: {', '.join(heavy) or 'none'}"),
        ]

        # Peak RSS of the tool itself at a modest size, beside the floors.
        # An interpreter that lives a few polls: ``python -c pass`` can end before the first.
        _, pass_peaks, _, _ = measure([sys.executable, *IMAGE_FLAGS, "-c", "import time; time.sleep(0.2)"], env)
        _, floor_peaks, _, _ = measure([sys.executable, *IMAGE_FLAGS, "-c", BOTO3_FLOOR, s3.url], env)
        _, botocore_peaks, _, _ = measure(botocore_floor, env)
        _, client_peaks, _, _ = measure([sys.executable, *IMAGE_FLAGS, "-c", SIDEKICK_CLIENT_FLOOR, s3.url], env)
        _, local_peaks, _, _ = measure(save(modest.endpoint, "modest-local"), env)
        _, s3_peaks, _, stderr = measure(save(modest.endpoint, "modest-s3", *s3_flags), env)
        for leftover in (root / "backup").glob("modest-s3*"):
            leftover.unlink()
        download = ["rke-etcd-backup", "etcd-backup", "download", "--name", "modest-s3", *s3_flags]
        fetched: dict[str, list[tuple[float, float]]] = {"new": [], "old": []}  # (wall s, peak bytes)
        for _ in range(DOWNLOADS):
            for who, argv, who_env in (("new", [*prefix, *download], env),
                                       *((("old", [*old_prefix, *download], old_env),) if tree else ())):
                for leftover in (root / "backup").glob("modest-s3*"):
                    leftover.unlink()
                wall, peaks, _, _ = measure(argv, who_env)
                fetched[who].append((wall, peaks.own))
        download_peak = max(peak for _, peak in fetched["new"])
        old: dict[str, float] = {}
        if tree:
            for what, argv in (("local", save(modest.endpoint, "modest-old-local", of=old_prefix)),
                               ("s3", save(modest.endpoint, "modest-old-s3", *s3_flags, of=old_prefix))):
                old[what] = measure(argv, old_env)[1].own / 2**20
            old["download"] = max(peak for _, peak in fetched["old"]) / 2**20
        mib = 2**20
        size = f"{loaded / 1e6:.0f} MB of JSON-like values"
        floor = floor_peaks.own / mib
        rows += [
            Row("bare interpreter, peak RSS", pass_peaks.own / mib, "MiB", note="python -c 'import time; time.sleep(0.2)'"),
            Row("boto3 imported + one S3 client, peak RSS", floor, "MiB", "bare interpreter", pass_peaks.own / mib,
                note="the floor of any tool that uses boto3"),
            Row("botocore imported + one S3 client, peak RSS", botocore_peaks.own / mib, "MiB", "bare interpreter",
                pass_peaks.own / mib, note="what sidekick loads for S3 (botocore alone)"),
            Row("the same client as sidekick makes it, peak RSS", client_peaks.own / mib, "MiB",
                "botocore + S3 client floor", botocore_peaks.own / mib,
                note="sidekick.etcd.s3's model loader and malloc bounds; sidekick.etcd.s3 imported"),
            Row("save --once local, tool peak RSS", local_peaks.own / mib, "MiB", "bare interpreter",
                pass_peaks.own / mib, note=f"goal <= 48 MiB; {size}"),
            Row("save --once with S3, tool peak RSS", s3_peaks.own / mib, "MiB", "botocore + S3 client floor",
                botocore_peaks.own / mib, note=f"goal <= 64 MiB; {size}"),
            Row("download --s3-backup, tool peak RSS", download_peak / mib, "MiB", "botocore + S3 client floor",
                botocore_peaks.own / mib, note=f"goal <= 48 MiB; {size}; highest of {DOWNLOADS} runs"),
            *(Row(f"{label}, tool peak RSS", ours / mib, "MiB", f"sidekick {BASELINE_REV}", old[what], note=size)
              for what, label, ours in (("local", "save --once local", local_peaks.own),
                                        ("s3", "save --once with S3", s3_peaks.own),
                                        ("download", "download --s3-backup", download_peak))
              if what in old),
            *([Row(f"download --s3-backup, wall (median of {DOWNLOADS})",
                   statistics.median(wall for wall, _ in fetched["new"]), "s", f"sidekick {BASELINE_REV}",
                   statistics.median(wall for wall, _ in fetched["old"]), note=f"interleaved; {size}")]
              if tree else []),
        ]
    finally:
        s3.stop()
        modest.stop()
        tiny.stop()
        shutil.rmtree(work, ignore_errors=True)
    return rows
