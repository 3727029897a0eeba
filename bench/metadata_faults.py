"""Metadata faults: how long entrypoint.sh keeps a component from starting, and its memory.

Every case runs the real ``entrypoint.sh`` (``python -m sidekick``, so ``PYTHONPATH`` picks the
tree under test) at the DEFAULT budgets against the fakes of ``tests/entrypoint/fakes.py`` on
loopback, all at once on their own threads, as a node would meet the fault: the EC2 hostname
lookup of kube-proxy and the Azure cloud-config completion of kube-apiserver. The component is
a stand-in that exits at once, so a case's time is the time until the component would start.
Baselines, measured in the same run: the same start with no metadata service listening (a
refused connection, the quickest fallback) and, for memory, with a normal answer. Peak RSS is
the kernel's high-water mark of the child, read with ``wait4``. The notes quote the same
cases measured with this module on commit 8820f2f, before the request deadlines and caps
(not measured in this run, so no ratio).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Row

DRIP = 0.5  # seconds between bytes, as in issue 14
HUGE = 200 * 1024 * 1024
BEFORE = {  # 8820f2f, all cases at once as here
    "ec2-token-drip": "51.8 s",
    "ec2-hostname-drip": "28.0 s",
    "azure-imds-drip": "132.1 s",
    "azure-login-drip": "120.5 s",
    "azure-arm-drip": "259.9 s",
    "ec2-huge": "1020.6 MB, then 'cannot exec kube-proxy: Argument list too long'",
    "azure-huge": "424.2 MB",
}


def _run(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, float, str]:
    """Seconds to the end, peak RSS in MB and the last log line of one entrypoint.sh run."""
    started = time.monotonic()
    with log.open("w") as err:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, _, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    process.returncode = 0  # reaped by wait4
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if "level=warning" in line), lines[-1] if lines else "")
    key = next((k for k in ('reason="', 'msg="') if k in last), "")
    start = last.index(key) + len(key) if key else 0
    return seconds, usage.ru_maxrss / 1024, last[start : start + 110]


def run() -> list[Row]:
    from tests.entrypoint.fakes import SUB, TENANT, Azure, AzureWorld, Ec2Imds, Misbehave
    from tests.entrypoint.test_services import BASE_CONFIG
    from tests.harness.env import clean_env
    from tests.harness.ports import free_port

    work = Path(tempfile.mkdtemp(prefix="bench-metadata-"))
    bin_dir = work / "bin"
    bin_dir.mkdir()
    for name in ("kube-proxy", "kube-apiserver", "update-alternatives"):
        tool = bin_dir / name
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(0o755)
    base_env = {**clean_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    python = [sys.executable, "-m", "sidekick", "entrypoint.sh"]
    results: dict[str, tuple[float, float, str]] = {}

    def node(label: str) -> Path:
        root = work / label
        (root / "etc/kubernetes").mkdir(parents=True)
        (root / "etc/kubernetes/cloud-config").write_text(json.dumps(BASE_CONFIG))
        return root

    def ec2(label: str, base: str) -> Callable[[], None]:
        env = {**base_env, "SIDEKICK_ROOT": str(node(label)), "SIDEKICK_AWS_METADATA_URL": base}
        argv = [*python, "kube-proxy", "--cluster-cidr=10.42.0.0/16", "--v=2"]
        return lambda: results.__setitem__(label, _run(argv, env, work / f"{label}.log"))

    def azure(label: str, base: str) -> Callable[[], None]:
        env = {**base_env, "SIDEKICK_ROOT": str(node(label)), "SIDEKICK_AZURE_METADATA_URL": base,
               "SIDEKICK_AZURE_LOGIN_URL": base, "SIDEKICK_AZURE_ARM_URL": base}  # fmt: skip
        argv = [*python, "kube-apiserver", "--cloud-provider=azure", "--cloud-config=/etc/kubernetes/cloud-config"]
        return lambda: results.__setitem__(label, _run(argv, env, work / f"{label}.log"))

    drip = Misbehave(drip=DRIP)
    world = AzureWorld()
    vm = f"/subscriptions/{SUB}/resourceGroups/{world.vm_group}/providers/Microsoft.Compute/virtualMachines/{world.vm_name}"
    fakes: dict[str, tuple[Ec2Imds | Azure, str, Misbehave | None]] = {
        "ec2-token-drip": (Ec2Imds(), "/latest/api/token", drip),
        "ec2-hostname-drip": (Ec2Imds(), "/latest/meta-data/hostname", drip),
        "ec2-huge": (Ec2Imds(), "/latest/meta-data/hostname", Misbehave(size=HUGE)),
        "ec2-normal": (Ec2Imds(), "", None),
        "azure-imds-drip": (Azure(), "/metadata/instance/compute", drip),
        "azure-login-drip": (Azure(), f"/{TENANT}/oauth2/token", drip),
        "azure-arm-drip": (Azure(), vm, drip),  # the first Resource Manager read
        "azure-huge": (Azure(), "/metadata/instance/compute", Misbehave(size=HUGE, declare_length=False)),
        "azure-normal": (Azure(), "", None),
    }
    jobs: list[Callable[[], None]] = [
        ec2("ec2-refused", f"http://127.0.0.1:{free_port()}"),
        azure("azure-refused", f"http://127.0.0.1:{free_port()}"),
    ]
    contexts = []
    try:
        for label, (fake, path, fault) in fakes.items():
            if fault is not None:
                fake.faults[path] = fault
            context = fake.serve()
            base = context.__enter__()
            contexts.append(context)
            jobs.append((ec2 if label.startswith("ec2") else azure)(label, base))
        threads = [threading.Thread(target=job) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for context in contexts:
            context.__exit__(None, None, None)

    def seconds(label: str) -> float:
        return results[label][0]

    def rss(label: str) -> float:
        return results[label][1]

    refused_ec2, refused_azure = "kube-proxy, no EC2 metadata (refused)", "kube-apiserver azure, no IMDS (refused)"
    rows = [
        Row(refused_ec2, seconds("ec2-refused"), "s"),
        Row(refused_azure, seconds("azure-refused"), "s"),
    ]
    for label, title, baseline, base_label in (
        ("ec2-token-drip", "kube-proxy, EC2 token answer drips", refused_ec2, "ec2-refused"),
        ("ec2-hostname-drip", "kube-proxy, EC2 hostname answer drips", refused_ec2, "ec2-refused"),
        ("azure-imds-drip", "kube-apiserver azure, IMDS answer drips", refused_azure, "azure-refused"),
        ("azure-login-drip", "kube-apiserver azure, Azure AD login drips", refused_azure, "azure-refused"),
        ("azure-arm-drip", "kube-apiserver azure, ARM answer drips", refused_azure, "azure-refused"),
    ):
        rows.append(Row(title, seconds(label), "s", baseline, seconds(base_label),
                        note=f"before: {BEFORE[label]}; {results[label][2]}"))
    for label, title, base_label in (
        ("ec2-huge", "kube-proxy, 200 MB EC2 hostname answer: peak RSS", "ec2-normal"),
        ("azure-huge", "kube-apiserver azure, 200 MB IMDS answer (no length): peak RSS", "azure-normal"),
    ):
        rows.append(Row(title, rss(label), "MB", "the same with a normal answer", rss(base_label),
                        note=f"before: {BEFORE[label]}; {seconds(label):.1f}s; {results[label][2]}"))
    print(f"# metadata_faults: drip {DRIP}s/byte, default budgets, work dir {work}", file=sys.stderr)
    return rows

