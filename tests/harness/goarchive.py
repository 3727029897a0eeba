"""Archives shaped like the Go tool's: deflate, data descriptors, absolute names, no comment.

CONTRACT section 12: the original writes each entry through Go's ``archive/zip`` streaming
writer (flag bit 3, sizes in a data descriptor after the data), names are the absolute
source paths, and there is no comment (so no SHA-256 manifest). ``zipfile`` writes exactly
that when its output cannot seek, and keeps a leading ``/`` when the ``ZipInfo`` is built by
hand (``ZipFile.write`` would strip it).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path


class _Unseekable(io.RawIOBase):
    def __init__(self, out: io.BufferedWriter) -> None:
        self._out = out

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


def write_go_archive(dest: Path, entries: Sequence[tuple[str, bytes | Path]]) -> Path:
    """Write ``dest`` with ``(absolute entry name, content or source file)`` entries."""
    with open(dest, "wb") as raw, zipfile.ZipFile(_Unseekable(raw), "w") as archive:  # type: ignore[arg-type]
        for name, content in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100600 << 16
            with archive.open(info, "w", force_zip64=False) as entry:
                if isinstance(content, Path):
                    with open(content, "rb") as source:
                        while chunk := source.read(1 << 20):
                            entry.write(chunk)
                else:
                    entry.write(content)
    dest.chmod(0o600)
    return dest
