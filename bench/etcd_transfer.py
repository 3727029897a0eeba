"""Snapshot transfer between nodes: ``serve`` -> ``download`` over loopback mutual TLS.

Measured in one run, on one snapshot (``SIDEKICK_BENCH_SNAPSHOT_MB``, default 512; files under
``SIDEKICK_BENCH_DIR``, default the temp dir), ``SIDEKICK_BENCH_REPEAT`` (default 5) alternating
runs of each transfer, medians reported (on a VM single runs of the same transfer differ by up
to a third; five keep the median steadier than three did):

- our ``download`` from our ``serve``: MB/s of the transfer (from the tool's own "download
  done" line: connect, TLS, receive, SHA-256, write, fsync, rename) and of the whole command;
- ``curl`` (``--cacert/--cert/--key``, ``-k`` because kube-node has no SANs) from our
  ``serve`` into a file in the same directory, and once from ``openssl s_server`` (C) with the
  same certificates: the baselines measured here (curl neither hashes nor fsyncs);
- peak RSS (``VmHWM`` polled until exit) of the server and of the client, CPU seconds per GB;
- the server's time to listening on a cold start (extracting the zip) and on a second start
  (the file already extracted and verified), and its RSS once listening, beside the floor the
  rules leave it: an interpreter (same one, same ``site``, same flags) that loaded only click
  (the one CLI), ``http.server`` (the one HTTP stack), ``logging`` and ``ssl`` with the node's
  certificates (:data:`FLOOR`).

- the same transfers with the ``download`` client and the ``serve`` server of an earlier
  revision (``SIDEKICK_BENCH_BASELINE_REV``, default ``2c79a61``: hand-framed HTTP on raw
  sockets), alternated with ours in the same run: the cost of ``http.client``/``http.server``.

Both tools run as the image runs them (``bench.common.IMAGE_FLAGS``: -OO, no docstrings in
memory); the serve's RSS once listening is also given for a plain run (a pip install).

The Go tool's figures (1,086 MB snapshot, same kind of machine) are in issue 15 and cannot be
measured here: they are quoted in the baseline column, without a ratio.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import IMAGE_FLAGS, Row, baseline_tree, compile_libraries, tool
from tests.harness.env import clean_env
from tests.harness.ports import free_port, port_open

NAME = "bench_etcd_snapshot"
MB = 1_000_000
QUOTED = "quoted, issue 15"
BASELINE_REV = os.environ.get("SIDEKICK_BENCH_BASELINE_REV", "2c79a61")
CERTS = [
    "--cacert", "/etc/kubernetes/ssl/kube-ca.pem",
    "--cert", "/etc/kubernetes/ssl/kube-node.pem",
    "--key", "/etc/kubernetes/ssl/kube-node-key.pem",
]
# What any serve keeps under the project's rules, before a line of its own: prints its VmHWM in kB.
FLOOR = """
import sys, logging, ssl, click, http.server
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_verify_locations(cafile=sys.argv[1])
context.load_cert_chain(sys.argv[2], sys.argv[3])
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def _snapshot_bytes(path: Path, size: int) -> None:
    """etcd-like content: runs of keys and values, some random, some zeroed free pages."""
    block = bytearray()
    for i in range(2048):
        block += f"/registry/pods/ns-{i % 37}/pod-{i:06d}".encode() + os.urandom(200) + bytes(300)
    with open(path, "wb") as out:
        written = 0
        while written < size:
            piece = bytes(block[: size - written])
            out.write(piece)
            written += len(piece)


def _node(base: Path, ssl_dir: Path) -> Path:
    root = base
    (root / "backup").mkdir(parents=True)
    (root / "etc/kubernetes/ssl").mkdir(parents=True)
    for name in ("kube-ca.pem", "kube-node.pem", "kube-node-key.pem"):
        shutil.copy(ssl_dir / name, root / "etc/kubernetes/ssl" / name)
    return root


