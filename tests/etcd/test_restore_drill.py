"""The restore drill: three etcd nodes in network namespaces, a snapshot, RKE's restore flow.

The drill itself (namespaces, TLS cluster, real ``save --once``, RKE's local and S3 flows,
RKE's ``md5sum`` line, ``etcdctl snapshot restore``, every key read back) lives in
``tests/harness/drill.py``, shared with the README demo; every check there raises an
``AssertionError``. Here each flow's outcome is asserted once more, plainly.

Namespaces that cannot be built fail the test with the reason: the drill never skips.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.harness.drill import (
    AFTER_SNAPSHOT,
    LOCAL,
    REMOTE,
    STATE,
    Drill,
    local_flow,
    prepare,
    s3_flow,
)
from tests.harness.netns import NamespaceError, leftover_namespaces
from tests.harness.pki import CertificateAuthority

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory, kube_ca: CertificateAuthority) -> Iterator[Drill]:
    """Three nodes with data; a local snapshot on node 1 and one uploaded to S3; etcd stopped."""
    with ExitStack() as stack:
        try:
            drill = prepare(stack, tmp_path_factory.mktemp("drill"), kube_ca)
        except NamespaceError as err:
            pytest.fail(f"the restore drill needs network namespaces (root, iproute2, veth): {err}")
        yield drill
    assert leftover_namespaces(drill.network.tag) == []


def test_local_restore_serve_and_download_between_namespaces(drill: Drill) -> None:
    result = local_flow(drill)
    others = drill.machines[1:]
    assert result.name == LOCAL and result.state == STATE
    assert result.downloaded_by == [m.ip for m in others]
    assert result.modes == ["0o600", "0o600"]
    for m in others:
        assert f'client="{m.ip}:' in result.serve_log
    assert "serve stopped" in result.serve_log.strip().splitlines()[-1]
    assert len(result.md5) == 3 and len(set(result.md5)) == 1 and len(result.md5[0]) == 32
    assert result.snapshot_bytes > 0
    assert len(drill.written) == 303
    assert drill.written[f"/registry/drill/from/{others[0].member}"] == f"written via {others[0].ip}"
    assert result.restored == [drill.written] * 3  # every member has the full data set
    assert result.after_snapshot is None and AFTER_SNAPSHOT not in result.restored[0]


def test_s3_restore_every_node_downloads(drill: Drill) -> None:
    result = s3_flow(drill)
    assert result.name == REMOTE and result.state == STATE
    assert result.downloaded_by == [m.ip for m in drill.machines]
    assert result.modes == ["0o600"] * 3
    assert result.phases.seconds["S3 download"] < 60
    for m in drill.machines:  # only the archive and the snapshot it holds
        assert sorted(p.name for p in (m.root / "backup").iterdir() if REMOTE in p.name) == [REMOTE, f"{REMOTE}.zip"]
    assert len(result.md5) == 3 and len(set(result.md5)) == 1 and len(result.md5[0]) == 32
    assert result.restored == [drill.written] * 3
    assert result.after_snapshot is None
