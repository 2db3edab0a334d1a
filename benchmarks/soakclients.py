"""The soak's clients: recovering subscribers and publishers on history channels, HTTP API
and ZeroMQ ingress publishers, slow consumers, and the check of what each subscriber holds.

Everything here runs on one asyncio loop that ``benchmarks/soak.py`` starts inside the
clients' network namespace, so every socket (the WebSockets, the ZeroMQ context's I/O
thread, the HTTP connections) is made there and reaches both hosts across the switch.

What a subscriber must end with (``check_subscription``): on each channel, the
publications in one order, numbered without a hole or a repeat within an epoch, unless
the client was told (``on_gap``: ``recovered: false`` with its reason, or a new epoch on
the live stream); every publication a publisher got a reply for (epoch, offset) held with
the same data, unless it lies in a range a gap reported lost; no data twice within an
epoch. An HTTP API publication's 200 carries its position like a client's publish reply
and is checked the same way. Publications without a reply (the ingress's PUSH form: the
admin hands them to the channel's owner without waiting) are matched by their data: one
that no subscriber holds, and that no reported gap covers, is a loss the server did not
count, attributed to the fault window it was sent in. The report also counts, per
publisher kind and fault, the publications told stored that no subscriber got
(``told_stored_no_subscriber_got``, and ``..._without_gap`` for those no subscriber was
told it lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import picows

from shardws import Publisher
from shardws.client import Backoff, Client, ClientError, Gap, Publication, connect
from shardws.client.publisher import PublisherError

#: Channels with history (namespace ``hist``: history and presence).
CHANNELS = ("hist:s0", "hist:s1", "hist:s2")
#: A channel in the ``drop`` and one in the ``disconnect`` namespace, for slow consumers.
SLOW_CHANNELS = {"drop": "drop:slow", "disconnect": "disconnect:slow"}
SLOW_PAYLOAD = "x" * 16_000
BACKOFF = Backoff(initial=0.1, factor=2.0, cap=2.0)
CALL_LIMIT = 30.0  # seconds one publish may take, retries included
BACKEND_RETRY = 15.0  # seconds an HTTP API publication is retried (503, broken connection)
REPLACE_SLOW = 20.0  # seconds a slow consumer of the disconnect namespace is kept


@dataclass(frozen=True)
class Endpoint:
    """How the clients reach one host."""

    name: str
    address: str
    ws_port: int
    admin_port: int
    ingress_port: int
    api_key: str
    acked_ingress_port: int = 0  # [ingress] acked_bind's port; 0: none

    @property
    def ws_url(self) -> str:
        return f"ws://{self.address}:{self.ws_port}/ws"


@dataclass
class Received:
    """What one subscription delivered: ``("pub", t, epoch, offset, key)`` and
    ``("gap", t, epoch, offset, reason)`` in the order the application saw them."""

    start: tuple[str, int] | None = None
    started_at: float = 0.0
    events: list[tuple[str, float, str, int, str]] = field(default_factory=list)


@dataclass
class Sent:
    """One publication: its data key, when it was sent, and the (epoch, offset) of its
    reply and when that came, when there was one (a publish retried through a fault may
    be stored long after it was first sent)."""

    key: str
    channel: str
    at: float
    position: tuple[str, int] | None = None
    stored_at: float = 0.0  # when the reply came (the publication was stored by then)


class _Paused(picows.WSListener):
    """A subscriber that stops reading once subscribed, and notes how it was closed."""

    def __init__(self) -> None:
        self.subscribed = asyncio.Event()
        self.close_code: int | None = None
        self.closed = asyncio.Event()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type == picows.WSMsgType.TEXT:
            if frame.get_payload_as_bytes().startswith(b'{"id":1,'):
                self.subscribed.set()
        elif frame.msg_type == picows.WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.closed.set()


class ClientLoad:
    """The history, backend and slow-consumer traffic of one soak (see the module doc).

    ``clock()`` gives seconds of the run; ``rate`` is publications per second per
    publisher (three kinds of publisher per host). Call ``start``, then
    ``stop_publishing``, ``settle``, ``presence``, ``close``; ``report`` last."""

    def __init__(
        self, hosts: list[Endpoint], rate: float, seed: int, clock: Callable[[], float]
    ) -> None:
        self.hosts = hosts
        self.rate = rate
        self.clock = clock
        self.random = random.Random(seed)
        self.subscribers: list[tuple[str, Client]] = []
        self.received: dict[tuple[str, str], Received] = {}
        self.sent: list[Sent] = []
        self.publish_failures: Counter[str] = Counter()
        self.slow: Counter[str] = Counter()  # slow consumers made, closed with 4501, ...
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._publishers: list[Client] = []

    # -- running -----------------------------------------------------------------------

    async def start(self, per_host: int = 2) -> None:
        """Subscribers first (each on every history channel), then the publishers."""
        for host in self.hosts:
            for k in range(per_host):
                name = f"{host.name}{k}"
                client = await connect(host.ws_url, backoff=BACKOFF)
                self.subscribers.append((name, client))
                for channel in CHANNELS:
                    await self._subscribe(name, client, channel)
        for host in self.hosts:
            publisher = await connect(host.ws_url, backoff=BACKOFF, max_queued=10_000)
            self._publishers.append(publisher)
            self._spawn(self._publish_ws(host, publisher))
            self._spawn(self._publish_backend(host, "http"))
            self._spawn(self._publish_backend(host, "ingress"))
            if host.acked_ingress_port:
                self._spawn(self._publish_backend(host, "acked"))
            for policy in SLOW_CHANNELS:
                self._spawn(self._slow_consumer(host, policy))

    async def _subscribe(self, name: str, client: Client, channel: str) -> None:
        record = self.received[(name, channel)] = Received(started_at=self.clock())

        def take(item: Any) -> None:
            if isinstance(item, Publication) and isinstance(item.epoch, str):
                key = item.data.get("k", "") if isinstance(item.data, dict) else ""
                record.events.append(("pub", self.clock(), item.epoch, item.offset or 0, key))

        def gap(gap: Gap) -> None:
            record.events.append(("gap", self.clock(), gap.epoch, gap.offset, gap.reason or ""))

        sub = await client.subscribe(channel, take, on_gap=gap)
        if sub.epoch is not None:
            record.start = (sub.epoch, sub.offset)

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def _paced(self) -> bool:
        """Wait one publishing interval (jittered); False once publishing stops."""
        delay = self.random.uniform(0.5, 1.5) / self.rate
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        return not self._stop.is_set()

    async def _publish_ws(self, host: Endpoint, client: Client) -> None:
        n = 0
        while await self._paced():
            channel = CHANNELS[n % len(CHANNELS)]
            sent = Sent(f"ws-{host.name}-{n}", channel, self.clock())
            n += 1
            self.sent.append(sent)
            try:
                reply = await asyncio.wait_for(client.publish(channel, {"k": sent.key}), CALL_LIMIT)
                sent.position = (reply["epoch"], reply["offset"])
                sent.stored_at = self.clock()
            except (ClientError, TimeoutError) as exc:
                self.publish_failures[f"ws: {type(exc).__name__}"] += 1

    async def _publish_backend(self, host: Endpoint, kind: str) -> None:
        url = {
            "http": f"http://{host.address}:{host.admin_port}",
            "ingress": f"tcp://{host.address}:{host.ingress_port}",
            "acked": f"tcp://{host.address}:{host.acked_ingress_port}",
        }[kind]
        # Made in a thread of this loop's executor: inside the clients' namespace too.
        # HTTP and the acknowledged ingress retry a 503 (an owner being replaced), a
        # broken connection or no answer with their idem for a while.
        publisher = await asyncio.to_thread(
            Publisher,
            url,
            api_key=host.api_key,
            timeout=5.0,
            retry_timeout=BACKEND_RETRY,
            acknowledged=kind == "acked",
        )
        n = 0
        try:
            while await self._paced():
                channel = CHANNELS[n % len(CHANNELS)]
                sent = Sent(f"{kind}-{host.name}-{n}", channel, self.clock())
                n += 1
                try:
                    reply = await asyncio.to_thread(publisher.publish, channel, {"k": sent.key})
                    self.sent.append(sent)  # accepted: HTTP 200, or queued for ZeroMQ
                    if reply is not None and "offset" in reply:  # told stored, and where
                        sent.position = (reply["epoch"], reply["offset"])
                        sent.stored_at = self.clock()
                except PublisherError as exc:
                    self.publish_failures[f"{kind}: {exc.status or 'no answer'}"] += 1
        finally:
            await asyncio.to_thread(publisher.close)

    async def _slow_consumer(self, host: Endpoint, policy: str) -> None:
        """A subscriber that never reads, and a publisher flooding its channel; in the
        ``disconnect`` namespace a new one replaces it every ``REPLACE_SLOW`` s."""
        channel = SLOW_CHANNELS[policy]
        publisher = await connect(host.ws_url, backoff=BACKOFF)
        self._publishers.append(publisher)
        while not self._stop.is_set():
            try:
                transport, slow = await picows.ws_connect(_Paused, host.ws_url)
            except (OSError, picows.WSError, TimeoutError):
                self.slow["connect failed"] += 1
                await asyncio.sleep(0.5)
                continue
            self.slow[f"{policy}: made"] += 1
            try:
                # A small receive buffer: the server's side fills after a few messages.
                transport.underlying_transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVBUF, 4096
                )
                transport.send(
                    picows.WSMsgType.TEXT,
                    json.dumps({"id": 1, "op": "subscribe", "channel": channel}).encode(),
                )
                await asyncio.wait_for(slow.subscribed.wait(), 10)
                transport.underlying_transport.pause_reading()
                # Unread, the server's 4501 never reaches us (its close frame and FIN wait
                # behind megabytes the kernel holds): in the disconnect namespace a new
                # slow consumer replaces this one every REPLACE_SLOW s; the server counts
                # its disconnects (shardws_slow_consumer_disconnects_total).
                until = time.monotonic() + (REPLACE_SLOW if policy == "disconnect" else math.inf)
                while time.monotonic() < until and await self._paced():
                    with contextlib.suppress(ClientError, TimeoutError):
                        for _ in range(4):  # four times the history rate: it fills up
                            await asyncio.wait_for(
                                publisher.publish(channel, {"p": SLOW_PAYLOAD}), 10
                            )
            except TimeoutError:
                self.slow[f"{policy}: subscribe timed out"] += 1
            finally:
                if slow.close_code is not None:
                    self.slow[f"{policy}: closed {slow.close_code}"] += 1
                elif slow.closed.is_set():
                    self.slow[f"{policy}: connection lost"] += 1
                transport.disconnect(graceful=False)
                await slow.closed.wait()

    async def stop_publishing(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def settle(self, limit: float) -> bool:
        """Publish one marker per channel (retried until stored) and wait until every
        subscriber delivered it or a later position: all in flight has arrived."""
        client = self._publishers[0]
        markers: dict[str, tuple[str, int]] = {}
        for channel in CHANNELS:
            reply = await asyncio.wait_for(client.publish(channel, {"k": "marker"}), limit)
            markers[channel] = (reply["epoch"], reply["offset"])
            self.sent.append(Sent("marker", channel, self.clock(), markers[channel]))
        deadline = time.monotonic() + limit

        def caught_up() -> bool:
            for (_name, channel), record in self.received.items():
                epoch, offset = markers[channel]
                if not any(
                    e[0] == "pub" and e[2] == epoch and e[3] >= offset for e in record.events
                ):
                    return False
            return True

        while not caught_up():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def presence(self, host: Endpoint) -> dict[str, Any]:
        """Presence of every history channel (from ``host``'s HTTP API) against the live
        subscribers: ``ghosts`` listed but gone, ``missing`` live but not listed."""
        live = {client.client_id for _name, client in self.subscribers if client.connected}
        result: dict[str, Any] = {}
        for channel in CHANNELS:
            members = await asyncio.to_thread(self._presence_of, host, channel)
            listed = {m["client"] for m in members}
            result[channel] = {
                "ghosts": sorted(listed - live),
                "missing": sorted(live - listed),
            }
        return result

    @staticmethod
    def _presence_of(host: Endpoint, channel: str) -> list[dict[str, Any]]:
        import http.client

        connection = http.client.HTTPConnection(host.address, host.admin_port, timeout=5)
        try:
            connection.request(
                "GET", f"/api/presence?channel={channel}", headers={"X-API-Key": host.api_key}
            )
            body = json.loads(connection.getresponse().read())
        finally:
            connection.close()
        return list(body.get("members", []))

    async def close(self) -> None:
        for _name, client in self.subscribers:
            await client.close()
        for client in self._publishers:
            await client.close()

    # -- the check ---------------------------------------------------------------------

    def report(self, explain: Callable[[float], str | None]) -> dict[str, Any]:
        """What every subscriber holds against what was sent. ``explain(t)`` names the
        fault whose window covers time ``t`` (or None)."""
        acked = [s for s in self.sent if s.position is not None and s.key != "marker"]
        unacked = [s for s in self.sent if s.position is None]
        problems: list[str] = []
        gaps: Counter[str] = Counter()
        gap_faults: Counter[str] = Counter()
        uncounted: Counter[str] = Counter()
        acked_lost: Counter[str] = Counter()
        traces: dict[str, list[str]] = {}
        delivered = 0
        # Per publication told stored: did a subscription expect it, hold it, report a
        # gap over it (the "told stored, no subscriber got it" report).
        expected: set[int] = set()
        got: set[int] = set()
        told: set[int] = set()
        for (name, channel), record in sorted(self.received.items()):
            check = check_subscription(record)
            delivered += len(check.held)
            before = len(problems)
            problems += [f"{name} {channel}: {p}" for p in check.problems]
            for at, reason in check.gap_times:
                gaps[reason] += 1
                gap_faults[explain(at) or "unexplained"] += 1
            for sent in acked:
                if sent.channel != channel or not check.expects(sent.position):
                    continue
                held = check.held.get(sent.position)  # type: ignore[arg-type]
                expected.add(id(sent))
                if held is not None:
                    got.add(id(sent))
                elif check.lost(sent.position):  # type: ignore[arg-type]
                    told.add(id(sent))
                if held is None and not check.lost(sent.position):  # type: ignore[arg-type]
                    # Documented for a partition only: what the side that loses the
                    # ownership stored is not in the history once the link heals.
                    cause = explain(sent.stored_at) or "unexplained"
                    acked_lost[cause] += 1
                    if cause != "partition":
                        problems.append(
                            f"{name} {channel}: acknowledged {sent.key} at {sent.position}"
                            f" missing ({cause})"
                        )
                elif held is not None and held != sent.key:
                    problems.append(
                        f"{name} {channel}: {sent.position} holds {held}, acked for {sent.key}"
                    )
            if len(problems) > before:  # the events, to tell what happened
                traces[f"{name} {channel}"] = [
                    f"{at:.2f} {kind} {epoch}:{offset} {value}"
                    for kind, at, epoch, offset, value in record.events
                ]
            keys = set(check.held.values())
            for sent in unacked:
                if sent.channel != channel or sent.at < check.started_at or sent.key in keys:
                    continue
                if check.gap_near(sent.at, 30.0):
                    continue  # the subscriber was told it lost publications then
                uncounted[f"{sent.key.split('-')[0]}: {explain(sent.at) or 'unexplained'}"] += 1
        never_got: Counter[str] = Counter()
        never_got_silently: Counter[str] = Counter()
        for sent in acked:
            if id(sent) in expected and id(sent) not in got:
                cause = f"{sent.key.split('-')[0]}: {explain(sent.stored_at) or 'no fault'}"
                never_got[cause] += 1
                if id(sent) not in told:
                    never_got_silently[cause] += 1
        return {
            "subscriptions": len(self.received),
            "publications_acknowledged_by_kind": dict(Counter(s.key.split("-")[0] for s in acked)),
            # Told stored (a client's publish reply, an HTTP 200 with its position, an
            # acknowledged ingress reply), expected by a subscriber, held by none: per
            # publisher kind and the fault whose window the answer came in; and of those,
            # the ones no subscriber was told it lost (a gap over them).
            "told_stored_no_subscriber_got": dict(never_got),
            "told_stored_no_subscriber_got_without_gap": dict(never_got_silently),
            "publications_sent": Counter(s.key.split("-")[0] for s in self.sent),
            "publications_acknowledged": len(acked),
            "publish_failures": dict(self.publish_failures),
            "deliveries_to_recovering_clients": delivered,
            "gaps_by_reason": dict(gaps),
            "gaps_by_fault": dict(gap_faults),
            "recoveries": sum(
                sub.recoveries for _n, c in self.subscribers for sub in c.subscriptions.values()
            ),
            "reconnects": sum(max(0, c.connects - 1) for _n, c in self.subscribers),
            "backend_publications_missing_without_gap": dict(uncounted),
            "acknowledged_missing_without_gap": dict(acked_lost),
            "slow_consumers": dict(self.slow),
            "problems": problems,
            "traces": traces,
        }


@dataclass
class SubscriptionCheck:
    """The result of ``check_subscription``."""

    held: dict[tuple[str, int], str] = field(default_factory=dict)
    lost_ranges: list[tuple[str, int, float]] = field(default_factory=list)
    skipped_epochs: bool = False  # a gap jumped between epochs (others may lie between)
    gap_times: list[tuple[float, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    start: tuple[str, int] | None = None
    started_at: float = 0.0
    epochs: set[str] = field(default_factory=set)

    def lost(self, position: tuple[str, int]) -> bool:
        """Whether a reported gap covers ``position``."""
        epoch, offset = position
        if any(e == epoch and low <= offset <= high for e, low, high in self.lost_ranges):
            return True
        # An epoch this subscriber never saw, jumped over by a reported gap.
        return self.skipped_epochs and epoch not in self.epochs

    def expects(self, position: tuple[str, int] | None) -> bool:
        """Whether the subscriber should hold ``position`` (not before its start)."""
        if position is None or self.start is None:
            return False
        return not (position[0] == self.start[0] and position[1] <= self.start[1])

    def gap_near(self, at: float, within: float) -> bool:
        return any(abs(t - at) <= within for t, _ in self.gap_times)


def check_subscription(record: Received) -> SubscriptionCheck:
    """Walk one subscription's events: holes and repeats without a reported gap, data
    twice in an epoch, and the ranges each gap reported lost (see the module doc)."""
    check = SubscriptionCheck(start=record.start, started_at=record.started_at)
    if record.start is None:
        check.problems.append("never positioned")
        return check
    epoch, offset = record.start
    check.epochs.add(epoch)
    keys_in_epoch: set[tuple[str, str]] = set()
    last_in: dict[str, int] = {epoch: offset}  # as the client keeps it (Subscription._epochs)
    for kind, at, ev_epoch, ev_offset, value in record.events:
        if kind == "pub" and ev_epoch != epoch and ev_epoch in last_in:
            # Back to an epoch followed before: the client continues it, no gap.
            epoch, offset = ev_epoch, last_in[ev_epoch]
        if kind == "gap":
            check.gap_times.append((at, value or "none"))
            if ev_epoch == epoch:
                check.lost_ranges.append((epoch, offset + 1, ev_offset))
            else:
                check.lost_ranges.append((epoch, offset + 1, math.inf))
                check.lost_ranges.append((ev_epoch, 1, ev_offset))
                check.skipped_epochs = True
            epoch, offset = ev_epoch, ev_offset
            last_in[epoch] = offset
            check.epochs.add(epoch)
            continue
        if ev_epoch != epoch:
            check.problems.append(f"epoch {epoch} -> {ev_epoch} at {at:.1f} s without a gap")
        elif ev_offset != offset + 1:
            check.problems.append(f"offset {offset} -> {ev_offset} at {at:.1f} s without a gap")
        if (ev_epoch, ev_offset) in check.held:
            check.problems.append(f"{ev_epoch}:{ev_offset} delivered twice")
        if value != "marker" and (ev_epoch, value) in keys_in_epoch:
            check.problems.append(f"{value} delivered twice in epoch {ev_epoch}")
        keys_in_epoch.add((ev_epoch, value))
        check.held[(ev_epoch, ev_offset)] = value
        epoch, offset = ev_epoch, ev_offset
        last_in[epoch] = offset
        check.epochs.add(epoch)
    return check
