"""Dispatcher start-up against a bare interpreter and a bash pass-through."""

from __future__ import annotations

import sys

from bench.common import SIDEKICK, Row, time_command


def run() -> list[Row]:
    python_pass = time_command([sys.executable, "-I", "-c", "pass"])
    bash_true = time_command(["bash", "-c", "true"])
    help_ms = time_command([str(SIDEKICK), "--help"])
    return [
        Row("python3 -I -c pass", python_pass, "ms"),
        Row("bash -c true", bash_true, "ms"),
        Row("sidekick --help", help_ms, "ms", "python3 -I -c pass", python_pass),
        Row("sidekick --help", help_ms, "ms", "bash -c true", bash_true),
    ]
