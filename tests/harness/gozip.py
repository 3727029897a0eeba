"""The Go archive/zip stand-in (``bench/go/zipstandin.go``), built here with Debian's Go.

It makes the archive/zip calls rke-tools makes: ``zip`` as compressFiles/AddFileToZip (the
bench's size and speed baseline), ``unzip`` as decompressFile (tests: Go's reader, CRC-32
check included, reads sidekick's archives). Standard library only, so no module download.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "bench/go/zipstandin.go"


def build_zipstandin(work: Path) -> tuple[Path, str]:
    """Build into ``work`` (its own GOCACHE/GOPATH there); returns (binary, Go version)."""
    env = {**os.environ, "GOCACHE": str(work / "go-cache"), "GOPATH": str(work / "go-path"),
           "GO111MODULE": "off", "GOFLAGS": ""}
    binary = work / "zipstandin"
    subprocess.run(["go", "build", "-o", str(binary), str(SOURCE)], check=True, env=env, capture_output=True)
    version = subprocess.run(["go", "env", "GOVERSION"], check=True, env=env, capture_output=True,
                             text=True).stdout.strip()
    return binary, version


def go_unzip(binary: Path, archive: Path, name: str, dest: Path) -> subprocess.CompletedProcess[str]:
    """Extract the entry named exactly ``name`` as the Go tool does; the caller checks the result."""
    return subprocess.run([str(binary), "unzip", str(archive), name, str(dest)], capture_output=True, text=True,
                          check=False, timeout=120)
