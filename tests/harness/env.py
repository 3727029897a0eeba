"""The environment a tool under test starts with: the machine's, minus anything that would
configure sidekick behind the test's back (the flags' env vars and SIDEKICK_*)."""

from __future__ import annotations

import os

TOOL_PREFIXES = ("S3_", "ETCD_", "SIDEKICK_")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(TOOL_PREFIXES)}
    env.update(extra)
    return env
