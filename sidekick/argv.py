"""Flags in a Kubernetes component's argv, as RKE renders them (``--k=v``, in any order).

Shared by the entrypoint and the kubelet preparation; it imports nothing, for the
entrypoint's fast path (annotations are strings: only mypy needs the names below).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    ExecFn = Callable[[list[str]], int]


def flag_values(args: Sequence[str], name: str) -> list[str]:
    """Every value of ``--name=value`` (``--name`` alone counts as an empty value), in order."""
    prefix = name + "="
    return [a[len(prefix) :] if a.startswith(prefix) else "" for a in args if a == name or a.startswith(prefix)]


def has_flag(args: Sequence[str], name: str) -> bool:
    return bool(flag_values(args, name))
