"""Start a throwaway etcd (TLS) and S3 endpoint (HTTPS) under a temp root, run the tools as RKE
runs them, and print what happened with timings. Nothing outside the temp root is touched.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from demo.steps import STEPS, Context


@dataclass
class Result:
    name: str
    seconds: float
    detail: str
    ok: bool


@dataclass
class Runner:
    results: list[Result] = field(default_factory=list)

    def step(self, name: str, func: Callable[[], str]) -> bool:
        start = time.perf_counter()
        try:
            detail, ok = func(), True
        except Exception as err:
            detail, ok = f"FAILED: {type(err).__name__}: {err}", False
        self.results.append(Result(name, time.perf_counter() - start, detail, ok))
        mark = "ok " if ok else "ERR"
        print(f"[{mark}] {name:<34} {time.perf_counter() - start:6.2f}s  {detail}", flush=True)
        return ok


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temp root for inspection")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="sidekick-demo-"))
    runner = Runner()
    total = time.perf_counter()
    with ExitStack() as stack:
        ctx = Context(workdir=workdir, stack=stack)
        for name, func in STEPS:
            if not runner.step(name, lambda f=func: f(ctx)):  # type: ignore[misc]
                break
    elapsed = time.perf_counter() - total
    failed = [r for r in runner.results if not r.ok]
    print(f"\nsummary: {len(runner.results) - len(failed)}/{len(runner.results)} steps ok "
          f"in {elapsed:.1f}s; temp root {'kept at ' + str(workdir) if args.keep else 'removed'}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
