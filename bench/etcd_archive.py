"""The archive stage by deflate engine and level, beside the Go tool's archive/zip, in one run.

Two real etcd snapshots (a real etcd on loopback, filled over its API, then ``etcdctl snapshot
save``): one of text-heavy values (Kubernetes objects as JSON, the values of ``etcd_save``) and
one of structured, binary values (Kubernetes' protobuf envelope around varints, hashes, random
payloads and short names). For each, the same file is archived by:

- the Go stand-in: ``bench/go/zipstandin.go``, built here with Debian's Go, making the same
  archive/zip calls as rke-tools' compressFiles/AddFileToZip (FileInfoHeader, Method Deflate at
  compress/flate's default level, io.Copy); it reports its own open-to-close time;
- sidekick's :func:`sidekick.etcd.archive.write_archive` (parallel pieces, CRC-32 and SHA-256,
  fsync and rename), under the malloc bounds ``save`` sets, with every engine and level: zlib 1-9, zlib-ng 1-9, ISA-L 0-3, on the
  default number of deflate threads, and a few on one deflate thread.

Runs are interleaved (each round runs the Go stand-in and then every configuration, the order
reversed every other round) and the MB/s are medians over the rounds; sizes are the same every
round. For the default and ISA-L 2, a ceiling row: the MB/s their CPU seconds per byte would
give with every CPU of this machine busy all the time, beside the Go stand-in's MB/s (no
better scheduling can pass it; only a cheaper engine or more CPUs). Also printed: whether
each engine lets other threads run while it compresses with a dictionary (the parallel
pieces need both).

``BENCH_ETCD_ARCHIVE_MB`` (default 250) is the size of the values put into each etcd;
``BENCH_ARCHIVE_ROUNDS`` (default 3); ``BENCH_ARCHIVE_ENGINES`` (default ``zlib,zlib-ng,isal``)
restricts the engines.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Row
from bench.etcd_save import _load, _values
from sidekick.etcd import archive
from tests.harness.gozip import build_zipstandin

SIZE_MB = int(os.environ.get("BENCH_ETCD_ARCHIVE_MB", "250"))
ROUNDS = int(os.environ.get("BENCH_ARCHIVE_ROUNDS", "3"))
ENGINES = os.environ.get("BENCH_ARCHIVE_ENGINES", "zlib,zlib-ng,isal").split(",")
LEVELS = {"zlib": range(1, 10), "zlib-ng": range(1, 10), "isal": range(0, 4)}
# Also measured on one deflate thread: the previous default, the default, zlib's default.
ONE_THREAD = [("isal", 2), (archive.DEFAULT_ENGINE, archive.DEFAULT_LEVEL), ("zlib", 6)]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _protobuf_values(count: int, seed: int = 5) -> list[bytes]:
    """Values shaped like Kubernetes' protobuf storage (``k8s\\0`` + envelope + object): field
    tags and lengths, varint numbers, 16-byte uids, hashes and random payloads (Secrets,
    certificates), between short names; 2-12 kB each."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz-") for _ in range(rng.randint(3, 12)))
             for _ in range(400)]
    kinds = [b"Pod", b"Lease", b"Event", b"EndpointSlice", b"Secret", b"ReplicaSet"]
    values = []
    for _ in range(count):
        target = rng.randint(2_000, 12_000)
        value = bytearray(b"k8s\x00" + _field(1, _field(1, b"v1") + _field(2, rng.choice(kinds))))
        while len(value) < target:
            meta = (_field(1, rng.choice(words) + b"-" + rng.randbytes(5).hex().encode())
                    + _field(3, rng.choice(words)) + _field(5, rng.randbytes(16))
                    + _varint(6 << 3) + _varint(rng.getrandbits(40)))
            for _ in range(rng.randint(1, 6)):
                meta += _field(11, _field(1, rng.choice(words)) + _field(2, rng.choice(words)))
            record = bytearray(_field(3, meta))
            for _ in range(rng.randint(2, 20)):
                pick = rng.random()
                if pick < 0.4:
                    record += _varint(4 << 3) + _varint(rng.getrandbits(rng.choice([7, 14, 32, 63])))
                elif pick < 0.7:
                    record += _field(5, rng.randbytes(rng.randint(4, 64)))
                else:
                    record += _field(6, b".".join(rng.choice(words) for _ in range(rng.randint(1, 4))))
            value += _field(2, bytes(record))
        values.append(bytes(value))
    return values


