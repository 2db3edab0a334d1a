"""hub.py: first/last-subscriber events, shared liveness futures, cached sink lists."""

from __future__ import annotations

import asyncio

from toolkit import run

from shardws.pure.hub import Hub


def test_first_and_last_subscriber_events() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        events: list[tuple[str, str]] = []
        pending: dict[str, asyncio.Future[bool]] = {}

        def on_first(channel: str) -> asyncio.Future[bool]:
            events.append(("first", channel))
            pending[channel] = loop.create_future()
            return pending[channel]

        hub = Hub(on_first, lambda channel: events.append(("last", channel)))
        live_a = hub.add("news", "a", "sink-a")
        live_b = hub.add("news", "b", "sink-b")
        assert live_a is live_b and not live_a.done()  # b must wait for the same barrier
        assert events == [("first", "news")]
        assert hub.sinks("news") == ["sink-a", "sink-b"]
        assert hub.sinks("news") is hub.sinks("news")  # cached until membership changes
        pending["news"].set_result(True)
        assert hub.add("news", "a", "sink-a") is live_a  # re-adding is a no-op
        assert hub.subscriber_count("news") == 2
        assert hub.remove("news", "a")
        assert not hub.remove("news", "a")
        assert hub.sinks("news") == ["sink-b"]
        assert hub.remove("news", "b")
        assert events == [("first", "news"), ("last", "news")]
        assert "news" not in hub and hub.sinks("news") == []
        hub.add("news", "c", "sink-c")
        assert events[-1] == ("first", "news")

    run(scenario())


def test_sinks_are_grouped_by_their_members_wire_format() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def live(_channel: str) -> asyncio.Future[bool]:
            future = loop.create_future()
            future.set_result(True)
            return future

        hub = Hub(live, lambda _channel: None, wire_of=lambda member, _channel: member[0])
        hub.add("news", "n1", "sink-n1")
        hub.add("news", "p1", "sink-p1")
        hub.add("news", "n2", "sink-n2")
        hub.add("news", "p2", None)  # pending: no sink yet
        assert hub.groups("news") == [("n", ["sink-n1", "sink-n2"]), ("p", ["sink-p1"])]
        assert hub.groups("news") is hub.groups("news")  # cached until membership changes
        hub.activate("news", "p2", "sink-p2")
        assert hub.groups("news") == [("n", ["sink-n1", "sink-n2"]), ("p", ["sink-p1", "sink-p2"])]
        hub.remove("news", "n1")
        hub.remove("news", "n2")
        assert hub.groups("news") == [("p", ["sink-p1", "sink-p2"])]
        assert hub.groups("elsewhere") == []
        plain = Hub(live, lambda _channel: None)  # no wire formats: one group
        plain.add("news", "a", "sink-a")
        assert plain.groups("news") == [(None, ["sink-a"])]

    run(scenario())
