"""Which snapshots expire: pure functions over names, times and sizes (no I/O).

Three rules, as the original applies them (CONTRACT 3.1, 3.2, 3.12):

- rolling, local: a file whose name before the first ``_`` is an RFC 3339 time older than
  ``tick - retention`` (``2024-10-04T12:00:00Z_etcd.zip``);
- rolling, S3: the same, only for keys directly inside the folder that match
  ``.+_etcd(|.zip|.zip.age)$`` once the ``<folder>/`` prefix is stripped (rancher/rancher#24544: the
  folder used to break the time parse, so nothing was ever deleted);
- one-shot with a Rancher name (``c-<id>-<r|m><l|s>-<rand>_<time>``): local files with the
  same cluster prefix, recurring (``-r?-``) and modified before ``now - retention``.

Anything else is never selected: ``rke_etcd_snapshot_*`` names, temp files, directories,
keys in sub-folders.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sidekick.host.files import TEMP_PREFIX

# Go's time.RFC3339 as time.Parse accepts it (fractional seconds allowed).
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
)
_S3_NAME = re.compile(r"^.+_etcd(\.zip(\.age)?)?$")  # .zip.age: age-encrypted (sidekick.etcd.crypto)
_RANCHER_PREFIX = re.compile(r"^c-[a-z0-9].*?-")
_RANCHER_RECURRING = re.compile(r"^c-[a-z0-9].*?-r.-")


def parse_rfc3339(text: str) -> dt.datetime | None:
    m = _RFC3339.match(text)
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = m.group(7)
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    zone = m.group(8)
    if zone == "Z":
        tz = dt.UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            return None
        tz = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
    try:
        return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        return None


def name_time(filename: str) -> dt.datetime | None:
    """The time encoded before the first ``_`` of a rolling snapshot name, or None."""
    head, sep, _ = filename.partition("_")
    return parse_rfc3339(head) if sep else None


def rolling_name(tick: dt.datetime) -> str:
    """``<tick RFC3339>_etcd`` in UTC, second precision (``2024-10-04T12:00:00Z_etcd``)."""
    return tick.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") + "_etcd"


@dataclass(frozen=True)
class LocalFile:
    name: str
    mtime: dt.datetime
    is_file: bool = True


def local_expired(files: Iterable[LocalFile], *, tick: dt.datetime, retention: dt.timedelta) -> list[str]:
    """Rolling local retention: files named ``<RFC3339>_...`` older than ``tick - retention``."""
    cutoff = tick - retention
    expired = []
    for f in files:
        if not f.is_file or f.name.startswith(TEMP_PREFIX):
            continue
        when = name_time(f.name)
        if when is not None and when < cutoff:
            expired.append(f.name)
    return sorted(expired)


def s3_expired(keys: Iterable[str], *, folder: str, tick: dt.datetime, retention: dt.timedelta) -> list[str]:
    """Rolling S3 retention over object keys (full keys in, full keys out)."""
    cutoff = tick - retention
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    expired = []
    for key in keys:
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if "/" in name or not _S3_NAME.match(name):
            continue
        when = name_time(name)
        if when is not None and when < cutoff:
            expired.append(key)
    return expired


def rancher_prefix(name: str) -> str:
    """The cluster prefix of a Rancher snapshot name (``c-abcde-``), or ``""``."""
    m = _RANCHER_PREFIX.match(name)
    return m.group(0) if m else ""


def rancher_expired(
    files: Iterable[LocalFile], *, name: str, now: dt.datetime, retention: dt.timedelta
) -> list[str]:
    """After a one-shot save of a Rancher-named snapshot: that cluster's recurring local
    snapshots modified before ``now - retention`` (by mtime, as the original)."""
    prefix = rancher_prefix(name)
    if not prefix or retention <= dt.timedelta(0):
        return []
    cutoff = now - retention
    return sorted(
        f.name
        for f in files
        if f.is_file
        and f.name.startswith(prefix)
        and _RANCHER_RECURRING.match(f.name)
        and f.mtime < cutoff
        and f.name != name
        and f.name not in (f"{name}.zip", f"{name}.zip.age")
    )


def s3_snapshot_keys(keys: Iterable[str], *, prefix: str) -> list[str]:
    """The objects that ARE snapshot ``prefix`` (``[folder/]name``): the key itself or the key
    with one extension (``name.zip``). The original deleted every key starting with the
    prefix, so deleting ``tiny1`` also deleted ``tiny10.zip`` (CONTRACT 12)."""
    selected = []
    for key in keys:
        if key in (prefix, f"{prefix}.zip.age"):  # .zip.age: the same snapshot, age-encrypted
            selected.append(key)
            continue
        base = key.rsplit("/", 1)[-1]
        dot = base.rfind(".")
        if dot > 0 and key[: len(key) - (len(base) - dot)] == prefix:
            selected.append(key)
    return selected
