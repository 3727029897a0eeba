"""Which snapshots to keep and which to delete: pure functions over listings (no I/O).

A listing (local files or S3 keys) maps into :class:`Snapshot` records; :func:`plan` turns
them and a :class:`Policy` into a :class:`Plan` that says, for every record, keep, delete or
skip, and which rule decided. A real prune deletes ``plan.deleted`` and nothing else, so a
dry run prints exactly what a real run would do.

Scope. A policy only ever deletes what this node's rotation has always owned:

- rolling, local: files in /backup named ``<RFC3339>_...`` (the time is the part before the
  first ``_``); those named exactly ``<RFC3339>_etcd``, ``<RFC3339>_etcd.zip`` or ``.zip.age``
  (age-encrypted) are snapshots,
  the others are subject to the age rule only (it always deleted them);
- rolling, S3: keys directly inside the folder matching ``.+_etcd(|.zip|.zip.age)$`` once the
  ``<folder>/`` prefix is stripped, with a parseable time (rancher/rancher#24544: the folder
  used to break the time parse, so nothing was ever deleted);
- one-shot with a Rancher name (``c-<id>-<r|m><l|s>-<rand>_<time>``): local files of the same
  cluster prefix that are recurring (``-r?-``), dated by mtime; the snapshot just taken is kept
  and counts as a snapshot.

Anything else is skipped, never deleted: ``rke_etcd_snapshot_*`` names, temp files,
directories, keys outside the folder or in sub-folders, other clusters' names.

Policy. Every rule is a keep rule; a snapshot is deleted only when no rule keeps it:

- ``within`` (the age rule, ``--retention``): keep what is not older than ``now - within``;
- ``last`` N: keep the N newest snapshots;
- ``hourly``/``daily``/``weekly``/``monthly`` N: keep the newest snapshot of each of the N most
  recent UTC hours/days/ISO weeks/months that have one;
- ``floor`` N: keep the N newest successful snapshots whatever else is set (default 1).

Only successful snapshots (a size that is unknown or non-zero) are counted by ``last``, the
calendar rules and the floor; the others, and the ``<RFC3339>_...`` files that are not
snapshots, are deleted by the age rule alone. Files of one instant (``T_etcd`` and
``T_etcd.zip``) are one snapshot for counting. Local files and S3 objects are planned apart,
each with its own floor. A policy with no rule besides the floor deletes nothing.

Why the floor defaults to 1: RKE's rotations run only right after a successful save, and the
age rule keeps that snapshot (its time is the tick, or the mtime now, and the retention is
positive), so a floor of 1 never changes what they delete; it keeps the last copy wherever a
rotation runs without a fresh snapshot. A larger floor would keep copies RKE's retention
says to delete after an outage or with a short retention, so it is opt-in.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sidekick.errors import UsageError
from sidekick.etcd.options import DEFAULT_FLOOR, KEEP_OPTIONS, format_go_duration
from sidekick.host.files import TEMP_PREFIX

# Go's time.RFC3339 as time.Parse accepts it (fractional seconds allowed).
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
)
_S3_NAME = re.compile(r"^.+_etcd(\.zip(\.age)?)?$")
_RANCHER_PREFIX = re.compile(r"^c-[a-z0-9].*?-")
_RANCHER_RECURRING = re.compile(r"^c-[a-z0-9].*?-r.-")
# after the first "_" of a rolling snapshot's name (.zip.age: age-encrypted, sidekick.etcd.crypto)
_ROLLING_TAILS = ("etcd", "etcd.zip", "etcd.zip.age")


def parse_rfc3339(text: str) -> dt.datetime | None:
    m = _RFC3339.match(text)
    if not m:
        return None
    year, month, day, hour, minute, second, frac, zone = m.groups()
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    if zone == "Z":
        tz = dt.UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            return None
        tz = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
    try:
        return dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)
    except ValueError:
        return None


def name_time(filename: str) -> dt.datetime | None:
    """The time encoded before the first ``_`` of a rolling snapshot name, or None."""
    head, sep, _ = filename.partition("_")
    return parse_rfc3339(head) if sep else None


def rolling_name(tick: dt.datetime) -> str:
    """``<tick RFC3339>_etcd`` in UTC, second precision (``2024-10-04T12:00:00Z_etcd``)."""
    return tick.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") + "_etcd"


def rancher_prefix(name: str) -> str:
    """The cluster prefix of a Rancher snapshot name (``c-abcde-``), or ``""``."""
    m = _RANCHER_PREFIX.match(name)
    return m.group(0) if m else ""


# --- listings -> snapshots ------------------------------------------------------------------
class Where(enum.StrEnum):
    LOCAL = "local"
    S3 = "s3"


class Scope(enum.StrEnum):
    """What a policy may do with a listed entry."""

    SNAPSHOT = "snapshot"  # every rule applies; counted when successful
    AGE_ONLY = "age-only"  # named ``<RFC3339>_...`` but not a snapshot: only the age rule deletes it
    CURRENT = "current"  # the snapshot just taken: counted, never deleted
    FOREIGN = "foreign"  # not this node's rotation: never deleted


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One listed entry: a file name in /backup or a full S3 key.

    ``time`` comes from the name (rolling) or the mtime (Rancher names); None when out of
    scope. ``size`` None means unknown (a listing that does not say), which counts as
    successful; 0 never does. ``note`` says why a foreign entry is skipped.
    """

    name: str
    where: Where
    time: dt.datetime | None
    size: int | None
    scope: Scope
    note: str = ""

    @property
    def successful(self) -> bool:
        return self.scope in (Scope.SNAPSHOT, Scope.CURRENT) and self.size != 0


