"""Demo steps: ``list`` as a table, then ``verify`` of a good and of a corrupted snapshot."""

from __future__ import annotations

import os
import subprocess
import zipfile
from typing import TYPE_CHECKING

from demo.etcd_save import _s3, _tool

if TYPE_CHECKING:  # demo.steps imports this module to list the steps
    from demo.steps import Context

CORRUPTED = "corrupted-copy"


def _run(ctx: Context, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool(ctx), "etcd-backup", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "SIDEKICK_ROOT": str(ctx.root), **(env or {})})


def _last(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def verify_good(ctx: Context) -> str:
    name = ctx.values["snapshot_name"]
    result = _run(ctx, "verify", "--name", name)
    if result.returncode != 0:
        raise RuntimeError(_last(result.stderr))
    return result.stdout.strip()


def verify_corrupted(ctx: Context) -> str:
    """A copy of the snapshot with one byte flipped, archived afresh (so the zip itself is
    sound): only etcd's own hash trailer can tell, and verify says so."""
    from sidekick.etcd.archive import write_archive

    name = ctx.values["snapshot_name"]
    with zipfile.ZipFile(ctx.root / f"backup/{name}.zip") as archive:
        db = bytearray(archive.read(f"/backup/{name}"))
    db[len(db) // 3] ^= 0x40
    work = ctx.workdir / "corrupt"
    work.mkdir(exist_ok=True)
    (work / CORRUPTED).write_bytes(db)
    write_archive(ctx.root / f"backup/{CORRUPTED}.zip", [(f"/backup/{CORRUPTED}", work / CORRUPTED)])
    result = _run(ctx, "verify", "--name", CORRUPTED)
    if result.returncode == 0:
        raise RuntimeError("a corrupted snapshot verified")
    return f"exit {result.returncode}: {_last(result.stderr)}"


def list_table(ctx: Context) -> str:
    _, _, flags, env = _s3(ctx)
    result = _run(ctx, "list", *flags, env=env)
    if result.returncode != 0:
        raise RuntimeError(_last(result.stderr) or f"list exited {result.returncode}")
    for line in result.stdout.rstrip().splitlines():
        print(f"      | {line}")
    table = result.stdout.split("\n\n", 1)[0].splitlines()[1:]  # the rows end at the first blank line
    return f"{len(table)} rows (local, S3 and the last verify of each)"
