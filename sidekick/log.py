"""logrus-style ``key=value`` log lines on stderr, with secrets scrubbed.

RKE shows users the last stderr line of a failed helper, so every line is self-contained:
``time="2024-10-04T12:00:00Z" level=info msg="snapshot saved" name=x size=123``.
With ``SIDEKICK_LOG_FORMAT=json`` the same line is one JSON object with the same keys,
``{"time":"2024-10-04T12:00:00Z","level":"info","msg":"snapshot saved","name":"x","size":123}``,
for log collectors (the format is chosen per line by :func:`sidekick.logline.format_line`).

Secrets are scrubbed at the formatter, the one place every line passes through: values
registered with :func:`register_secret` and any PEM block are replaced by ``REDACTED``, so a
secret that slips into an exception message still never reaches the log.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from sidekick.logline import REDACTED, format_line, redact, register_secret

__all__ = ["FATAL", "REDACTED", "kv", "redact", "register_secret", "set_debug", "setup"]

FATAL = logging.CRITICAL
_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    FATAL: "fatal",
}


def kv(**fields: Any) -> dict[str, Mapping[str, Any]]:
    """``log.info("msg", extra=kv(name=x))`` attaches ``name=x`` to the line."""
    return {"fields": fields}


class LogrusFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = _LEVEL_NAMES.get(record.levelno, record.levelname.lower())
        fields = getattr(record, "fields", None) or {}
        trace = None
        if record.exc_info and record.levelno <= logging.DEBUG:
            trace = self.formatException(record.exc_info)
        return format_line(level, record.getMessage(), dict(fields), record.created, trace=trace)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever ``sys.stderr`` is now (test runners swap it)."""

    @property  # type: ignore[override,unused-ignore]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup(*, debug: bool | None = None) -> None:
    """Send every ``sidekick.*`` logger to stderr in logrus format.

    Idempotent: a second call without ``debug`` keeps the level already chosen (a tool's
    ``--debug`` flag must survive the dispatcher setting up logging again for an error).
    """
    logger = logging.getLogger("sidekick")
    configured = any(getattr(h, "_sidekick", False) for h in logger.handlers)
    if not configured:
        handler = _StderrHandler()
        handler.setFormatter(LogrusFormatter())
        handler._sidekick = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    if debug is None:
        if configured:
            return
        debug = os.environ.get("RANCHER_DEBUG", "").lower() in {"1", "true", "yes"} or bool(
            os.environ.get("SIDEKICK_DEBUG")
        )
    logger.setLevel(logging.DEBUG if debug else logging.INFO)


def set_debug(enabled: bool) -> None:
    if enabled:
        logging.getLogger("sidekick").setLevel(logging.DEBUG)
