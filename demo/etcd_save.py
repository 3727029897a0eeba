"""Demo steps: an etcd snapshot saved to S3 as RKE runs it, then rolling retention at work."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # demo.steps imports this module to list the steps
    from demo.steps import Context

UPLOADED = "Successfully uploaded"


def _tool(ctx: Context) -> str:
    """The image's own path, /opt/rke-tools/rke-etcd-backup (laid out by the install step)."""
    link = ctx.root / "opt/rke-tools/rke-etcd-backup"
    if not link.exists():
        raise RuntimeError("run the install step first: no /opt/rke-tools/rke-etcd-backup")
    return str(link)


def _s3(ctx: Context) -> tuple[Any, str, list[str], dict[str, str]]:
    from tests.harness.s3 import ACCESS_KEY, SECRET_KEY

    s3, bucket = ctx.values["s3"], ctx.values["bucket"]
    assert s3.ca_path is not None
    # As RKE: the CA base64 on argv, the keys base64 in the environment (never on argv).
    flags = ["--s3-backup=true", f"--s3-endpoint={s3.endpoint}", f"--s3-bucketName={bucket}", "--s3-region=",
             f"--s3-endpoint-ca={base64.b64encode(s3.ca_path.read_bytes()).decode()}", "--s3-folder=demo"]
    env = {"S3_ACCESS_KEY": base64.b64encode(ACCESS_KEY.encode()).decode(),
           "S3_SECRET_KEY": base64.b64encode(SECRET_KEY.encode()).decode()}
    return s3, bucket, flags, env


def _certs(etcd: Any, name: str) -> list[str]:
    return ["etcd-backup", "save", "--cacert", "/etc/kubernetes/ssl/kube-ca.pem",
            "--cert", "/etc/kubernetes/ssl/kube-node.pem", "--key", "/etc/kubernetes/ssl/kube-node-key.pem",
            "--name", name, f"--endpoints={etcd.endpoint}"]


def _field(stderr: str, msg: str, name: str) -> str:
    for line in stderr.splitlines():
        if f'msg="{msg}"' in line and (m := re.search(rf"\b{name}=(\S+)", line)):
            return m.group(1).strip('"')
    return "?"


def save_once_to_s3(ctx: Context) -> str:
    etcd = ctx.values["etcd"]
    s3, bucket, flags, env = _s3(ctx)
    name = "rke_etcd_snapshot_" + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    state = ctx.root / f"etc/kubernetes/{name}.rkestate"
    state.write_text('{\n  "desiredState": {"demo": true}\n}')  # DeployStateFile's copy
    started = time.monotonic()
    result = subprocess.run([_tool(ctx), *_certs(etcd, name), "--once", "--creation=12h", "--retention=72h", *flags],
                            capture_output=True, text=True, env={**os.environ, "SIDEKICK_ROOT": str(ctx.root), **env},
                            check=False)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1])
    head = s3.client().head_object(Bucket=bucket, Key=f"demo/{name}.zip")
    ctx.values["snapshot_name"] = name
    snapshot_size = int(_field(result.stderr, "etcd snapshot done", "size"))
    return (f"{name}: snapshot {snapshot_size / 1024:.0f} KiB -> /backup/{name}.zip "
            f"{head['ContentLength'] / 1024:.0f} KiB (ratio {_field(result.stderr, 'archive done', 'ratio')}), "
            f"uploaded to s3://{bucket}/demo/ with sha256 {head['Metadata']['snapshot-sha256'][:12]}..., "
            f"{seconds:.1f}s in all")


def rolling_retention(ctx: Context) -> str:
    etcd = ctx.values["etcd"]
    s3, bucket, flags, env = _s3(ctx)
    client = s3.client()
    expired = "2020-01-01T00:00:00Z_etcd"
    client.put_object(Bucket=bucket, Key=f"demo/{expired}.zip", Body=b"an old snapshot")
    (ctx.root / f"backup/{expired}.zip").write_bytes(b"an old snapshot")
    proc = subprocess.Popen([_tool(ctx), *_certs(etcd, "etcd-rolling-snapshots"), "--creation=2s", "--retention=72h",
                             *flags], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "SIDEKICK_ROOT": str(ctx.root), **env})
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "S3 snapshots" in line:  # the tick's last step
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    text = "".join(lines) + rest
    if proc.returncode != 0 or "deleted expired S3 snapshots" not in text:
        raise RuntimeError(f"rolling tick did not finish: {text.strip().splitlines()[-1:]}")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="demo/").get("Contents", [])]
    gone_s3 = f"demo/{expired}.zip" not in keys
    gone_local = not (ctx.root / f"backup/{expired}.zip").exists()
    tick = _field(text, "rolling snapshot", "name")
    return (f"tick {tick} saved and uploaded; expired {expired}.zip removed from S3: {gone_s3}, "
            f"locally: {gone_local}; SIGTERM -> exit {proc.returncode}; bucket now holds {len(keys)} objects")


