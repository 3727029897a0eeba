"""cert-deployer on a temp root: names, modes, keep/force rules, refusals, checks (no processes)."""

from __future__ import annotations

import datetime as dt
import logging
import stat
from pathlib import Path

import pytest

from sidekick.certs import Summary, check_bundle, decide, deploy, item_for, plan
from sidekick.errors import UsageError
from sidekick.host.acl import Acl
from tests.harness.pki import CertificateAuthority
from tests.harness.rke_bundle import rke_cert_env


class NoAcl(Acl):
    """Deploys without ETCD ids never touch ACLs; any call is a bug."""

    def __init__(self) -> None:
        pass

    def set_mask(self, path: Path, perms: str, *, recursive: bool = True) -> None:
        raise AssertionError("ACLs touched without ETCD_UID/ETCD_GID")

    def remove_ids(self, path: Path, *, uid: int, gid: int, recursive: bool = True) -> None:
        raise AssertionError("ACLs touched without ETCD_UID/ETCD_GID")


@pytest.fixture(scope="module")
def bundle(kube_ca: CertificateAuthority) -> dict[str, str]:
    return rke_cert_env(kube_ca)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    return tmp_path


def ssl_dir(root: Path) -> Path:
    return root / "etc/kubernetes/ssl"


@pytest.mark.parametrize(
    ("env", "filename"),
    [
        ("KUBE_ETCD_172_26_14_216_KEY", "kube-etcd-172-26-14-216-key.pem"),
        ("KUBE_CA", "kube-ca.pem"),
        ("KUBECFG_KUBE_NODE", "kubecfg-kube-node.yaml"),
        ("KUBECFG_KUBE_APISERVER_PROXY_CLIENT", "kubecfg-kube-apiserver-proxy-client.yaml"),
        ("KUBE_ETCD_FD00::1", "kube-etcd-fd00::1.pem"),  # IPv6 node: the original's bash choked on it
    ],
)
def test_file_names(env: str, filename: str) -> None:
    item = item_for(env)
    assert item is not None and item.filename == filename


@pytest.mark.parametrize("env", ["KUBE_A/../../ETC/PASSWD", "KUBE_..", "KUBE_X Y", "KUBE_\u00e9"])
def test_names_that_could_escape_are_refused(env: str) -> None:
    item = item_for(env)
    assert item is not None and item.filename is None
    assert decide(item, "missing", force=True)[0] == "skip"


def test_other_variables_are_ignored() -> None:
    assert [i.env for i in plan({"KUBECONFIG": "x", "PATH": "/bin", "MY_KUBE_X": "y", "KUBE_CA": "c"})] == ["KUBE_CA"]


def test_decisions() -> None:
    pem, yaml = item_for("KUBE_NODE"), item_for("KUBECFG_KUBE_NODE")
    assert pem is not None and yaml is not None
    assert decide(pem, "missing", force=False)[0] == "write"
    assert decide(pem, "file", force=False)[0] == "keep"
    assert decide(pem, "file", force=True)[0] == "write"
    assert decide(yaml, "file", force=True)[0] == "keep"  # kubeconfigs are never rewritten
    assert decide(pem, "symlink", force=True)[0] == "skip"
    assert decide(pem, "other", force=True)[0] == "skip"


