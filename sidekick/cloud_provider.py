"""Complete the Azure cloud-config from instance metadata and Resource Manager.

The original ``cloud-provider.sh`` defined ``set_azure_config`` for ``entrypoint.sh`` to
source: it read ``/etc/kubernetes/cloud-config`` (JSON), filled the subscription, location,
resource group, vnet, vnet resource group, subnet and security group that the user left out
(from Azure's instance metadata and, through the ``az`` CLI, from the VM's or scale-set
instance's network interface) and wrote the file back with ``useInstanceMetadata=true``.
When any value stayed empty it kept the passed file and said so. This does the same with
plain HTTPS calls:

* instance metadata: ``GET /metadata/instance/compute`` with ``Metadata: true`` and
  ``api-version=2019-08-15`` (where the VM lives: subscription, resource group, name, scale set);
* a token for the configured ``cloud``'s Resource Manager: OAuth2 client credentials
  (``aadClientId``/``aadClientSecret``/``tenantId``) at that cloud's Azure AD, as the original
  did; or, when those are not all given and the config sets ``useManagedIdentityExtension``,
  the VM's managed identity from instance metadata (``/metadata/identity/oauth2/token``), the
  user-assigned one when ``userAssignedIdentityID`` names it (rancher/rke#2413; the original
  never had this). The client secret stays first so a config that works today works the same;
  cloud-provider-azure itself prefers the identity when both are set;
* Resource Manager: the VM (or the scale-set instance's network interfaces), then the NIC,
  whose subnet ID names the vnet, its resource group and the subnet, and whose security group
  ID names the NSG.

Differences, on purpose: values that are ``null`` count as missing (the original's ``jq -r``
turned them into the string "null" and wrote that back); a found value that is not a plausible
Azure name (a GUID subscription, a resource group of word characters, ``.-()``, ...) counts as
missing too, so an error page never lands in the file; the VM is looked up where instance
metadata says it is; the subscription falls back to instance metadata; the file is replaced
atomically with its mode and owner kept, and only when something changed; the client secret
and the tokens are registered as secrets, so no log line can carry them.

Bounds: the whole completion has :data:`TOTAL_SECONDS`; each request its own deadline for all
of it and a cap on its answer (:mod:`sidekick.host.metadata`); a scale set's instances are
read page by page only until the VM is found (at most ``AzureArm.MAX_PAGES`` pages).
``SIDEKICK_BUDGET_SCALE`` multiplies every time bound.

Azure AD and Resource Manager are reached through ``HTTPS_PROXY`` (CONNECT, with basic
credentials from the URL) unless ``NO_PROXY`` covers them, as the ``az`` CLI did; instance
metadata never goes through a proxy.

Run directly, ``cloud-provider.sh [set_azure_config]`` completes the file once and exits 0,
or 1 with the reason when it kept the passed config.

Environment for tests: ``SIDEKICK_AZURE_METADATA_URL`` (default ``http://169.254.169.254``),
``SIDEKICK_AZURE_LOGIN_URL`` and ``SIDEKICK_AZURE_ARM_URL`` (default: the cloud's own Azure AD
and Resource Manager endpoints) move the services; the token is still requested for the
configured cloud's Resource Manager.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sidekick.deadline import Deadline
from sidekick.errors import SidekickError, UsageError
from sidekick.host.files import atomic_write
from sidekick.host.metadata import (
    AZURE_METADATA_ENV,
    AZURE_METADATA_URL,
    AzureArm,
    AzureMetadata,
    MetadataError,
    service_url,
)
from sidekick.log import kv, register_secret
from sidekick.paths import host_path
from sidekick.settings import budget_scale

log = logging.getLogger(__name__)

CONFIG_PATH = "/etc/kubernetes/cloud-config"
LOGIN_ENV = "SIDEKICK_AZURE_LOGIN_URL"
ARM_ENV = "SIDEKICK_AZURE_ARM_URL"
TOTAL_SECONDS = 60.0
COMPUTE_API = "2022-08-01"
NETWORK_API = "2022-07-01"
VMSS_NIC_API = "2018-10-01"  # the scale-set NIC views live in Microsoft.Compute at this version
USAGE = "usage: cloud-provider.sh [set_azure_config]"

NETWORK_FIELDS = ("vnetResourceGroup", "vnetName", "subnetName", "securityGroupName")
FILLED_FIELDS = ("subscriptionId", "location", "resourceGroup", *NETWORK_FIELDS)
SECRET_FIELDS = ("aadClientId", "aadClientSecret", "tenantId")

# What Azure allows in each filled value (its naming rules, a little lenient on lengths).
_GROUP = re.compile(r"[-\w.()]{0,89}[-\w()]")  # 1-90, no trailing period
_NAME = re.compile(r"[-\w.]{1,80}")
PLAUSIBLE = {
    "subscriptionId": re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
    "location": re.compile(r"[A-Za-z0-9]{1,64}"),
    "resourceGroup": _GROUP,
    "vnetResourceGroup": _GROUP,
    "vnetName": _NAME,
    "subnetName": _NAME,
    "securityGroupName": _NAME,
}


@dataclass(frozen=True)
class AzureCloud:
    name: str
    login: str  # Azure AD authority
    arm: str  # Resource Manager endpoint (also the token's resource)


CLOUDS = {
    "AzureCloud": AzureCloud("AzureCloud", "https://login.microsoftonline.com", "https://management.azure.com"),
    "AzureUSGovernmentCloud": AzureCloud(
        "AzureUSGovernmentCloud", "https://login.microsoftonline.us", "https://management.usgovcloudapi.net"
    ),
    "AzureChinaCloud": AzureCloud("AzureChinaCloud", "https://login.chinacloudapi.cn", "https://management.chinacloudapi.cn"),
    "AzureGermanCloud": AzureCloud("AzureGermanCloud", "https://login.microsoftonline.de", "https://management.microsoftazure.de"),
}
# The names users write: the az CLI's and the Kubernetes cloud provider's spellings.
_ALIASES = {
    "azurecloud": "AzureCloud",
    "azurepubliccloud": "AzureCloud",
    "azureusgovernmentcloud": "AzureUSGovernmentCloud",
    "azureusgovernment": "AzureUSGovernmentCloud",
    "azurechinacloud": "AzureChinaCloud",
    "azuregermancloud": "AzureGermanCloud",
}


# --- decisions -----------------------------------------------------------------------
def text(config: Mapping[str, object], key: str) -> str:
    """A config value as text; absent, null, empty and non-text all count as missing."""
    value = config.get(key)
    if isinstance(value, str) and value.strip() and value.strip() != "null":
        return value.strip()
    return ""


def cloud_for(name: str) -> AzureCloud | None:
    """The endpoints of the named cloud (empty means the public cloud), None if unknown."""
    if not name:
        return CLOUDS["AzureCloud"]
    key = _ALIASES.get(name.lower())
    return CLOUDS[key] if key else None


def parse_resource_id(resource_id: str) -> dict[str, str]:
    """``/subscriptions/s/resourceGroups/g/providers/P/virtualNetworks/v/subnets/n`` ->
    ``{"subscriptions": "s", "resourcegroups": "g", "virtualnetworks": "v", "subnets": "n", ...}``."""
    parts = [p for p in resource_id.split("/") if p]
    return {parts[i].lower(): parts[i + 1] for i in range(0, len(parts) - 1, 2)}


def _props(item: object) -> Mapping[str, object]:
    if isinstance(item, Mapping):
        props = item.get("properties")
        if isinstance(props, Mapping):
            return props
    return {}


def primary(items: object) -> Mapping[str, object] | None:
    """The item flagged ``properties.primary`` (Azure's way), else the first one."""
    if not isinstance(items, list) or not items:
        return None
    for item in items:
        if isinstance(item, Mapping) and _props(item).get("primary") is True:
            return item
    first = items[0]
    return first if isinstance(first, Mapping) else None


def network_from_nic(nic: Mapping[str, object]) -> dict[str, str]:
    """The vnet, its resource group, the subnet and the NSG named by a network interface."""
    found: dict[str, str] = {}
    ipconfig = primary(_props(nic).get("ipConfigurations"))
    subnet = _props(ipconfig).get("subnet") if ipconfig else None
    subnet_id = subnet.get("id") if isinstance(subnet, Mapping) else None
    if isinstance(subnet_id, str):
        parts = parse_resource_id(subnet_id)
        found["vnetResourceGroup"] = parts.get("resourcegroups", "")
        found["vnetName"] = parts.get("virtualnetworks", "")
        found["subnetName"] = parts.get("subnets", "")
    nsg = _props(nic).get("networkSecurityGroup")
    nsg_id = nsg.get("id") if isinstance(nsg, Mapping) else None
    if isinstance(nsg_id, str):
        found["securityGroupName"] = parse_resource_id(nsg_id).get("networksecuritygroups", "")
    return {k: v for k, v in found.items() if v}


def implausible(found: Mapping[str, str]) -> list[str]:
    """The keys of found values that Azure would not have issued."""
    return [key for key, value in found.items() if key in PLAUSIBLE and not PLAUSIBLE[key].fullmatch(value)]


def login_method(config: Mapping[str, object]) -> str:
    """How to get a Resource Manager token: ``secret`` when the service principal is complete
    (as the original did), else ``identity`` when the config turns the managed identity on,
    else "" (no way)."""
    if all(text(config, key) for key in SECRET_FIELDS):
        return "secret"
    if config.get("useManagedIdentityExtension") is True:
        return "identity"
    return ""


def merge(config: Mapping[str, object], found: Mapping[str, str]) -> tuple[dict[str, object] | None, list[str]]:
    """The completed config, or None and the names of the values still missing.

    Values the user set win; found values fill the gaps; ``useInstanceMetadata`` is turned on.
    """
    values = {key: text(config, key) or found.get(key, "") for key in FILLED_FIELDS}
    missing = [key for key, value in values.items() if not value]
    if missing:
        return None, missing
    completed = dict(config)
    completed.update(values)
    completed["useInstanceMetadata"] = True
    return completed, []


def _path(*segments: str) -> str:
    return "".join("/" + urllib.parse.quote(s, safe="") for s in segments)


# --- the flow ------------------------------------------------------------------------
ArmFactory = Callable[[AzureCloud], AzureArm]


def arm_for(scale: float) -> ArmFactory:
    """Resource Manager of a cloud at its own endpoints (or the test settings')."""

    def make(cloud: AzureCloud) -> AzureArm:
        return AzureArm(
            login_url=service_url(os.environ.get(LOGIN_ENV, ""), cloud.login, name=LOGIN_ENV),
            arm_url=service_url(os.environ.get(ARM_ENV, ""), cloud.arm, name=ARM_ENV),
            resource=cloud.arm + "/",
            scale=scale,
        )

    return make


def _vm_nic(arm: AzureArm, sub: str, group: str, name: str, lookup: Deadline) -> Mapping[str, object]:
    vm = arm.get(
        _path("subscriptions", sub, "resourceGroups", group, "providers", "Microsoft.Compute", "virtualMachines", name),
        api_version=COMPUTE_API,
        lookup=lookup,
    )
    profile = _props(vm).get("networkProfile")
    ref = primary(profile.get("networkInterfaces") if isinstance(profile, Mapping) else None)
    nic_id = ref.get("id") if ref else None
    if not isinstance(nic_id, str):
        raise MetadataError(f"virtual machine {name} lists no network interface")
    return arm.get(nic_id, api_version=NETWORK_API, lookup=lookup)


def _vmss_nic(arm: AzureArm, sub: str, group: str, scale_set: str, name: str, lookup: Deadline) -> Mapping[str, object]:
    base = _path(
        "subscriptions", sub, "resourceGroups", group, "providers", "Microsoft.Compute",
        "virtualMachineScaleSets", scale_set, "virtualMachines",
    )  # fmt: skip
    instances = arm.items(base, api_version=COMPUTE_API, lookup=lookup)
    instance_id = next((str(i["instanceId"]) for i in instances if i.get("name") == name and i.get("instanceId") is not None), None)
    if instance_id is None:
        raise MetadataError(f"scale set {scale_set} has no instance named {name}")
    nics = arm.items(f"{base}{_path(instance_id, 'networkInterfaces')}", api_version=VMSS_NIC_API, lookup=lookup)
    nic = primary(list(nics))
    if nic is None:
        raise MetadataError(f"scale set instance {name} has no network interface")
    return nic


def discover(
    config: Mapping[str, object], *, imds: AzureMetadata, arm_factory: ArmFactory, lookup: Deadline
) -> dict[str, str]:
    """Values for the config's gaps; Resource Manager is asked only when a network value is missing."""
    compute = imds.compute(lookup)
    found = {
        "subscriptionId": str(compute.get("subscriptionId") or ""),
        "location": str(compute.get("location") or ""),
        "resourceGroup": str(compute.get("resourceGroupName") or ""),
    }
    if all(text(config, key) for key in NETWORK_FIELDS):
        return {k: v for k, v in found.items() if v}
    cloud_name = text(config, "cloud")
    cloud = cloud_for(cloud_name)
    if cloud is None:
        raise MetadataError(f"unknown Azure cloud {cloud_name!r}")
    method = login_method(config)
    if not method:
        raise MetadataError(
            "aadClientId, aadClientSecret and tenantId (or useManagedIdentityExtension) are needed to look up the network"
        )
    arm = arm_factory(cloud)
    if method == "secret":
        arm.login(
            tenant=text(config, "tenantId"), client_id=text(config, "aadClientId"),
            secret=text(config, "aadClientSecret"), lookup=lookup,
        )  # fmt: skip
    else:
        identity = text(config, "userAssignedIdentityID")
        log.info("reading Resource Manager as the VM's managed identity", extra=kv(identity=identity or "system-assigned"))
        arm.use_identity(imds, identity, lookup)
    sub, group, name = found["subscriptionId"], found["resourceGroup"], str(compute.get("name") or "")
    if not (sub and group and name):
        raise MetadataError("instance metadata lacks the VM's subscription, resource group or name")
    if text(config, "vmType").lower() == "vmss":
        scale_set = str(compute.get("vmScaleSetName") or "")
        if not scale_set:
            raise MetadataError("vmType is vmss but instance metadata names no scale set")
        nic = _vmss_nic(arm, sub, group, scale_set, name, lookup)
    else:
        nic = _vm_nic(arm, sub, group, name, lookup)
    found.update(network_from_nic(nic))
    return {k: v for k, v in found.items() if v}


def complete(
    path: Path,
    *,
    imds: AzureMetadata | None = None,
    arm_factory: ArmFactory | None = None,
    scale: float = 1.0,
) -> bool:
    """Complete the cloud-config at ``path``; True when it is complete afterwards.

    ``scale`` multiplies the time budgets. Raises SidekickError when the file cannot be read
    or is not a JSON object, UsageError for a malformed service URL setting.
    """
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise SidekickError(f"{path} does not exist") from None
    except (OSError, ValueError) as err:
        raise SidekickError(f"cannot read {path}: {err}") from None
    if not isinstance(config, dict):
        raise SidekickError(f"{path} is not a JSON object")
    register_secret(text(config, "aadClientSecret"))
    if imds is None:
        url = service_url(os.environ.get(AZURE_METADATA_ENV, ""), AZURE_METADATA_URL, name=AZURE_METADATA_ENV)
        imds = AzureMetadata(url, scale=scale)
    lookup = Deadline(TOTAL_SECONDS * scale, what="the Azure cloud-config completion")
    reason = ""
    try:
        found = discover(config, imds=imds, arm_factory=arm_factory or arm_for(scale), lookup=lookup)
    except MetadataError as err:
        found, reason = {}, str(err)
    odd = implausible(found)
    if odd:
        found = {key: value for key, value in found.items() if key not in odd}
        reason = f"{reason}; " if reason else ""
        reason += f"values Azure would not issue: {','.join(odd)}"
    completed, missing = merge(config, found)
    if completed is None:
        log.warning(
            "some values were not found, keeping the passed cloud-config",
            extra=kv(path=path, missing=",".join(missing), reason=reason or "-"),
        )
        return False
    if completed == config:
        log.info("cloud-config already complete", extra=kv(path=path))
        return True
    st = path.stat()
    atomic_write(path, json.dumps(completed, indent=2) + "\n", mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid)
    filled = [key for key in FILLED_FIELDS if not text(config, key)]
    log.info("cloud-config completed", extra=kv(path=path, filled=",".join(filled) or "-"))
    return True


def complete_quietly(scale: float = 1.0) -> None:
    """entrypoint.sh's use: any failure is a warning, the component starts regardless."""
    try:
        complete(host_path(CONFIG_PATH), scale=scale)
    except SidekickError as err:
        log.warning("cannot complete the Azure cloud-config: %s", err)


def main(argv: list[str]) -> int:
    if argv and argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0
    if argv not in ([], ["set_azure_config"]):
        raise UsageError(USAGE)
    path = host_path(CONFIG_PATH)
    if not complete(path, scale=budget_scale(os.environ)):
        raise SidekickError(f"kept the passed cloud-config {path}: values are missing (see the warning above)")
    return 0
