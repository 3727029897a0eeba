"""``cert-deployer``: write the certificates RKE passes in the environment (CONTRACT section 5).

Every ``KUBE_*`` variable becomes ``<lower-dashed>.pem`` and every ``KUBECFG_*`` variable
``<lower-dashed>.yaml`` in ``$CRTS_DEPLOY_PATH`` (default ``/etc/kubernetes/ssl``): directory
0755, files 0600. A ``.pem`` is rewritten only when missing or with ``FORCE_DEPLOY=true``; a
``.yaml`` only when missing. With ``ETCD_UID`` and ``ETCD_GID`` (etcd running as a non-root
user), ``kube-etcd`` files belong to that user, ``kube-ca.pem`` is 0644, and the tree gets the
ACL mask ``m::rX`` with the user's and group's named ACL entries removed.

Unlike the original (a ``bash -x`` script, which traced every key into the container log),
no value is ever logged; each file is written atomically with its final mode and owner from
creation; a name that would leave the directory or a symlink planted at a target is refused;
and each PEM is parsed so an unreadable value, a key that does not match its certificate, or
an expired certificate is reported (deployed anyway: RKE's bundle is the truth). RKE ignores
the exit code, so only a directory that cannot be used is fatal.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from sidekick.errors import SidekickError, UsageError
from sidekick.host.acl import Acl, AclUnsupported
from sidekick.host.files import atomic_write, remove_leftovers
from sidekick.host.proc import Runner
from sidekick.log import kv, register_secret
from sidekick.paths import host_path

log = logging.getLogger(__name__)

USAGE = """\
usage: cert-deployer

Write every KUBE_* variable as <lower-dashed>.pem and every KUBECFG_* variable as
<lower-dashed>.yaml into $CRTS_DEPLOY_PATH (/etc/kubernetes/ssl), mode 0600. A .pem is
rewritten only when missing or with FORCE_DEPLOY=true, a .yaml only when missing. With
ETCD_UID and ETCD_GID, the kube-etcd files belong to that user and the tree gets ACLs for it.
"""

DEFAULT_DIR = "/etc/kubernetes/ssl"
FILE_MODE = 0o600
DIR_MODE = 0o755
CA_FILE = "kube-ca.pem"
CA_MODE_FOR_ETCD_USER = 0o644
EXPIRY_WARNING = dt.timedelta(days=30)
# Lower-dashed names RKE produces: letters, digits, dashes, dots; colons for IPv6 node
# addresses (kube-etcd-fd00::1). Nothing that could name another directory.
_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9.:-]*$")

Kind = Literal["pem", "yaml"]
Action = Literal["write", "keep", "skip"]
Existing = Literal["missing", "file", "symlink", "other"]


@dataclass(frozen=True)
class Item:
    env: str
    kind: Kind
    filename: str | None  # None: the name was refused
    problem: str = ""


def item_for(env_name: str) -> Item | None:
    """The file an environment variable deploys to, or None when it is not a certificate variable."""
    if env_name.startswith("KUBECFG_"):
        kind: Kind = "yaml"
    elif env_name.startswith("KUBE_"):
        kind = "pem"
    else:
        return None
    stem = env_name.lower().replace("_", "-")
    if not _SAFE_NAME.match(stem) or ".." in stem:
        return Item(env_name, kind, None, "name would not be a plain file name in the directory")
    return Item(env_name, kind, f"{stem}.{kind}")


def plan(env: Mapping[str, str]) -> list[Item]:
    """Every certificate variable, in file-name order (stable logs, whatever the env order)."""
    items = [item for name in env if (item := item_for(name)) is not None]
    return sorted(items, key=lambda i: (i.filename or "", i.env))


def decide(item: Item, existing: Existing, *, force: bool) -> tuple[Action, str]:
    """Write, keep or skip one file, and why."""
    if item.filename is None:
        return "skip", item.problem
    if existing == "symlink":
        return "skip", "a symlink is in the way; not following or replacing it"
    if existing == "other":
        return "skip", "something other than a regular file is in the way"
    if existing == "missing":
        return "write", "missing"
    if item.kind == "pem" and force:
        return "write", "FORCE_DEPLOY=true"
    return "keep", "already present"


def content(value: str) -> bytes:
    """What the original wrote: the value with trailing newlines trimmed, plus one newline."""
    return (value.rstrip("\n") + "\n").encode()


def parse_etcd_ids(env: Mapping[str, str]) -> tuple[int, int] | None:
    uid_text, gid_text = env.get("ETCD_UID", "").strip(), env.get("ETCD_GID", "").strip()
    if not uid_text or not gid_text:
        if uid_text or gid_text:
            log.warning("only one of ETCD_UID and ETCD_GID is set; etcd ownership and ACLs left alone")
        return None
    if not (uid_text.isdigit() and gid_text.isdigit()):
        raise UsageError(f"ETCD_UID={uid_text!r} and ETCD_GID={gid_text!r} must be numeric ids")
    return int(uid_text), int(gid_text)


def is_etcd_file(filename: str) -> bool:
    """The original's ``*kube-etcd*.pem`` glob."""
    return "kube-etcd" in filename and filename.endswith(".pem")