def _snapshot(work: Path, name: str, pool: list[bytes]) -> Path:
    from tests.harness.etcd import EtcdServer
    from tests.harness.pki import CertificateAuthority, RkeSsl

    ssl_files = RkeSsl.create(work / f"ssl-{name}", CertificateAuthority("kube-ca"), "127.0.0.1")
    etcd = EtcdServer(work / f"etcd-{name}", ssl_files,
                      extra_args=("--quota-backend-bytes=8589934592",)).start()
    try:
        loaded = _load(etcd, SIZE_MB, pool)
        path = work / f"{name}.db"
        etcd.ctl("snapshot", "save", str(path), timeout=600)
    finally:
        etcd.stop()
        shutil.rmtree(work / f"etcd-{name}", ignore_errors=True)
    print(f"# etcd_archive: {name}: {loaded / 1e6:.0f} MB of values, snapshot "
          f"{path.stat().st_size / 1e6:.0f} MB", file=sys.stderr)
    return path


def _probe(engine: str, data: bytes) -> str:
    """How fast the main thread counts while another thread deflates ``data`` with a
    dictionary, as a share of its pace alone: near 0 % if the engine held the GIL."""
    module = archive.deflate_engine(engine)
    done = threading.Event()

    def pace(until: threading.Event) -> float:
        count, start = 0, time.perf_counter()
        while not until.is_set():
            count += 1
        return count / (time.perf_counter() - start)

    def deflate() -> None:
        comp = module.compressobj(1, module.DEFLATED, -15, 9, 0, data[:32768])
        comp.compress(data)
        comp.flush(module.Z_SYNC_FLUSH)
        done.set()

    later = threading.Event()
    threading.Timer(0.3, later.set).start()
    alone = pace(later)
    worker = threading.Thread(target=deflate)
    worker.start()
    during = pace(done)
    worker.join()
    return f"{engine}: compressobj with zdict works; main thread ran at {during / alone:.0%} of its pace alone"


@dataclass(frozen=True)
class Config:
    engine: str
    level: int
    workers: int | None  # None: write_archive's default

    @property
    def label(self) -> str:
        threads = "1 deflate thread" if self.workers == 1 else "parallel"
        return f"{self.engine} {self.level}, {threads}"


