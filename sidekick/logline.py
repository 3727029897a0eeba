"""One logrus text line, formatted without the ``logging`` module.

The entrypoint's hot path (before every Kubernetes component starts) and the dispatcher's
final error line use this directly: importing ``logging`` costs more than the rest of that
path. :mod:`sidekick.log` formats through the same function, so every line looks alike and
passes through the same scrubber.
"""

from __future__ import annotations

import sys
import time

REDACTED = "REDACTED"
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._/@^+")
_MIN_SECRET_LEN = 4
_secrets: set[str] = set()


def register_secret(value: str | bytes | None) -> None:
    """Never let ``value`` reach a log line (very short values would redact too much)."""
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
    if "-----BEGIN " in text:
        import re  # only when there is something to scrub: ``re`` is not free to import

        text = re.sub(
            r"-----BEGIN ([A-Z0-9 ]+)-----.*?(?:-----END \1-----|\Z)",
            lambda m: f"[PEM {m.group(1).strip()} {REDACTED}]",
            text,
            flags=re.DOTALL,
        )
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def quote(value: object) -> str:
    """logrus quotes a value unless every character is in its plain set."""
    text = str(value)
    if text and all(c in _PLAIN for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def format_line(level: str, msg: str, fields: dict[str, object] | None = None, created: float | None = None) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if created is None else created))
    parts = [f'time="{stamp}"', f"level={level}", f"msg={quote(msg)}"]
    if fields:
        parts.extend(f"{key}={quote(value)}" for key, value in fields.items())
    return redact(" ".join(parts))


def emit(level: str, msg: str, **fields: object) -> None:
    sys.stderr.write(format_line(level, msg, fields) + "\n")
    sys.stderr.flush()
