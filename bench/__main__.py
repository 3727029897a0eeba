"""``python -m bench [NAME...]``: run the named benchmark modules (default: all)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench
from bench.common import REPO, Row, compile_package, print_table


def main(argv: list[str]) -> int:
    names = argv or sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if m.name not in {"common", "__main__"}
    )
    compile_package(REPO / "sidekick")
    rows: list[Row] = []
    for name in names:
        start = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        rows.extend(module.run())
        print(f"# bench.{name}: {time.perf_counter() - start:.1f}s", file=sys.stderr)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