@dataclass(frozen=True)
class LocalFile:
    """One entry of /backup as ``os.scandir`` shows it (``size`` None: not looked at)."""

    name: str
    mtime: dt.datetime
    is_file: bool = True
    size: int | None = None


def _foreign(name: str, where: Where, size: int | None, note: str) -> Snapshot:
    return Snapshot(name, where, None, size, Scope.FOREIGN, note)


def _rolling(name: str, base: str, where: Where, size: int | None) -> Snapshot:
    """``base`` is the name without any folder: the part a rolling name is parsed from."""
    head, sep, tail = base.partition("_")
    when = parse_rfc3339(head) if sep else None
    if when is None:
        return _foreign(name, where, size, "not a rolling snapshot name")
    scope = Scope.SNAPSHOT if tail in _ROLLING_TAILS else Scope.AGE_ONLY
    return Snapshot(name, where, when, size, scope)


def local_rolling(files: Iterable[LocalFile]) -> list[Snapshot]:
    """The rolling rotation's view of /backup."""
    out = []
    for f in files:
        if not f.is_file:
            out.append(_foreign(f.name, Where.LOCAL, f.size, "not a regular file"))
        elif f.name.startswith(TEMP_PREFIX):
            out.append(_foreign(f.name, Where.LOCAL, f.size, "temporary file"))
        else:
            out.append(_rolling(f.name, f.name, Where.LOCAL, f.size))
    return out


def s3_rolling(objects: Iterable[tuple[str, int | None]], *, folder: str) -> list[Snapshot]:
    """The rolling rotation's view of a bucket listing: ``(key, size)`` pairs, full keys."""
    stripped = folder.strip("/")
    prefix = f"{stripped}/" if stripped else ""
    out = []
    for key, size in objects:
        if not key.startswith(prefix):
            out.append(_foreign(key, Where.S3, size, "outside the folder"))
            continue
        base = key[len(prefix):]
        if "/" in base:
            out.append(_foreign(key, Where.S3, size, "in a sub-folder"))
        elif not _S3_NAME.match(base):
            out.append(_foreign(key, Where.S3, size, "not a rolling snapshot name"))
        else:
            out.append(_rolling(key, base, Where.S3, size))
    return out