def save_encrypted_and_restore(ctx: Context) -> str:
    """``save --once`` with an age recipient: the object is not a zip; ``download`` on another
    node with the identity gets RKE's /backup/<name>.zip and /backup/<name> back."""
    import hashlib
    import io
    import zipfile

    etcd = ctx.values["etcd"]
    s3, bucket, flags, env = _s3(ctx)
    key_file = ctx.root / "etc/sidekick/age.key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["age-keygen", "-o", str(key_file)], check=True, capture_output=True)
    public = next(line.split(": ")[1] for line in key_file.read_text().splitlines() if "public key" in line)
    name = "encrypted_snapshot_" + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    saved = subprocess.run([_tool(ctx), *_certs(etcd, name), "--once", *flags], capture_output=True, text=True,
                           env={**os.environ, "SIDEKICK_ROOT": str(ctx.root), "SIDEKICK_AGE_RECIPIENTS": public, **env},
                           check=False)
    if saved.returncode != 0:
        raise RuntimeError(saved.stderr.strip().splitlines()[-1])
    key = f"demo/{name}.zip.age"
    obj = s3.client().get_object(Bucket=bucket, Key=key)
    body = obj["Body"].read()
    if zipfile.is_zipfile(io.BytesIO(body)):
        raise RuntimeError(f"{key} is a readable zip")
    other = ctx.workdir / "node2"
    (other / "backup").mkdir(parents=True, exist_ok=True)
    (other / "etc/sidekick").mkdir(parents=True, exist_ok=True)
    (other / "etc/sidekick/age.key").write_bytes(key_file.read_bytes())
    restored = subprocess.run([_tool(ctx), "etcd-backup", "download", "--name", name, *flags], capture_output=True,
                              text=True, check=False,
                              env={**os.environ, "SIDEKICK_ROOT": str(other),
                                   "SIDEKICK_AGE_IDENTITY_FILE": "/etc/sidekick/age.key", **env})
    if restored.returncode != 0:
        raise RuntimeError(restored.stderr.strip().splitlines()[-1])
    local = (ctx.root / f"backup/{name}.zip").read_bytes()
    same = (other / f"backup/{name}.zip").read_bytes() == local
    by_age = subprocess.run(["age", "-d", "-i", str(key_file)], input=body, capture_output=True, check=True).stdout
    return (f"s3://{bucket}/{key}: starts {body[:21].decode(errors='replace')!r}, not a zip, "
            f"sidekick-encryption={obj['Metadata'].get('sidekick-encryption')}; download with the identity on "
            f"node2 -> /backup/{name}.zip identical: {same}, /backup/{name} "
            f"{(other / 'backup' / name).stat().st_size // 1024} KiB; age -d agrees: "
            f"{hashlib.sha256(by_age).hexdigest() == hashlib.sha256(local).hexdigest()}")


def prune_dry_run(ctx: Context) -> str:
    """A keep-daily policy over two weeks of 6-hourly snapshots: what prune would delete, and why."""
    import datetime as dt

    from sidekick.etcd.retention import rolling_name

    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    names = [f"{rolling_name(now - dt.timedelta(hours=6 * i))}.zip" for i in range(56)]
    for name in names:
        (ctx.root / "backup" / name).write_bytes(b"PK")
    result = ctx.sidekick("rke-etcd-backup", "etcd-backup", "prune", "--dry-run", "--retention=24h",
                          "--keep-daily=7")
    lines = result.stdout.splitlines()
    deletes = [line for line in lines if line.startswith("delete local")]
    kept_daily = [line for line in lines if line.startswith("keep local") and "daily" in line]
    for name in names:  # the demo's own history goes again; the dry run deleted nothing
        (ctx.root / "backup" / name).unlink()
    return (f"{len(names)} snapshots (2 weeks, 6-hourly), --retention=24h --keep-daily=7: "
            f"{len(deletes)} would go, {len(lines) - len(deletes)} stay ({len(kept_daily)} by keep-daily); "
            f"e.g. '{deletes[0]}' / '{kept_daily[-1]}'")


def rolling_metrics(ctx: Context) -> str:
    """Rolling saves with telemetry on: the key lines of /metrics and /healthz after a few ticks."""
    import urllib.request

    from tests.harness.ports import free_port

    etcd = ctx.values["etcd"]
    _, _, flags, env = _s3(ctx)
    port = free_port()
    proc = subprocess.Popen([_tool(ctx), *_certs(etcd, "etcd-rolling-snapshots"), "--creation=2s", "--retention=72h",
                             *flags], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "SIDEKICK_ROOT": str(ctx.root), "SIDEKICK_METRICS_ADDRESS":
                                 f"127.0.0.1:{port}", **env})
    assert proc.stderr is not None
    ticks, deadline = 0, time.monotonic() + 90
    try:
        while ticks < 3 and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            ticks += "S3 snapshots" in line  # a tick's last step
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            health = f"{answer.status} {answer.read().decode().strip()}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    if ticks < 3:
        raise RuntimeError(f"only {ticks} rolling ticks finished")
    wanted = ('last_success_timestamp_seconds{stage="snapshot"}', 'last_success_timestamp_seconds{stage="upload"}',
              "snapshot_size_bytes", 'failures_total{cause="s3_unreachable",stage="upload"}')
    shown = [line.replace("sidekick_etcd_backup_", "") for line in metrics.splitlines()
             if not line.startswith("#") and any(w in line for w in wanted)]
    return f"{ticks} ticks; /healthz {health}; " + "; ".join(shown)
