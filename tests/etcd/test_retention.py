"""Which snapshots expire: the pure selection rules (CONTRACT 3.1, 3.2, 3.12)."""

from __future__ import annotations

import datetime as dt

from sidekick.etcd.retention import (
    LocalFile,
    local_expired,
    name_time,
    parse_rfc3339,
    rancher_expired,
    rancher_prefix,
    rolling_name,
    s3_expired,
    s3_snapshot_keys,
)

TICK = dt.datetime(2024, 10, 4, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(hours=24)


def f(name: str, *, age: dt.timedelta = dt.timedelta(0), is_file: bool = True) -> LocalFile:
    return LocalFile(name, TICK - age, is_file)


def test_rfc3339_as_go_parses_it() -> None:
    assert parse_rfc3339("2024-10-04T12:00:00Z") == TICK
    assert parse_rfc3339("2024-10-04T14:00:00+02:00") == TICK
    assert parse_rfc3339("2024-10-04T12:00:00.5Z") == TICK + dt.timedelta(milliseconds=500)
    for bad in ("2024-10-04", "2024-10-04T12:00:00", "2024-10-04T12-00-00Z", "2024-13-04T12:00:00Z",
                "20241004T120000Z", "2024-10-04 12:00:00Z", "rke"):
        assert parse_rfc3339(bad) is None, bad


def test_name_time_uses_the_part_before_the_first_underscore() -> None:
    assert name_time("2024-10-04T12:00:00Z_etcd.zip") == TICK
    assert name_time("2024-10-04T12:00:00Z_etcd") == TICK
    assert name_time("rke_etcd_snapshot_2024-10-04T12:00:00Z") is None
    assert name_time("2024-10-04T12:00:00Z") is None  # no "_": not a snapshot name


def test_rolling_name() -> None:
    assert rolling_name(TICK) == "2024-10-04T12:00:00Z_etcd"
    assert rolling_name(TICK.astimezone(dt.timezone(dt.timedelta(hours=2)))) == "2024-10-04T12:00:00Z_etcd"


def test_local_expired() -> None:
    files = [
        f("2024-10-02T12:00:00Z_etcd.zip"),      # 48 h old: expired
        f("2024-10-03T11:59:59Z_etcd.zip"),      # just over 24 h: expired
        f("2024-10-03T12:00:00Z_etcd.zip"),      # exactly the cutoff: kept (Before is strict)
        f("2024-10-04T11:00:00Z_etcd.zip"),      # recent
        f("2024-10-01T00:00:00Z_etcd"),          # legacy uncompressed: expired
        f("rke_etcd_snapshot_2024-10-01T00:00:00Z.zip"),  # never rotates
        f("c-abcde-rl-x7k2p_2024-10-01T00:00:00Z.zip"),   # never by the rolling rule
        f("2024-10-01T00:00:00Z_dir", is_file=False),     # directories are ignored
        f(".sidekick-tmp-2024-10-01T00:00:00Z_etcd.zip.ab12"),
        f("notes.txt"),
    ]
    assert local_expired(files, tick=TICK, retention=DAY) == [
        "2024-10-01T00:00:00Z_etcd", "2024-10-02T12:00:00Z_etcd.zip", "2024-10-03T11:59:59Z_etcd.zip",
    ]


def test_s3_expired_with_and_without_folder() -> None:
    keys = [
        "2024-10-01T00:00:00Z_etcd.zip",
        "2024-10-01T00:00:00Z_etcd",
        "2024-10-04T11:00:00Z_etcd.zip",
        "2024-10-01T00:00:00Z_other.zip",       # not *_etcd(.zip)
        "2024-10-01T00:00:00Z_etcd.zip.bak",
        "rke_etcd_snapshot_2024-10-01T00:00:00Z_etcd.zip",  # time part does not parse
        "c-abcde-rl-x7k2p_2024-10-01T00:00:00Z.zip",
    ]
    assert s3_expired(keys, folder="", tick=TICK, retention=DAY) == [
        "2024-10-01T00:00:00Z_etcd.zip", "2024-10-01T00:00:00Z_etcd",
    ]
    in_folder = [f"cluster-a/{k}" for k in keys] + ["cluster-ab/2024-10-01T00:00:00Z_etcd.zip",
                                                      "cluster-a/sub/2024-10-01T00:00:00Z_etcd.zip",
                                                      "2024-10-01T00:00:00Z_etcd.zip"]
    # rancher/rancher#24544: inside the folder retention applies; nothing outside it.
    assert s3_expired(in_folder, folder="cluster-a", tick=TICK, retention=DAY) == [
        "cluster-a/2024-10-01T00:00:00Z_etcd.zip", "cluster-a/2024-10-01T00:00:00Z_etcd",
    ]
    assert s3_expired(in_folder, folder="/cluster-a/", tick=TICK, retention=DAY) == [
        "cluster-a/2024-10-01T00:00:00Z_etcd.zip", "cluster-a/2024-10-01T00:00:00Z_etcd",
    ]


def test_s3_expired_scales() -> None:
    keys = [rolling_name(TICK - dt.timedelta(minutes=5 * i)) + ".zip" for i in range(10_000)]
    expired = s3_expired(keys, folder="", tick=TICK, retention=DAY)
    assert len(expired) == 10_000 - 24 * 12 - 1


def test_rancher_prefix_and_once_rotation() -> None:
    assert rancher_prefix("c-abcde-rl-x7k2p_2024-10-04T12:00:00Z") == "c-abcde-"
    assert rancher_prefix("rke_etcd_snapshot_x") == ""
    files = [
        f("c-abcde-rl-old01_2024-09-01T00:00:00Z.zip", age=2 * DAY),  # recurring, old: expired
        f("c-abcde-rs-old02_2024-09-01T00:00:00Z.zip", age=2 * DAY),  # recurring s3 flavour: expired
        f("c-abcde-ml-old03_2024-09-01T00:00:00Z.zip", age=2 * DAY),  # manual: kept
        f("c-abcde-rl-new04_2024-10-04T11:00:00Z.zip", age=dt.timedelta(hours=1)),  # recent: kept
        f("c-zzzzz-rl-old05_2024-09-01T00:00:00Z.zip", age=2 * DAY),  # other cluster: kept
        f("2024-09-01T00:00:00Z_etcd.zip", age=2 * DAY),
        f("c-abcde-rl-dir_2024-09-01T00:00:00Z", age=2 * DAY, is_file=False),
    ]
    assert rancher_expired(files, name="c-abcde-rl-x7k2p_2024-10-04T12:00:00Z", now=TICK, retention=DAY) == [
        "c-abcde-rl-old01_2024-09-01T00:00:00Z.zip", "c-abcde-rs-old02_2024-09-01T00:00:00Z.zip",
    ]
    assert rancher_expired(files, name="rke_etcd_snapshot_x", now=TICK, retention=DAY) == []
    assert rancher_expired(files, name="c-abcde-rl-x", now=TICK, retention=dt.timedelta(0)) == []


def test_s3_snapshot_keys_are_exact_stems() -> None:
    keys = ["tiny1", "tiny1.zip", "tiny10.zip", "tiny1-keepme.zip", "tiny1.zip.part", "f/tiny1.zip"]
    assert s3_snapshot_keys(keys, prefix="tiny1") == ["tiny1", "tiny1.zip"]
    assert s3_snapshot_keys(["f/tiny1.zip", "f/tiny1", "f/tiny10"], prefix="f/tiny1") == ["f/tiny1.zip", "f/tiny1"]
