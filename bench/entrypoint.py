"""entrypoint.sh start-up: the time from start to exec for a component needing no preparation.

``entrypoint.sh /bin/true`` (a link to the venv's ``sidekick`` console script, as the
image's ``/opt/rke-tools/entrypoint.sh`` is) beside, in the same run, a bare interpreter
start and the shell pass-through the original amounts to for kube-scheduler. Three more
rows split the cost: the venv's ``site`` alone (its ``.pth`` files: the editable-install
finder), the interpreter core with ``-S``, and the same dispatch with ``-I -S`` and the
package on ``sys.path`` (no ``site``, no editable finder, no console-script wrapper):
what an image launcher for a non-editable install can reach.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, SIDEKICK, Row

RUNS = 40

DIRECT = "import sys; sys.path.insert(0, {repo!r}); sys.argv = ['entrypoint.sh', '/bin/true']; from sidekick.dispatch import run; run()"


def interleaved(commands: dict[str, list[str]], env: dict[str, str], *, runs: int = RUNS) -> dict[str, float]:
    """Median ms per command, taking the commands in turn each round, so a change in the
    machine's load (two cores shared with other work) hits every command alike."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(runs + 3):
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            if i >= 3:
                samples[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "entrypoint.sh"
        link.symlink_to(SIDEKICK)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEKICK_")}
        t = interleaved(
            {
                "python": [sys.executable, "-I", "-c", "pass"],
                "core": [sys.executable, "-I", "-S", "-c", "pass"],
                "site": [sys.executable, "-I", "-c", "import site"],
                "bash": ["bash", "-c", 'exec "$@"', "_", "/bin/true"],
                "entry": [str(link), "/bin/true"],
                "lean": [sys.executable, "-I", "-S", "-c", DIRECT.format(repo=str(REPO))],
            },
            env,
        )
        python_pass, core, site_only, bash_exec, entry, no_site = (
            t["python"], t["core"], t["site"], t["bash"], t["entry"], t["lean"],
        )  # fmt: skip
    return [
        Row("python3 -I -c pass (venv)", python_pass, "ms"),
        Row("python3 -I -S -c pass (no site)", core, "ms"),
        Row("python3 -I -c 'import site' (venv)", site_only, "ms", "python3 -I -S -c pass (no site)", core,
            "the venv's site + editable finder"),
        Row("bash -c 'exec \"$@\"' _ /bin/true", bash_exec, "ms"),
        Row("entrypoint.sh /bin/true", entry, "ms", "python3 -I -c pass (venv)", python_pass, "goal <= 1.5x"),
        Row("entrypoint.sh /bin/true", entry, "ms", "bash exec", bash_exec),
        Row("entrypoint.sh via python3 -I -S", no_site, "ms", "python3 -I -c pass (venv)", python_pass,
            "no site, no wrapper: a lean launcher"),
        Row("entrypoint.sh via python3 -I -S", no_site, "ms", "python3 -I -S -c pass (no site)", core),
    ]
