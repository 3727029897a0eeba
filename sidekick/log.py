"""logrus-style ``key=value`` log lines on stderr, with secrets scrubbed.

RKE shows users the last stderr line of a failed helper, so every line is self-contained:
``time="2024-10-04T12:00:00Z" level=info msg="snapshot saved" name=x size=123``.

Secrets are scrubbed at the formatter, the one place every line passes through: values
registered with :func:`register_secret` and any PEM block are replaced by ``REDACTED``, so a
secret that slips into an exception message still never reaches the log.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

FATAL = logging.CRITICAL
_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    FATAL: "fatal",
}
_PLAIN = re.compile(r"^[A-Za-z0-9\-._/@^+]+$")
_PEM = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----.*?(?:-----END \1-----|\Z)", re.DOTALL
)
_MIN_SECRET_LEN = 4
_secrets: set[str] = set()

REDACTED = "REDACTED"


def register_secret(value: str | bytes | None) -> None:
    """Never let ``value`` reach a log line (short values would redact too much)."""
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return
    if value and len(value.strip()) >= _MIN_SECRET_LEN:
        _secrets.add(value)
        _secrets.add(value.strip())


def redact(text: str) -> str:
    """Scrub registered secrets and PEM blocks from ``text``."""
    text = _PEM.sub(lambda m: f"[PEM {m.group(1).strip()} {REDACTED}]", text)
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def kv(**fields: Any) -> dict[str, Mapping[str, Any]]:
    """``log.info("msg", extra=kv(name=x))`` attaches ``name=x`` to the line."""
    return {"fields": fields}


def _quote(value: object) -> str:
    text = str(value)
    if _PLAIN.match(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


class LogrusFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        level = _LEVEL_NAMES.get(record.levelno, record.levelname.lower())
        parts = [f'time="{stamp}"', f"level={level}", f"msg={_quote(record.getMessage())}"]
        fields = getattr(record, "fields", None) or {}
        parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
        line = " ".join(parts)
        if record.exc_info and record.levelno <= logging.DEBUG:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever ``sys.stderr`` is now (test runners swap it)."""

    @property  # type: ignore[override,unused-ignore]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup(*, debug: bool | None = None) -> None:
    """Send every ``sidekick.*`` logger to stderr in logrus format (idempotent)."""
    if debug is None:
        debug = os.environ.get("RANCHER_DEBUG", "").lower() in {"1", "true", "yes"} or bool(
            os.environ.get("SIDEKICK_DEBUG")
        )
    logger = logging.getLogger("sidekick")
    if not any(getattr(h, "_sidekick", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(LogrusFormatter())
        handler._sidekick = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if debug else logging.INFO)


def set_debug(enabled: bool) -> None:
    if enabled:
        logging.getLogger("sidekick").setLevel(logging.DEBUG)


def is_debug() -> bool:
    return logging.getLogger("sidekick").isEnabledFor(logging.DEBUG)
