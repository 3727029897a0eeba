"""One log line, formatted without the ``logging`` module: logrus text or a JSON object.

The entrypoint's hot path (before every Kubernetes component starts) and the dispatcher's
final error line use this directly: importing ``logging`` costs more than the rest of that
path. :mod:`sidekick.log` formats through the same function, so every line looks alike and
passes through the same scrubber.

``SIDEKICK_LOG_FORMAT`` picks the shape: ``text`` (the default, logrus's text formatter) or
``json`` (one object per line with the same keys: ``time``, ``level``, ``msg`` and every
field, as logrus's JSON formatter writes them). The JSON is written here by hand rather than
with :mod:`json`, whose import pulls in :mod:`re` and would slow the hot path in JSON mode.
"""

from __future__ import annotations

import sys
import time

from sidekick.errors import UsageError

REDACTED = "REDACTED"
FORMAT_ENV = "SIDEKICK_LOG_FORMAT"
FORMATS = ("text", "json")
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._/@^+")
_MIN_SECRET_LEN = 4
_secrets: set[str] = set()
_json_escapes: dict[int, str] = {}  # built on the first JSON line: text mode never pays for it
# Field keys that would overwrite the line's own keys get logrus's ``fields.`` prefix.
_RESERVED = frozenset({"time", "level", "msg"})


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


def _getenv(name: str) -> str:
    """``os.environ.get(name, "")`` without importing os on the entrypoint's fast path: once os
    is loaded its environ is the truth (it sees later changes); before, the process's own."""
    loaded = sys.modules.get("os")
    if loaded is not None:
        return str(loaded.environ.get(name, ""))
    import posix

    return posix.environ.get(name.encode(), b"").decode("utf-8", "surrogateescape")


def _chosen_format() -> str:
    return _getenv(FORMAT_ENV).strip().lower() or "text"


def check_format() -> None:
    """Refuse an unknown ``SIDEKICK_LOG_FORMAT`` (the refusal itself is written as text)."""
    chosen = _chosen_format()
    if chosen not in FORMATS:
        raise UsageError(f"{FORMAT_ENV}={_getenv(FORMAT_ENV)!r} is not one of: {', '.join(FORMATS)}")


def quote(value: object) -> str:
    """logrus quotes a value unless every character is in its plain set."""
    text = str(value)
    if text and all(c in _PLAIN for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _json_string(text: str) -> str:
    if not _json_escapes:
        # RFC 8259 section 7: the quote, the backslash and the control characters.
        _json_escapes.update({i: f"\\u{i:04x}" for i in range(0x20)})
        _json_escapes.update({ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\t"): "\\t"})
    return '"' + text.translate(_json_escapes) + '"'


def _json_value(value: object) -> str:
    """Numbers, booleans and null keep their JSON type (as logrus's JSON formatter does);
    everything else is its ``str()``, scrubbed."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is int or (type(value) is float and value - value == 0):  # finite floats only
        number = repr(value)
        if redact(number) == number:
            return number
    return _json_string(redact(str(value)))


def _text_line(level: str, msg: str, fields: dict[str, object], stamp: str, trace: str | None) -> str:
    parts = [f'time="{stamp}"', f"level={level}", f"msg={quote(redact(msg))}"]
    parts.extend(f"{key}={quote(redact(str(value)))}" for key, value in fields.items())
    line = " ".join(parts)
    return line + "\n" + redact(trace) if trace else line


def _json_line(level: str, msg: str, fields: dict[str, object], stamp: str, trace: str | None) -> str:
    parts = [f'"time":"{stamp}"', f'"level":{_json_string(level)}', f'"msg":{_json_string(redact(msg))}']
    for key, value in fields.items():
        name = "fields." + key if key in _RESERVED else key
        parts.append(f"{_json_string(name)}:{_json_value(value)}")
    if trace:
        parts.append(f'"traceback":{_json_string(redact(trace))}')
    return "{" + ",".join(parts) + "}"


def format_line(
    level: str,
    msg: str,
    fields: dict[str, object] | None = None,
    created: float | None = None,
    *,
    trace: str | None = None,
) -> str:
    """The line for ``msg`` and ``fields`` in the chosen format, every value scrubbed.

    Each value is scrubbed before it is quoted or escaped, so a secret containing a quote or
    a newline is found as registered. ``trace`` (a traceback) follows a text line on its own
    lines, or is the ``traceback`` key of a JSON line. An unknown format logs as text.
    """
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if created is None else created))
    render = _json_line if _chosen_format() == "json" else _text_line
    return render(level, msg, fields or {}, stamp, trace)


def emit(level: str, msg: str, **fields: object) -> None:
    sys.stderr.write(format_line(level, msg, fields) + "\n")
    sys.stderr.flush()