@dataclass
class Runs:
    """Wall and CPU seconds of each round, and the archive size (the same every round)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    size: int = 0

    def add(self, wall: float, cpu: float, size: int) -> None:
        assert self.size in (0, size), (self.size, size)
        self.wall.append(wall)
        self.cpu.append(cpu)
        self.size = size


def _sidekick(snapshot: Path, dest: Path, config: Config, check: bool) -> tuple[float, float, int]:
    start, cpu = time.perf_counter(), time.process_time()
    result = archive.write_archive(dest, [(f"/backup/{snapshot.stem}", snapshot)], engine=config.engine,
                                   level=config.level, workers=config.workers)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if check:  # the first round: zipfile inflates it and checks the CRC-32
        with zipfile.ZipFile(dest) as zf:
            assert zf.testzip() is None, config
    dest.unlink()
    return seconds, cpu, result.size


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _go(binary: Path, snapshot: Path, dest: Path) -> tuple[float, float, int]:
    """Its own archive-stage seconds, and the CPU seconds of the whole process."""
    cpu = _children_cpu()
    out = subprocess.run([str(binary), "zip", str(dest), str(snapshot)], check=True, capture_output=True, text=True)
    cpu = _children_cpu() - cpu
    size = dest.stat().st_size
    dest.unlink()
    return float(out.stdout), cpu, size


def _measure(snapshot: Path, binary: Path, configs: list[Config]) -> tuple[Runs, dict[Config, Runs]]:
    dest = snapshot.with_suffix(".zip")
    go = Runs()
    runs = {c: Runs() for c in configs}
    for round_ in range(ROUNDS):
        go.add(*_go(binary, snapshot, dest))
        for config in configs if round_ % 2 == 0 else reversed(configs):
            runs[config].add(*_sidekick(snapshot, dest, config, check=round_ == 0))
        print(f"# etcd_archive: {snapshot.stem}: round {round_ + 1}/{ROUNDS} done", file=sys.stderr)
    return go, runs


def run() -> list[Row]:
    from sidekick.host.memory import bound_malloc

    bound_malloc()  # as save sets it before archiving: without it, 0.5-0.7 s/GB more system time
    work = Path(tempfile.mkdtemp(prefix="bench-etcd-archive-"))
    configs = [Config(e, lv, None) for e in ENGINES for lv in LEVELS[e]]
    configs += [Config(e, lv, 1) for e, lv in ONE_THREAD if e in ENGINES]
    default = Config(archive.DEFAULT_ENGINE, archive.DEFAULT_LEVEL, None)
    rows: list[Row] = []
    try:
        binary, go_version = build_zipstandin(work)
        go_label = (f"Go archive/zip stand-in built here ({go_version}), the same library calls "
                    "as rke-tools compressFile")
        probe_data = b" ".join(_values(160))[: 16 << 20]
        for engine in ENGINES:
            print(f"# {_probe(engine, probe_data)}")
        data_sets = {"k8s-json": _values(256), "k8s-protobuf": _protobuf_values(2048)}
        for name, pool in data_sets.items():
            snapshot = _snapshot(work, name, pool)
            total = snapshot.stat().st_size
            go, runs = _measure(snapshot, binary, configs)
            go_mbps = total / 1e6 / statistics.median(go.wall)
            print(f"\n# {name}: snapshot {total / 1e6:.0f} MB, medians of {ROUNDS} interleaved rounds; "
                  f"parallel = write_archive's default deflate threads on {os.cpu_count()} CPUs; "
                  "CPU s/GB: CPU seconds of the whole process per GB of input")
            print(f"{'configuration':<28} {'MB/s':>7} {'ratio':>7} {'size vs Go':>10} {'MB/s vs Go':>10} {'CPU s/GB':>8}")
            print(f"{'Go stand-in':<28} {go_mbps:>7.1f} {go.size / total:>7.4f} {'1.0000x':>10} {'1.00x':>10} "
                  f"{statistics.median(go.cpu) * 1e9 / total:>8.2f}  ({go_label})")
            for config in configs:
                run_ = runs[config]
                mbps = total / 1e6 / statistics.median(run_.wall)
                mark = "  <- sidekick default" if config == default else ""
                print(f"{config.label:<28} {mbps:>7.1f} {run_.size / total:>7.4f} {run_.size / go.size:>9.4f}x "
                      f"{mbps / go_mbps:>9.2f}x {statistics.median(run_.cpu) * 1e9 / total:>8.2f}{mark}")
                if config in (default, Config("isal", 2, None)):
                    rows += [
                        Row(f"archive stage {name}, {config.label}", mbps, "MB/s", "Go archive/zip stand-in",
                            go_mbps, note=f"size {run_.size / go.size:.4f}x Go's; goal <= 1.01x, >= 3x MB/s"),
                        Row(f"archive stage {name}, {config.label}", statistics.median(run_.cpu) * 1e9 / total,
                            "CPU s/GB", "Go archive/zip stand-in", statistics.median(go.cpu) * 1e9 / total,
                            note="lower is better; whole process"),
                        Row(f"archive stage {name}, {config.label}: ceiling on {os.cpu_count()} CPUs",
                            total / 1e6 / (statistics.median(run_.cpu) / (os.cpu_count() or 1)), "MB/s",
                            "Go archive/zip stand-in", go_mbps,
                            note="the MB/s its CPU seconds allow with every CPU busy all the time"),
                    ]
            snapshot.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows
