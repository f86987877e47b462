"""Fixtures of the core's unit tests: a fake clock, hubs that are always stopped, barriers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sidecar.core.client import Client
from sidecar.core.hub import Hub
from sidecar.core.identity import Identity
from sidecar.core.resume import ChannelRequest
from tests.unit.fakes import PATIENCE, FakeClock, FakeTransport
from tests.unit.wire import Peer, Wire, open_wire

HubFactory = Callable[..., Hub]


@pytest.fixture
def clock() -> FakeClock:
    """The keepalive's clock (shared with the fake transports' ``last_received``)."""
    return FakeClock()


@pytest.fixture
def make_hub(clock: FakeClock) -> Iterator[HubFactory]:
    """Start hubs with ``Config`` options on the fake clock; all are stopped at teardown."""
    hubs: list[Hub] = []

    def make(**options: Any) -> Hub:
        options.setdefault("ping_interval", 0)
        hub = Hub(clock=clock, **options)
        hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        assert hub.stop(timeout=PATIENCE), "the hub thread did not end"


def sync(hub: Hub) -> None:
    """Return once the hub thread has handled everything submitted before (a barrier)."""
    done = threading.Event()
    assert hub.call(done.set)
    assert done.wait(PATIENCE), "the hub thread did not get to the barrier"


class Blocker:
    """Holds the hub thread inside a ``hub.call`` until :meth:`release`, so commands pile up.

    ``hold`` bounds the wait (default: twice the patience) for a test that never releases;
    a test whose own work may take long (under a mutation tool's tracing) gives more.
    """

    def __init__(self, hub: Hub, hold: float | None = None) -> None:
        self.entered = threading.Event()
        self._release = threading.Event()
        self._limit = 2 * PATIENCE if hold is None else hold
        assert hub.call(self._hold)
        assert self.entered.wait(PATIENCE), "the hub thread never ran the blocker"

    def _hold(self) -> None:
        self.entered.set()
        self._release.wait(self._limit)

    def release(self) -> None:
        self._release.set()


WireFactory = Callable[..., tuple[Wire, Peer]]


@pytest.fixture
def make_wire() -> Iterator[WireFactory]:
    """Open connections on socketpairs (:func:`~tests.unit.wire.open_wire` options); all are
    shut down, their reader threads joined and their sockets closed at teardown."""
    made: list[tuple[Wire, Peer]] = []

    def make(**options: Any) -> tuple[Wire, Peer]:
        made.append(open_wire(**options))
        return made[-1]

    yield make
    for wire, peer in made:
        wire.end()
        peer.sock.close()
        wire.raw.close()


def join(
    hub: Hub, *channels: str, user: str | None = None, expires_at: float | None = None
) -> tuple[Client, FakeTransport]:
    """Register a client of ``user`` on the default channel and ``channels``."""
    transport = FakeTransport()
    identity = Identity(user=user, expires_at=expires_at)
    client = Client(transport, remote="test", identity=identity)
    requests = [ChannelRequest("")] + [ChannelRequest(name) for name in channels]
    assert hub.register(client, requests=requests)
    sync(hub)
    return client, transport


def got(transport: FakeTransport) -> list[tuple[str, Any]]:
    """``(type, channel and seq or payload)`` of every frame after the status."""
    out: list[tuple[str, Any]] = []
    for message in transport.messages()[1:]:
        if "seq" in message:
            out.append((message["type"], (message.get("channel"), message["seq"])))
        else:
            out.append((message["type"], message["payload"]))
    return out