def _env(root: Path, port: int) -> dict[str, str]:
    env = clean_env()
    env.update(SIDEKICK_ROOT=str(root), SIDEKICK_SERVE_ADDRESS="127.0.0.1", SIDEKICK_SERVE_PORT=str(port))
    return env


def _hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class _Server:
    def __init__(self, root: Path, tree: Path | None = None, *, image: bool = True) -> None:
        self.port = free_port()
        self.began = time.perf_counter()
        prefix, extra = tool(tree, image=image)
        self.process = subprocess.Popen(
            [*prefix, "rke-etcd-backup", "etcd-backup", "serve", "--name", NAME, *CERTS],
            env={**_env(root, self.port), **extra}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        while not port_open(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {self.process.stderr.read() if self.process.stderr else ''}")
            time.sleep(0.005)
        self.listen_seconds = time.perf_counter() - self.began

    def stop(self) -> float:
        """SIGTERM; return the peak RSS in MiB."""
        peak = _hwm_mib(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=30)
        return peak


def _run_measured(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """(wall s, peak RSS MiB, CPU s, output) of one child.

    The peak RSS is the child's own ``VmHWM``, polled until it exits (``ru_maxrss`` would
    include this process's pages the child shared between fork and exec).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.append(process.stdout.read() if process.stdout else ""))
    reader.start()
    while process.poll() is None:
        with contextlib.suppress(OSError):
            peak = max(peak, _hwm_mib(process.pid))
        time.sleep(0.005)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reader.join()
    wall = time.perf_counter() - began
    text = "".join(output)
    if process.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {text[-500:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, peak, cpu, text


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _warm_memory(directory: Path, size: int) -> None:
    """Write and delete a file of the snapshot's size first: on a VM, guest memory the page
    cache has never touched costs several times more on first use, and would favour
    whichever transfer runs second."""
    scratch = directory / "warm"
    block = bytes(4 << 20)
    with open(scratch, "wb") as out:
        for _ in range(size // len(block) + 1):
            out.write(block)
    scratch.unlink()


def _curl_from_openssl(directory: Path, ssl: object, out: Path, size: int) -> float:
    """The same transfer from OpenSSL's own server (``s_server -WWW``, C): a native baseline
    for ``serve`` measured on this machine now (it speaks HTTP/1.0 only)."""
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-quiet", "-WWW", "-accept", str(port), "-cert", str(ssl.node_cert),  # type: ignore[attr-defined]
         "-key", str(ssl.node_key), "-Verify", "1", "-CAfile", str(ssl.cacert)],  # type: ignore[attr-defined]
        cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while not port_open(port):
            if server.poll() is not None:
                raise RuntimeError("openssl s_server exited")
            time.sleep(0.01)
        _warm_memory(out.parent, size + size // 2)
        _, _, _, text = _run_measured(
            ["curl", "-sS", "-k", "--http1.0", "--cert", str(ssl.node_cert), "--key", str(ssl.node_key),  # type: ignore[attr-defined]
             "-o", str(out), "-w", "%{speed_download}", f"https://127.0.0.1:{port}/{NAME}"],
            {**os.environ, "CURL_CA_BUNDLE": ""},
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    if out.stat().st_size != size:
        raise RuntimeError(f"openssl s_server sent {out.stat().st_size} bytes, expected {size}")
    return float(text.strip().splitlines()[-1]) / MB


@dataclass
class _Transfer:
    mbps: float
    wall: float
    rss: float
    cpu: float
    server_cpu: float = 0.0


def _ours(server: _Server, peer: Path, size: int, tree: Path | None = None) -> _Transfer:
    (peer / "backup" / NAME).unlink(missing_ok=True)  # else it is "already here" and skipped
    before = _cpu_seconds(server.process.pid)
    prefix, extra = tool(tree, image=True)
    wall, rss, cpu, output = _run_measured(
        [*prefix, "rke-etcd-backup", "etcd-backup", "download", "--name", NAME,
         "--local-endpoint", "127.0.0.1", *CERTS],
        {**_env(peer, server.port), **extra},
    )
    done = re.search(r'msg="download done".* size=(\d+) seconds=([0-9.]+) mbps=([0-9.]+)', output)
    if not done or int(done.group(1)) != size:
        raise RuntimeError(f"no complete 'download done' line in: {output[-500:]}")
    return _Transfer(float(done.group(3)), wall, rss, cpu, _cpu_seconds(server.process.pid) - before)


def _curl(server: _Server, ssl: object, out: Path, size: int) -> _Transfer:
    out.unlink(missing_ok=True)
    wall, rss, cpu, text = _run_measured(
        ["curl", "-sS", "-k", "--http1.1", "--cacert", str(ssl.cacert), "--cert", str(ssl.node_cert),  # type: ignore[attr-defined]
         "--key", str(ssl.node_key), "-o", str(out), "-w", "%{speed_download}",  # type: ignore[attr-defined]
         f"https://127.0.0.1:{server.port}/{NAME}"],
        {**os.environ, "CURL_CA_BUNDLE": ""},
    )
    if out.stat().st_size != size:
        raise RuntimeError(f"curl got {out.stat().st_size} bytes, expected {size}")
    return _Transfer(float(text.strip().splitlines()[-1]) / MB, wall, rss, cpu)


def run() -> list[Row]:
    from sidekick.etcd.archive import write_archive
    from tests.harness.pki import CertificateAuthority, RkeSsl

    size = int(os.environ.get("SIDEKICK_BENCH_SNAPSHOT_MB", "512")) * MB
    repeat = max(1, int(os.environ.get("SIDEKICK_BENCH_REPEAT", "5")))
    with tempfile.TemporaryDirectory(prefix="bench-etcd-transfer-", dir=os.environ.get("SIDEKICK_BENCH_DIR")) as tmp:
        base = Path(tmp)
        ssl = RkeSsl.create(base / "ssl", CertificateAuthority("kube-ca"), "127.0.0.1")
        source, peer, curl_dir = _node(base / "a", ssl.directory), _node(base / "b", ssl.directory), base / "curl"
        curl_dir.mkdir()
        raw = base / "raw"
        _snapshot_bytes(raw, size)
        write_archive(source / "backup" / f"{NAME}.zip", [(f"/backup/{NAME}", raw)])
        raw.unlink()

        compile_libraries()
        cold = _Server(source)  # extracts the zip before listening
        cold_rss = cold.stop()
        plain = _Server(source, image=False)
        plain_rss = _hwm_mib(plain.process.pid)
        plain.stop()
        server = _Server(source)  # already extracted and verified
        listening_rss = _hwm_mib(server.process.pid)
        floor = subprocess.run([sys.executable, *IMAGE_FLAGS, "-c", FLOOR, str(ssl.cacert), str(ssl.node_cert),
                                str(ssl.node_key)], capture_output=True, text=True, check=True, env=clean_env())
        floor_rss = int(floor.stdout.strip()) / 1024
        tree = baseline_tree(base, BASELINE_REV)
        old_server = _Server(source, tree) if tree else None
        ours: list[_Transfer] = []
        curls: list[_Transfer] = []
        old_client: list[_Transfer] = []  # the earlier download from our serve
        old_serve: list[_Transfer] = []  # our download from the earlier serve
        curl_out = curl_dir / NAME
        try:
            for _ in range(repeat):  # alternating, each after the same warm-up: same conditions
                _warm_memory(base, size + size // 2)
                ours.append(_ours(server, peer, size))
                _warm_memory(base, size + size // 2)
                curls.append(_curl(server, ssl, curl_out, size))
                if old_server is not None:
                    _warm_memory(base, size + size // 2)
                    old_client.append(_ours(server, peer, size, tree))
                    _warm_memory(base, size + size // 2)
                    old_serve.append(_ours(old_server, peer, size))
        finally:
            server_rss = server.stop()
            old_server_rss = old_server.stop() if old_server else 0.0
        curl_out.unlink()
        native_mbps = _curl_from_openssl(source / "backup", ssl, curl_out, size)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    mine, theirs = median([t.mbps for t in ours]), median([t.mbps for t in curls])
    spread = f"{size // MB} MB, median of {repeat}: " + "/".join(f"{t.mbps:.0f}" for t in ours)
    rows = [
        Row("etcd download from serve (transfer)", mine, "MB/s", "curl from our serve", theirs,
            spread + "; curl runs: " + "/".join(f"{t.mbps:.0f}" for t in curls)),
        Row("etcd download from serve (transfer)", mine, "MB/s", f"Go rke-tools 1200 ({QUOTED})"),
        Row("etcd download command (whole run)", size / MB / median([t.wall for t in ours]), "MB/s",
            note="includes interpreter start and fsync"),
        Row("curl from our serve", theirs, "MB/s", "curl from openssl s_server", native_mbps, "same mTLS, C server, 1 run"),
        Row("curl from our serve", theirs, "MB/s", f"curl from Go serve 900 ({QUOTED})"),
        Row("etcd download peak RSS", max(t.rss for t in ours), "MiB", "curl peak RSS", max(t.rss for t in curls),
            f"goal <= 32; Go rke-tools 11 ({QUOTED})"),
        Row("etcd serve peak RSS", server_rss, "MiB", note=f"goal <= 24; Go rke-tools 15.5 ({QUOTED})"),
        Row("etcd serve peak RSS, cold start", cold_rss, "MiB", note="includes the extraction"),
        Row("etcd serve RSS once listening", listening_rss, "MiB", "floor: python + click + http.server + ssl",
            floor_rss, "file verified; the floor imports only those (and logging) and loads the certificates"),
        Row("etcd serve RSS once listening", listening_rss, "MiB", "the same serve without -OO", plain_rss,
            "a plain run, as from a pip install: docstrings in memory"),
        Row("etcd download CPU per GB", median([t.cpu for t in ours]) / size * 1e9, "s", "curl from our serve",
            median([t.cpu for t in curls]) / size * 1e9, "receive + decrypt + SHA-256 + write"),
        Row("etcd serve CPU per GB", median([t.server_cpu for t in ours]) / size * 1e9, "s", "", None,
            "read + encrypt + send"),
        Row("etcd serve: listening, file verified", server.listen_seconds, "s", note=f"goal < 1; Go 3 s ({QUOTED})"),
        Row("etcd serve: listening, cold (extract)", cold.listen_seconds, "s"),
    ]
    if old_client:
        rows += [
            Row("etcd download from serve (transfer)", mine, "MB/s", f"download of {BASELINE_REV}",
                median([t.mbps for t in old_client]), "same serve, same run"),
            Row("etcd download CPU per GB", median([t.cpu for t in ours]) / size * 1e9, "s",
                f"download of {BASELINE_REV}", median([t.cpu for t in old_client]) / size * 1e9),
            Row("etcd download peak RSS", max(t.rss for t in ours), "MiB", f"download of {BASELINE_REV}",
                max(t.rss for t in old_client)),
            Row("etcd download from serve (transfer)", mine, "MB/s", f"from the serve of {BASELINE_REV}",
                median([t.mbps for t in old_serve]), "same download, same run"),
            Row("etcd serve CPU per GB", median([t.server_cpu for t in ours]) / size * 1e9, "s",
                f"serve of {BASELINE_REV}", median([t.server_cpu for t in old_serve]) / size * 1e9),
            Row("etcd serve peak RSS", server_rss, "MiB", f"serve of {BASELINE_REV}", old_server_rss),
        ]
    return rows
