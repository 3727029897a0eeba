"""The image: start-up of the volume form inside a foreign image, sizes, the glibc floor.

Start-up is timed inside one container of Debian 11 (no Python, glibc 2.31) that takes the
volume with ``--volumes-from`` as a Kubernetes container does; a bash loop times each run with
``$EPOCHREALTIME``, so the container's start and the docker CLI are outside the figures, and
every variant pays the same fork/wait of the loop. The variants take turns run by run, so a
change in the machine's load hits each alike. Baseline: a bash script ``exec "$@"``,
which is what the original ``entrypoint.sh`` is on this path. Builds the image first (cached).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
import uuid
from pathlib import Path

from bench.common import REPO, Row
from tests.container.docker import DOCKER, FOREIGN, IMAGE
from tests.container.docker import VOLUME as VOL
from tests.container.docker import VOLUME_PYTHON as PYTHON

RUNS = 200
WARM = 10
VARIANTS = {
    "bash": "/pass.sh /bin/true",
    "entrypoint": f"{VOL}/entrypoint.sh /bin/true",
    "interpreter": f"{PYTHON} -c pass",
}
LOOP = r"""
printf '#!/bin/bash\nexec "$@"\n' > /pass.sh; chmod +x /pass.sh
for ((i = 0; i < %(warm)d + %(runs)d; i++)); do
  for variant in %(variants)s; do
    case $variant in %(cases)s esac
    s=$EPOCHREALTIME; $cmd >/dev/null 2>&1; e=$EPOCHREALTIME
    (( i >= %(warm)d )) && echo "$variant $s $e"
  done
done
"""


def docker(*args: str, timeout: float = 300) -> str:
    return subprocess.run([DOCKER, *args], check=True, capture_output=True, text=True, timeout=timeout).stdout


def startup() -> dict[str, float]:
    """Median ms per variant; the first WARM rounds warm caches and are not counted."""
    cases = " ".join(f"{name}) cmd='{command}';;" for name, command in VARIANTS.items())
    script = LOOP % {"variants": " ".join(VARIANTS), "cases": cases, "runs": RUNS, "warm": WARM}
    donor = f"service-sidekick-bench-{uuid.uuid4().hex[:8]}"
    docker("create", "--name", donor, "--network", "none", "--entrypoint", "/bin/bash", IMAGE)
    try:
        out = docker("run", "--rm", "--network", "none", "--volumes-from", donor, "--entrypoint", "/bin/bash",
                     FOREIGN, "-c", script, timeout=900)
    finally:
        docker("rm", "--force", "--volumes", donor)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for line in out.splitlines():
        name, start, end = line.split()
        samples[name].append((float(end) - float(start)) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def volume_facts() -> tuple[int, str, str]:
    """(bytes of the volume, highest GLIBC_ version its ELF files need, its libc's version)."""
    donor = docker("create", IMAGE).strip()
    try:
        raw = subprocess.run([DOCKER, "cp", f"{donor}:{VOL}", "-"], check=True, capture_output=True,
                             timeout=300).stdout
    finally:
        docker("rm", "--force", "--volumes", donor)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["tar", "-x", "-C", tmp], input=raw, check=True, timeout=300)
        root = Path(tmp) / "rke-tools"
        files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        size = sum(p.stat().st_size for p in files)
        needed: set[tuple[int, ...]] = set()
        for path in files:
            if path.read_bytes()[:4] == b"\x7fELF":
                dump = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True).stdout
                needed |= {tuple(map(int, v.split("."))) for v in re.findall(r"\(GLIBC_([0-9.]+)\)", dump)}
        libc = subprocess.run([str(root / "lib/libc.so.6")], capture_output=True, text=True).stdout
    floor = ".".join(map(str, max(needed)))
    match = re.search(r"release version ([0-9]+\.[0-9]+)", libc)
    return size, floor, match.group(1) if match else "?"


def layers() -> list[Row]:
    rows = []
    history = docker("history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", IMAGE)
    units = {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3}
    for line in reversed(history.splitlines()):
        size_text, created = line.split("\t", 1)
        number, unit = re.match(r"([0-9.]+)\s*([kMG]?B)", size_text).groups()  # type: ignore[union-attr]
        mb = float(number) * units[unit]
        if mb > 0:
            what = re.sub(r"\s+", " ", created.replace("/bin/sh -c ", "")).strip()[:60] or "base image"
            rows.append(Row(f"image layer: {what}", mb, "MB"))
    return rows


def run() -> list[Row]:
    subprocess.run([str(REPO / "scripts/image/build")], check=True, stdout=subprocess.DEVNULL)
    times = startup()
    size, floor, libc = volume_facts()
    total = int(docker("image", "inspect", "--format", "{{.Size}}", IMAGE).strip()) / 1e6
    return [
        Row("entrypoint.sh /bin/true from the volume, in Debian 11 without Python", times["entrypoint"], "ms",
            "bash exec pass-through", times["bash"]),
        Row("volume interpreter start (bundled ld.so, python3 -I -S -OO -c pass)", times["interpreter"], "ms",
            "bash exec pass-through", times["bash"]),
        Row("entrypoint.sh /bin/true from the volume", times["entrypoint"], "ms",
            "volume interpreter start", times["interpreter"], "goal <= 1.15x"),
        Row("volume form size (/opt/rke-tools)", size / 1e6, "MB"),
        Row("image size", total, "MB"),
        *layers(),
        Row(f"glibc floor: highest symbol version the volume needs, GLIBC_{floor}", 0, "",
            note=f"met by the volume's own libc {libc}; the foreign image's libc is never loaded"),
    ]
