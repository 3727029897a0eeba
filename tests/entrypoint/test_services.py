"""The clients against fake services speaking the real shapes: EC2 IMDS, Azure, Docker."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path

import pytest

from sidekick import cloud_provider
from sidekick.cloud_provider import CLOUDS, AzureArm, AzureCloud
from sidekick.deadline import Deadline
from sidekick.errors import SidekickError
from sidekick.host.docker import DockerEngine
from sidekick.host.metadata import AzureMetadata, Ec2Metadata, MetadataError
from tests.entrypoint.fakes import (
    CLIENT_ID,
    CLIENT_SECRET,
    SUB,
    TENANT,
    Azure,
    AzureWorld,
    ConnectProxy,
    DockerApi,
    Ec2Imds,
    UserIdentity,
)


# --- EC2 -------------------------------------------------------------------------------
def test_imdsv2_puts_a_token_then_gets_the_hostname_with_it() -> None:
    imds = Ec2Imds()
    with imds.serve() as base:
        assert Ec2Metadata(base).hostname() == imds.hostname
    put, get = imds.seen
    assert (put.method, put.path) == ("PUT", "/latest/api/token")
    assert put.headers["x-aws-ec2-metadata-token-ttl-seconds"] == Ec2Metadata.TOKEN_TTL
    assert (get.method, get.path) == ("GET", "/latest/meta-data/hostname")
    assert get.headers["x-aws-ec2-metadata-token"] == Ec2Imds.TOKEN


def test_imds_without_token_api_falls_back_to_v1() -> None:
    imds = Ec2Imds(mode="v1")
    with imds.serve() as base:
        assert Ec2Metadata(base).hostname() == imds.hostname
    assert "x-aws-ec2-metadata-token" not in imds.seen[-1].headers


def test_imds_switched_off_gives_no_name_and_no_second_request() -> None:
    imds = Ec2Imds(mode="off")
    with imds.serve() as base, pytest.raises(MetadataError, match="IMDSv2 token request answered 403"):
        Ec2Metadata(base).hostname()
    assert [s.method for s in imds.seen] == ["PUT"]


def test_imds_that_hangs_is_abandoned_within_the_budget() -> None:
    imds = Ec2Imds(mode="slow")  # 3 s before each answer
    with imds.serve() as base:
        start = time.monotonic()
        with pytest.raises(MetadataError, match=r"PUT .*/latest/api/token: no complete answer within 0.4s"):
            Ec2Metadata(base, scale=0.2).hostname()  # 0.4 s per request, 0.8 s in all
        assert time.monotonic() - start < 1.5


def test_no_imds_at_all_is_quick() -> None:
    from tests.harness.ports import free_port

    start = time.monotonic()
    with pytest.raises(MetadataError, match="Connection refused"):
        Ec2Metadata(f"http://127.0.0.1:{free_port()}").hostname()
    assert time.monotonic() - start < 1.0


def test_fqdn_lookup_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from sidekick.entrypoint import fqdn

    assert fqdn()  # the machine's own name resolves, or the short name comes back

    def hang(*args: object, **kwargs: object) -> object:
        time.sleep(5)
        raise OSError("resolver gave up")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    start = time.monotonic()
    assert fqdn(timeout=0.3) == socket.gethostname()
    assert time.monotonic() - start < 1.0


def test_token_never_reaches_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from sidekick.log import redact

    with Ec2Imds().serve() as base:
        Ec2Metadata(base).hostname()
    assert redact(f"token {Ec2Imds.TOKEN}") == "token REDACTED"


# --- Azure -----------------------------------------------------------------------------
BASE_CONFIG = {
    "cloud": "AzurePublicCloud", "tenantId": TENANT, "subscriptionId": SUB,
    "aadClientId": CLIENT_ID, "aadClientSecret": CLIENT_SECRET,
    "resourceGroup": "", "location": "", "vmType": "standard",
    "subnetName": "", "securityGroupName": "", "vnetName": "", "vnetResourceGroup": "",
    "primaryAvailabilitySetName": "rke-as", "cloudProviderBackoff": False,
}  # fmt: skip


def write_config(tmp_path: Path, config: dict[str, object], mode: int = 0o600) -> Path:
    path = tmp_path / "cloud-config"
    path.write_text(json.dumps(config))
    os.chmod(path, mode)
    return path


def complete_against(fake: Azure, path: Path) -> bool:
    with fake.serve() as base:

        def arm(cloud: AzureCloud) -> AzureArm:
            return AzureArm(login_url=base, arm_url=base, resource=cloud.arm + "/")

        return cloud_provider.complete(path, imds=AzureMetadata(base), arm_factory=arm)


def test_vm_network_is_completed_from_imds_and_arm(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = Azure()
    path = write_config(tmp_path, BASE_CONFIG, mode=0o640)
    with caplog.at_level(logging.DEBUG, logger="sidekick"):
        assert complete_against(fake, path)
    config = json.loads(path.read_text())
    assert {k: config[k] for k in cloud_provider.FILLED_FIELDS} == {
        "subscriptionId": SUB, "location": "westeurope", "resourceGroup": "rke-nodes",
        "vnetResourceGroup": "rke-net", "vnetName": "rke-vnet", "subnetName": "nodes", "securityGroupName": "rke-nsg",
    }  # fmt: skip
    assert config["useInstanceMetadata"] is True
    assert config["primaryAvailabilitySetName"] == "rke-as" and config["aadClientSecret"] == CLIENT_SECRET
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    imds_req, token_req, vm_req, nic_req = fake.seen
    assert imds_req.headers["metadata"] == "true" and imds_req.query["api-version"] == "2019-08-15"
    assert token_req.path == f"/{TENANT}/oauth2/token"
    assert token_req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert vm_req.path.endswith("/providers/Microsoft.Compute/virtualMachines/node-1")
    assert nic_req.path.endswith("/networkInterfaces/node-1-nic")  # the primary one
    assert all(r.query.get("api-version") for r in (vm_req, nic_req))
    assert CLIENT_SECRET not in caplog.text and Azure.TOKEN not in caplog.text


def test_vmss_instance_found_across_pages(tmp_path: Path) -> None:
    fake = Azure(AzureWorld(scale_set="rke-ss", instance_id="7", extra_instances=3, nsg="ss-nsg"))
    path = write_config(tmp_path, {**BASE_CONFIG, "vmType": "vmss"})
    assert complete_against(fake, path)
    config = json.loads(path.read_text())
    assert (config["subnetName"], config["securityGroupName"], config["vnetName"]) == ("nodes", "ss-nsg", "rke-vnet")
    pages = [r for r in fake.seen if r.path.endswith("/virtualMachineScaleSets/rke-ss/virtualMachines")]
    assert len(pages) == 2
    nic_list = fake.seen[-1]
    assert nic_list.path.endswith("/virtualMachineScaleSets/rke-ss/virtualMachines/7/networkInterfaces")
    assert nic_list.query["api-version"] == "2018-10-01"


def test_user_values_win_and_arm_is_skipped_when_the_network_is_given(tmp_path: Path) -> None:
    given = {**BASE_CONFIG, "vnetResourceGroup": "g", "vnetName": "v", "subnetName": "s", "securityGroupName": "n", "location": "northeurope"}
    fake = Azure()
    path = write_config(tmp_path, given)
    assert complete_against(fake, path)
    config = json.loads(path.read_text())
    assert (config["location"], config["subnetName"], config["resourceGroup"]) == ("northeurope", "s", "rke-nodes")
    assert [r.path for r in fake.seen] == ["/metadata/instance/compute"]


def test_already_complete_config_is_not_rewritten(tmp_path: Path) -> None:
    done = {**BASE_CONFIG, "resourceGroup": "rke-nodes", "location": "westeurope", "vnetResourceGroup": "g",
            "vnetName": "v", "subnetName": "s", "securityGroupName": "n", "useInstanceMetadata": True}  # fmt: skip
    path = write_config(tmp_path, done)
    before = path.stat().st_ino
    assert complete_against(Azure(), path)
    assert path.stat().st_ino == before


@pytest.mark.parametrize(
    ("world", "config_changes", "missing"),
    [
        (AzureWorld(secret="other-secret-value"), {}, "vnetResourceGroup"),  # login refused
        (AzureWorld(nsg=""), {}, "securityGroupName"),  # NSG on the subnet only
        (AzureWorld(), {"aadClientSecret": ""}, "vnetName"),  # no credentials
        (AzureWorld(), {"cloud": "AzureStackCloud"}, "subnetName"),  # unknown cloud
        (AzureWorld(vm_name="ghost"), {}, "subnetName"),  # IMDS names a VM ARM does not know
        (AzureWorld(), {"vmType": "vmss"}, "subnetName"),  # vmss config on a plain VM
    ],
)
def test_missing_values_keep_the_passed_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, world: AzureWorld, config_changes: dict[str, object], missing: str
) -> None:
    fake = Azure(world)
    if world.vm_name == "ghost":
        fake.world.overrides["name"] = "ghost-not-there"
    path = write_config(tmp_path, {**BASE_CONFIG, **config_changes})
    before = path.read_bytes()
    with caplog.at_level(logging.INFO, logger="sidekick"):
        assert not complete_against(fake, path)
    assert path.read_bytes() == before
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and missing in warning[0].fields["missing"]  # type: ignore[attr-defined]
    assert CLIENT_SECRET not in caplog.text and "other-secret-value" not in caplog.text


# --- Azure managed identity (rancher/rke#2413) ----------------------------------------------
IDENTITY_CONFIG = {**BASE_CONFIG, "aadClientId": "", "aadClientSecret": "", "useManagedIdentityExtension": True}
USER_IDENTITY = UserIdentity(
    client_id="5e1f0c9a-0000-4000-8000-000000000004",
    resource_id=f"/subscriptions/{SUB}/resourceGroups/rke-ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/rke-nodes",
)


def test_system_assigned_identity_reads_resource_manager(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = Azure(AzureWorld(system_identity=True))
    path = write_config(tmp_path, IDENTITY_CONFIG)
    with caplog.at_level(logging.DEBUG, logger="sidekick"):
        assert complete_against(fake, path)
    config = json.loads(path.read_text())
    assert (config["vnetName"], config["subnetName"], config["securityGroupName"]) == ("rke-vnet", "nodes", "rke-nsg")
    assert config["useManagedIdentityExtension"] is True and config["aadClientSecret"] == ""
    imds_req, token_req, vm_req, nic_req = fake.seen
    assert imds_req.path == "/metadata/instance/compute"
    assert (token_req.method, token_req.path) == ("GET", "/metadata/identity/oauth2/token")
    assert token_req.headers["metadata"] == "true"
    assert token_req.query == {"api-version": "2018-02-01", "resource": "https://management.azure.com/"}
    assert vm_req.headers["authorization"] == nic_req.headers["authorization"] == f"Bearer {Azure.IDENTITY_TOKEN}"
    assert Azure.IDENTITY_TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("named", "param"),
    [
        (USER_IDENTITY.client_id, "client_id"),
        (USER_IDENTITY.resource_id, "msi_res_id"),
        (USER_IDENTITY.resource_id.upper(), "msi_res_id"),
    ],
    ids=["client-id", "resource-id", "resource-id-upper-case"],
)
def test_user_assigned_identity_is_asked_for_by_what_the_config_names(tmp_path: Path, named: str, param: str) -> None:
    """cloud-provider-azure reads ``userAssignedIdentityID`` as a resource ID when it holds
    ``/subscriptions/`` (any case), else as a client ID; the VM here has two identities."""
    other = UserIdentity("0a0a0a0a-0000-4000-8000-000000000005", "/subscriptions/x/resourceGroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/z")
    fake = Azure(AzureWorld(system_identity=True, user_identities=(other, USER_IDENTITY)))
    path = write_config(tmp_path, {**IDENTITY_CONFIG, "userAssignedIdentityID": named})
    assert complete_against(fake, path)
    token_req = fake.seen[1]
    assert token_req.query[param] == named
    other_param = "msi_res_id" if param == "client_id" else "client_id"
    assert other_param not in token_req.query


@pytest.mark.parametrize(
    ("world", "config_changes", "reason"),
    [
        (AzureWorld(), {}, "Identity not found"),  # no identity on the VM
        (AzureWorld(user_identities=(USER_IDENTITY,)), {"userAssignedIdentityID": "not-this-one"}, "Identity not found"),
        (AzureWorld(user_identities=(USER_IDENTITY, UserIdentity("b", "/subscriptions/b"))), {}, "Multiple user assigned"),
        (AzureWorld(system_identity=True, resource="https://management.usgovcloudapi.net/"), {}, "invalid_resource"),
        (AzureWorld(system_identity=True), {"useManagedIdentityExtension": False}, "(or useManagedIdentityExtension)"),
        (AzureWorld(system_identity=True), {"useManagedIdentityExtension": "true"}, "(or useManagedIdentityExtension)"),
    ],
    ids=["no-identity", "unknown-user-identity", "ambiguous", "wrong-cloud", "off", "string-true"],
)
def test_identity_that_gives_no_token_keeps_the_passed_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, world: AzureWorld, config_changes: dict[str, object], reason: str
) -> None:
    fake = Azure(world)
    path = write_config(tmp_path, {**IDENTITY_CONFIG, **config_changes})
    before = path.read_bytes()
    with caplog.at_level(logging.INFO, logger="sidekick"):
        assert not complete_against(fake, path)
    assert path.read_bytes() == before
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert reason in warning.fields["reason"]  # type: ignore[attr-defined]
    assert not [r for r in fake.seen if r.path.startswith("/subscriptions/")]  # no Resource Manager read


def test_client_secret_stays_first_when_both_are_given(tmp_path: Path) -> None:
    """A config that works today (service principal) keeps working the same way."""
    fake = Azure(AzureWorld(system_identity=True))
    path = write_config(tmp_path, {**BASE_CONFIG, "useManagedIdentityExtension": True})
    assert complete_against(fake, path)
    assert [r.path for r in fake.seen][:2] == ["/metadata/instance/compute", f"/{TENANT}/oauth2/token"]
    assert not [r for r in fake.seen if r.path == "/metadata/identity/oauth2/token"]


@pytest.mark.parametrize(
    ("overrides", "odd"),
    [
        ({"location": "<html><body>"}, "location"),
        ({"resourceGroupName": "group/../../other"}, "resourceGroup"),
        ({"subscriptionId": "not-a-guid"}, "subscriptionId"),
    ],
)
def test_values_azure_would_not_issue_are_not_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, overrides: dict[str, object], odd: str
) -> None:
    fake = Azure(AzureWorld(overrides=overrides))
    given = {**BASE_CONFIG, "subscriptionId": "", "vnetResourceGroup": "g", "vnetName": "v", "subnetName": "s", "securityGroupName": "n"}
    path = write_config(tmp_path, given)
    before = path.read_bytes()
    with caplog.at_level(logging.INFO, logger="sidekick"):
        assert not complete_against(fake, path)
    assert path.read_bytes() == before
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert odd in warning.fields["missing"] and f"values Azure would not issue: {odd}" in warning.fields["reason"]  # type: ignore[attr-defined]


def test_plausible_azure_names() -> None:
    good = {"subscriptionId": SUB, "location": "westeurope", "resourceGroup": "rke_nodes-(prod).eu",
            "vnetResourceGroup": "Ünïcode-group", "vnetName": "rke.vnet-1", "subnetName": "a", "securityGroupName": "n_s-g.1"}  # fmt: skip
    assert cloud_provider.implausible(good) == []
    bad = {"resourceGroup": "trailing.", "vnetName": "a/b", "location": "west europe", "subnetName": "x" * 81}
    assert sorted(cloud_provider.implausible(bad)) == ["location", "resourceGroup", "subnetName", "vnetName"]


def test_login_method() -> None:
    assert cloud_provider.login_method(BASE_CONFIG) == "secret"
    assert cloud_provider.login_method(IDENTITY_CONFIG) == "identity"
    assert cloud_provider.login_method({**BASE_CONFIG, "useManagedIdentityExtension": True}) == "secret"
    assert cloud_provider.login_method({**IDENTITY_CONFIG, "useManagedIdentityExtension": None}) == ""


@pytest.fixture(scope="module")
def azure_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from tests.harness.pki import CertificateAuthority

    ca = CertificateAuthority("azure-test-ca")
    directory = tmp_path_factory.mktemp("azure-tls")
    cert, key = ca.server().write(directory, "server")
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    return cert, key, directory / "ca.pem"


@pytest.mark.parametrize("bypass", [False, True])
def test_azure_ad_and_arm_over_https_through_the_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, azure_tls: tuple[Path, Path, Path], bypass: bool
) -> None:
    """Nodes behind a corporate proxy: HTTPS_PROXY tunnels, NO_PROXY bypasses, IMDS never proxied."""
    cert, key, ca = azure_tls
    for name in ("NO_PROXY", "no_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    proxy, fake = ConnectProxy(), Azure()
    path = write_config(tmp_path, BASE_CONFIG)
    with fake.serve() as imds_base, fake.serve(tls=(cert, key)) as tls_base, proxy.serve() as proxy_url:
        monkeypatch.setenv("HTTPS_PROXY", proxy_url.replace("http://", "http://ops:pr0xy-pass@"))
        if bypass:
            monkeypatch.setenv("NO_PROXY", "localhost")

        def arm(cloud: AzureCloud) -> AzureArm:
            return AzureArm(login_url=tls_base, arm_url=tls_base, resource=cloud.arm + "/")

        assert cloud_provider.complete(path, imds=AzureMetadata(imds_base), arm_factory=arm)
    assert json.loads(path.read_text())["securityGroupName"] == "rke-nsg"
    port = tls_base.rsplit(":", 1)[1]
    if bypass:
        assert proxy.tunnels == []
    else:
        assert proxy.tunnels == [f"localhost:{port}"] * 3  # token, VM, NIC; IMDS went direct
        assert set(proxy.auth) == {"Basic b3BzOnByMHh5LXBhc3M="}  # ops:pr0xy-pass
        from sidekick.log import redact

        assert redact("via pr0xy-pass") == "via REDACTED"


def test_proxy_that_drips_its_connect_answer_is_cut_off_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch, azure_tls: tuple[Path, Path, Path]
) -> None:
    """The proxy's answer to CONNECT is read through the same deadline as the answer proper."""
    cert, key, ca = azure_tls
    for name in ("NO_PROXY", "no_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    proxy = ConnectProxy(drip=0.5)
    with Azure().serve(tls=(cert, key)) as tls_base, proxy.serve() as proxy_url:
        monkeypatch.setenv("HTTPS_PROXY", proxy_url)
        arm = AzureArm(login_url=tls_base, arm_url=tls_base, resource="https://management.azure.com/", scale=0.1)
        start = time.monotonic()
        with pytest.raises(MetadataError, match=r"POST localhost:\d+/.*/oauth2/token: no complete answer within 1s"):
            arm.login(tenant=TENANT, client_id=CLIENT_ID, secret=CLIENT_SECRET, lookup=Deadline(6, what="the test"))
        assert time.monotonic() - start < 3
    assert len(proxy.tunnels) == 1


def test_tls_peer_that_never_finishes_the_handshake_is_cut_off_at_the_deadline() -> None:
    from tests.harness.faults import BlackHole

    hole = BlackHole()
    try:
        arm = AzureArm(login_url=f"https://{hole.endpoint}", arm_url=f"https://{hole.endpoint}",
                       resource="https://management.azure.com/", scale=0.1)  # fmt: skip
        start = time.monotonic()
        with pytest.raises(MetadataError, match=r"no complete answer within 1s"):
            arm.login(tenant=TENANT, client_id=CLIENT_ID, secret=CLIENT_SECRET, lookup=Deadline(6, what="the test"))
        assert time.monotonic() - start < 3
    finally:
        hole.close()


def test_unreadable_or_non_object_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SidekickError, match="does not exist"):
        cloud_provider.complete(tmp_path / "absent")
    path = tmp_path / "cloud-config"
    path.write_text("[1, 2]")
    with pytest.raises(SidekickError, match="not a JSON object"):
        cloud_provider.complete(path)
    path.write_text("{broken")
    with pytest.raises(SidekickError, match="cannot read"):
        cloud_provider.complete(path)


