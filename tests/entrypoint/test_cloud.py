"""The Azure completion through the real executables, as RKE starts them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SIDEKICK, last_line, run_sidekick
from tests.entrypoint import standins
from tests.entrypoint.fakes import CLIENT_SECRET, Azure, AzureWorld
from tests.entrypoint.test_services import BASE_CONFIG

pytestmark = pytest.mark.integration


def node_root(tmp_path: Path, config: dict[str, object]) -> Path:
    root = tmp_path / "root"
    (root / "etc/kubernetes").mkdir(parents=True)
    path = root / "etc/kubernetes/cloud-config"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return root


def azure_env(base: str) -> dict[str, str]:
    return {"SIDEKICK_AZURE_METADATA_URL": base, "SIDEKICK_AZURE_LOGIN_URL": base, "SIDEKICK_AZURE_ARM_URL": base}


@pytest.mark.parametrize("component", ["kube-apiserver", "kube-controller-manager"])
def test_control_plane_with_azure_gets_a_completed_config(tmp_path: Path, component: str) -> None:
    root = node_root(tmp_path, BASE_CONFIG)
    log = tmp_path / "log"
    standins.install(tmp_path / "bin" / component, standins.TOOL)
    args = ["--cloud-config=/etc/kubernetes/cloud-config", "--v=2", "--cloud-provider=azure"]
    fake = Azure()
    with fake.serve() as base:
        env = {**azure_env(base), "STANDIN_LOG": str(log), "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "SIDEKICK_DEBUG": "1"}
        result = run_sidekick(["entrypoint.sh", component, *args], root=root, env=env)
    assert result.returncode == 0, result.stderr
    assert standins.read_log(log)[0]["argv"] == args
    config = json.loads((root / "etc/kubernetes/cloud-config").read_text())
    assert (config["subnetName"], config["vnetName"], config["useInstanceMetadata"]) == ("nodes", "rke-vnet", True)
    assert stat.S_IMODE((root / "etc/kubernetes/cloud-config").stat().st_mode) == 0o600
    assert CLIENT_SECRET not in result.stderr and Azure.TOKEN not in result.stderr
    assert "cloud-config completed" in result.stderr


def test_scheduler_with_azure_flag_does_not_touch_the_config(tmp_path: Path) -> None:
    root = node_root(tmp_path, BASE_CONFIG)
    before = (root / "etc/kubernetes/cloud-config").read_bytes()
    log = tmp_path / "log"
    standins.install(tmp_path / "bin/kube-scheduler", standins.TOOL)
    env = {**azure_env("http://127.0.0.1:9"), "STANDIN_LOG": str(log), "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    result = run_sidekick(["entrypoint.sh", "kube-scheduler", "--cloud-provider=azure"], root=root, env=env)
    assert result.returncode == 0, result.stderr
    assert standins.read_log(log)[0]["argv"] == ["--cloud-provider=azure"]
    assert (root / "etc/kubernetes/cloud-config").read_bytes() == before


def test_failed_completion_is_a_warning_and_the_component_still_starts(tmp_path: Path) -> None:
    root = node_root(tmp_path, BASE_CONFIG)
    before = (root / "etc/kubernetes/cloud-config").read_bytes()
    fake = Azure(AzureWorld(secret="rotated-secret-value"))
    with fake.serve() as base:
        result = run_sidekick(["entrypoint.sh", "kube-apiserver", "--cloud-provider=azure"], root=root,
                              env={**azure_env(base), "PATH": f"{tmp_path}:{os.environ['PATH']}"})  # fmt: skip
    assert result.returncode == 127  # no kube-apiserver here: it got as far as the exec
    assert "keeping the passed cloud-config" in result.stderr and "401" in result.stderr
    assert (root / "etc/kubernetes/cloud-config").read_bytes() == before
    assert CLIENT_SECRET not in result.stderr


def test_cloud_provider_sh_run_directly(tmp_path: Path, tool_link) -> None:  # type: ignore[no-untyped-def]
    root = node_root(tmp_path, BASE_CONFIG)
    link = tool_link("cloud-provider.sh")
    fake = Azure()
    with fake.serve() as base:
        done = run_sidekick([], root=root, env=azure_env(base), argv0=link)
    assert done.returncode == 0, done.stderr
    assert json.loads((root / "etc/kubernetes/cloud-config").read_text())["securityGroupName"] == "rke-nsg"

    kept = node_root(tmp_path / "second", {**BASE_CONFIG, "aadClientSecret": ""})
    with Azure().serve() as base:
        failed = run_sidekick(["set_azure_config"], root=kept, env=azure_env(base), argv0=link)
    assert failed.returncode == 1
    assert "kept the passed cloud-config" in last_line(failed.stderr)

    missing = run_sidekick(["cloud-provider.sh"], root=tmp_path / "nowhere")
    assert missing.returncode == 1 and "does not exist" in last_line(missing.stderr)
    usage = subprocess.run([str(SIDEKICK), "cloud-provider.sh", "a", "b"], capture_output=True, text=True, check=False)
    assert usage.returncode == 2
