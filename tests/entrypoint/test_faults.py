"""Metadata services that misbehave: drips, huge answers, error pages; settings that bound nothing.

The real ``entrypoint.sh`` against the fakes of :mod:`tests.entrypoint.fakes` on loopback, as
a node meets these faults: the component must start, within the lookup's budget, with the
fallback the original used when there was no metadata (the FQDN; the passed cloud-config)
and one line that says why. Time bounds here are the budgets plus a generous margin for
start-up, not performance figures (those are in ``bench/metadata_faults.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidekick.entrypoint import fqdn
from tests.conftest import SIDEKICK, last_line, run_sidekick
from tests.entrypoint import standins
from tests.entrypoint.fakes import HTML_PAGE, SUB, TENANT, Azure, AzureWorld, Ec2Imds, Misbehave
from tests.entrypoint.test_services import BASE_CONFIG
from tests.harness.env import clean_env

pytestmark = pytest.mark.integration

DRIP = Misbehave(drip=0.5)  # one byte every 0.5 s, as in issue 14
HUGE = 200 * 1024 * 1024
MARGIN = 6.0  # interpreter start, the iptables step, the FQDN lookup, a busy machine
VM_PATH = (
    f"/subscriptions/{SUB}/resourceGroups/{AzureWorld().vm_group}/providers/Microsoft.Compute"
    f"/virtualMachines/{AzureWorld().vm_name}"
)


@dataclass
class Run:
    code: int
    stderr: str
    seconds: float
    peak_mb: float  # the kernel's high-water mark of the process's resident memory


# A small interpreter forks and execs the tool and reports the child's ``ru_maxrss``: the child
# of a large process (pytest, after hundreds of tests) would count the parent's pages it
# shared until its exec, and measure pytest rather than the tool.
_REAPER = ("import os, sys\n"
           "pid = os.fork()\n"
           "if pid == 0:\n"
           "    os.execv(sys.argv[1], sys.argv[1:])\n"
           "_, status, usage = os.wait4(pid, 0)\n"
           "print(usage.ru_maxrss)\n"
           "sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)\n")


def run_measured(argv: list[str], env: dict[str, str], tmp_path: Path) -> Run:
    """Run to the end; the peak RSS is the tool's own (see :data:`_REAPER`)."""
    err_path = tmp_path / "stderr"
    started = time.monotonic()
    with err_path.open("w") as err:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _REAPER, *argv], env=env, stdout=subprocess.PIPE,
                              stderr=err, text=True, check=False)
    peak_kib = int(done.stdout.strip().splitlines()[-1])
    return Run(done.returncode, err_path.read_text(), time.monotonic() - started, peak_kib / 1024)


def components(tmp_path: Path) -> tuple[Path, Path]:
    """Stand-ins for kube-proxy, kube-apiserver and update-alternatives; the log they write."""
    log = tmp_path / "standin.log"
    for name in ("kube-proxy", "kube-apiserver", "update-alternatives"):
        standins.install(tmp_path / "bin" / name, standins.TOOL)
    return tmp_path / "bin", log


def started_argv(log: Path, name: str) -> list[str]:
    runs = [r for r in standins.read_log(log) if r["name"] == name]
    assert len(runs) == 1, runs
    return list(runs[0]["argv"])  # type: ignore[call-overload]


# --- EC2: kube-proxy without --hostname-override ---------------------------------------------
def kube_proxy(tmp_path: Path, imds_url: str, **extra: str) -> tuple[Run, list[str]]:
    bin_dir, log = components(tmp_path)
    env = clean_env(SIDEKICK_ROOT=str(tmp_path), SIDEKICK_AWS_METADATA_URL=imds_url, STANDIN_LOG=str(log),
                    PATH=f"{bin_dir}:{os.environ['PATH']}", **extra)  # fmt: skip
    run = run_measured([str(SIDEKICK), "entrypoint.sh", "kube-proxy", "--cluster-cidr=10.42.0.0/16"], env, tmp_path)
    assert run.code == 0, run.stderr
    return run, started_argv(log, "kube-proxy")


