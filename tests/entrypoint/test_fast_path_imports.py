"""The entrypoint's fast path loads nothing from disk but sidekick's own few modules.

``entrypoint.sh kube-scheduler ...`` runs before every such container starts, so its cost is
the interpreter's start plus what this path adds. Run as the image's launcher runs it
(``python -I -S -OO``, no ``site``), the path may import sidekick's modules, ``__future__`` and
modules built into the interpreter, nothing else: not ``os`` (with ``_collections_abc``),
``collections``, ``typing`` or ``logging``, each of which would cost it more than all the rest.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import posix, sys
before = set(sys.modules)
sys.path.append({repo!r})
from sidekick.dispatch import main

def record(path, argv):
    new = sorted(set(sys.modules) - before)
    posix.write(1, repr((argv, new)).encode())
    posix._exit(0)

posix.execv = record
main(["entrypoint.sh", *{args!r}])
"""


def test_scheduler_fast_path_imports_only_sidekick_and_builtins() -> None:
    args = ["kube-scheduler", "--v=2", "--kubeconfig=/etc/kubernetes/ssl/kubecfg-kube-scheduler.yaml"]
    probe = PROBE.format(repo=str(REPO), args=args)
    out = subprocess.run([sys.executable, "-I", "-S", "-OO", "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    argv, new = ast.literal_eval(out.stdout)
    assert argv == args  # it got as far as the exec, with the arguments unchanged
    assert "sidekick.entrypoint" in new
    from_disk = [m for m in new if m.split(".")[0] != "sidekick" and m != "__future__" and m not in sys.builtin_module_names]
    assert from_disk == []
