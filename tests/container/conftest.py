"""Fixtures of the container tests: the engine and image (built by scripts/test), RKE's
service-sidekick, and a place for each test's containers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.container.docker import FOREIGN, IMAGE, Containers, docker


@pytest.fixture(scope="session")
def engine() -> None:
    """The engine must answer and the images must exist: a missing one fails, never skips."""
    done = docker("version", "--format", "{{.Server.Version}}", check=False)
    assert done.returncode == 0, f"no Docker engine ({done.stderr.strip()}): run scripts/image/docker-up"
    for image in (IMAGE, FOREIGN):
        found = docker("image", "inspect", image, check=False)
        assert found.returncode == 0, f"image {image} missing: run scripts/image/build"


@pytest.fixture
def containers(engine: None) -> Iterator[Containers]:
    made = Containers()
    yield made
    made.remove_all()


@pytest.fixture
def service_sidekick(containers: Containers) -> str:
    """RKE's volume donor (CONTRACT 2.5): created, never started."""
    return containers.create(
        "service-sidekick",
        entrypoint=["/bin/bash"],
        network="none",
        labels={"io.rancher.rke.container.name": "service-sidekick"},
    )
