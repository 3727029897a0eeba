"""cert-deployer as RKE runs it: the real executable, real setfacl/getfacl, real file systems."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SIDEKICK, last_line, run_sidekick
from tests.harness.pki import CertificateAuthority
from tests.harness.rke_bundle import rke_cert_env

pytestmark = pytest.mark.integration

ETCD_UID, ETCD_GID = 52034, 52035


@pytest.fixture(scope="module")
def bundle(kube_ca: CertificateAuthority) -> dict[str, str]:
    return rke_cert_env(kube_ca, etcd_ips=("172.26.14.216", "172.26.14.217"))


def getfacl(path: Path) -> list[str]:
    out = subprocess.run(["getfacl", "-n", "--omit-header", "--absolute-names", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


def acls_supported(path: Path) -> bool:
    probe = path / ".acl-probe"
    probe.touch()
    try:
        return subprocess.run(["setfacl", "-m", "u:12345:r", str(probe)], capture_output=True, check=False).returncode == 0
    finally:
        probe.unlink()


def test_no_key_material_in_the_logs_even_in_debug(tmp_path: Path, bundle: dict[str, str],
                                                   tool_link: Callable[[str], Path]) -> None:
    first = run_sidekick([], root=tmp_path, argv0=tool_link("cert-deployer"),
                         env={**bundle, "RANCHER_DEBUG": "true"})
    again = run_sidekick([], root=tmp_path, argv0=tool_link("cert-deployer"),
                         env={**bundle, "RANCHER_DEBUG": "true"})
    assert (first.returncode, again.returncode) == (0, 0), first.stderr + again.stderr
    assert re.search(rf"msg=\"certificates deployed\" path=\S+ written={len(bundle)} kept=0 skipped=0",
                     last_line(first.stderr))
    assert f"written=0 kept={len(bundle)} skipped=0" in last_line(again.stderr)
    logs = first.stdout + first.stderr + again.stdout + again.stderr
    assert "level=debug" in logs  # debug really was on
    assert "BEGIN" not in logs and "PRIVATE" not in logs
    for value in bundle.values():
        body = [line for line in value.splitlines() if len(line) > 40 and "-----" not in line]
        assert not any(line in logs for line in body)


def test_etcd_user_ownership_modes_and_acls(tmp_path: Path, bundle: dict[str, str]) -> None:
    directory = tmp_path / "etc/kubernetes/ssl"
    directory.mkdir(parents=True)
    assert acls_supported(directory), "the test file system must hold ACLs (ext4/overlay/tmpfs do)"
    # A file already there with named entries for the etcd user: the tool must remove them.
    kept = directory / "kube-etcd-172-26-14-216.pem"
    kept.write_text(bundle["KUBE_ETCD_172_26_14_216"])
    kept.chmod(0o600)
    subprocess.run(["setfacl", "-m", f"u:{ETCD_UID}:rw,g:{ETCD_GID}:rw", str(kept), str(directory)], check=True)

    result = run_sidekick(["cert-deployer"], root=tmp_path,
                          env={**bundle, "ETCD_UID": str(ETCD_UID), "ETCD_GID": str(ETCD_GID)})
    assert result.returncode == 0, result.stderr
    assert f"written={len(bundle) - 1} kept=1 skipped=0" in last_line(result.stderr)

    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    ca = directory / "kube-ca.pem"
    assert stat.S_IMODE(ca.stat().st_mode) == 0o644
    for path in sorted(directory.iterdir()):
        st = path.stat()
        if "kube-etcd" in path.name:
            assert (st.st_uid, st.st_gid) == (ETCD_UID, ETCD_GID), path.name
        else:
            assert (st.st_uid, st.st_gid) == (0, 0), path.name
        acl = getfacl(path)
        assert not any(line.startswith((f"user:{ETCD_UID}:", f"group:{ETCD_GID}:")) for line in acl), acl
        if path.name != "kube-ca.pem":
            # Owner-only files: the mask m::rX leaves the group entry with nothing effective.
            assert "group::---" in acl and "other::---" in acl and "user::rw-" in acl, (path.name, acl)
    assert "mask::r-x" in getfacl(directory)
    assert not (directory / ".acl-probe").exists()


def test_file_system_without_acls_warns_and_still_deploys(tmp_path: Path, bundle: dict[str, str]) -> None:
    """ramfs holds no ACLs: the tool must say so and still write, chown and chmod."""
    root = tmp_path / "root"
    ssl = root / "etc/kubernetes/ssl"
    ssl.mkdir(parents=True)
    script = (
        'mount -t ramfs ramfs "$SSL" && "$SIDEKICK" cert-deployer; rc=$?; '
        'echo "rc=$rc"; stat -c "%n %u:%g %a" "$SSL"/kube-ca.pem "$SSL"/kube-etcd-172-26-14-216-key.pem "$SSL"'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDEKICK_", "ETCD_"))}
    env.update(bundle, SIDEKICK=str(SIDEKICK), SIDEKICK_ROOT=str(root), SSL=str(ssl),
               ETCD_UID=str(ETCD_UID), ETCD_GID=str(ETCD_GID))
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert "rc=0" in result.stdout, result.stderr
    assert "level=warning" in result.stderr and "ACLs not applied" in result.stderr
    assert "does not support ACLs" in result.stderr
    lines = result.stdout.splitlines()
    assert f"{ssl}/kube-ca.pem 0:0 644" in lines
    assert f"{ssl}/kube-etcd-172-26-14-216-key.pem {ETCD_UID}:{ETCD_GID} 600" in lines
    assert f"{ssl} 0:0 755" in lines
    assert not any(ssl.iterdir())  # it all lived in the namespace's ramfs
