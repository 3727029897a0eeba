"""logrus-style lines and the secret scrubber."""

from __future__ import annotations

import logging
import re

import pytest

from sidekick import log as sklog

LINE = re.compile(r'^time="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ" level=(debug|info|warning|error|fatal) msg=')


@pytest.fixture
def logger(capsys: pytest.CaptureFixture[str]) -> logging.Logger:
    sklog.setup(debug=True)
    return logging.getLogger("sidekick.test")


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
