"""Demo steps for entrypoint.sh: a pass-through exec, and the EC2 hostname flow.

The components are stand-ins that print the arguments they were started with, so the
demo shows exactly what kube-scheduler or kube-proxy would have received.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tests.entrypoint.fakes import Ec2Imds

if TYPE_CHECKING:  # demo.steps imports this module to list the steps
    from demo.steps import Context

PRINT_ARGV = "import json, sys\nprint(json.dumps(sys.argv[1:]))\n"


def _stand_in(ctx: Context, name: str) -> Path:
    path = ctx.workdir / "bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{PRINT_ARGV}")
    path.chmod(0o755)
    return path


def _path_env(ctx: Context) -> dict[str, str]:
    return {"PATH": f"{ctx.workdir / 'bin'}:{os.environ['PATH']}"}


def scheduler_passthrough(ctx: Context) -> str:
    _stand_in(ctx, "kube-scheduler")
    args = ["--v=2", "--profiling=", "--kubeconfig=/etc/kubernetes/ssl/kubecfg-kube-scheduler.yaml", "--leader-elect=true"]
    start = time.perf_counter()
    result = ctx.sidekick("entrypoint.sh", "kube-scheduler", *args, env=_path_env(ctx))
    took = (time.perf_counter() - start) * 1000
    received = json.loads(result.stdout)
    if received != args:
        raise RuntimeError(f"kube-scheduler got {received}, expected {args}")
    return f"kube-scheduler exec'd with its {len(args)} args unchanged ({' '.join(received)}) in {took:.0f} ms"


def aws_hostname(ctx: Context) -> str:
    imds = Ec2Imds(hostname="ip-10-0-3-17.eu-west-1.compute.internal")
    _stand_in(ctx, "kube-proxy")
    with imds.serve() as base:
        env = {**_path_env(ctx), "SIDEKICK_AWS_METADATA_URL": base}
        result = ctx.sidekick("entrypoint.sh", "kube-proxy", "--cluster-cidr=10.42.0.0/16", "--v=2", env=env)
    received = json.loads(result.stdout)
    calls = " then ".join(f"{s.method} {s.path}" for s in imds.seen)
    return f"IMDSv2 on loopback ({calls}) -> kube-proxy got {received[-1]}"