def local_rancher(files: Iterable[LocalFile], *, name: str) -> list[Snapshot]:
    """The once rotation's view of /backup after saving the Rancher-named snapshot ``name``:
    that cluster's recurring snapshots, dated by mtime, and ``name`` itself as current."""
    prefix = rancher_prefix(name)
    out = []
    for f in files:
        if not f.is_file:
            out.append(_foreign(f.name, Where.LOCAL, f.size, "not a regular file"))
        elif f.name in (name, f"{name}.zip", f"{name}.zip.age"):
            out.append(Snapshot(f.name, Where.LOCAL, f.mtime, f.size, Scope.CURRENT))
        elif not prefix or not f.name.startswith(prefix):
            out.append(_foreign(f.name, Where.LOCAL, f.size, "not this cluster's Rancher snapshot"))
        elif not _RANCHER_RECURRING.match(f.name):
            out.append(_foreign(f.name, Where.LOCAL, f.size, "not a recurring Rancher snapshot"))
        else:
            out.append(Snapshot(f.name, Where.LOCAL, f.mtime, f.size, Scope.SNAPSHOT))
    return out


# --- the policy ---------------------------------------------------------------------------
MAX_KEEP = 1_000_000  # a snapshot a minute for almost two years; anything larger is a typo


@dataclass(frozen=True)
class Policy:
    """Keep rules (see the module docstring); 0 turns a count rule off, None the age rule."""

    within: dt.timedelta | None = None
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    floor: int = DEFAULT_FLOOR

    @property
    def has_rules(self) -> bool:
        """Whether any rule besides the floor is set: with none, nothing is deleted (the floor
        guards against deleting, it never asks for it)."""
        return self.within is not None or any((self.last, self.hourly, self.daily, self.weekly, self.monthly))

    def describe(self) -> str:
        """``keep-within=72h0m0s keep-daily=7 keep-floor=1``: the rules in force, for logs."""
        parts = [] if self.within is None else [f"keep-within={format_go_duration(self.within)}"]
        parts += [f"{o.flag[2:]}={getattr(self, o.field)}" for o in KEEP_OPTIONS if getattr(self, o.field)]
        return " ".join(parts) or "keep everything"



_COUNT = re.compile(r"[0-9]+")


def parse_count(text: str, *, source: str) -> int:
    """A keep count from a flag or env value: a whole number from 0 to :data:`MAX_KEEP`."""
    value = text.strip()
    shown = repr(text if len(text) <= 40 else f"{text[:40]}...")
    if value.startswith("-") and _COUNT.fullmatch(value[1:]):
        raise UsageError(f"{source} must not be negative, got {shown}")
    if not _COUNT.fullmatch(value):
        raise UsageError(f"{source} must be a whole number from 0 to {MAX_KEEP}, got {shown}")
    digits = value.lstrip("0") or "0"  # the length check keeps int() off a 5,000-digit string
    if len(digits) > len(str(MAX_KEEP)) or int(digits) > MAX_KEEP:
        raise UsageError(f"{source} must be at most {MAX_KEEP}, got {shown}")
    return int(digits)


def parse_policy(*, within: dt.timedelta | None, flags: Mapping[str, str | None],
                 env: Mapping[str, str]) -> Policy:
    """The policy from ``--retention`` (``within``), the keep flags as given (``flags``, keyed
    by :attr:`KeepOption.param`, None when absent) and the ``SIDEKICK_KEEP_*`` variables.

    A flag beats its variable; an empty variable counts as unset (templated environments
    set them empty), an empty flag does not.
    """
    counts: dict[str, int] = {}
    for option in KEEP_OPTIONS:
        given = flags.get(option.param)
        if given is not None:
            counts[option.field] = parse_count(given, source=option.flag)
        elif env.get(option.env, "").strip():
            counts[option.field] = parse_count(env[option.env], source=option.env)
    return Policy(within=within, **counts)


