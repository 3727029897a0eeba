"""POSIX ACLs through ``setfacl`` from the acl package (what the original image used).

``setfacl`` handles every file system the kernel exposes ACLs on, including the recursion
rules of ``X`` (execute only for directories and already-executable files), which a
hand-written xattr encoder would have to copy. A file system without ACL support is
reported as :class:`AclUnsupported` so the caller can warn and carry on.
"""

from __future__ import annotations

from pathlib import Path

from sidekick.errors import SidekickError
from sidekick.host.proc import Runner


class AclUnsupported(SidekickError):
    """The file system (or the image) cannot hold ACLs; nothing was changed."""


class Acl:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def _setfacl(self, args: list[str], path: Path) -> None:
        try:
            result = self.runner.run(["setfacl", *args, "--", str(path)], timeout=60, check=False)
        except SidekickError as err:  # setfacl missing from the image
            raise AclUnsupported(str(err)) from None
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip().splitlines()
            last = detail[-1] if detail else f"exit {result.returncode}"
            if "not supported" in last.lower():
                raise AclUnsupported(f"{path}: file system does not support ACLs ({last})")
            raise SidekickError(f"setfacl {' '.join(args)} {path} failed: {last}")

    def set_mask(self, path: Path, perms: str, *, recursive: bool = True) -> None:
        """``setfacl [-R] -m m::<perms>``: cap what named entries and the group may do."""
        self._setfacl([*(["-R"] if recursive else []), "-m", f"m::{perms}"], path)

    def remove_ids(self, path: Path, *, uid: int, gid: int, recursive: bool = True) -> None:
        """``setfacl [-R] -x u:<uid>,g:<gid>``: drop named entries for that user and group."""
        self._setfacl([*(["-R"] if recursive else []), "-x", f"u:{uid},g:{gid}"], path)
