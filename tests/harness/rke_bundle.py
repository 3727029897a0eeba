"""The environment RKE gives ``cert-deployer`` (CONTRACT section 5), from a test CA.

Names follow rke ``pki/util.go``: ``<ENV>`` is the upper-cased cert name with ``-`` -> ``_``;
per cert ``<ENV>_KEY``, ``<ENV>`` and, for certs that have one, ``KUBECFG_<ENV>`` holding a
kubeconfig that points at the deployed files and ``https://127.0.0.1:6443``.
"""

from __future__ import annotations

from tests.harness.pki import CertificateAuthority, KeyPair

SSL_DIR = "/etc/kubernetes/ssl"


def env_name(cert_name: str) -> str:
    return cert_name.upper().replace("-", "_")


def kubeconfig(cert_name: str) -> str:
    """A kubeconfig shaped like RKE's: cluster/context ``local``, CA/cert/key as file paths."""
    return f"""apiVersion: v1
kind: Config
clusters:
- cluster:
    api-version: v1
    certificate-authority: {SSL_DIR}/kube-ca.pem
    server: "https://127.0.0.1:6443"
  name: "local"
contexts:
- context:
    cluster: "local"
    user: "{cert_name}-local"
  name: "local"
current-context: "local"
users:
- name: "{cert_name}-local"
  user:
    client-certificate: {SSL_DIR}/{cert_name}.pem
    client-key: {SSL_DIR}/{cert_name}-key.pem
"""


def rke_cert_env(
    ca: CertificateAuthority, *, etcd_ips: tuple[str, ...] = ("172.26.14.216",), control: bool = True,
) -> dict[str, str]:
    """The env of an etcd (+ control plane when ``control``) node, in RKE's order."""
    pairs: dict[str, KeyPair | None] = {"kube-ca": None, "kube-node": ca.kube_node(),
                                        "kube-proxy": ca.issue("system:kube-proxy")}
    for ip in etcd_ips:
        pairs["kube-etcd-" + ip.replace(".", "-").lower()] = ca.kube_etcd(ip)
    if control:
        pairs.update({
            "kube-apiserver": ca.issue("kube-apiserver", server=True, dns=("kubernetes",), ips=("10.43.0.1",)),
            "kube-service-account-token": ca.issue("kube-service-account-token"),
            "kube-controller-manager": ca.issue("system:kube-controller-manager"),
            "kube-scheduler": ca.issue("system:kube-scheduler"),
            "kube-apiserver-requestheader-ca": ca.issue("kube-apiserver-requestheader-ca"),
            "kube-apiserver-proxy-client": ca.issue("kube-apiserver-proxy-client"),
        })
    no_config = {"kube-ca", "kube-apiserver", "kube-service-account-token"}
    env: dict[str, str] = {}
    for name, pair in pairs.items():
        key = env_name(name)
        if pair is None:  # the CA: its key only goes to control-plane hosts
            if control:
                env[f"{key}_KEY"] = ca.pair.key_pem.decode()
            env[key] = ca.cert_pem.decode()
            continue
        env[f"{key}_KEY"] = pair.key_pem.decode()
        env[key] = pair.cert_pem.decode()
        if name not in no_config and not name.startswith(("kube-etcd-", "kube-kubelet-")):
            env[f"KUBECFG_{key}"] = kubeconfig(name)
    return env
