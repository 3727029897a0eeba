"""``sidekick --version`` names the version of every runtime dependency it runs with."""

from __future__ import annotations

import importlib.metadata

import pytest

from sidekick import __version__, dispatch
from sidekick.version import requirement_names
from tests.test_declarations import declared, normalize


def test_version_lists_every_declared_dependency_with_its_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatch.main(["sidekick", "--version"]) == 0
    first, *rest = capsys.readouterr().out.splitlines()
    assert first == f"sidekick {__version__}"
    listed = dict(line.split() for line in rest)
    assert {normalize(name) for name in listed} == declared()
    for name, version in listed.items():
        assert version == importlib.metadata.version(name)


def test_requirements_of_extras_are_not_runtime_ones() -> None:
    requirements = ['click>=8.2', 'PyYAML>=6.0', 'urllib3<3; python_version >= "3.10"', 'pytest>=8; extra == "test"']
    assert requirement_names(requirements) == ["click", "PyYAML", "urllib3"]
