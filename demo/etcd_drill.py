"""Demo steps: the restore drill (``tests/harness/drill.py``, the same code the test runs).

Three nodes as network namespaces, a three-member TLS etcd cluster across them, a real
``save --once``; then RKE's local restore flow (serve on node 1, peer downloads) and its S3
flow, each ending with RKE's ``md5sum`` check, ``etcdctl snapshot restore`` on every node and
every key read back. Namespaces, veths, etcd, moto and serve are registered on ``ctx.stack``
as they are created, so they go away even when a step fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.harness.drill import Drill, FlowResult, local_flow, prepare, s3_flow
from tests.harness.netns import NamespaceError
from tests.harness.pki import CertificateAuthority

if TYPE_CHECKING:  # demo.steps imports this module to list the steps
    from demo.steps import Context


def _drill(ctx: Context) -> Drill:
    """The prepared drill: built by the first drill step, reused by the second."""
    drill = ctx.values.get("drill")
    if isinstance(drill, Drill):
        return drill
    ca = ctx.values.get("ca") or CertificateAuthority("kube-ca")
    try:
        drill = prepare(ctx.stack, ctx.workdir / "drill", ca)
    except NamespaceError as err:
        raise RuntimeError(f"the restore drill needs network namespaces (root, iproute2, veth): {err}") from err
    ctx.values["drill"] = drill
    return drill


def _outcome(drill: Drill, result: FlowResult) -> str:
    keys = len(drill.written)
    back = "/".join(str(len(keys_read)) for keys_read in result.restored)
    return (f"snapshot {result.snapshot_bytes / 1024:.0f} KiB; md5 {result.md5[0][:12]}... equal on all "
            f"{len(result.md5)} nodes: {len(set(result.md5)) == 1}; restored members read back {back} of {keys} keys "
            f"(post-snapshot key absent: {result.after_snapshot is None}); {result.phases.line()}")


def local_restore_drill(ctx: Context) -> str:
    """Cluster, data and snapshot on three namespaces; node 1 serves, nodes 2 and 3 download from it."""
    drill = _drill(ctx)
    nodes = ", ".join(f"{m.member}={m.ip}" for m in drill.machines)
    result = local_flow(drill)
    return (f"nodes {nodes} (S3 on {drill.s3.endpoint}); {len(drill.written)} keys written; "
            f"{drill.phases.line()}; /backup/{result.name}.zip {drill.snapshot_zip_bytes / 1024:.0f} KiB served by {drill.machines[0].ip}, downloaded by "
            f"{' and '.join(result.downloaded_by)} (mode {result.modes[0]}); {_outcome(drill, result)}")


def s3_restore_drill(ctx: Context) -> str:
    """The same cluster restored from the S3 snapshot: every node downloads it."""
    drill = _drill(ctx)
    result = s3_flow(drill)
    return (f"{result.name} from s3://{drill.bucket}/drill/, downloaded by all {len(result.downloaded_by)} "
            f"nodes; {_outcome(drill, result)}")