def test_full_bundle_files_and_modes(root: Path, bundle: dict[str, str]) -> None:
    summary = deploy(bundle, acl=NoAcl())
    directory = ssl_dir(root)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    expected = {
        "kube-ca.pem", "kube-ca-key.pem", "kube-node.pem", "kube-node-key.pem", "kubecfg-kube-node.yaml",
        "kube-proxy.pem", "kube-proxy-key.pem", "kubecfg-kube-proxy.yaml",
        "kube-etcd-172-26-14-216.pem", "kube-etcd-172-26-14-216-key.pem",
        "kube-apiserver.pem", "kube-apiserver-key.pem",
        "kube-service-account-token.pem", "kube-service-account-token-key.pem",
        "kube-controller-manager.pem", "kube-controller-manager-key.pem", "kubecfg-kube-controller-manager.yaml",
        "kube-scheduler.pem", "kube-scheduler-key.pem", "kubecfg-kube-scheduler.yaml",
        "kube-apiserver-requestheader-ca.pem", "kube-apiserver-requestheader-ca-key.pem",
        "kubecfg-kube-apiserver-requestheader-ca.yaml",
        "kube-apiserver-proxy-client.pem", "kube-apiserver-proxy-client-key.pem",
        "kubecfg-kube-apiserver-proxy-client.yaml",
    }
    assert {p.name for p in directory.iterdir()} == expected
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert (directory / "kube-etcd-172-26-14-216-key.pem").read_text() == \
        bundle["KUBE_ETCD_172_26_14_216_KEY"].rstrip("\n") + "\n"
    assert (directory / "kubecfg-kube-node.yaml").read_text() == bundle["KUBECFG_KUBE_NODE"].rstrip("\n") + "\n"
    assert summary == Summary(written=len(expected), kept=0, skipped=0)


def test_crts_deploy_path(root: Path, bundle: dict[str, str]) -> None:
    deploy({**bundle, "CRTS_DEPLOY_PATH": "/custom/ssl"}, acl=NoAcl())
    assert (root / "custom/ssl/kube-ca.pem").is_file()
    assert not ssl_dir(root).exists()
    with pytest.raises(UsageError, match="must be an absolute path"):
        deploy({**bundle, "CRTS_DEPLOY_PATH": "relative/ssl"}, acl=NoAcl())


def test_pem_rewritten_only_with_force_and_yaml_never(root: Path, kube_ca: CertificateAuthority, bundle: dict[str, str]) -> None:
    deploy(bundle, acl=NoAcl())
    directory = ssl_dir(root)
    rotated = kube_ca.kube_node()
    changed = {**bundle, "KUBE_NODE": rotated.cert_pem.decode(), "KUBE_NODE_KEY": rotated.key_pem.decode(),
               "KUBECFG_KUBE_NODE": bundle["KUBECFG_KUBE_NODE"] + "# changed\n"}
    summary = deploy(changed, acl=NoAcl())
    assert summary.written == 0 and summary.kept == len(bundle)
    assert (directory / "kube-node.pem").read_text() == bundle["KUBE_NODE"]

    summary = deploy({**changed, "FORCE_DEPLOY": "true"}, acl=NoAcl())
    yaml_count = sum(name.startswith("KUBECFG_") for name in bundle)
    assert (summary.written, summary.kept) == (len(bundle) - yaml_count, yaml_count)
    assert (directory / "kube-node.pem").read_bytes() == rotated.cert_pem
    assert (directory / "kube-node-key.pem").read_bytes() == rotated.key_pem
    assert "# changed" not in (directory / "kubecfg-kube-node.yaml").read_text()
    assert stat.S_IMODE((directory / "kube-node-key.pem").stat().st_mode) == 0o600


def test_missing_yaml_is_written_even_without_force(root: Path, bundle: dict[str, str]) -> None:
    deploy(bundle, acl=NoAcl())
    (ssl_dir(root) / "kubecfg-kube-proxy.yaml").unlink()
    summary = deploy(bundle, acl=NoAcl())
    assert summary.written == 1
    assert (ssl_dir(root) / "kubecfg-kube-proxy.yaml").is_file()


