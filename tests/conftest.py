"""Shared fixtures: a real Mosquitto broker and a unique topic prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.broker import INSTALL_HINT, Broker, find_mosquitto
from tests.helpers.mqtt import TestClient
from tests.helpers.postgres import pg_server, pg_url

# Here, not in each module: a fixture imported into a module is a fixture of that module,
# so each one started its own PostgreSQL; from conftest it is one server per worker.
__all__ = ["pg_server", "pg_url"]


def _require_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker for the whole run; tests isolate themselves by topic prefix."""
    _require_mosquitto()
    b = Broker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.kill()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Private brokers for tests that stop, kill or restart them, or need a config."""
    _require_mosquitto()
    made: list[Broker] = []

    def make(config_text: str | None = None, start: bool = True) -> Broker:
        workdir = tmp_path / f"broker{len(made)}"
        workdir.mkdir()
        b = Broker(workdir, config_text=config_text)
        made.append(b)
        if start:
            b.start()
        return b

    yield make
    for b in made:
        b.kill()


@pytest.fixture
def own_broker(broker_factory: Callable[..., Broker]) -> Broker:
    """A private dev broker this test may stop, kill and restart."""
    return broker_factory()


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"


@pytest.fixture
def mqtt_client(broker: Broker) -> Iterator[Callable[..., TestClient]]:
    """Factory of connected test clients on the session broker; all closed at the end."""
    clients: list[TestClient] = []

    def make(**kwargs: object) -> TestClient:
        c = TestClient(broker.port, **kwargs).connect()  # type: ignore[arg-type]
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()
