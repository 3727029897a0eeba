"""A node as ``rke-etcd-backup`` sees it, RKE's exact argv, and a small kube-apiserver.

``node_root`` builds a SIDEKICK_ROOT with ``/backup`` and ``/etc/kubernetes/ssl`` (RKE's cert
names). ``Apiserver`` is the tests' own HTTPS server speaking the real Kubernetes REST shape
for ``GET /api/v1/namespaces/kube-system/secrets/full-cluster-state``, requiring a client
certificate signed by kube-ca, like a kube-apiserver does.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.harness.pki import CertificateAuthority, RkeSsl

SSL_DIR = "etc/kubernetes/ssl"


def node_root(base: Path, ssl_files: RkeSsl) -> Path:
    """A node's root with ``/backup`` and RKE's certs under ``/etc/kubernetes/ssl``."""
    root = base / "node"
    (root / "backup").mkdir(parents=True, exist_ok=True)
    target = root / SSL_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in ("kube-ca.pem", "kube-node.pem", "kube-node-key.pem"):
        shutil.copy(ssl_files.directory / name, target / name)
    return root


def rke_save_argv(endpoint: str, name: str, *extra: str) -> list[str]:
    """``etcd-snapshot-once`` / ``etcd-rolling-snapshots`` Cmd as RKE builds it (CONTRACT 3.1/3.2)."""
    return [
        "etcd-backup", "save",
        "--cacert", "/etc/kubernetes/ssl/kube-ca.pem",
        "--cert", "/etc/kubernetes/ssl/kube-node.pem",
        "--key", "/etc/kubernetes/ssl/kube-node-key.pem",
        "--name", name,
        f"--endpoints={endpoint}",
        *extra,
    ]


def rke_s3_flags(endpoint: str, bucket: str, *, region: str = "", ca_pem: bytes | None = None,
                 folder: str = "") -> list[str]:
    """``configS3BackupImgCmd`` S3 part, in RKE's order."""
    flags = ["--s3-backup=true", f"--s3-endpoint={endpoint}", f"--s3-bucketName={bucket}", f"--s3-region={region}"]
    if ca_pem:
        flags.append(f"--s3-endpoint-ca={base64.b64encode(ca_pem).decode()}")
    if folder:
        flags.append(f"--s3-folder={folder}")
    return flags


def rke_s3_env(access: str, secret: str) -> dict[str, str]:
    """RKE passes the keys base64-encoded in the environment, never on argv."""
    return {"S3_ACCESS_KEY": base64.b64encode(access.encode()).decode(),
            "S3_SECRET_KEY": base64.b64encode(secret.encode()).decode()}


@dataclass
class Apiserver:
    ca: CertificateAuthority
    workdir: Path
    state: dict[str, Any] | None = None
    as_configmap: bool = False
    requests: list[str] = field(default_factory=list)
    client_subjects: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Apiserver:
        pair = self.ca.server(dns=("localhost",), ips=("127.0.0.1",))
        cert, key = pair.write(self.workdir, "apiserver")
        ca_file = self.workdir / "apiserver-client-ca.pem"
        ca_file.write_bytes(self.ca.cert_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append(self.path)
                peer = self.connection.getpeercert()  # type: ignore[attr-defined]
                owner.client_subjects.append(str(peer.get("subject") if peer else ""))
                kind = "configmaps" if owner.as_configmap else "secrets"
                wanted = f"/api/v1/namespaces/kube-system/{kind}/full-cluster-state"
                if self.path != wanted or owner.state is None:
                    body = json.dumps({"kind": "Status", "code": 404, "reason": "NotFound"}).encode()
                    self.send_response(404)
                else:
                    text = json.dumps(owner.state, separators=(",", ":"))
                    value = text if owner.as_configmap else base64.b64encode(text.encode()).decode()
                    obj = {"kind": "ConfigMap" if owner.as_configmap else "Secret", "apiVersion": "v1",
                           "metadata": {"name": "full-cluster-state", "namespace": "kube-system"},
                           "data": {"full-cluster-state": value}}
                    body = json.dumps(obj).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def write_kubeconfig(self, root: Path) -> Path:
        """RKE's ``kubecfg-kube-node.yaml`` (file references to /etc/kubernetes/ssl)."""
        path = root / SSL_DIR / "kubecfg-kube-node.yaml"
        path.write_text(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    api-version: v1\n"
            "    certificate-authority: /etc/kubernetes/ssl/kube-ca.pem\n"
            f'    server: "{self.url}"\n  name: "local"\n'
            'contexts:\n- context:\n    cluster: "local"\n    user: "kube-node-local"\n  name: "local"\n'
            'current-context: "local"\nusers:\n- name: "kube-node-local"\n  user:\n'
            "    client-certificate: /etc/kubernetes/ssl/kube-node.pem\n"
            "    client-key: /etc/kubernetes/ssl/kube-node-key.pem\n"
        )
        return path

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
