"""logrus-style lines, their JSON form (``SIDEKICK_LOG_FORMAT=json``) and the secret scrubber."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidekick import dispatch, logline
from sidekick import log as sklog
from tests.conftest import last_line, run_sidekick
from tests.harness.pki import CertificateAuthority
from tests.harness.rke_bundle import rke_cert_env

LINE = re.compile(r'^time="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ" level=(debug|info|warning|error|fatal) msg=')


@pytest.fixture
def logger(capsys: pytest.CaptureFixture[str]) -> Iterator[logging.Logger]:
    sklog.setup(debug=True)
    yield logging.getLogger("sidekick.test")
    sklog.setup(debug=False)  # later tests (the dispatcher's) expect the default level


def test_lines_look_like_logrus(logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    logger.info("snapshot saved", extra=sklog.kv(name="2024-10-04T12:00:00Z_etcd", size=1234, note="two words"))
    err = capsys.readouterr().err.strip()
    assert LINE.match(err)
    assert err.endswith('msg="snapshot saved" name="2024-10-04T12:00:00Z_etcd" size=1234 note="two words"')


def test_plain_values_stay_bare(logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    logger.info("x", extra=sklog.kv(path="/backup/snap-1.zip", n=3))
    assert capsys.readouterr().err.rstrip().endswith("path=/backup/snap-1.zip n=3")


def test_unsafe_values_are_unquoted_and_quotes_escaped(logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    logger.warning('say "hi"\nthere')
    err = capsys.readouterr().err
    assert 'level=warning msg="say \\"hi\\"\\nthere"' in err
    assert err.count("\n") == 1


def test_registered_secrets_never_reach_the_log(logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    sklog.register_secret(secret)
    logger.error("upload failed for key %s", secret, extra=sklog.kv(secret=secret))
    err = capsys.readouterr().err
    assert secret not in err
    assert err.count(sklog.REDACTED) == 2


def test_pem_blocks_are_scrubbed_even_unregistered() -> None:
    text = "got -----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY----- end"
    cleaned = sklog.redact(text)
    assert "MIIEow" not in cleaned
    assert cleaned.startswith("got [PEM RSA PRIVATE KEY REDACTED]") and cleaned.endswith(" end")


def test_short_values_are_not_treated_as_secrets() -> None:
    sklog.register_secret("ab")
    assert sklog.redact("about") == "about"


def test_traceback_only_at_debug(capsys: pytest.CaptureFixture[str]) -> None:
    sklog.setup(debug=False)
    logger = logging.getLogger("sidekick.test")
    try:
        raise RuntimeError("x")
    except RuntimeError:
        logger.error("failed", exc_info=True)
    assert "Traceback" not in capsys.readouterr().err


def test_logline_writes_the_same_shape_without_logging(capsys: pytest.CaptureFixture[str]) -> None:
    from sidekick import logline

    sklog.register_secret("s3cr3t-value")
    logline.emit("fatal", "upload failed: s3cr3t-value", bucket="snaps", path="/backup/a b")
    err = capsys.readouterr().err
    assert LINE.match(err)
    assert err.endswith('level=fatal msg="upload failed: REDACTED" bucket=snaps path="/backup/a b"\n')


# --- parsing both forms back, to compare them ----------------------------------------------
TEXT_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')
TEXT_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n", "t": "\t"}


def parse_text(line: str) -> dict[str, str]:
    """A logrus text line back into its pairs (values unquoted and unescaped)."""
    pairs: dict[str, str] = {}
    for key, raw in TEXT_PAIR.findall(line):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", lambda m: TEXT_UNESCAPE[m.group(1)], raw[1:-1])
        pairs[key] = raw
    return pairs


def parse_json(line: str) -> dict[str, str]:
    """A JSON line with every value as the text form shows it."""
    obj = json.loads(line)
    assert isinstance(obj, dict), line
    return {key: str(value) for key, value in obj.items()}


def without_time(pairs: dict[str, str]) -> dict[str, str]:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", pairs["time"])
    return {k: v for k, v in pairs.items() if k != "time"}


def json_lines(stderr: str) -> list[dict[str, str]]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "the tool logged nothing"
    return [parse_json(line) for line in lines]


@pytest.fixture
def json_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(logline.FORMAT_ENV, "json")


# --- JSON lines, in process -------------------------------------------------------------
def test_json_line_has_the_text_lines_keys_and_values(logger: logging.Logger, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fields = sklog.kv(name="2024-10-04T12:00:00Z_etcd", size=1234, note='two "words"\tand\nlines', ok=True, ratio=0.5)
    logger.info("snapshot saved", extra=fields)
    text = capsys.readouterr().err
    monkeypatch.setenv(logline.FORMAT_ENV, "json")
    logger.info("snapshot saved", extra=fields)
    out = capsys.readouterr().err
    assert out.count("\n") == 1 and text.count("\n") == 1
    obj = json.loads(out)
    assert list(obj) == ["time", "level", "msg", "name", "size", "note", "ok", "ratio"]
    assert obj["size"] == 1234 and obj["ok"] is True and obj["ratio"] == 0.5  # JSON types kept
    assert obj["note"] == 'two "words"\tand\nlines'
    # Python spells booleans True, the text form too: compare lower-cased for that one value.
    assert without_time(parse_json(out)) | {"ok": "True"} == without_time(parse_text(text))


def test_json_escapes_every_control_character(json_format: None) -> None:
    nasty = "".join(chr(i) for i in range(0x20)) + '"\\ é ✓ \u2028'
    obj = json.loads(logline.format_line("info", nasty, {"k": nasty, "n": None, "inf": float("inf")}))
    assert obj["msg"] == nasty and obj["k"] == nasty
    assert obj["n"] is None and obj["inf"] == "inf"  # not a JSON number: its text instead


def test_json_field_that_clashes_with_a_line_key_is_prefixed(logger: logging.Logger, json_format: None,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    logger.warning("real message", extra=sklog.kv(msg="field", level="x", time="y"))
    obj = json.loads(capsys.readouterr().err)
    assert obj["msg"] == "real message" and obj["level"] == "warning"
    assert (obj["fields.msg"], obj["fields.level"], obj["fields.time"]) == ("field", "x", "y")


def test_json_registered_secrets_and_pem_are_scrubbed(logger: logging.Logger, json_format: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    secret = 'AKIA"quoted\\back/slash'
    sklog.register_secret(secret)
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBv\n-----END EC PRIVATE KEY-----"
    logger.error("failed with %s", secret, extra=sklog.kv(key=secret, ca=pem, port=9999))
    out = capsys.readouterr().err
    obj = json.loads(out)
    assert obj["msg"] == "failed with REDACTED" and obj["key"] == "REDACTED"
    assert obj["ca"] == "[PEM EC PRIVATE KEY REDACTED]"
    assert "quoted" not in out and "MHcCAQEEIBv" not in out


def test_text_scrubs_a_secret_that_needs_quoting(logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    """The value is scrubbed before it is escaped: escaping first would hide the secret from the scrubber."""
    secret = 'zq"ss\nw\\ord-42'
    sklog.register_secret(secret)
    logger.error("login as %s", secret, extra=sklog.kv(password=secret))
    err = capsys.readouterr().err
    assert "zq" not in err and "ord-42" not in err and err.count("REDACTED") == 2
    assert err.count("\n") == 1


def test_json_secret_that_is_a_number_is_scrubbed(json_format: None) -> None:
    sklog.register_secret("987654321")
    obj = json.loads(logline.format_line("info", "x", {"pin": 987654321}))
    assert obj["pin"] == "REDACTED"


def test_json_traceback_at_debug_is_a_key_of_the_one_line(logger: logging.Logger, json_format: None,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    try:
        raise RuntimeError("boom -----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----")
    except RuntimeError:
        logger.debug("traceback", exc_info=True)
    out = capsys.readouterr().err
    assert out.count("\n") == 1
    obj = json.loads(out)
    assert "Traceback" in obj["traceback"] and "RuntimeError: boom [PEM PRIVATE KEY REDACTED]" in obj["traceback"]


def test_logline_emits_json_without_logging(json_format: None, capsys: pytest.CaptureFixture[str]) -> None:
    logline.emit("fatal", "upload failed", bucket="snaps", path="/backup/a b")
    obj = json.loads(capsys.readouterr().err)
    assert {k: obj[k] for k in ("level", "msg", "bucket", "path")} == {
        "level": "fatal", "msg": "upload failed", "bucket": "snaps", "path": "/backup/a b"}


@pytest.mark.parametrize("value", ["", "text", "json", "JSON", " json "])
def test_known_formats_pass_the_check(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(logline.FORMAT_ENV, value)
    logline.check_format()


def test_unknown_format_is_one_text_line_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(logline.FORMAT_ENV, "logfmt")
    assert dispatch.main(["sidekick", "install", "--help"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert LINE.match(captured.err)
    assert "level=fatal msg=\"SIDEKICK_LOG_FORMAT='logfmt' is not one of: text, json\"" in captured.err


# --- real tools through the dispatcher ----------------------------------------------------
def both_forms(args: list[str], *, env: dict[str, str] | None = None, argv0: Path | None = None,
               roots: tuple[Path, Path] | None = None) -> tuple[list[dict[str, str]], list[dict[str, str]], int]:
    """Run a tool in text, then in JSON (each on its own root if given); the lines of each
    (time dropped) and the exit code."""
    text_root, json_root = roots or (None, None)
    text = run_sidekick(args, env=env, argv0=argv0, root=text_root)
    as_json = run_sidekick(args, env={**(env or {}), logline.FORMAT_ENV: "json"}, argv0=argv0, root=json_root)
    assert text.returncode == as_json.returncode, text.stderr + as_json.stderr
    text_lines = [without_time(parse_text(line)) for line in text.stderr.splitlines() if line.strip()]
    return text_lines, [without_time(obj) for obj in json_lines(as_json.stderr)], as_json.returncode


@pytest.mark.integration
def test_cert_deployer_logs_the_same_lines_in_json(tmp_path: Path, kube_ca: CertificateAuthority,
                                                   tool_link: Callable[[str], Path]) -> None:
    bundle = rke_cert_env(kube_ca, etcd_ips=("172.26.14.216",))
    roots = (tmp_path / "text", tmp_path / "json")
    text, as_json, code = both_forms([], roots=roots, argv0=tool_link("cert-deployer"),
                                     env={**bundle, "RANCHER_DEBUG": "true"})
    assert code == 0
    assert sum(line["msg"] == "written" for line in as_json) == len(bundle)  # every line, not only the last
    assert as_json[-1]["msg"] == "certificates deployed"
    # Same lines, keys and values, but for the root each run wrote under.
    assert [{k: v.replace(str(roots[1]), "ROOT") for k, v in line.items()} for line in as_json] == [
        {k: v.replace(str(roots[0]), "ROOT") for k, v in line.items()} for line in text]
    logs = json.dumps(as_json)
    assert "BEGIN" not in logs and "PRIVATE" not in logs


@pytest.mark.integration
@pytest.mark.parametrize("flags", [["--bogus"], ["--creation=1d"], ["--once", "--name", "../x"]])
def test_etcd_backup_bad_flags_end_in_one_json_fatal_line(flags: list[str]) -> None:
    text, as_json, code = both_forms(["rke-etcd-backup", "etcd-backup", "save", *flags])
    assert code == 2
    assert as_json == text
    assert as_json[-1]["level"] == "fatal"


@pytest.mark.integration
def test_secrets_scrubbed_in_json_from_a_real_tool() -> None:
    """The S3 secret key is registered before the name is checked; the refusal quotes the name."""
    secret = 'wJalrXUtnFEMI/K7MDENG"bPxRfiCY'
    args = ["rke-etcd-backup", "etcd-backup", "download", "--name", f"../{secret}"]
    text, as_json, code = both_forms(args, env={"S3_SECRET_KEY": secret})
    assert code == 2
    assert as_json == text
    assert as_json[-1]["msg"] == "invalid snapshot name '../REDACTED': a name, not a path (no '/')"
    assert "K7MDENG" not in json.dumps(as_json)


@pytest.mark.integration
def test_entrypoint_fast_path_logs_json(tool_link: Callable[[str], Path]) -> None:
    text, as_json, code = both_forms(['say "hi"'], argv0=tool_link("entrypoint.sh"))
    assert code == 127  # no such program: the exec line, then the refusal
    assert as_json == text
    assert as_json[0] == {"level": "info", "msg": "exec", "command": 'say "hi"'}


@pytest.mark.integration
def test_unknown_format_refuses_every_tool(tool_link: Callable[[str], Path]) -> None:
    result = run_sidekick(["/bin/true"], argv0=tool_link("entrypoint.sh"), env={logline.FORMAT_ENV: "yaml"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "level=fatal" in last_line(result.stderr) and "SIDEKICK_LOG_FORMAT='yaml'" in result.stderr
