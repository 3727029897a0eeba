"""Processes: run a command with a timeout, or replace this process with one."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import NoReturn

from sidekick.errors import SidekickError
from sidekick.host.guard import track_process

log = logging.getLogger(__name__)


class Runner:
    """Runs programs on the host; tests pass a Runner that records or refuses."""

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        input: bytes | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        log.debug("run %s", " ".join(argv))
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=None if env is None else dict(env),
                cwd=cwd,
            )
        except FileNotFoundError:
            raise SidekickError(f"{argv[0]}: command not found") from None
        track_process(process)  # a guarded step kills it at its deadline or on a stop
        with process:
            try:
                stdout, stderr = process.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise SidekickError(f"{argv[0]} timed out after {timeout}s") from None
            except BaseException:
                process.kill()
                raise
        result = subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
            last = detail[-1] if detail else ""
            raise SidekickError(f"{argv[0]} exited with {result.returncode}: {last}")
        return result

    def exec(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> NoReturn:
        log.debug("exec %s", " ".join(argv))
        try:
            if env is None:
                os.execvp(argv[0], list(argv))
            os.execvpe(argv[0], list(argv), dict(env))
        except OSError as err:
            raise SidekickError(f"cannot exec {argv[0]}: {err.strerror}") from None
