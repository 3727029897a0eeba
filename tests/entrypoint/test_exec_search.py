"""The fast path's PATH search (``entrypoint.execvp`` on ``posix``) finds what ``os.execvp`` finds.

Each case runs the real ``entrypoint.sh`` link and, as the oracle, ``os.execvp`` in a plain
interpreter, in the same directory with the same environment, and compares what ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import last_line

pytestmark = pytest.mark.integration


def script(path: Path, says: str, *, mode: int = 0o755) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {says}\n")
    path.chmod(mode)


def outcome(argv: list[str], cwd: Path, path: str | None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "PATH" and not k.startswith("SIDEKICK_")}
    if path is not None:
        env["PATH"] = path
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout.strip()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    script(tmp_path / "a/tool", "a-not-executable", mode=0o644)
    script(tmp_path / "b/tool", "b")
    (tmp_path / "c/tool").mkdir(parents=True)  # a directory of that name: EACCES, search goes on
    script(tmp_path / "work/tool", "cwd")
    script(tmp_path / "work/sub/tool", "relative")
    return tmp_path


# case -> (name, PATH with {t} for the tree, what ours prints, our exit code)
CASES = {
    "skips a non-executable file for a later one": ("tool", "{t}/a:{t}/b", "b", 0),
    "skips a directory of that name": ("tool", "{t}/c:{t}/missing:{t}/b", "b", 0),
    "only a non-executable file: permission denied": ("tool", "{t}/missing:{t}/a", "", 126),
    "nowhere: not found": ("tool", "{t}/missing:{t}/nodir/x", "", 127),
    "an empty entry is the working directory": ("tool", ":{t}/missing", "cwd", 0),
    "a name with a slash is not searched": ("sub/tool", "{t}/b", "relative", 0),
    "an absolute name": ("/bin/echo", "{t}/missing", "", 0),
    "PATH unset: /bin and /usr/bin": ("true", None, "", 0),
}


@pytest.mark.parametrize("case", CASES)
def test_the_search_matches_os_execvp(tool_link, tree: Path, case: str) -> None:  # type: ignore[no-untyped-def]
    name, path_template, prints, code = CASES[case]
    path = None if path_template is None else path_template.format(t=tree)
    work = tree / "work"
    ours = outcome([str(tool_link("entrypoint.sh")), name], work, path)
    oracle = outcome([sys.executable, "-c", "import os, sys; os.execvp(sys.argv[1], sys.argv[1:])", name], work, path)
    assert ours == (code, prints)
    assert oracle[1] == prints and (oracle[0] == 0) == (code == 0)  # the oracle dies of the exception: 1


def test_the_reason_is_in_the_last_line(tool_link, tree: Path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "PATH": f"{tree}/a"}
    done = subprocess.run([str(tool_link("entrypoint.sh")), "tool"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 126
    assert "cannot exec tool: Permission denied" in last_line(done.stderr)