@pytest.mark.parametrize(
    ("path", "request_line"),
    [("/latest/api/token", "PUT"), ("/latest/meta-data/hostname", "GET")],
    ids=["token", "hostname"],
)
def test_dripping_ec2_metadata_ends_within_the_budget_with_the_fqdn(tmp_path: Path, path: str, request_line: str) -> None:
    imds = Ec2Imds()
    imds.faults[path] = DRIP
    with imds.serve() as base:
        run, argv = kube_proxy(tmp_path, base)  # default budgets: 2 s a request, 4 s in all
    assert argv == ["--cluster-cidr=10.42.0.0/16", f"--hostname-override={fqdn()}"]
    assert run.seconds < 4 + MARGIN
    warning = next(line for line in run.stderr.splitlines() if "no host name from EC2 metadata" in line)
    assert f"{request_line} 127.0.0.1:" in warning and f"{path}: no complete answer within 2s" in warning


def test_html_page_from_ec2_metadata_is_not_a_host_name(tmp_path: Path) -> None:
    imds = Ec2Imds()
    imds.faults["/latest/meta-data/hostname"] = Misbehave(page=HTML_PAGE)
    with imds.serve() as base:
        run, argv = kube_proxy(tmp_path, base)
    assert argv == ["--cluster-cidr=10.42.0.0/16", f"--hostname-override={fqdn()}"]
    assert "not an RFC 1123 host name, using the FQDN" in run.stderr
    assert "answer=\"<html>" in run.stderr  # what was refused, shortened, in the warning only


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "until-close"])
def test_huge_ec2_answer_is_cut_at_the_cap(tmp_path: Path, declare_length: bool) -> None:
    imds = Ec2Imds()
    imds.faults["/latest/meta-data/hostname"] = Misbehave(size=HUGE, declare_length=declare_length)
    with imds.serve() as base:
        run, argv = kube_proxy(tmp_path, base)
    assert argv == ["--cluster-cidr=10.42.0.0/16", f"--hostname-override={fqdn()}"]
    assert "over the 65536-byte cap" in run.stderr
    assert imds.streamed == []  # the fake never got to send all 200 MB
    assert run.peak_mb < 100, f"peak RSS {run.peak_mb:.0f} MB"  # before: 607 MB


def test_bad_budget_scale_stops_before_any_step(tmp_path: Path) -> None:
    for value in ("nan", "inf", "-1"):
        bin_dir, log = components(tmp_path)
        env = clean_env(SIDEKICK_ROOT=str(tmp_path), STANDIN_LOG=str(log), SIDEKICK_BUDGET_SCALE=value,
                        PATH=f"{bin_dir}:{os.environ['PATH']}")  # fmt: skip
        run = run_measured([str(SIDEKICK), "entrypoint.sh", "kube-proxy", "--hostname-override=n"], env, tmp_path)
        assert run.code == 2
        assert "level=fatal" in last_line(run.stderr) and "SIDEKICK_BUDGET_SCALE must be a number" in last_line(run.stderr)
        assert standins.read_log(log) == []  # neither update-alternatives nor kube-proxy ran


# --- Azure: kube-apiserver with --cloud-provider=azure -----------------------------------------
def kube_apiserver(tmp_path: Path, base: str, config: dict[str, object], **extra: str) -> tuple[Run, dict[str, object]]:
    bin_dir, log = components(tmp_path)
    (tmp_path / "etc/kubernetes").mkdir(parents=True)
    path = tmp_path / "etc/kubernetes/cloud-config"
    path.write_text(json.dumps(config))
    env = clean_env(SIDEKICK_ROOT=str(tmp_path), STANDIN_LOG=str(log), PATH=f"{bin_dir}:{os.environ['PATH']}",
                    SIDEKICK_AZURE_METADATA_URL=base, SIDEKICK_AZURE_LOGIN_URL=base, SIDEKICK_AZURE_ARM_URL=base,
                    **extra)  # fmt: skip
    args = ["--cloud-provider=azure", "--cloud-config=/etc/kubernetes/cloud-config"]
    run = run_measured([str(SIDEKICK), "entrypoint.sh", "kube-apiserver", *args], env, tmp_path)
    assert run.code == 0, run.stderr
    assert started_argv(log, "kube-apiserver") == args
    return run, json.loads(path.read_text())


