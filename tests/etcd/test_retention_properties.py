"""Properties of the retention engine over generated listings and histories of 1,000+ snapshots.

The ``original_*`` functions restate the age rules of CONTRACT 3.1/3.2 independently of the
engine; the age-only policy must give exactly their results (bench/etcd_retention.py times
them as the baseline).
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Iterable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidekick.errors import UsageError
from sidekick.etcd.options import format_go_duration
from sidekick.etcd.retention import (
    MAX_KEEP,
    Action,
    Decision,
    LocalFile,
    Policy,
    Snapshot,
    Where,
    apply,
    local_expired,
    local_rancher,
    local_rolling,
    name_time,
    parse_count,
    plan,
    rancher_expired,
    rolling_name,
    s3_expired,
    s3_rolling,
)
from sidekick.host.files import TEMP_PREFIX

UTC = dt.UTC
PROPS = settings(database=None, deadline=None, max_examples=60,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HISTORY = settings(PROPS, max_examples=25)


# --- the original rules, restated ---------------------------------------------------------
def original_local_expired(files: Iterable[LocalFile], *, tick: dt.datetime, retention: dt.timedelta) -> list[str]:
    cutoff = tick - retention
    return sorted(f.name for f in files
                  if f.is_file and not f.name.startswith(TEMP_PREFIX)
                  and (when := name_time(f.name)) is not None and when < cutoff)


def original_s3_expired(keys: Iterable[str], *, folder: str, tick: dt.datetime, retention: dt.timedelta) -> list[str]:
    cutoff = tick - retention
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    expired = []
    for key in keys:
        name = key[len(prefix):]
        if (key.startswith(prefix) and "/" not in name and re.match(r"^.+_etcd(\.zip)?$", name)
                and (when := name_time(name)) is not None and when < cutoff):
            expired.append(key)
    return expired


def original_rancher_expired(files: Iterable[LocalFile], *, name: str, now: dt.datetime,
                             retention: dt.timedelta) -> list[str]:
    m = re.match(r"^c-[a-z0-9].*?-", name)
    if not m or retention <= dt.timedelta(0):
        return []
    return sorted(f.name for f in files
                  if f.is_file and f.name.startswith(m.group(0)) and re.match(r"^c-[a-z0-9].*?-r.-", f.name)
                  and f.mtime < now - retention and f.name not in (name, f"{name}.zip"))


# --- strategies ---------------------------------------------------------------------------
times = st.datetimes(min_value=dt.datetime(2023, 6, 1), max_value=dt.datetime(2025, 6, 1), timezones=st.just(UTC))
sizes = st.sampled_from([None, 0, 1, 4096])
offsets = st.sampled_from([dt.timedelta(0), dt.timedelta(hours=2), dt.timedelta(hours=-5, minutes=-30)])


@st.composite
def stamps(draw: st.DrawFn) -> tuple[str, dt.datetime]:
    """An RFC 3339 text (Z, offset, fractional seconds) and the instant it names."""
    t = draw(times)
    local = t.astimezone(dt.timezone(draw(offsets)))
    text = local.isoformat(timespec=draw(st.sampled_from(["seconds", "milliseconds"])))
    return text.replace("+00:00", "Z"), t


@st.composite
def names(draw: st.DrawFn) -> str:
    """Rolling names, near misses, other producers' names and junk."""
    stamp, _ = draw(stamps())
    kind = draw(st.sampled_from(["rolling", "rolling", "rolling", "near", "rke", "rancher", "temp", "junk"]))
    if kind == "rolling":
        return stamp + draw(st.sampled_from(["_etcd", "_etcd.zip"]))
    if kind == "near":
        return stamp + draw(st.sampled_from(["_etcd.zip.bak", "_other.zip", "_x_etcd.zip", "_etcd.part", "", "_"]))
    if kind == "rke":
        return f"rke_etcd_snapshot_{stamp}"
    if kind == "rancher":
        return f"c-{draw(st.sampled_from(['abcde', 'zzzzz']))}-{draw(st.sampled_from(['rl', 'rs', 'ml', 'ms']))}-x7k2p_{stamp}.zip"
    if kind == "temp":
        return f"{TEMP_PREFIX}{stamp}_etcd.zip.ab12"
    return draw(st.text(max_size=40))


