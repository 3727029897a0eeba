"""Demo steps: RKE's local restore path between two node roots, and the state file extraction.

The snapshot is the one the save step left (``ctx.values["snapshot_name"]``); without it the
step takes its own with ``etcdctl snapshot save`` and archives it in the agreed format.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tests.harness.env import clean_env
from tests.harness.ports import free_port, port_open

if TYPE_CHECKING:  # demo.steps imports this module to list the steps
    from demo.steps import Context

CERTS = [
    "--cacert", "/etc/kubernetes/ssl/kube-ca.pem",
    "--cert", "/etc/kubernetes/ssl/kube-node.pem",
    "--key", "/etc/kubernetes/ssl/kube-node-key.pem",
]


def _tool(ctx: Context) -> list[str]:
    link = ctx.root / "opt/rke-tools/rke-etcd-backup"
    if link.exists():
        return [str(link)]
    from demo.steps import SIDEKICK

    return [str(SIDEKICK), "rke-etcd-backup"]


def _env(root: Path, port: int | None = None) -> dict[str, str]:
    env = clean_env()
    env["SIDEKICK_ROOT"] = str(root)
    if port is not None:  # serve on loopback, download dials the same port
        env.update(SIDEKICK_SERVE_ADDRESS="127.0.0.1", SIDEKICK_SERVE_PORT=str(port))
    return env


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _snapshot(ctx: Context) -> str:
    """The save step's snapshot, or one of our own in the same archive format."""
    name = ctx.values.get("snapshot_name")
    if name and (ctx.root / f"backup/{name}.zip").exists():
        return str(name)
    from sidekick.etcd.archive import write_archive

    name = "rke_etcd_snapshot_demo-restore"
    raw = ctx.workdir / f"{name}.db"
    ctx.values["etcd"].ctl("snapshot", "save", str(raw))
    state = ctx.workdir / f"{name}.rkestate"
    state.write_text('{\n  "desiredState": {"demo": true}\n}')
    write_archive(ctx.root / f"backup/{name}.zip", [(f"/backup/{name}", raw), (f"/etc/kubernetes/{name}.rkestate", state)])
    raw.unlink()
    ctx.values["snapshot_name"] = name
    return name


class _Serve:
    def __init__(self, ctx: Context, name: str) -> None:
        self.port = free_port()
        began = time.monotonic()
        self.process = subprocess.Popen([*_tool(ctx), "etcd-backup", "serve", "--name", name, *CERTS],
                                        env=_env(ctx.root, self.port), stderr=subprocess.PIPE, text=True)
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() - began > 60:
                raise RuntimeError(f"serve did not listen: {self.stop()[1].strip().splitlines()[-1:]}")
            time.sleep(0.01)
        self.listen_seconds = time.monotonic() - began

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=30)
        return self.process.returncode, err


def _serve_and_download(ctx: Context, name: str) -> tuple[_Serve, _Serve, re.Match[str], bool, str, str]:
    node2 = ctx.workdir / "node2"
    (node2 / "backup").mkdir(parents=True, exist_ok=True)
    shutil.copytree(ctx.root / "etc/kubernetes/ssl", node2 / "etc/kubernetes/ssl", dirs_exist_ok=True)
    first = _Serve(ctx, name)  # extracts /backup/<name> from the zip, verified
    first.stop()
    server = _Serve(ctx, name)  # the file is already there and verified: no re-extraction
    try:
        result = subprocess.run([*_tool(ctx), "etcd-backup", "download", "--name", name, "--local-endpoint", "127.0.0.1",
                                 *CERTS], capture_output=True, text=True, env=_env(node2, server.port), check=False)
    finally:
        code, served = server.stop()
    if result.returncode != 0:
        raise RuntimeError(f"download failed: {result.stderr.strip().splitlines()[-1:]}")
    done = re.search(r'msg="download done".*subject="([^"]*)".* size=(\d+) .*mbps=([0-9.]+)', result.stderr)
    if not done:
        raise RuntimeError("no 'download done' line")
    copy = node2 / f"backup/{name}"
    same = _md5(ctx.root / f"backup/{name}") == _md5(copy)
    clients = served.count('msg="snapshot sent"')
    outcome = f"serve logged {clients} client(s), SIGTERM -> exit {code}"
    return first, server, done, same, outcome, oct(copy.stat().st_mode & 0o777)


def serve_and_download(ctx: Context) -> str:
    """node1 serves its snapshot (RKE's etcd-Serve-backup), node2 downloads it (etcd-download-backup)."""
    name = _snapshot(ctx)
    first, server, done, same, outcome, mode = _serve_and_download(ctx, name)
    return (f"{name}: serve listened after {first.listen_seconds:.2f}s (extracting), {server.listen_seconds:.2f}s on the "
            f"second start (already verified); node2 downloaded {int(done.group(2)) / 1024:.0f} KiB from a peer whose "
            f"chain was verified ({done.group(1)}), mode {mode}, md5 equal on both nodes: {same}; {outcome}")


def large_transfer(ctx: Context) -> str:
    """The same path with a 256 MB snapshot, for a throughput figure (bench/etcd_transfer.py measures more)."""
    from sidekick.etcd.archive import write_archive

    name = "demo-large-snapshot"
    raw = ctx.workdir / name
    block = b"".join(f"/registry/demo/{i:06d}".encode() + os.urandom(100) + bytes(400) for i in range(2048))
    with open(raw, "wb") as out:
        for _ in range(256_000_000 // len(block) + 1):
            out.write(block)
    write_archive(ctx.root / f"backup/{name}.zip", [(f"/backup/{name}", raw)])
    raw.unlink()
    first, server, done, same, outcome, _ = _serve_and_download(ctx, name)
    size = int(done.group(2))
    return (f"{size / 1e6:.0f} MB: cold serve extracted and listened in {first.listen_seconds:.2f}s, second start "
            f"{server.listen_seconds:.2f}s; download {done.group(3)} MB/s (mTLS, SHA-256 checked, fsync), "
            f"md5 equal: {same}; {outcome}")


def extract_state_file(ctx: Context) -> str:
    """etcd-extract-statefile: the archive's cluster state to /tmp/cluster.rkestate for RKE's docker cp."""
    name = _snapshot(ctx)
    result = subprocess.run([*_tool(ctx), "etcd-backup", "extractstatefile", "--name", name], capture_output=True,
                            text=True, env=_env(ctx.root), check=False)
    if result.returncode != 0:
        raise RuntimeError(f"extractstatefile failed: {result.stderr.strip().splitlines()[-1:]}")
    out = ctx.root / "tmp/cluster.rkestate"
    return (f"/tmp/cluster.rkestate written ({out.stat().st_size} bytes, mode {oct(out.stat().st_mode & 0o777)}) "
            f"from entry /etc/kubernetes/{name}.rkestate of /backup/{name}.zip")
