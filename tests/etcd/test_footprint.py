"""Each etcd path loads what it uses and nothing more, seen from the real tool's import log.

A local ``save --once`` never loads the S3 library, a small upload never loads s3transfer (one
PutObject), and ``download --s3-backup`` never loads the peer client.
``PYTHONPROFILEIMPORTTIME`` makes the real interpreter list on stderr every module an import
statement loads (a module loaded by ``importlib.import_module`` is not listed, its imports are).
"""

from __future__ import annotations

import gc
import platform
import subprocess
import threading
from pathlib import Path

import pytest

from sidekick.etcd.save import WARM_UP_LIMIT, warm_up_early
from sidekick.host.memory import bound_malloc, collector_paused
from tests.conftest import last_line, run_sidekick
from tests.harness.etcd import EtcdServer
from tests.harness.etcd_backup import node_root, rke_s3_env, rke_s3_flags, rke_save_argv
from tests.harness.pki import RkeSsl
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

ENV = {"PYTHONPROFILEIMPORTTIME": "1", "SIDEKICK_RETRY_WAIT": "0", **rke_s3_env(ACCESS_KEY, SECRET_KEY)}


def imported(result: subprocess.CompletedProcess[str]) -> set[str]:
    assert result.returncode == 0, result.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def roots(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_s3_loads_beside_a_snapshot_only_when_it_is_known_small() -> None:
    assert not warm_up_early(None)  # the first snapshot of a node: not known yet
    assert warm_up_early(0) and warm_up_early(WARM_UP_LIMIT)
    assert not warm_up_early(WARM_UP_LIMIT + 1)


def test_malloc_bounds_apply_where_glibc_is_the_allocator() -> None:
    assert bound_malloc() == (platform.libc_ver()[0] == "glibc")


def test_the_collector_runs_again_when_the_last_loader_leaves() -> None:
    assert gc.isenabled()
    inside = threading.Event()
    leave = threading.Event()

    def loader() -> None:
        with collector_paused():
            inside.set()
            leave.wait(10)

    other = threading.Thread(target=loader)
    other.start()
    inside.wait(10)
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other loader is still at work
    leave.set()
    other.join(10)
    assert gc.isenabled()


def test_a_collector_turned_off_by_someone_else_stays_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.integration
def test_each_path_imports_only_what_it_uses(tmp_path: Path, etcd_ssl: RkeSsl, etcd_server: EtcdServer,
                                             s3_http: S3Server) -> None:
    root = node_root(tmp_path, etcd_ssl)
    bucket = s3_http.new_bucket()
    s3_flags = rke_s3_flags(s3_http.url, bucket)

    local = imported(run_sidekick(["rke-etcd-backup", *rke_save_argv(etcd_server.endpoint, "lean-local", "--once")],
                                  root=root, env=ENV))
    assert "sidekick.etcd.etcdctl" in local and (root / "backup/lean-local.zip").is_file()
    assert not roots(local) & {"boto3", "botocore", "s3transfer", "prometheus_client"}
    assert "sidekick.etcd.telemetry" not in local  # rolling mode only

    uploaded = run_sidekick(["rke-etcd-backup", *rke_save_argv(etcd_server.endpoint, "lean-s3", "--once", *s3_flags)],
                            root=root, env=ENV)
    with_s3 = imported(uploaded)
    assert "Successfully uploaded" in uploaded.stderr
    assert "botocore" in roots(with_s3) and not roots(with_s3) & {"boto3", "s3transfer"}  # one PutObject

    (root / "backup/lean-s3.zip").unlink()
    fetched = imported(run_sidekick(["rke-etcd-backup", "etcd-backup", "download", "--name", "lean-s3", *s3_flags],
                                    root=root, env=ENV))
    assert (root / "backup/lean-s3").is_file() and (root / "backup/lean-s3.zip").is_file()
    assert "sidekick.etcd.download" not in fetched and "cryptography" not in roots(fetched)
    assert "level=fatal" not in last_line(uploaded.stderr)
