"""The daemon's event bus: what `events` and `events -f` are served from."""

from __future__ import annotations

import anyio
import pytest

from supervisor.daemon.events import EventBus

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _bus_with(n: int, keep: int = 5) -> EventBus:
    bus = EventBus(keep=keep)
    for i in range(n):
        bus.publish("state", container=f"c{i}")
    return bus


@pytest.mark.parametrize(("published", "asked", "got"), [
    (3, 10, ["c0", "c1", "c2"]),  # more asked than kept: all of them
    (3, 2, ["c1", "c2"]),
    (3, 0, []),
    (8, 5, ["c3", "c4", "c5", "c6", "c7"]),  # only `keep` are kept
])
def test_last_gives_the_newest_oldest_first(published, asked, got) -> None:
    assert [e["container"] for e in _bus_with(published).last(asked)] == got


async def test_a_subscriber_gets_every_event_after_it_subscribed() -> None:
    bus = _bus_with(2)
    with bus.subscribe() as receive:
        bus.publish("state", container="late")
        with anyio.fail_after(5):
            event = await receive.receive()
    assert event["container"] == "late" and event["type"] == "state"


async def test_a_subscriber_that_falls_behind_is_dropped_not_waited_for() -> None:
    bus = EventBus(buffer=2)
    with bus.subscribe() as receive:
        for i in range(3):
            bus.publish("state", container=f"c{i}")  # never blocks
        with anyio.fail_after(5):
            got = [e["container"] async for e in receive]  # ends: the bus closed it
    assert got == ["c0", "c1"]