# --- checks on what RKE sent (warnings only) ------------------------------------------------
def check_bundle(items: list[Item], env: Mapping[str, str], *, now: dt.datetime) -> list[str]:
    """Human-readable problems in the PEM values; never includes the values themselves."""
    problems: list[str] = []
    certs: dict[str, x509.Certificate] = {}
    keys: dict[str, PrivateKeyTypes] = {}
    for item in items:
        if item.kind != "pem" or item.filename is None:
            continue
        data = content(env[item.env])
        if not data.strip():
            problems.append(f"{item.env} is empty")
            continue
        if item.env.endswith("_KEY"):
            try:
                # Only the public half is compared; OpenSSL's full RSA consistency check costs
                # ~40 ms a key, most of this tool's run time for nothing it uses.
                keys[item.env[: -len("_KEY")]] = serialization.load_pem_private_key(
                    data, password=None, unsafe_skip_rsa_key_validation=True)
            except (ValueError, TypeError):
                problems.append(f"{item.env} is not a readable unencrypted PEM private key")
            continue
        try:
            chain = x509.load_pem_x509_certificates(data)
        except ValueError:
            problems.append(f"{item.env} is not a readable PEM certificate")
            continue
        certs[item.env] = chain[0]
        for cert in chain:
            left = cert.not_valid_after_utc - now
            if left <= dt.timedelta(0):
                problems.append(f"{item.env} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
            elif left < EXPIRY_WARNING:
                problems.append(f"{item.env} expires in {left.days} days ({cert.not_valid_after_utc:%Y-%m-%d})")
    for base, key in keys.items():
        leaf = certs.get(base)
        if leaf is None:
            continue
        as_der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*as_der) != leaf.public_key().public_bytes(*as_der):
            problems.append(f"{base}_KEY does not match the certificate in {base}")
    return problems


# --- effects ---------------------------------------------------------------------------------
def existing_state(path: Path) -> Existing:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


@dataclass
class Summary:
    written: int = 0
    kept: int = 0
    skipped: int = 0


def deploy(env: Mapping[str, str], *, acl: Acl, now: dt.datetime | None = None) -> Summary:
    target = env.get("CRTS_DEPLOY_PATH") or DEFAULT_DIR
    if not target.startswith("/"):
        raise UsageError(f"CRTS_DEPLOY_PATH={target!r} must be an absolute path")
    directory = host_path(target)
    force = env.get("FORCE_DEPLOY") == "true"
    etcd_ids = parse_etcd_ids(env)
    items = plan(env)
    for item in items:
        if item.kind == "pem" and item.env.endswith("_KEY"):
            register_secret(env[item.env])

    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(directory, DIR_MODE)
    except OSError as err:
        raise SidekickError(f"cannot use certificate directory {directory}: {err.strerror}") from None
    # cert-deployer alone writes these names: its own leftovers go at once.
    remove_leftovers(directory, names=[i.filename for i in items if i.filename], min_age=0)

    for problem in check_bundle(items, env, now=now or dt.datetime.now(dt.UTC)):
        log.warning("certificate bundle: %s (deployed anyway)", problem)

    summary = Summary()
    for item in items:
        path = directory / item.filename if item.filename else None
        action, why = decide(item, existing_state(path) if path else "missing", force=force)
        if action == "skip" or path is None:
            summary.skipped += 1
            log.warning("skipped %s (file %s): %s", item.env, item.filename or "-", why)
            continue
        if action == "keep":
            summary.kept += 1
            log.debug("kept", extra=kv(file=item.filename, reason=why))
            continue
        mode, uid, gid = FILE_MODE, None, None
        if etcd_ids is not None and item.filename == CA_FILE:
            mode = CA_MODE_FOR_ETCD_USER
        if etcd_ids is not None and item.filename and is_etcd_file(item.filename):
            uid, gid = etcd_ids
        atomic_write(path, content(env[item.env]), mode=mode, uid=uid, gid=gid)
        summary.written += 1
        log.info("written", extra=kv(file=item.filename, mode=f"{mode:04o}", reason=why))

    if etcd_ids is not None:
        give_to_etcd(directory, *etcd_ids, acl=acl)
    log.info("certificates deployed", extra=kv(
        path=directory, written=summary.written, kept=summary.kept, skipped=summary.skipped))
    return summary


def give_to_etcd(directory: Path, uid: int, gid: int, *, acl: Acl) -> None:
    """The original's steps for etcd running as ``uid:gid``, in its order; symlinks untouched."""
    try:
        acl.set_mask(directory, "rX")
        acl.remove_ids(directory, uid=uid, gid=gid)
    except AclUnsupported as err:
        log.warning("ACLs not applied: %s; ownership and modes still set", err)
    for entry in sorted(directory.iterdir()):
        if is_etcd_file(entry.name) and existing_state(entry) == "file":
            os.chown(entry, uid, gid, follow_symlinks=False)
    ca = directory / CA_FILE
    if existing_state(ca) == "file":
        os.chmod(ca, CA_MODE_FOR_ETCD_USER)
    os.chmod(directory, DIR_MODE)
    log.info("etcd user can read its certificates", extra=kv(uid=uid, gid=gid))


def main(argv: list[str]) -> int:
    if argv:
        raise UsageError(f"cert-deployer takes no arguments (got {argv[0]!r}); it reads KUBE_* variables")
    deploy(os.environ, acl=Acl(Runner()))
    return 0