local_files = st.lists(st.builds(LocalFile, names(), times, st.sampled_from([True, True, True, False]), sizes),
                       max_size=60)
folders = st.sampled_from(["", "cluster-a", "/cluster-a/", "a/b"])


@st.composite
def s3_keys(draw: st.DrawFn) -> list[str]:
    where = st.sampled_from(["cluster-a/", "", "cluster-ab/", "cluster-a/sub/", "a/b/"])
    return draw(st.lists(st.builds(lambda w, n: w + n, where, names()), max_size=60))


retentions = st.timedeltas(min_value=dt.timedelta(days=-2), max_value=dt.timedelta(days=400))
policies = st.builds(
    Policy,
    within=st.none() | st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=60)),
    last=st.integers(0, 40), hourly=st.integers(0, 48), daily=st.integers(0, 40),
    weekly=st.integers(0, 12), monthly=st.integers(0, 12), floor=st.integers(0, 12),
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Snapshot], dt.datetime]:
    """A node's life: 1,000 to 2,500 ticks with jitter, outages and failed copies, local and
    S3 (with strangers in the bucket), then ``now`` possibly long after etcd went down."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    count = draw(st.integers(1000, 2500))
    step = draw(st.sampled_from([dt.timedelta(minutes=5), dt.timedelta(minutes=37), dt.timedelta(hours=1),
                                 dt.timedelta(hours=12)]))
    start = draw(times)
    outages = [(rng.randrange(count), rng.randrange(1, count // 4)) for _ in range(rng.randrange(4))]
    files: list[LocalFile] = []
    objects: list[tuple[str, int | None]] = []
    i, taken = -1, 0
    while taken < count:
        i += 1
        if any(a <= i < a + n for a, n in outages):
            continue
        taken += 1
        t = start + i * step + dt.timedelta(seconds=rng.randrange(-2, 3))
        name = rolling_name(t)
        size = 0 if rng.random() < 0.02 else rng.randrange(1, 10**9)
        files.append(LocalFile(name + ".zip", t, size=size))
        if rng.random() < 0.01:
            files.append(LocalFile(name, t, size=rng.randrange(0, 10**9)))  # a raw file beside its zip
        if rng.random() < 0.01:
            files.append(LocalFile(name[:-5] + "_notes.txt", t, size=10))
        if rng.random() < 0.9:
            objects.append((f"f/{name}.zip", None if rng.random() < 0.5 else size))
        if rng.random() < 0.02:
            objects.append((rng.choice(["f/sub/", "g/", "", "f/rke_etcd_snapshot_"]) + name + ".zip", 1))
        if rng.random() < 0.01:
            files.append(LocalFile(f"rke_etcd_snapshot_{name}.zip", t, size=1))
    last = start + i * step
    now = last + draw(st.sampled_from([dt.timedelta(0), step, dt.timedelta(days=3), dt.timedelta(days=40)]))
    snaps = local_rolling(files) + s3_rolling(objects, folder="f")
    rng.shuffle(snaps)
    return snaps, now


# --- helpers ------------------------------------------------------------------------------
def instants(snaps: Iterable[Snapshot], where: Where) -> list[dt.datetime]:
    """The distinct successful instants of one place, newest first."""
    return sorted({s.time for s in snaps if s.where is where and s.successful and s.time is not None}, reverse=True)


def kept_by(decisions: Iterable[Decision], rule: str) -> set[dt.datetime]:
    """The instants a plan keeps with ``rule`` among its reasons."""
    return {d.snapshot.time for d in decisions
            if d.snapshot.time is not None and any(w.startswith(f"keep-{rule}=") for w in d.why)}


BUCKETS = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: t.date(),
    "weekly": lambda t: t.isocalendar()[:2],
    "monthly": lambda t: (t.year, t.month),
}


# --- the age-only policy is the original rule -------------------------------------------
@PROPS
@given(local_files, times, retentions)
def test_local_age_only_equals_the_original(files: list[LocalFile], tick: dt.datetime, retention: dt.timedelta) -> None:
    assert local_expired(files, tick=tick, retention=retention) == original_local_expired(
        files, tick=tick, retention=retention)


@PROPS
@given(s3_keys(), folders, times, retentions)
def test_s3_age_only_equals_the_original(keys: list[str], folder: str, tick: dt.datetime,
                                         retention: dt.timedelta) -> None:
    assert s3_expired(keys, folder=folder, tick=tick, retention=retention) == original_s3_expired(
        keys, folder=folder, tick=tick, retention=retention)


@PROPS
@given(local_files, names(), times, retentions)
def test_rancher_age_only_equals_the_original(files: list[LocalFile], current: str, now: dt.datetime,
                                              retention: dt.timedelta) -> None:
    for name in (current, "c-abcde-rl-cur01_2024-10-04T12:00:00Z", "c-abcde-ms-cur02"):
        assert rancher_expired(files, name=name, now=now, retention=retention) == original_rancher_expired(
            files, name=name, now=now, retention=retention)


@PROPS
@given(local_files, s3_keys(), times.map(lambda t: t.replace(microsecond=0)),
       st.timedeltas(min_value=dt.timedelta(microseconds=1), max_value=dt.timedelta(days=30)),
       sizes.filter(lambda s: s != 0))
def test_the_default_floor_changes_nothing_rke_calls_see(files: list[LocalFile], keys: list[str], tick: dt.datetime,
                                                         retention: dt.timedelta, size: int | None) -> None:
    """RKE's rotations run right after a successful save, so the listing holds that snapshot
    (named after the tick, or the current file with mtime now): there the default floor of 1
    keeps nothing the age rule would delete. Ticks are whole seconds (the name has no
    fraction) and a retention of 0 or less is refused before anything runs."""
    default = Policy(within=retention)
    assert default.floor == 1
    taken = [*files, LocalFile(rolling_name(tick) + ".zip", tick, size=size)]
    assert sorted(s.name for s in plan(local_rolling(taken), default, tick).deleted) == original_local_expired(
        taken, tick=tick, retention=retention)
    uploaded = [*keys, f"cluster-a/{rolling_name(tick)}.zip"]
    assert sorted(s.name for s in plan(s3_rolling([(k, size) for k in uploaded], folder="cluster-a"),
                                       default, tick).deleted) == sorted(
        original_s3_expired(uploaded, folder="cluster-a", tick=tick, retention=retention))
    name = "c-abcde-rl-cur01_2024-10-04T12:00:00Z"
    saved = [*files, LocalFile(f"{name}.zip", tick, size=size)]
    assert sorted(s.name for s in plan(local_rancher(saved, name=name), default, tick).deleted) == (
        original_rancher_expired(saved, name=name, now=tick, retention=retention))


# --- scope ------------------------------------------------------------------------------------
@PROPS
@given(local_files, s3_keys(), folders, policies, times)
def test_a_name_that_does_not_parse_is_never_deleted(files: list[LocalFile], keys: list[str], folder: str,
                                                     policy: Policy, now: dt.datetime) -> None:
    p = plan([*local_rolling(files), *s3_rolling([(k, 1) for k in keys], folder=folder)], policy, now)
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    for s in p.deleted:
        base = s.name[len(prefix):] if s.where is Where.S3 else s.name
        assert name_time(base) is not None, s
        assert not s.name.startswith(TEMP_PREFIX)
        if s.where is Where.S3:
            assert s.name.startswith(prefix) and "/" not in base and base.endswith(("_etcd", "_etcd.zip"))
    assert all(d.action is Action.SKIP for d in p.decisions if d.snapshot.time is None)


@PROPS
@given(local_files, policies, times)
def test_new_rules_only_ever_keep_more_than_the_age_rule(files: list[LocalFile], policy: Policy,
                                                         now: dt.datetime) -> None:
    snaps = local_rolling(files)
    if policy.within is None:  # then broken copies and <time>_... files stay: only the age rule deletes them
        assert all(s.successful for s in plan(snaps, policy, now).deleted)
        return
    age_only = {s.name for s in plan(snaps, Policy(within=policy.within, floor=0), now).deleted}
    assert {s.name for s in plan(snaps, policy, now).deleted} <= age_only


# --- histories of 1,000+ snapshots ------------------------------------------------------------
@HISTORY
@given(histories(), policies)
def test_the_floor_always_holds(history: tuple[list[Snapshot], dt.datetime], policy: Policy) -> None:
    snaps, now = history
    assert len([s for s in snaps if s.where is Where.LOCAL and s.name.endswith("_etcd.zip")]) >= 1000
    remaining = apply(plan(snaps, policy, now), snaps).remaining
    for where in Where:
        before = instants(snaps, where)
        assert instants(remaining, where)[: policy.floor] == before[: policy.floor], where


@HISTORY
@given(histories(), policies, st.integers(0, 2**32 - 1))
def test_the_plan_is_deterministic_and_is_what_apply_deletes(history: tuple[list[Snapshot], dt.datetime],
                                                              policy: Policy, seed: int) -> None:
    snaps, now = history
    p = plan(snaps, policy, now)
    shuffled = list(snaps)
    random.Random(seed).shuffle(shuffled)
    assert plan(shuffled, policy, now) == p
    out = apply(p, shuffled)
    assert sorted(out.deleted, key=repr) == sorted(p.deleted, key=repr)  # the dry run is the real run
    assert len(out.remaining) + len(out.deleted) == len(snaps)
    assert plan(out.remaining, policy, now).deleted == []  # a second run at once deletes nothing
    assert all(d.why for d in p.decisions)


@HISTORY
@given(histories(), policies)
def test_count_and_calendar_rules_keep_the_newest_of_the_most_recent(history: tuple[list[Snapshot], dt.datetime],
                                                                      policy: Policy) -> None:
    """Each rule's choice against an independent restatement, then the union: a successful
    snapshot is kept exactly when some rule chose its instant or it is within the age."""
    snaps, now = history
    p = plan(snaps, policy, now)
    for where in Where:
        ours = [d for d in p.decisions if d.snapshot.where is where]
        everything = instants(snaps, where)
        expected = {"last": set(everything[: policy.last]), "floor": set(everything[: policy.floor])}
        for rule, bucket in BUCKETS.items():
            n = getattr(policy, rule)
            chosen = kept_by(ours, rule)
            assert len(chosen) <= n
            newest: dict[object, dt.datetime] = {}  # bucket -> its newest instant (first seen)
            for t in everything:
                newest.setdefault(bucket(t.astimezone(UTC)), t)
            labels = [bucket(t.astimezone(UTC)) for t in chosen]
            assert len(set(labels)) == len(labels), f"two {rule} snapshots in one bucket"
            assert all(newest[label] == t for label, t in zip(labels, chosen, strict=True)), f"{rule}: not the newest"
            expected[rule] = {newest[label] for label in list(newest)[:n]}
        for rule, chosen in expected.items():
            assert kept_by(ours, rule) == chosen, rule
        union = set().union(*expected.values())
        for d in ours:
            t = d.snapshot.time
            if not d.snapshot.successful or t is None:
                continue
            young = policy.within is not None and t >= now - policy.within
            assert (d.action is Action.KEEP) == (young or t in union or not policy.has_rules), d
            if d.action is Action.DELETE:
                assert d.why == (("kept by no rule",) if policy.within is None else
                                 (f"older than {format_go_duration(policy.within)}",))


# --- the parser -------------------------------------------------------------------------------
@PROPS
@given(st.integers(0, MAX_KEEP), st.sampled_from(["", " ", "\t"]), st.integers(0, 12))
def test_counts_round_trip(n: int, pad: str, zeros: int) -> None:
    assert parse_count(f"{pad}{'0' * zeros}{n}{pad}", source="--keep-last") == n


@PROPS
@given(st.text(max_size=30))
def test_bad_counts_are_one_line_usage_errors(text: str) -> None:
    try:
        n = parse_count(text, source="--keep-daily")
    except UsageError as err:
        assert "\n" not in str(err) and str(err).startswith("--keep-daily must ")
        assert err.exit_code == 2
    else:
        assert re.fullmatch(r"\s*[0-9]+\s*", text) and 0 <= n <= MAX_KEEP
