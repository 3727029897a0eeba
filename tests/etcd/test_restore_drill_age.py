"""The restore drill with age encryption on (tests/harness/drill.py): the local snapshot kept
only as ``<name>.zip.age`` and served by decrypting it, the S3 object ``<name>.zip.age``
decrypted by every node to where RKE looks; RKE's checksum, ``etcdctl snapshot restore`` and
every key read back, as in the plain drill. A module of its own: one drill's namespaces at a
time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.harness.drill import LOCAL, REMOTE, STATE, Drill, local_flow, prepare, s3_flow
from tests.harness.netns import NamespaceError, leftover_namespaces
from tests.harness.pki import CertificateAuthority

pytestmark = [pytest.mark.netns, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def encrypted_drill(tmp_path_factory: pytest.TempPathFactory, kube_ca: CertificateAuthority) -> Iterator[Drill]:
    """The same drill with age on: the local snapshot kept only as ``.zip.age``, the S3 object
    ``.zip.age``, every node holding the identity."""
    with ExitStack() as stack:
        try:
            drill = prepare(stack, tmp_path_factory.mktemp("drill-age"), kube_ca, encrypt=True)
        except NamespaceError as err:
            pytest.fail(f"the restore drill needs network namespaces (root, iproute2, veth): {err}")
        yield drill
    assert leftover_namespaces(drill.network.tag) == []


def test_restore_drill_with_encryption_on(encrypted_drill: Drill) -> None:
    drill = encrypted_drill
    source = drill.machines[0]
    assert sorted(p.name for p in (source.root / "backup").iterdir() if LOCAL in p.name) == [f"{LOCAL}.zip.age"]
    objects = drill.s3.client().list_objects_v2(Bucket=drill.bucket)["Contents"]
    assert [o["Key"] for o in objects] == [f"drill/{REMOTE}.zip.age"]

    local = local_flow(drill)  # serve decrypts its .zip.age; peers download the plain snapshot
    assert local.state == STATE and local.modes == ["0o600", "0o600"]
    assert len(set(local.md5)) == 1 and local.restored == [drill.written] * 3 and local.after_snapshot is None
    assert not (source.root / "backup" / f"{LOCAL}.zip").exists()  # never left in the clear as a zip

    remote = s3_flow(drill)  # every node decrypts to /backup/<name>.zip where RKE looks
    assert remote.state == STATE and remote.modes == ["0o600"] * 3
    assert len(set(remote.md5)) == 1 and remote.restored == [drill.written] * 3 and remote.after_snapshot is None
