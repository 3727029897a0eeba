"""Every absolute host path, derived from one root.

``SIDEKICK_ROOT`` (default ``/``) is read at call time, so tests and the demo point a tool at
a temporary tree without touching the machine. Tools must build every absolute path with
:func:`host_path`; nothing else in the package spells a path from ``/``.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

ROOT_ENV = "SIDEKICK_ROOT"


def root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or "/")


def host_path(path: str | PurePosixPath) -> Path:
    """Map an absolute path as the original tool knows it (``/backup/x``) under the root."""
    text = str(path)
    if not text.startswith("/"):
        raise ValueError(f"host path must be absolute: {text!r}")
    return root().joinpath(text.lstrip("/"))
