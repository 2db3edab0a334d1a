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
