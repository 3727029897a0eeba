"""The command line as RKE and Rancher write it (CONTRACT 3, 11): parsing only, no side effects."""

from __future__ import annotations

import datetime as dt

import click
import pytest

from sidekick.errors import UsageError
from sidekick.etcd import cli
from sidekick.etcd.options import (
    Options,
    format_go_duration,
    parse_go_duration,
    retry_wait_from_env,
    validate_name,
)
from tests.harness.etcd_backup import rke_save_argv


@pytest.fixture
def called(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Options]]:
    calls: list[tuple[str, Options]] = []

    def fake_run(target: str, opts: Options) -> int:
        calls.append((target, opts))
        return 0

    monkeypatch.setattr(cli, "_run", fake_run)
    for var in ("S3_BACKUP", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_BUCKET_NAME",
                "S3_BUCKET_REGION", "S3_ENDPOINT_CA", "S3_FOLDER", "ETCD_CACERT", "ETCD_CERT", "ETCD_KEY",
                "RANCHER_DEBUG", "LOCAL_ENDPOINT", "SIDEKICK_RETRY_WAIT"):
        monkeypatch.delenv(var, raising=False)
    return calls


def parse(called: list[tuple[str, Options]], *argv: str) -> tuple[str, Options]:
    assert cli.main(list(argv)) == 0
    return called[-1]


def test_rolling_argv_with_s3(called: list[tuple[str, Options]]) -> None:
    argv = rke_save_argv("10.0.0.5:2379", "etcd-rolling-snapshots", "--creation=12h", "--retention=72h",
                         "--s3-backup=true", "--s3-endpoint=minio.local:9000", "--s3-bucketName=snaps",
                         "--s3-region=", "--s3-endpoint-ca=Q0E=", "--s3-folder=cluster-a")
    target, opts = parse(called, *argv)
    assert target == "sidekick.etcd.save:run_save"
    assert opts.cacert == "/etc/kubernetes/ssl/kube-ca.pem"
    assert opts.cert == "/etc/kubernetes/ssl/kube-node.pem"
    assert opts.key == "/etc/kubernetes/ssl/kube-node-key.pem"
    assert opts.name == "etcd-rolling-snapshots"
    assert opts.endpoints == "10.0.0.5:2379"
    assert opts.creation == dt.timedelta(hours=12)
    assert opts.retention == dt.timedelta(hours=72)
    assert opts.s3_backup is True and opts.once is False
    assert (opts.s3_endpoint, opts.s3_bucket_name, opts.s3_region) == ("minio.local:9000", "snaps", "")
    assert opts.s3_endpoint_ca == "Q0E=" and opts.s3_folder == "cluster-a"
    assert (opts.backup_retries, opts.s3_retries) == (4, 3)


def test_once_without_backup_config_keeps_original_defaults(called: list[tuple[str, Options]]) -> None:
    _, opts = parse(called, *rke_save_argv("127.0.0.1:2379", "rke_etcd_snapshot_2024-10-04T14:00:00+02:00", "--once"))
    assert opts.once is True
    assert opts.name == "rke_etcd_snapshot_2024-10-04T14:00:00+02:00"
    assert opts.creation == dt.timedelta(minutes=5)
    assert opts.retention == dt.timedelta(hours=24)
    assert opts.s3_backup is False


def test_delete_argv_bare_bools(called: list[tuple[str, Options]]) -> None:
    target, opts = parse(called, "etcd-backup", "delete", "--name", "snap", "--cleanup", "--s3-backup",
                         "--s3-endpoint=s3.example.com", "--s3-bucketName=b", "--s3-region=eu-west-1")
    assert target == "sidekick.etcd.delete:run_delete"
    assert opts.cleanup is True and opts.s3_backup is True
    assert opts.s3_region == "eu-west-1"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--once=false"], False),
        (["--once=true"], True),
        (["--once=1"], True),
        (["--once=F"], False),
        (["-once"], True),
        (["--once"], True),
        ([], False),
    ],
)
def test_bool_forms(called: list[tuple[str, Options]], argv: list[str], expected: bool) -> None:
    _, opts = parse(called, "etcd-backup", "save", *argv, "--name", "x")
    assert opts.once is expected


def test_bool_never_takes_the_next_word(called: list[tuple[str, Options]]) -> None:
    # Go's flag package: "--once --name x" keeps --name as a flag.
    _, opts = parse(called, "etcd-backup", "save", "--once", "--name", "x")
    assert opts.once is True and opts.name == "x"


def test_value_forms_and_any_order(called: list[tuple[str, Options]]) -> None:
    _, a = parse(called, "etcd-backup", "save", "--endpoints", "1.2.3.4:2379", "-name=x", "--backup-retries", "0")
    _, b = parse(called, "etcd-backup", "save", "--backup-retries=0", "--name", "x", "-endpoints", "1.2.3.4:2379")
    assert (a.endpoints, a.name, a.backup_retries) == (b.endpoints, b.name, b.backup_retries) == ("1.2.3.4:2379", "x", 0)


