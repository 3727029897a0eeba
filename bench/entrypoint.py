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
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, SIDEKICK, Row, time_command

DIRECT = "import sys; sys.path.insert(0, {repo!r}); sys.argv = ['entrypoint.sh', '/bin/true']; from sidekick.dispatch import run; run()"


def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "entrypoint.sh"
        link.symlink_to(SIDEKICK)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEKICK_")}
        python_pass = time_command([sys.executable, "-I", "-c", "pass"])
        core = time_command([sys.executable, "-I", "-S", "-c", "pass"])
        site_only = time_command([sys.executable, "-I", "-c", "import site"])
        bash_exec = time_command(["bash", "-c", 'exec "$@"', "_", "/bin/true"])
        entry = time_command([str(link), "/bin/true"], env=env)
        no_site = time_command([sys.executable, "-I", "-S", "-c", DIRECT.format(repo=str(REPO))], env=env)
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
