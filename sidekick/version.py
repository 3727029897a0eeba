"""``sidekick --version``: this package's version and the versions of its runtime dependencies.

The versions are read from the installed packages' metadata, so the line names what this
copy runs with (the image's are pinned by constraints.txt), not what pyproject.toml allows.
Imported only when ``--version`` is asked: ``importlib.metadata`` is not free.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re

from sidekick import __version__

DISTRIBUTION = "sidekick"


def requirement_names(requirements: list[str]) -> list[str]:
    """The distribution names of the unconditional requirements (extras' ones are left out)."""
    names = []
    for requirement in requirements:
        if "extra ==" in requirement.partition(";")[2]:
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if match:
            names.append(match.group(1))
    return names


def describe() -> str:
    """``sidekick 0.1.0`` then one indented ``name version`` line per runtime dependency."""
    lines = [f"sidekick {__version__}"]
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        lines.append("  (not installed as a package: dependency versions unknown)")
        requirements = []
    for name in requirement_names(requirements):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "MISSING"
        lines.append(f"  {name} {version}")
    return "\n".join(lines) + "\n"