@pytest.mark.parametrize(
    ("name", "login", "arm"),
    [
        ("", "https://login.microsoftonline.com", "https://management.azure.com"),
        ("AzurePublicCloud", "https://login.microsoftonline.com", "https://management.azure.com"),
        ("AzureUSGovernmentCloud", "https://login.microsoftonline.us", "https://management.usgovcloudapi.net"),
        ("AzureUSGovernment", "https://login.microsoftonline.us", "https://management.usgovcloudapi.net"),
        ("azurechinacloud", "https://login.chinacloudapi.cn", "https://management.chinacloudapi.cn"),
        ("AzureGermanCloud", "https://login.microsoftonline.de", "https://management.microsoftazure.de"),
    ],
)
def test_cloud_endpoints(name: str, login: str, arm: str) -> None:
    cloud = cloud_provider.cloud_for(name)
    assert cloud is not None and (cloud.login, cloud.arm) == (login, arm)


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_token_is_asked_for_the_clouds_resource_manager(tmp_path: Path, cloud: str) -> None:
    fake = Azure(AzureWorld(resource=CLOUDS[cloud].arm + "/"))
    path = write_config(tmp_path, {**BASE_CONFIG, "cloud": cloud})
    assert complete_against(fake, path)
    token = next(r for r in fake.seen if r.path.endswith("/oauth2/token"))
    assert f"resource={CLOUDS[cloud].arm.replace(':', '%3A').replace('/', '%2F')}%2F" in token.body.decode()


