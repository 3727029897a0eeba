"""The cluster state for rolling snapshots: secret ``kube-system/full-cluster-state``.

One HTTPS GET with the client certificate and CA of ``/etc/kubernetes/ssl/kubecfg-kube-node.yaml``,
within the state budget of :mod:`sidekick.etcd.budgets` (no kubectl needed); the secret's ``data.full-cluster-state`` (base64 JSON) becomes
``/etc/kubernetes/<name>.rkestate``, indented by 2 spaces (the layout RKE's restore reads).
Clusters from before the move to a secret keep the state in a ConfigMap of the same name
(plain text): that is the fallback on 404. The state holds every cluster key: its content is
never logged.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from sidekick.deadline import Deadline, DeadlineExceeded
from sidekick.errors import SidekickError
from sidekick.etcd import layout
from sidekick.etcd.budgets import Budgets
from sidekick.host.files import atomic_write
from sidekick.host.signals import StopRequest
from sidekick.log import kv
from sidekick.paths import host_path

log = logging.getLogger(__name__)

KUBECONFIG = "/etc/kubernetes/ssl/kubecfg-kube-node.yaml"
SECRET_PATH = "/api/v1/namespaces/kube-system/secrets/full-cluster-state"
CONFIGMAP_PATH = "/api/v1/namespaces/kube-system/configmaps/full-cluster-state"
STATE_KEY = "full-cluster-state"
TIMEOUT = (10.0, 30.0)  # connect, read: kubectl's --request-timeout=30s


class StateError(SidekickError):
    pass


@dataclass
class KubeConfig:
    server: str
    ca: str | None = None  # file path
    ca_data: bytes | None = None
    cert: str | None = None
    cert_data: bytes | None = None
    key: str | None = None
    key_data: bytes | None = None


def _pick(items: list[dict[str, Any]] | None, name: str | None) -> dict[str, Any]:
    items = items or []
    for item in items:
        if name is not None and item.get("name") == name:
            return item
    return items[0] if items else {}


def _b64(value: object) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=False)
    except (binascii.Error, ValueError):
        raise StateError("kubeconfig holds invalid base64 data") from None


def _mapped(path: object) -> str | None:
    if not path:
        return None
    text = str(path)
    return str(host_path(text)) if text.startswith("/") else text


def load_kubeconfig(path: Path) -> KubeConfig:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise StateError(f"cannot read {path.name}: {err.strerror}") from None
    except yaml.YAMLError:
        raise StateError(f"{path.name} is not valid YAML") from None
    if not isinstance(doc, dict):
        raise StateError(f"{path.name} is not a kubeconfig")
    context = _pick(doc.get("contexts"), doc.get("current-context")).get("context", {}) or {}
    cluster = _pick(doc.get("clusters"), context.get("cluster")).get("cluster", {}) or {}
    user = _pick(doc.get("users"), context.get("user")).get("user", {}) or {}
    server = str(cluster.get("server") or "")
    if not server:
        raise StateError(f"{path.name} names no apiserver")
    return KubeConfig(
        server=server.rstrip("/"),
        ca=_mapped(cluster.get("certificate-authority")),
        ca_data=_b64(cluster.get("certificate-authority-data")),
        cert=_mapped(user.get("client-certificate")),
        cert_data=_b64(user.get("client-certificate-data")),
        key=_mapped(user.get("client-key")),
        key_data=_b64(user.get("client-key-data")),
    )


@contextlib.contextmanager
def _materialized(cfg: KubeConfig) -> Iterator[tuple[str | bool, tuple[str, str] | None]]:
    """(verify, cert) for requests; inline ``*-data`` go to private temp files."""
    with tempfile.TemporaryDirectory(prefix="sidekick-kube-") as tmp:
        def file_for(path: str | None, data: bytes | None, name: str) -> str | None:
            if data:
                target = Path(tmp) / name
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                return str(target)
            return path

        ca = file_for(cfg.ca, cfg.ca_data, "ca.pem")
        cert = file_for(cfg.cert, cfg.cert_data, "cert.pem")
        key = file_for(cfg.key, cfg.key_data, "key.pem")
        yield (ca or True), ((cert, key) if cert and key else None)


def _extract(body: dict[str, Any], *, encoded: bool) -> str:
    data = body.get("data") or {}
    value = data.get(STATE_KEY) if isinstance(data, dict) else None
    if not value:
        raise StateError(f"object full-cluster-state has no {STATE_KEY} key")
    if encoded:
        try:
            return base64.b64decode(value).decode("utf-8")
        except (binascii.Error, ValueError):
            raise StateError("full-cluster-state secret is not valid base64 UTF-8") from None
    return str(value)


def fetch_state(kubeconfig: Path, *, timeout: tuple[float, float] = TIMEOUT) -> str:
    """The cluster state JSON text (secret first, ConfigMap on 404)."""
    cfg = load_kubeconfig(kubeconfig)
    with _materialized(cfg) as (verify, cert), requests.Session() as session:
        session.trust_env = False  # REQUESTS_CA_BUNDLE/proxies must not override the kubeconfig
        for path, encoded in ((SECRET_PATH, True), (CONFIGMAP_PATH, False)):
            try:
                response = session.get(cfg.server + path, verify=verify, cert=cert, timeout=timeout,
                                       headers={"Accept": "application/json"})
            except requests.RequestException as err:
                raise StateError(f"cannot reach the apiserver {cfg.server}: {type(err).__name__}") from None
            if response.status_code == 404 and encoded:
                log.debug("no full-cluster-state secret, trying the ConfigMap")
                continue
            if response.status_code != 200:
                raise StateError(f"apiserver answered {response.status_code} for {path.rsplit('/', 2)[-2]}"
                                 " full-cluster-state")
            try:
                body = response.json()
            except ValueError:
                raise StateError("apiserver answered with invalid JSON") from None
            return _extract(body, encoded=encoded)
    raise StateError("full-cluster-state not found (neither secret nor ConfigMap)")


def render_state(text: str) -> bytes:
    """Pretty JSON with 2-space indentation, as ``json.Indent(.., "", "  ")``."""
    try:
        parsed = json.loads(text)
    except ValueError:
        raise StateError("full-cluster-state is not valid JSON") from None
    return json.dumps(parsed, indent=2, ensure_ascii=False).encode("utf-8")


def write_statefile(name: str, *, budgets: Budgets, stop: StopRequest) -> Path:
    """Fetch the state and write ``/etc/kubernetes/<name>.rkestate`` (mode 0600, atomic).

    At most :data:`~sidekick.etcd.budgets.STATE_ATTEMPTS` fetches of two requests each (the
    secret, then the ConfigMap on 404), within the state budget.
    """
    kubeconfig = host_path(KUBECONFIG)
    if not kubeconfig.is_file():
        raise StateError(f"no {KUBECONFIG} on this node")

    def attempt(deadline: Deadline) -> Path:
        text = fetch_state(kubeconfig, timeout=(min(deadline.remaining(), 10.0), deadline.remaining()))
        dest = layout.state_path(name)
        atomic_write(dest, render_state(text), mode=0o600)
        log.info("wrote cluster state file", extra=kv(path=layout.state_entry(name)))
        return dest

    try:
        return budgets.state().run(attempt, what="cluster state fetch", stop=stop,
                                   retryable=lambda err: isinstance(err, StateError | DeadlineExceeded),
                                   on_retry=lambda n, err, wait: log.warning(
                                       "cannot get the cluster state", extra=kv(attempt=n, error=str(err))))
    except DeadlineExceeded as err:
        raise StateError(str(err)) from None
