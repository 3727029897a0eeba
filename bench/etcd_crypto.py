"""age encryption: ``save --once`` and ``download`` with S3, encrypted beside plain, and the
age implementations sidekick could use, all on the same snapshot in the same run.

- save: etcd snapshot + archive + (encryption) + multipart upload to moto; download: the
  object + (decryption) + verification + extraction. Throughput is snapshot MB per wall second
  of the whole command; peak RSS is polled. Goal: encrypted >= 0.8x plain, RSS flat.
- the library choice, on the archive of that snapshot: pyrage's streaming ``encrypt_io``/
  ``decrypt_io`` (what sidekick uses), pyrage's ``encrypt_file``/``decrypt_file``, and Debian's
  ``age`` binary through a pipe.

Size: ``BENCH_ETCD_CRYPTO_MB`` (default 512 MB of etcd values). The modes alternate for
``BENCH_ETCD_CRYPTO_ROUNDS`` rounds (2) and each keeps its best, and the library figures are
the best of three interleaved runs, so a busy neighbour on the machine skews neither side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import SIDEKICK, Row, measure
from bench.etcd_save import _mbps, loaded_etcd

SIZE_MB = int(os.environ.get("BENCH_ETCD_CRYPTO_MB", "512"))
ROUNDS = int(os.environ.get("BENCH_ETCD_CRYPTO_ROUNDS", "2"))  # plain and age alternate; best of each
NAME = "bench-crypto"


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one sidekick command."""
    seconds, peaks, _, _ = measure(argv, env)
    return seconds, peaks.own


def _best(figures: dict[str, tuple[float, int]], name: str, got: tuple[float, int]) -> None:
    """Keep the fastest run's seconds and the highest peak RSS seen."""
    seconds, rss = figures.get(name, (got[0], got[1]))
    figures[name] = (min(seconds, got[0]), max(rss, got[1]))


def _library_rows(archive: Path, work: Path) -> list[Row]:
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    recipient = identity.to_public()
    key = work / "lib.key"
    key.write_text(f"{identity}\n")
    size = archive.stat().st_size
    sealed, out = work / "lib.age", work / "lib.out"

    def timed(step: Callable[[], object]) -> float:
        start = time.perf_counter()
        step()
        return _mbps(size, time.perf_counter() - start)

    def io_encrypt() -> None:
        with open(archive, "rb", buffering=1 << 20) as src, open(sealed, "wb", buffering=1 << 20) as dst:
            pyrage.encrypt_io(src, dst, [recipient])

    def io_decrypt() -> None:
        with open(sealed, "rb", buffering=1 << 20) as src, open(out, "wb", buffering=1 << 20) as dst:
            pyrage.decrypt_io(src, dst, [identity])

    def pipe(argv: list[str], src: Path, dst: Path) -> None:
        with open(src, "rb") as stdin, open(dst, "wb") as stdout:
            subprocess.run(argv, stdin=stdin, stdout=stdout, check=True)

    steps: dict[str, Callable[[], object]] = {
        "enc_io": io_encrypt, "dec_io": io_decrypt,
        "enc_file": lambda: pyrage.encrypt_file(str(archive), str(sealed), [recipient]),
        "dec_file": lambda: pyrage.decrypt_file(str(sealed), str(out), [identity]),
        "enc_age": lambda: pipe(["age", "-r", str(recipient)], archive, sealed),
        "dec_age": lambda: pipe(["age", "-d", "-i", str(key)], sealed, out),
    }
    best: dict[str, float] = {}
    for _ in range(3):  # each decryption reads what the encryption before it wrote
        for name, step in steps.items():
            best[name] = max(best.get(name, 0.0), timed(step))
    enc_io, dec_io, enc_file, dec_file, enc_age, dec_age = (best[n] for n in steps)
    rows = []
    note = f"archive {size / 1e6:.0f} MB, file to file"
    rows += [
        Row("age encrypt: pyrage encrypt_io (used)", enc_io, "MB/s", "pyrage encrypt_file", enc_file, note=note),
        Row("age encrypt: pyrage encrypt_io (used)", enc_io, "MB/s", "age -r (Debian) via pipe", enc_age, note=note),
        Row("age decrypt: pyrage decrypt_io (used)", dec_io, "MB/s", "pyrage decrypt_file", dec_file, note=note),
        Row("age decrypt: pyrage decrypt_io (used)", dec_io, "MB/s", "age -d (Debian) via pipe", dec_age, note=note),
    ]
    for leftover in (sealed, out, key):
        leftover.unlink(missing_ok=True)
    return rows


def run() -> list[Row]:
    from tests.harness.etcd_backup import node_root, rke_s3_env, rke_s3_flags, rke_save_argv
    from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

    work = Path(tempfile.mkdtemp(prefix="bench-etcd-crypto-"))
    ssl_files, etcd = loaded_etcd(work, SIZE_MB, "etcd_crypto")
    s3 = S3Server(work / "s3").start()
    try:
        key = work / "age.key"
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        public = next(line.split(": ")[1] for line in key.read_text().splitlines() if "public key" in line)
        base_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("S3_", "SIDEKICK_", "AWS_"))},
                    **rke_s3_env(ACCESS_KEY, SECRET_KEY)}
        figures: dict[str, tuple[float, int]] = {}
        snapshot_size = 0
        library_rows: list[Row] = []
        for mode in ("plain", "age") * ROUNDS:
            bucket = s3.new_bucket(mode)  # a fresh bucket: the upload is never skipped as present
            saver = node_root(work / f"save-{mode}", ssl_files)
            flags = rke_s3_flags(s3.url, bucket)
            env = {**base_env, "SIDEKICK_ROOT": str(saver)}
            if mode == "age":
                env["SIDEKICK_AGE_RECIPIENTS"] = public
            _best(figures, f"save-{mode}", _run([str(SIDEKICK), "rke-etcd-backup",
                                                 *rke_save_argv(etcd.endpoint, NAME, "--once", *flags)], env))
            restorer = node_root(work / f"restore-{mode}", ssl_files)
            (restorer / "keys").mkdir()
            shutil.copy(key, restorer / "keys/age.key")
            env = {**base_env, "SIDEKICK_ROOT": str(restorer)}
            if mode == "age":
                env["SIDEKICK_AGE_IDENTITY_FILE"] = "/keys/age.key"
            _best(figures, f"download-{mode}", _run([str(SIDEKICK), "rke-etcd-backup", "etcd-backup", "download",
                                                     "--name", NAME, *flags], env))
            snapshot_size = (restorer / "backup" / NAME).stat().st_size
            archive = saver / "backup" / f"{NAME}.zip"
            if mode == "plain" and not library_rows:
                library_rows = _library_rows(archive, work)
            shutil.rmtree(restorer)
            shutil.rmtree(saver)
        note = f"snapshot {snapshot_size / 1e6:.0f} MB, moto over HTTP; goal >= 0.80x"
        rows = []
        for step in ("save", "download"):
            plain_s, plain_rss = figures[f"{step}-plain"]
            age_s, age_rss = figures[f"{step}-age"]
            rows += [
                Row(f"{step} --s3-backup, age-encrypted", _mbps(snapshot_size, age_s), "MB/s",
                    "the same, plain", _mbps(snapshot_size, plain_s), note=note),
                Row(f"{step} --s3-backup, age-encrypted, peak RSS", age_rss / 2**20, "MiB",
                    "the same, plain", plain_rss / 2**20, note="memory bound: flat at any size"),
            ]
        return rows + library_rows
    finally:
        s3.stop()
        etcd.stop()
        shutil.rmtree(work, ignore_errors=True)
