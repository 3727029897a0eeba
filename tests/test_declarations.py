"""The declared runtime dependencies are exactly the third-party modules sidekick imports.

A dependency that nothing imports costs every user an install (and the image its bytes); an
import that nothing declares works here only because the test extra or a neighbour pulled it
in. Both directions fail. Lazy imports inside functions count: they run in production too.
Imports under ``if TYPE_CHECKING:`` do not: they are for mypy only (stub packages).

Import names are mapped to distributions through the installed packages' own metadata
(``importlib.metadata.packages_distributions``: ``yaml`` -> PyYAML, ``jinja2`` -> Jinja2),
not through a table kept by hand here.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sidekick"
OWN = {"sidekick", "__future__"}


def normalize(distribution: str) -> str:
    """PEP 503: ``PyYAML``, ``pyyaml`` and ``py_yaml`` name one distribution."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirements() -> list[Requirement]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return [Requirement(text) for text in tomllib.load(f)["project"]["dependencies"]]


def declared() -> set[str]:
    return {normalize(requirement.name) for requirement in requirements()}


def locked() -> dict[str, str]:
    """constraints.txt (scripts/lock): normalized name -> pinned version."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        spec = line.partition("#")[0].strip()
        if spec:
            name, sep, version = spec.partition("==")
            assert sep, f"constraints.txt pins exact versions only: {line!r}"
            pins[normalize(name)] = version
    return pins


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _literal_import(call: ast.Call) -> str | None:
    """``importlib.import_module("x")`` or ``__import__("x")`` with a literal name."""
    func = call.func
    named = (isinstance(func, ast.Name) and func.id in {"__import__", "import_module"}) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module"
    )
    if named and call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    return None


def imported_modules(tree: ast.AST) -> Iterator[str]:
    """Top-level names of every absolute import in ``tree``, skipping TYPE_CHECKING blocks."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.partition(".")[0]
        elif isinstance(node, ast.Call) and (name := _literal_import(node)):
            yield name.partition(".")[0]
        stack.extend(ast.iter_child_nodes(node))


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the files of sidekick/ that import it."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for module in imported_modules(ast.parse(path.read_text(), filename=str(path))):
            if module not in OWN and module not in sys.stdlib_module_names:
                found.setdefault(module, set()).add(str(path.relative_to(REPO)))
    return found


def test_declared_dependencies_are_exactly_the_imported_ones() -> None:
    providers = importlib.metadata.packages_distributions()
    imports = third_party_imports()
    unprovided = {module: sorted(files) for module, files in imports.items() if module not in providers}
    assert not unprovided, f"imported, but no installed distribution provides it (declare it): {unprovided}"
    used = {normalize(dist) for module in imports for dist in providers[module]}
    wanted = declared()
    assert not used - wanted, f"imported but not in pyproject's dependencies: {sorted(used - wanted)}"
    assert not wanted - used, f"in pyproject's dependencies but imported nowhere in sidekick/: {sorted(wanted - used)}"


def test_the_scan_sees_lazy_imports_and_skips_type_checking_blocks() -> None:
    source = """
import os, yaml.constructor
from jinja2 import Environment
from . import sibling
if TYPE_CHECKING:
    import mypy_boto3_s3
else:
    import fallback_only_at_runtime
def f():
    from botocore.config import Config
    importlib.import_module("prometheus_client")
    __import__("pyrage")
"""
    assert sorted(imported_modules(ast.parse(source))) == sorted(
        ["os", "yaml", "jinja2", "fallback_only_at_runtime", "botocore", "prometheus_client", "pyrage"]
    )


def test_requirement_names_are_normalized() -> None:
    assert normalize("PyYAML") == normalize("pyyaml") == "pyyaml"
    assert normalize("zope.interface") == normalize("zope_interface") == "zope-interface"


def test_the_lock_pins_every_dependency_within_what_pyproject_allows() -> None:
    pins = locked()
    for requirement in requirements():
        name = normalize(requirement.name)
        assert name in pins, f"{name} is not in constraints.txt: run scripts/lock"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} breaks {requirement}: run scripts/lock"