@pytest.mark.parametrize(
    ("path", "budget"),
    [
        ("/metadata/instance/compute", 1.0),  # 5 s a request, scaled by 0.2
        (f"/{TENANT}/oauth2/token", 2.0),  # 10 s
        (VM_PATH, 2.0),  # 10 s, the first Resource Manager read
    ],
    ids=["imds", "login", "arm"],
)
def test_dripping_azure_ends_within_the_budget_with_the_passed_config(tmp_path: Path, path: str, budget: float) -> None:
    fake = Azure()
    fake.faults[path] = DRIP
    with fake.serve() as base:
        run, config = kube_apiserver(tmp_path, base, BASE_CONFIG, SIDEKICK_BUDGET_SCALE="0.2")
    assert config == BASE_CONFIG
    assert run.seconds < budget * 3 + MARGIN  # at most three requests before the dripping one
    warning = next(line for line in run.stderr.splitlines() if "keeping the passed cloud-config" in line)
    assert f"{path}: no complete answer within {budget:g}s" in warning


def test_huge_azure_answer_without_length_is_cut_at_the_cap(tmp_path: Path) -> None:
    fake = Azure()
    fake.faults["/metadata/instance/compute"] = Misbehave(size=HUGE, declare_length=False)
    with fake.serve() as base:
        run, config = kube_apiserver(tmp_path, base, BASE_CONFIG)
    assert config == BASE_CONFIG
    assert "the answer is over the 1048576-byte cap" in run.stderr
    assert fake.streamed == []
    assert run.peak_mb < 100, f"peak RSS {run.peak_mb:.0f} MB"


def test_html_page_from_azure_metadata_keeps_the_passed_config(tmp_path: Path) -> None:
    fake = Azure()
    fake.faults["/metadata/instance/compute"] = Misbehave(page=HTML_PAGE)
    with fake.serve() as base:
        run, config = kube_apiserver(tmp_path, base, BASE_CONFIG)
    assert config == BASE_CONFIG
    assert "Azure instance metadata answered 200 with a body that is not JSON" in run.stderr


def test_managed_identity_through_the_real_executable(tmp_path: Path) -> None:
    fake = Azure(AzureWorld(system_identity=True))
    config = {**BASE_CONFIG, "aadClientId": "", "aadClientSecret": "", "useManagedIdentityExtension": True}
    with fake.serve() as base:
        run, completed = kube_apiserver(tmp_path, base, config)
    assert (completed["subnetName"], completed["securityGroupName"]) == ("nodes", "rke-nsg")
    assert "reading Resource Manager as the VM's managed identity" in run.stderr
    assert Azure.IDENTITY_TOKEN not in run.stderr
    assert [r.path for r in fake.seen][:2] == ["/metadata/instance/compute", "/metadata/identity/oauth2/token"]


# --- kubelet: cri-dockerd's ready timeout -------------------------------------------------------
@pytest.mark.parametrize("value", ["inf", "nan", "-5", "1e400"])
def test_cri_dockerd_ready_timeout_that_bounds_nothing_is_refused(tmp_path: Path, value: str) -> None:
    log = tmp_path / "standin.log"
    standins.install(tmp_path / "bin/kubelet", standins.KUBELET)
    standins.install(tmp_path / "bin/update-alternatives", standins.TOOL)
    env = {"SIDEKICK_CRIDOCKERD_READY_TIMEOUT": value, "RKE_KUBELET_CRIDOCKERD": "true", "STANDIN_LOG": str(log),
           "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}  # fmt: skip
    result = run_sidekick(["entrypoint.sh", "kubelet", "--hostname-override=n", "--v=2"], root=tmp_path / "root", env=env)
    assert result.returncode == 2
    assert last_line(result.stderr).startswith("time=") and "level=fatal" in last_line(result.stderr)
    assert f"SIDEKICK_CRIDOCKERD_READY_TIMEOUT must be a number from 0 to 3600 (got '{value}')" in last_line(result.stderr)
    assert "Traceback" not in result.stderr
    assert standins.read_log(log) == []