def test_resource_id_and_nic_parsing() -> None:
    parts = cloud_provider.parse_resource_id("/subscriptions/s/resourceGroups/G/providers/Microsoft.Network/virtualNetworks/v/subnets/n")
    assert (parts["resourcegroups"], parts["virtualnetworks"], parts["subnets"]) == ("G", "v", "n")
    assert cloud_provider.network_from_nic({"properties": {}}) == {}
    assert cloud_provider.primary([]) is None
    assert cloud_provider.primary([{"id": "a"}, {"id": "b", "properties": {"primary": True}}]) == {"id": "b", "properties": {"primary": True}}
    assert cloud_provider.text({"a": "null", "b": None, "c": " x "}, "a") == ""
    assert cloud_provider.text({"c": " x "}, "c") == "x"


def test_merge_reports_every_missing_value() -> None:
    merged, missing = cloud_provider.merge({"subscriptionId": "null"}, {"location": "l"})
    assert merged is None
    assert missing == ["subscriptionId", "resourceGroup", "vnetResourceGroup", "vnetName", "subnetName", "securityGroupName"]


def test_cloud_provider_tool_usage() -> None:
    from sidekick.errors import UsageError

    with pytest.raises(UsageError):
        cloud_provider.main(["kubelet", "extra"])


# --- Docker ----------------------------------------------------------------------------
def test_docker_info_over_the_unix_socket(tmp_path: Path) -> None:
    api = DockerApi(cgroup_driver="systemd", cgroup_version="2", root_dir="/data/docker", selinux=True)
    with api.serve_unix(tmp_path / "docker.sock") as sock:
        info = DockerEngine(sock).info()
    assert (info.cgroup_driver, info.cgroup_version, info.root_dir) == ("systemd", "2", "/data/docker")
    assert "name=selinux" in info.security_options
    assert api.seen[0].path == "/info" and api.seen[0].headers["host"] == "docker"


def test_old_engine_without_cgroup_version(tmp_path: Path) -> None:
    with DockerApi(cgroup_version=None).serve_unix(tmp_path / "docker.sock") as sock:
        assert DockerEngine(sock).info().cgroup_version == ""


def test_docker_unreachable_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SidekickError, match=r"cannot reach the Docker engine at .*docker.sock"):
        DockerEngine(tmp_path / "docker.sock", timeout=1).info()