def test_a_planted_symlink_is_never_followed(root: Path, bundle: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    directory = ssl_dir(root)
    directory.mkdir(parents=True)
    victim = root / "victim"
    victim.write_text("precious\n")
    (directory / "kube-apiserver-key.pem").symlink_to(victim)
    (directory / "kubecfg-kube-node.yaml").symlink_to(root / "nowhere")  # dangling: still not followed
    summary = deploy({**bundle, "FORCE_DEPLOY": "true"}, acl=NoAcl())
    assert victim.read_text() == "precious\n"
    assert (directory / "kube-apiserver-key.pem").is_symlink()
    assert not (root / "nowhere").exists()
    assert summary.skipped == 2
    assert "a symlink is in the way" in caplog.text


def test_escaping_names_write_nothing_outside(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    summary = deploy({"KUBE_A/../../../ESCAPED": "x", "KUBE_CA": "y"}, acl=NoAcl())
    assert summary == Summary(written=1, kept=0, skipped=1)
    assert sorted(p.name for p in ssl_dir(root).iterdir()) == ["kube-ca.pem"]
    assert not any("escaped" in str(p).lower() for p in root.rglob("*"))
    assert "KUBE_A/../../../ESCAPED" in caplog.text


def test_bundle_checks_warn(kube_ca: CertificateAuthority, bundle: dict[str, str]) -> None:
    other = kube_ca.kube_node()
    now = dt.datetime.now(dt.UTC)
    expired = kube_ca.issue("old", not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    soon = kube_ca.issue("soon", not_after=now + dt.timedelta(days=5))
    env = {**bundle, "KUBE_NODE_KEY": other.key_pem.decode(), "KUBE_OLD": expired.cert_pem.decode(),
           "KUBE_SOON": soon.cert_pem.decode(), "KUBE_GARBAGE": "not a pem", "KUBE_GARBAGE_KEY": "nope",
           "KUBE_EMPTY": ""}
    problems = check_bundle(plan(env), env, now=now)
    assert "KUBE_NODE_KEY does not match the certificate in KUBE_NODE" in problems
    assert any(p.startswith("KUBE_OLD expired on") for p in problems)
    assert any(p.startswith("KUBE_SOON expires in 4 days") for p in problems)
    assert "KUBE_GARBAGE is not a readable PEM certificate" in problems
    assert "KUBE_GARBAGE_KEY is not a readable unencrypted PEM private key" in problems
    assert "KUBE_EMPTY is empty" in problems
    assert len(problems) == 6  # the rest of the RKE bundle is clean
    assert not any("BEGIN" in p for p in problems)


def test_bad_values_are_still_deployed(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    summary = deploy({"KUBE_GARBAGE": "not a pem"}, acl=NoAcl())
    assert summary.written == 1
    assert (ssl_dir(root) / "kube-garbage.pem").read_text() == "not a pem\n"
    assert "KUBE_GARBAGE is not a readable PEM certificate (deployed anyway)" in caplog.text


def test_bad_etcd_ids(root: Path, bundle: dict[str, str]) -> None:
    with pytest.raises(UsageError, match="must be numeric ids"):
        deploy({**bundle, "ETCD_UID": "etcd", "ETCD_GID": "1"}, acl=NoAcl())
    assert not ssl_dir(root).exists()  # refused before anything was written


def test_one_etcd_id_alone_is_ignored_with_a_warning(root: Path, bundle: dict[str, str],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    deploy({**bundle, "ETCD_UID": "1001"}, acl=NoAcl())  # NoAcl: ACLs must stay untouched
    assert "only one of ETCD_UID and ETCD_GID is set" in caplog.text
    assert stat.S_IMODE((ssl_dir(root) / "kube-ca.pem").stat().st_mode) == 0o600


def test_leftovers_of_an_interrupted_run_are_removed(root: Path) -> None:
    directory = ssl_dir(root)
    directory.mkdir(parents=True)
    (directory / ".sidekick-tmp-kube-ca.pem.0badc0de").write_text("half a certificate")
    deploy({"KUBE_CA": "x"}, acl=NoAcl())
    assert sorted(p.name for p in directory.iterdir()) == ["kube-ca.pem"]


def test_arguments_are_refused() -> None:
    from sidekick.certs import main

    with pytest.raises(UsageError, match="takes no arguments"):
        main(["--force"])