def test_value_that_looks_like_a_flag_is_kept(called: list[tuple[str, Options]]) -> None:
    _, opts = parse(called, "etcd-backup", "save", "--s3-folder", "-odd-", "--name", "x")
    assert opts.s3_folder == "-odd-"


def test_env_vars(called: list[tuple[str, Options]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_BACKUP", "true")
    monkeypatch.setenv("S3_ENDPOINT", "env-endpoint:9000")
    monkeypatch.setenv("S3_BUCKET_NAME", "env-bucket")
    monkeypatch.setenv("S3_BUCKET_REGION", "eu-central-1")
    monkeypatch.setenv("S3_FOLDER", "env-folder")
    monkeypatch.setenv("ETCD_CACERT", "/ca.pem")
    monkeypatch.setenv("RANCHER_DEBUG", "true")
    monkeypatch.setenv("SIDEKICK_RETRY_WAIT", "0.5")
    _, opts = parse(called, "etcd-backup", "save", "--once", "--name", "x", "--s3-bucketName=flag-bucket")
    assert opts.s3_backup is True and opts.debug is True
    assert opts.s3_endpoint == "env-endpoint:9000"
    assert opts.s3_bucket_name == "flag-bucket"  # the flag wins over the env
    assert (opts.s3_region, opts.s3_folder, opts.cacert) == ("eu-central-1", "env-folder", "/ca.pem")
    assert opts.retry_wait == 0.5


def test_delete_s3_backup_has_no_env(called: list[tuple[str, Options]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_BACKUP", "true")
    _, opts = parse(called, "etcd-backup", "delete", "--name", "x")
    assert opts.s3_backup is False


def test_s3_keys_are_registered_as_secrets(called: list[tuple[str, Options]], monkeypatch: pytest.MonkeyPatch) -> None:
    from sidekick.log import redact

    monkeypatch.setenv("S3_ACCESS_KEY", "QUtJQVNFQ1JFVEFDQ0VTUw==")
    parse(called, "etcd-backup", "save", "--once", "--name", "x", "--s3-secretKey=raw-secret-value")
    assert "QUtJQVNFQ1JFVEFDQ0VTUw==" not in redact("key QUtJQVNFQ1JFVEFDQ0VTUw== here")
    assert "raw-secret-value" not in redact("secret raw-secret-value")


def test_other_subcommands_dispatch_lazily(called: list[tuple[str, Options]]) -> None:
    target, opts = parse(called, "etcd-backup", "download", "--name", "s", "--local-endpoint", "10.0.0.2",
                         "--cacert", "/a", "--cert", "/b", "--key", "/c")
    assert target == "sidekick.etcd.restore:run_download" and opts.local_endpoint == "10.0.0.2"
    target, opts = parse(called, "etcd-backup", "serve", "--name", "s", "--cacert", "/a", "--cert", "/b", "--key", "/c")
    assert target == "sidekick.etcd.serve:run_serve" and opts.command == "serve"
    # RKE passes configS3BackupImgCmd flags (creation/retention too) to extractstatefile.
    target, opts = parse(called, "etcd-backup", "extractstatefile", "--name", "s", "--creation=12h",
                         "--retention=72h", "--s3-backup=true", "--s3-bucketName=b")
    assert target == "sidekick.etcd.restore:run_extractstatefile" and opts.s3_bucket_name == "b"


@pytest.mark.parametrize("flag", ["--creation", "--once", "--backup-retries=1", "--endpoints=x"])
def test_flags_the_original_does_not_declare_are_rejected(called: list[tuple[str, Options]], flag: str) -> None:
    args = ["etcd-backup", "delete", "--name", "x", flag]
    if flag == "--creation":
        args.append("5m")
    with pytest.raises(UsageError):
        cli.main(args)
    assert called == []


@pytest.mark.parametrize("bad", ["24", "1d", "", "h", "5m3", ".h", "--5m"])
def test_invalid_durations(called: list[tuple[str, Options]], bad: str) -> None:
    with pytest.raises(UsageError, match="creation"):
        cli.main(["etcd-backup", "save", f"--creation={bad}", "--name", "x"])
    assert called == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("12h", 43200), ("72h0m0s", 259200), ("1h30m", 5400), ("1.5h", 5400), ("0", 0),
     ("300ms", 0.3), ("1.h", 3600), (".5h", 1800), ("2h45m30.5s", 9930.5), ("-5m", -300), ("1us", 0.000001), ("1\u00b5s", 0.000001)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text).total_seconds() == pytest.approx(seconds)


def test_go_duration_format() -> None:
    assert format_go_duration(dt.timedelta(hours=72)) == "72h0m0s"
    assert format_go_duration(dt.timedelta(minutes=5)) == "5m0s"
    assert format_go_duration(dt.timedelta(seconds=1.5)) == "1.5s"
    assert format_go_duration(dt.timedelta(0)) == "0s"


@pytest.mark.parametrize("name", ["x.zip", "snap.ZIP", "../etc/passwd", "a/b", "..", "a..b", ".hidden", "a\nb", "/abs"])
def test_bad_names_are_a_clear_usage_error(called: list[tuple[str, Options]], name: str) -> None:
    with pytest.raises(UsageError, match="invalid snapshot name"):
        cli.main(["etcd-backup", "save", "--once", "--name", name])
    assert called == []


@pytest.mark.parametrize("name", ["rke_etcd_snapshot_2024-10-04T14:00:00+02:00", "2024-10-04T12:00:00Z_etcd",
                                  "c-abcde-rl-x7k2p_2024-10-04T12-00-00Z", "etcd-rolling-snapshots", "a.b"])
def test_real_names_are_valid(name: str) -> None:
    assert validate_name(name) == name


def test_help_mentions_every_flag(called: list[tuple[str, Options]], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["etcd-backup", "save", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--endpoints", "--debug", "--name", "--cacert", "--cert", "--key", "--local-endpoint",
                 "--s3-backup", "--s3-endpoint", "--s3-accessKey", "--s3-secretKey", "--s3-bucketName",
                 "--s3-region", "--s3-endpoint-ca", "--s3-folder", "--creation", "--retention", "--once",
                 "--backup-retries", "--s3-retries"):
        assert flag in out
    assert called == []


def test_a_run_builds_only_its_own_command() -> None:
    """serve stays up for a whole restore: it must not hold the other commands' options."""
    group = cli.LazyGroup(name="etcd-backup")
    with click.Context(group) as ctx:
        serve = group.get_command(ctx, "serve")
        assert serve is not None and set(group.commands) == {"serve"}
        assert {p.name for p in serve.params} == {"name", "cacert", "cert", "key", "age_identity_file"}
        assert group.get_command(ctx, "serve") is serve
        assert group.get_command(ctx, "bogus") is None and set(group.commands) == {"serve"}
        assert group.list_commands(ctx) == sorted(cli.SUBCOMMANDS)


def test_group_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["etcd-backup", "--help"]) == 0
    out = capsys.readouterr().out
    for name in ("save", "prune", "delete", "download", "extractstatefile", "serve", "list", "verify"):
        assert f"  {name} " in out


@pytest.mark.parametrize("argv,message", [
    (("--backup-retries=10000000000",), "--backup-retries=10000000000 is more than 100 retries"),
    (("--s3-retries=101",), "--s3-retries=101 is more than 100 retries"),
    (("--name", "n" * 224), "at most 223 fit in file names on /backup"),
])
def test_bounds_are_checked_before_any_work(called: list[tuple[str, Options]], argv: tuple[str, ...],
                                            message: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    with pytest.raises(UsageError, match=message):
        cli.main(["etcd-backup", "save", "--once", *argv])
    assert called == []
    parse(called, "etcd-backup", "save", "--once", "--name", "n" * 223, "--backup-retries=100")


@pytest.mark.parametrize("variable,value,message", [
    ("SIDEKICK_RETRY_WAIT", "1e9", "from 0 to 300"),
    ("SIDEKICK_RETRY_WAIT", "-1", "from 0 to 300"),
    ("SIDEKICK_RETRY_WAIT", "inf", "from 0 to 300"),
    ("SIDEKICK_RETRY_WAIT", "soon", "not a number"),
    ("SIDEKICK_BUDGET_SCALE", "0", "from 0.001 to 100"),
    ("SIDEKICK_BUDGET_SCALE", "nan", "from 0.001 to 100"),
])
def test_time_settings_are_bounded(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str) -> None:
    from sidekick.etcd.budgets import Budgets

    monkeypatch.setenv(variable, value)
    with pytest.raises(UsageError, match=message):
        Budgets.from_options(Options(retry_wait=retry_wait_from_env()))


def test_etcdctl_never_inherits_s3_or_cloud_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidekick.etcd.etcdctl import Etcdctl

    monkeypatch.setenv("S3_SECRET_KEY", "c2VjcmV0")
    monkeypatch.setenv("S3_ACCESS_KEY", "YWNjZXNz")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    monkeypatch.setenv("ETCDCTL_DIAL_TIMEOUT", "3s")
    env = Etcdctl._env()
    assert not [k for k in env if k.startswith(("S3_", "AWS_"))]
    assert env["ETCDCTL_API"] == "3" and env["ETCDCTL_DIAL_TIMEOUT"] == "3s"
