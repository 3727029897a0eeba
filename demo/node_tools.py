"""Demo steps for the node tools: nginx-proxy in front of local backends, cert-deployer on a bundle."""

from __future__ import annotations

import re
import stat
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from tests.harness.nginx_proxy import NginxProxyProcess
from tests.harness.pki import CertificateAuthority
from tests.harness.rke_bundle import rke_cert_env
from tests.harness.tcp import TcpBackend, request

if TYPE_CHECKING:  # demo.steps imports this module to list the steps
    from demo.steps import Context

SIDEKICK = Path(sys.executable).with_name("sidekick")

PAYLOAD = b"x" * 4095 + b"\n"
ROUNDS = 30


def _send(port: int) -> tuple[int, int, Counter[str]]:
    """ROUNDS connections through the proxy: (succeeded, bytes passed both ways, answers per backend)."""
    ok, passed, served = 0, 0, Counter[str]()
    for _ in range(ROUNDS):
        answer = request(port, PAYLOAD)
        name, _, echoed = answer.partition(b":")
        if echoed == PAYLOAD:
            ok += 1
            passed += len(PAYLOAD) + len(answer)
            served[name.decode()] += 1
    return ok, passed, served


def nginx_proxy_failover(ctx: Context) -> str:
    backends = [TcpBackend(f"cp{i}").start() for i in range(1, 4)]
    for backend in backends:
        ctx.stack.callback(backend.stop)
    proxy = NginxProxyProcess(SIDEKICK, ctx.root, ",".join(b.address for b in backends),
                              ctx.workdir / "nginx-proxy.log")
    proxy.start()
    ctx.stack.callback(proxy.stop)
    ok, passed, served = _send(proxy.listen_port)
    backends[0].stop()
    ok_after, passed_after, served_after = _send(proxy.listen_port)

    def spread(counter: Counter[str]) -> str:
        return " ".join(f"{name}={count}" for name, count in sorted(counter.items()))

    return (f"nginx pid {proxy.pid} on 127.0.0.1:{proxy.listen_port}: {ok}/{ROUNDS} ok ({spread(served)}), "
            f"{passed // 1024} KiB passed; cp1 stopped: {ok_after}/{ROUNDS} ok ({spread(served_after)}), "
            f"{passed_after // 1024} KiB")


def cert_deployer_bundle(ctx: Context) -> str:
    ca = ctx.values.get("ca") or CertificateAuthority("kube-ca")
    env = rke_cert_env(ca, etcd_ips=("127.0.0.1",))
    result = ctx.sidekick("cert-deployer", env=env)
    summary = re.search(r"written=(\d+) kept=(\d+) skipped=(\d+)", result.stderr)
    if summary is None or "BEGIN" in result.stderr:
        raise RuntimeError("cert-deployer gave no summary, or logged PEM material")
    directory = ctx.root / "etc/kubernetes/ssl"
    modes = Counter(f"{stat.S_IMODE(p.stat().st_mode):04o}" for p in directory.iterdir() if p.is_file())
    written, kept, skipped = summary.groups()
    # "kept": files already present (the etcd step placed kube-ca/kube-node/kube-etcd), not rewritten without FORCE_DEPLOY.
    return (f"{len(env)} KUBE_*/KUBECFG_* vars: written={written} kept={kept} (already there) skipped={skipped}; "
            f"dir {stat.S_IMODE(directory.stat().st_mode):04o}, files "
            + ", ".join(f"{count}x{mode}" for mode, count in sorted(modes.items())) + "; no PEM in the log")