# --- the plan -----------------------------------------------------------------------------
class Action(enum.StrEnum):
    KEEP = "keep"
    DELETE = "delete"
    SKIP = "skip"  # out of scope


@dataclass(frozen=True, slots=True)
class Decision:
    snapshot: Snapshot
    action: Action
    why: tuple[str, ...]

    def describe(self) -> str:
        """One dry-run line: ``delete s3 f/2024-10-01T00:00:00Z_etcd.zip (older than 72h0m0s)``."""
        return f"{self.action} {self.snapshot.where} {self.snapshot.name} ({'; '.join(self.why)})"


@dataclass(frozen=True)
class Plan:
    """Every listed entry with its action, newest first within each place (local, then S3)."""

    policy: Policy
    now: dt.datetime
    decisions: tuple[Decision, ...]

    @property
    def deleted(self) -> list[Snapshot]:
        return [d.snapshot for d in self.decisions if d.action is Action.DELETE]

    @property
    def kept(self) -> list[Snapshot]:
        return [d.snapshot for d in self.decisions if d.action is Action.KEEP]


# Calendar rules: a bucket key (cheap, compared for every instant scanned) and the label a
# reason shows, both of a UTC time. ISO weeks start on Monday, as date(1, 1, 1) does.
_BUCKETS: tuple[tuple[str, Callable[[dt.datetime], object], Callable[[dt.datetime], str]], ...] = (
    ("hourly", lambda u: (u.year, u.month, u.day, u.hour), lambda u: u.strftime("%Y-%m-%dT%H")),
    ("daily", lambda u: u.toordinal(), lambda u: u.strftime("%Y-%m-%d")),
    ("weekly", lambda u: (u.toordinal() - 1) // 7, lambda u: "{}-W{:02d}".format(*u.isocalendar()[:2])),
    ("monthly", lambda u: (u.year, u.month), lambda u: u.strftime("%Y-%m")),
)
_OLDEST = dt.datetime.min.replace(tzinfo=dt.UTC)


def _newest_first(s: Snapshot) -> tuple[bool, dt.datetime, str, int, str, str]:
    """A total order, so the plan does not depend on the listing's order."""
    return (s.time is not None, s.time or _OLDEST, s.name, -1 if s.size is None else s.size, s.scope, s.note)


def _count_rules(instants: list[dt.datetime], policy: Policy) -> dict[dt.datetime, list[str]]:
    """Why each instant (distinct, newest first) is kept by the counting rules and the floor."""
    why: dict[dt.datetime, list[str]] = {}
    for t in instants[: policy.last]:
        why.setdefault(t, []).append(f"keep-last={policy.last}")
    utc = [t.astimezone(dt.UTC) for t in instants] if any(getattr(policy, f) for f, _, _ in _BUCKETS) else []
    for field, key, label in _BUCKETS:
        n = getattr(policy, field)
        taken, current = 0, None
        for t, u in zip(instants, utc, strict=True) if n else ():
            bucket = key(u)
            if bucket == current:  # newest first, so a bucket's instants are adjacent
                continue
            if taken == n:
                break
            taken, current = taken + 1, bucket
            why.setdefault(t, []).append(f"keep-{field}={n} {label(u)}")
    for t in instants[: policy.floor]:
        why.setdefault(t, []).append(f"keep-floor={policy.floor}")
    return why


_NO_RULE = ("no keep rule given",)
_NOT_COUNTED = ("not a successful snapshot: only the age rule deletes it",)
_KEPT_BY_NONE = ("kept by no rule",)


def _plan_place(items: list[Snapshot], policy: Policy, now: dt.datetime) -> list[Decision]:
    """Decide the entries of one place, given newest first."""
    young: tuple[str, ...] = ()
    older: tuple[str, ...] = ()
    cutoff = None
    if policy.within is not None:
        cutoff = now - policy.within
        young = (f"keep-within={format_go_duration(policy.within)}",)
        older = (f"older than {format_go_duration(policy.within)}",)
    # The counting rules choose among successful snapshots only, so a broken copy never takes
    # the slot of its day; the files of one instant (T_etcd, T_etcd.zip) share its fate.
    successes = [s.successful for s in items]
    instants = sorted({s.time for s, ok in zip(items, successes, strict=True) if ok and s.time is not None},
                      reverse=True)
    counted = {t: tuple(why) for t, why in _count_rules(instants, policy).items()}
    out = []
    for s, successful in zip(items, successes, strict=True):
        t = s.time
        if t is None or s.scope is Scope.FOREIGN:
            out.append(Decision(s, Action.SKIP, (s.note or "out of scope",)))
            continue
        why = counted.get(t, ()) if successful else ()
        if cutoff is not None and t >= cutoff:
            why = young + why
        if s.scope is Scope.CURRENT:
            out.append(Decision(s, Action.KEEP, ("just taken", *why)))
        elif why:
            out.append(Decision(s, Action.KEEP, why))
        elif cutoff is not None:
            out.append(Decision(s, Action.DELETE, older))
        elif not policy.has_rules:
            out.append(Decision(s, Action.KEEP, _NO_RULE))
        elif not successful:
            out.append(Decision(s, Action.KEEP, _NOT_COUNTED))
        else:
            out.append(Decision(s, Action.DELETE, _KEPT_BY_NONE))
    return out


def plan(snapshots: Iterable[Snapshot], policy: Policy, now: dt.datetime) -> Plan:
    """Decide every entry; each place (local, S3) is planned on its own, floor included."""
    places: dict[Where, list[Snapshot]] = {where: [] for where in Where}
    for s in sorted(snapshots, key=_newest_first, reverse=True):
        places[s.where].append(s)
    decisions: list[Decision] = []
    for items in places.values():
        decisions += _plan_place(items, policy, now)
    return Plan(policy, now, tuple(decisions))


@dataclass(frozen=True)
class Outcome:
    remaining: list[Snapshot]
    deleted: list[Snapshot]


def apply(plan: Plan, present: Iterable[Snapshot]) -> Outcome:
    """What carrying out ``plan`` leaves of ``present``: exactly the planned deletions that
    are still there go; anything listed since the plan was made stays."""
    doomed = {(s.where, s.name) for s in plan.deleted}
    remaining: list[Snapshot] = []
    deleted: list[Snapshot] = []
    for s in present:
        (deleted if (s.where, s.name) in doomed else remaining).append(s)
    return Outcome(remaining, deleted)


# --- the rules RKE's calls use ------------------------------------------------------------
def _age_only(retention: dt.timedelta) -> Policy:
    """Exactly the age rule: no floor, so results equal the original's on any listing."""
    return Policy(within=retention, floor=0)


def local_expired(files: Iterable[LocalFile], *, tick: dt.datetime, retention: dt.timedelta) -> list[str]:
    """Rolling local retention: files named ``<RFC3339>_...`` older than ``tick - retention``."""
    return sorted(s.name for s in plan(local_rolling(files), _age_only(retention), tick).deleted)


def s3_expired(keys: Iterable[str], *, folder: str, tick: dt.datetime, retention: dt.timedelta) -> list[str]:
    """Rolling S3 retention over object keys (full keys in, full keys out, in listing order)."""
    listed = list(keys)
    doomed = {s.name for s in plan(s3_rolling(((k, None) for k in listed), folder=folder),
                                   _age_only(retention), tick).deleted}
    return [k for k in listed if k in doomed]


def rancher_expired(
    files: Iterable[LocalFile], *, name: str, now: dt.datetime, retention: dt.timedelta
) -> list[str]:
    """After a one-shot save of a Rancher-named snapshot: that cluster's recurring local
    snapshots modified before ``now - retention``."""
    if not rancher_prefix(name) or retention <= dt.timedelta(0):
        return []
    return sorted(s.name for s in plan(local_rancher(files, name=name), _age_only(retention), now).deleted)


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
