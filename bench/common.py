"""Figures and their baselines, measured in the same run."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIDEKICK = Path(sys.executable).with_name("sidekick")


def baseline_tree(base: Path, rev: str) -> Path | None:
    """The ``sidekick`` package of an earlier revision ``rev`` of this repository, unpacked
    under ``base`` (None when git does not know it): its figures are measured in the same run
    as this checkout's, with the same interpreter and libraries."""
    tree = base / f"baseline-{rev}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "sidekick"], capture_output=True)
    if archive.returncode != 0:
        print(f"# bench: no baseline revision {rev}", file=sys.stderr)
        return None
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    compile_package(tree / "sidekick")
    return tree


# How the image's launcher runs every tool (scripts/image/launcher.c): -OO, over bytecode
# compiled without docstrings or asserts. ``tool(image=True)`` runs a checkout that way.
IMAGE_FLAGS = ["-OO"]
_OPTIMIZE = [0, 2]  # the bytecode levels of plain runs and of IMAGE_FLAGS runs


def compile_package(package: Path) -> None:
    """Write the bytecode of ``package`` ahead, as the image ships it (compiled at build time).

    Without it a child interpreter in an environment with ``PYTHONDONTWRITEBYTECODE`` (or a
    read-only checkout) compiles every sidekick module on every run: 0.25 s of CPU per command
    here, which would be measured as the tool's cost.
    """
    import compileall

    if not compileall.compile_dir(str(package), quiet=1, workers=0, optimize=_OPTIMIZE):
        raise RuntimeError(f"cannot compile {package}")


def compile_libraries() -> None:
    """:func:`compile_package` for the standard library and the venv's packages, which pip and
    Debian compile only for plain runs: without -OO bytecode, an ``image=True`` run would
    compile every module it imports and be measured with the compiler's memory. A few seconds
    the first time, then a check of timestamps."""
    import compileall
    import sysconfig

    for key in ("stdlib", "purelib"):
        compileall.compile_dir(sysconfig.get_paths()[key], quiet=2, workers=0, optimize=_OPTIMIZE,
                               rx=re.compile(r"/(test|tests|idlelib|tkinter|turtledemo|lib2to3)/"))


def tool(tree: Path | None = None, *, image: bool = False) -> tuple[list[str], dict[str, str]]:
    """The command prefix (and extra environment) of this checkout's tool, or of a
    :func:`baseline_tree`'s; with ``image``, under the image's :data:`IMAGE_FLAGS` (call
    :func:`compile_libraries` first)."""
    flags = IMAGE_FLAGS if image else []
    if tree is None:
        return ([sys.executable, *flags, str(SIDEKICK)] if flags else [str(SIDEKICK)]), {}
    # -P: ``-m`` would otherwise put the working directory (this checkout) ahead of PYTHONPATH
    return [sys.executable, *flags, "-P", "-m", "sidekick"], {"PYTHONPATH": str(tree)}


@dataclass
class Row:
    name: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    note: str = ""

    @property
    def ratio(self) -> str:
        if not self.baseline_value:
            return ""
        return f"{self.value / self.baseline_value:.2f}x"


def time_command(argv: Sequence[str], *, runs: int = 30, warmup: int = 3, env: dict[str, str] | None = None) -> float:
    """Median wall time in milliseconds of running ``argv`` to completion."""
    full_env = {**os.environ, **(env or {})}
    samples = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=full_env)
        if i >= warmup:
            samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def print_table(rows: Sequence[Row]) -> None:
    headers = ("benchmark", "value", "unit", "baseline", "baseline value", "ratio", "note")
    table = [
        (r.name, f"{r.value:.2f}", r.unit, r.baseline,
         "" if r.baseline_value is None else f"{r.baseline_value:.2f}", r.ratio, r.note)
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


class Peaks:
    """Peak RSS of a process, separately of the largest of its descendants, and of the whole
    tree (the process plus all its descendants at one poll; psutil, polled every 20 ms until
    the process ends)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.own = 0
        self.child = 0
        self.tree = 0
        self._proc = psutil.Process(pid)
        self._error = psutil.Error
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                own = self._proc.memory_info().rss
                self.own = max(self.own, own)
                tree = own
                for child in self._proc.children(recursive=True):
                    try:
                        rss = child.memory_info().rss
                    except self._error:
                        continue
                    self.child = max(self.child, rss)
                    tree += rss
                self.tree = max(self.tree, tree)
            except self._error:
                return
            time.sleep(0.02)

    def join(self) -> None:
        self._thread.join(timeout=5)


def measure(argv: Sequence[str], env: dict[str, str] | None = None,
            timeout: float = 3600) -> tuple[float, Peaks, str, str]:
    """Run ``argv`` to completion: (wall seconds, its peaks, stdout, stderr); non-zero exit raises."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = Peaks(proc.pid)
    out, err = proc.communicate(timeout=timeout)
    seconds = time.perf_counter() - start
    peaks.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{list(argv)[:5]} failed: {err[-2000:]}")
    return seconds, peaks, out, err
