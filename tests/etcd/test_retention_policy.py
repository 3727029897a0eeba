"""The retention engine by example: scope, each keep rule, the floor, the plan's reasons, and
the keep flags' parser (the properties over generated histories are in
test_retention_properties.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from sidekick.errors import UsageError
from sidekick.etcd.options import DEFAULT_FLOOR, KEEP_OPTIONS
from sidekick.etcd.retention import (
    MAX_KEEP,
    Action,
    LocalFile,
    Plan,
    Policy,
    Scope,
    Snapshot,
    Where,
    apply,
    local_rancher,
    local_rolling,
    parse_count,
    parse_policy,
    plan,
    rolling_name,
    s3_rolling,
)

NOW = dt.datetime(2024, 10, 4, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def zips(*times: dt.datetime, size: int | None = 1000) -> list[LocalFile]:
    return [LocalFile(rolling_name(t) + ".zip", t, size=size) for t in times]


def decided(p: Plan) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {d.snapshot.name: (d.action.value, d.why) for d in p.decisions}


# --- scope ----------------------------------------------------------------------------------
def test_local_scope() -> None:
    t = NOW - DAY
    stamp = rolling_name(t)
    files = [
        LocalFile(stamp + ".zip", t, size=10),
        LocalFile(stamp, t, size=10),  # legacy uncompressed: the same snapshot
        LocalFile(stamp[:-5] + "_other.zip", t),  # <time>_...: the age rule's, not a snapshot
        LocalFile(f"rke_etcd_snapshot_{stamp[:-5]}", t),
        LocalFile(f"c-abcde-rl-x7k2p_{stamp[:-5]}.zip", t),
        LocalFile(f".sidekick-tmp-{stamp}.zip.ab12", t),
        LocalFile(stamp + "_dir", t, is_file=False),
    ]
    got = {s.name: (s.scope, s.note) for s in local_rolling(files)}
    assert got == {
        stamp + ".zip": (Scope.SNAPSHOT, ""),
        stamp: (Scope.SNAPSHOT, ""),
        stamp[:-5] + "_other.zip": (Scope.AGE_ONLY, ""),
        f"rke_etcd_snapshot_{stamp[:-5]}": (Scope.FOREIGN, "not a rolling snapshot name"),
        f"c-abcde-rl-x7k2p_{stamp[:-5]}.zip": (Scope.FOREIGN, "not a rolling snapshot name"),
        f".sidekick-tmp-{stamp}.zip.ab12": (Scope.FOREIGN, "temporary file"),
        stamp + "_dir": (Scope.FOREIGN, "not a regular file"),
    }
    assert {s.time for s in local_rolling(files) if s.scope is not Scope.FOREIGN} == {t}


def test_s3_scope_is_the_folder_and_the_name_pattern() -> None:
    stamp = rolling_name(NOW - DAY)
    listing = [(f"a/{stamp}.zip", 5), (f"ab/{stamp}.zip", 5), (f"a/sub/{stamp}.zip", 5), (f"{stamp}.zip", 5),
               (f"a/{stamp}.zip.bak", 5), (f"a/{stamp[:-5]}_x_etcd.zip", 5), ("a/rke_etcd_snapshot_x_etcd.zip", 5)]
    got = {s.name: (s.scope, s.note) for s in s3_rolling(listing, folder="/a/")}
    assert got == {
        f"a/{stamp}.zip": (Scope.SNAPSHOT, ""),
        f"ab/{stamp}.zip": (Scope.FOREIGN, "outside the folder"),
        f"a/sub/{stamp}.zip": (Scope.FOREIGN, "in a sub-folder"),
        f"{stamp}.zip": (Scope.FOREIGN, "outside the folder"),
        f"a/{stamp}.zip.bak": (Scope.FOREIGN, "not a rolling snapshot name"),
        f"a/{stamp[:-5]}_x_etcd.zip": (Scope.AGE_ONLY, ""),  # the original's S3 rule deletes it when old
        "a/rke_etcd_snapshot_x_etcd.zip": (Scope.FOREIGN, "not a rolling snapshot name"),
    }


def test_rancher_scope_counts_the_snapshot_just_taken() -> None:
    old = NOW - 10 * DAY
    files = [
        LocalFile("c-abcde-rl-cur01_2024-10-04T12:00:00Z.zip", NOW),
        LocalFile("c-abcde-rl-old01_2024-09-24T12:00:00Z.zip", old),
        LocalFile("c-abcde-ml-man01_2024-09-24T12:00:00Z.zip", old),
        LocalFile("c-zzzzz-rl-oth01_2024-09-24T12:00:00Z.zip", old),
    ]
    snaps = local_rancher(files, name="c-abcde-rl-cur01_2024-10-04T12:00:00Z")
    assert [s.scope for s in snaps] == [Scope.CURRENT, Scope.SNAPSHOT, Scope.FOREIGN, Scope.FOREIGN]
    p = plan(snaps, Policy(within=DAY), NOW)
    assert decided(p) == {
        "c-abcde-rl-cur01_2024-10-04T12:00:00Z.zip": ("keep", ("just taken", "keep-within=24h0m0s", "keep-floor=1")),
        "c-abcde-rl-old01_2024-09-24T12:00:00Z.zip": ("delete", ("older than 24h0m0s",)),
        "c-abcde-ml-man01_2024-09-24T12:00:00Z.zip": ("skip", ("not a recurring Rancher snapshot",)),
        "c-zzzzz-rl-oth01_2024-09-24T12:00:00Z.zip": ("skip", ("not this cluster's Rancher snapshot",)),
    }
    # A name without a Rancher prefix owns nothing.
    assert all(s.scope in (Scope.FOREIGN, Scope.CURRENT) for s in local_rancher(files, name="rke_etcd_snapshot_x"))


# --- the rules ------------------------------------------------------------------------------
def test_age_rule_with_its_reasons() -> None:
    snaps = local_rolling(zips(NOW, NOW - DAY, NOW - DAY - dt.timedelta(seconds=1)))
    p = plan(snaps, Policy(within=DAY, floor=0), NOW)
    assert decided(p) == {
        "2024-10-04T12:00:00Z_etcd.zip": ("keep", ("keep-within=24h0m0s",)),
        "2024-10-03T12:00:00Z_etcd.zip": ("keep", ("keep-within=24h0m0s",)),  # the cutoff itself is kept
        "2024-10-03T11:59:59Z_etcd.zip": ("delete", ("older than 24h0m0s",)),
    }
    assert p.decisions[-1].describe() == "delete local 2024-10-03T11:59:59Z_etcd.zip (older than 24h0m0s)"


def test_the_floor_keeps_the_newest_after_an_outage() -> None:
    # Snapshots every 12 h until etcd went down nine days ago: the age rule alone keeps none.
    times = [NOW - 9 * DAY - i * 12 * HOUR for i in range(10)]
    snaps = local_rolling(zips(*times))
    assert len(plan(snaps, Policy(within=72 * HOUR, floor=0), NOW).deleted) == 10
    p = plan(snaps, Policy(within=72 * HOUR, floor=3), NOW)
    assert [s.time for s in p.kept] == times[:3]
    assert {d.why for d in p.decisions if d.action is Action.KEEP} == {("keep-floor=3",)}
    assert len(p.deleted) == 7


def test_the_floor_counts_successful_snapshots_only() -> None:
    broken = zips(NOW - 5 * DAY, size=0)
    unknown = zips(NOW - 6 * DAY, size=None)
    good = zips(NOW - 7 * DAY, NOW - 8 * DAY)
    p = plan(local_rolling(broken + unknown + good), Policy(within=DAY, floor=2), NOW)
    assert [s.time for s in p.kept] == [NOW - 6 * DAY, NOW - 7 * DAY]  # a size nobody looked at counts
    assert sorted(s.time for s in p.deleted if s.time) == [NOW - 8 * DAY, NOW - 5 * DAY]


def test_keep_last_counts_instants_not_files() -> None:
    times = [NOW - i * HOUR for i in range(5)]
    files = [*zips(*times), LocalFile(rolling_name(times[1]), times[1], size=7)]  # raw beside its zip
    p = plan(local_rolling(files), Policy(last=2, floor=0), NOW)
    assert sorted(s.name for s in p.kept) == sorted([rolling_name(times[0]) + ".zip", rolling_name(times[1]),
                                                     rolling_name(times[1]) + ".zip"])
    assert all(d.why == ("kept by no rule",) for d in p.decisions if d.action is Action.DELETE)


def test_calendar_buckets_keep_the_newest_of_each_recent_bucket() -> None:
    # Every 6 h for 40 days, then a gap of three days (no snapshot on those days).
    times = [NOW - 3 * DAY - i * 6 * HOUR for i in range(160)]
    p = plan(local_rolling(zips(*times)), Policy(daily=4, weekly=2, monthly=2, floor=0), NOW)
    kept = {s.time: d.why for d in p.decisions if d.action is Action.KEEP for s in [d.snapshot]}
    daily = sorted((t for t, why in kept.items() if any(w.startswith("keep-daily") for w in why)), reverse=True)
    # The four most recent days that HAVE a snapshot: Oct 1, Sep 30, 29, 28, each its 18:00 one
    # (times run 12:00 - 6 h steps from Oct 1 12:00: 12:00, 06:00, 00:00, then 18:00 of the day before).
    assert daily == [dt.datetime(2024, 10, 1, 12, tzinfo=dt.UTC)] + [
        dt.datetime(2024, 9, d, 18, tzinfo=dt.UTC) for d in (30, 29, 28)]
    assert kept[dt.datetime(2024, 10, 1, 12, tzinfo=dt.UTC)] == (
        "keep-daily=4 2024-10-01", "keep-weekly=2 2024-W40", "keep-monthly=2 2024-10")
    # ISO week 39 ends on Sunday Sep 29; month 2024-09 ends on Sep 30.
    assert kept[dt.datetime(2024, 9, 29, 18, tzinfo=dt.UTC)] == ("keep-daily=4 2024-09-29", "keep-weekly=2 2024-W39")
    assert kept[dt.datetime(2024, 9, 30, 18, tzinfo=dt.UTC)] == ("keep-daily=4 2024-09-30", "keep-monthly=2 2024-09")
    assert len(kept) == 4  # Oct 1 12:00 is the newest of its day, of week 40 and of October


def test_buckets_are_utc_whatever_the_name_offset() -> None:
    # 01:30+02:00 is 23:30 UTC the day before.
    snaps = [Snapshot("2024-10-04T01:30:00+02:00_etcd.zip", Where.LOCAL,
                      dt.datetime(2024, 10, 3, 23, 30, tzinfo=dt.UTC), 1, Scope.SNAPSHOT)]
    assert plan(snaps, Policy(daily=1), NOW).decisions[0].why == ("keep-daily=1 2024-10-03", "keep-floor=1")


def test_rules_combine_as_a_union() -> None:
    times = [NOW - i * 12 * HOUR for i in range(20)]
    snaps = local_rolling(zips(*times))
    age = {s.name for s in plan(snaps, Policy(within=DAY), NOW).deleted}
    both = {s.name for s in plan(snaps, Policy(within=DAY, daily=5, last=4), NOW).deleted}
    assert both < age
    # within: Oct 4 12:00, 00:00, Oct 3 12:00; last 4 adds Oct 3 00:00; daily 5 adds the 12:00 of Oct 2, 1, Sep 30.
    kept = {s.time for s in plan(snaps, Policy(within=DAY, daily=5, last=4), NOW).kept}
    assert kept == {*times[:5], times[6], times[8]}


def test_age_only_files_are_deleted_by_the_age_rule_alone() -> None:
    files = [*zips(NOW - 10 * DAY), LocalFile("2024-09-01T00:00:00Z_other.zip", NOW, size=0)]
    by_age = plan(local_rolling(files), Policy(within=DAY, last=5), NOW)
    assert sorted(s.name for s in by_age.deleted) == ["2024-09-01T00:00:00Z_other.zip"]
    by_count = plan(local_rolling(files), Policy(last=5), NOW)
    assert by_count.deleted == []
    assert decided(by_count)["2024-09-01T00:00:00Z_other.zip"] == (
        "keep", ("not a successful snapshot: only the age rule deletes it",))


def test_no_rule_deletes_nothing() -> None:
    snaps = local_rolling(zips(*(NOW - i * DAY for i in range(5))))
    p = plan(snaps, Policy(), NOW)  # the floor alone never asks for a deletion
    assert p.deleted == []
    assert decided(p)["2024-10-02T12:00:00Z_etcd.zip"] == ("keep", ("no keep rule given",))


def test_local_and_s3_are_planned_apart() -> None:
    local = local_rolling(zips(NOW - 5 * DAY, NOW - 6 * DAY))
    remote = s3_rolling([(rolling_name(NOW - i * DAY) + ".zip", 9) for i in range(3)], folder="")
    p = plan(remote + local, Policy(within=DAY, floor=1), NOW)
    assert [(s.where, s.time) for s in p.kept] == [(Where.LOCAL, NOW - 5 * DAY), (Where.S3, NOW), (Where.S3, NOW - DAY)]
    assert [d.snapshot.where for d in p.decisions] == [Where.LOCAL] * 2 + [Where.S3] * 3


def test_apply_deletes_what_the_plan_says_and_nothing_listed_since() -> None:
    snaps = local_rolling(zips(*(NOW - i * DAY for i in range(6))))
    p = plan(snaps, Policy(within=2 * DAY), NOW)
    late = local_rolling(zips(NOW + HOUR))
    out = apply(p, [*snaps[:4], *late])  # two planned deletions are already gone; one new file
    assert out.deleted == [snaps[3]]
    assert out.remaining == [*snaps[:3], *late]


# --- the flags ------------------------------------------------------------------------------
def test_keep_options_table() -> None:
    assert [(o.flag, o.env, o.param) for o in KEEP_OPTIONS] == [
        ("--keep-last", "SIDEKICK_KEEP_LAST", "keep_last"),
        ("--keep-hourly", "SIDEKICK_KEEP_HOURLY", "keep_hourly"),
        ("--keep-daily", "SIDEKICK_KEEP_DAILY", "keep_daily"),
        ("--keep-weekly", "SIDEKICK_KEEP_WEEKLY", "keep_weekly"),
        ("--keep-monthly", "SIDEKICK_KEEP_MONTHLY", "keep_monthly"),
        ("--keep-floor", "SIDEKICK_KEEP_FLOOR", "keep_floor"),
    ]
    assert all(getattr(Policy(), o.field) == (DEFAULT_FLOOR if o.field == "floor" else 0) for o in KEEP_OPTIONS)


def test_parse_policy_flags_beat_env() -> None:
    env = {"SIDEKICK_KEEP_DAILY": "7", "SIDEKICK_KEEP_LAST": "3", "SIDEKICK_KEEP_FLOOR": " ", "OTHER": "x"}
    policy = parse_policy(within=72 * HOUR, flags={"keep_last": "10", "keep_hourly": None}, env=env)
    assert policy == Policy(within=72 * HOUR, last=10, daily=7, floor=DEFAULT_FLOOR)
    assert policy.describe() == "keep-within=72h0m0s keep-last=10 keep-daily=7 keep-floor=1"
    assert parse_policy(within=None, flags={"keep_floor": "0"}, env={}).describe() == "keep everything"
    assert parse_policy(within=DAY, flags={}, env={}) == Policy(within=DAY)


@pytest.mark.parametrize(("given", "message"), [
    ("-1", "--keep-daily must not be negative, got '-1'"),
    ("seven", "--keep-daily must be a whole number from 0 to 1000000, got 'seven'"),
    ("", "--keep-daily must be a whole number from 0 to 1000000, got ''"),
    ("1.5", "--keep-daily must be a whole number from 0 to 1000000, got '1.5'"),
    ("0x10", "--keep-daily must be a whole number from 0 to 1000000, got '0x10'"),
    ("\u0663", "--keep-daily must be a whole number from 0 to 1000000, got '\u0663'"),  # an Arabic-Indic 3
    ("1000001", "--keep-daily must be at most 1000000, got '1000001'"),
    ("9" * 5000, f"--keep-daily must be at most 1000000, got '{'9' * 40}...'"),
])
def test_parse_policy_rejects_bad_counts_in_one_line(given: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_policy(within=DAY, flags={"keep_daily": given}, env={})
    assert str(err.value) == message
    assert err.value.exit_code == 2


def test_parse_policy_names_the_variable_it_read() -> None:
    with pytest.raises(UsageError, match=r"^SIDEKICK_KEEP_FLOOR must not be negative, got '-3'$"):
        parse_policy(within=DAY, flags={}, env={"SIDEKICK_KEEP_FLOOR": "-3"})
    assert parse_count(f" {MAX_KEEP} ", source="x") == MAX_KEEP
    assert parse_count("007", source="x") == 7
    assert parse_count("0" * 50 + "12", source="x") == 12
