"""Load generator for shardws and any server speaking its minimal pub/sub subset.

``shardws bench --scenario S --url ws://HOST:PORT/ws [options]``, or from Python
``run(LoadSpec(...))``, which returns the report the CLI prints with ``--json``.

The server under test only needs: ``{"id":N,"op":"subscribe","channel":C}`` answered by
``{"id":N,"ok":true}``; ``{"id":N,"op":"publish","channel":C,"data":D}`` answered by
``{"id":N,"ok":true}`` and pushed to every subscriber as ``{"type":"pub","channel":C,
"data":D}`` with ``D`` byte-for-byte. A publication is recognised by the prefix
``{"type":"pub"`` and nothing else; other pushes (``connected``) are ignored.

Scenarios
---------
``fanout``
    N subscribers on one channel, P publishers sending ``--size``-byte payloads at
    ``--rate`` msg/s (open loop, timer-paced) or flat out (``--rate 0``: at most
    ``--window`` un-acked publishes per publisher). Measures deliveries/s, latency,
    losses (expected = publications x subscribers whose subscribe was acknowledged before
    the first publish).
``mixed``
    N clients, each on ``u.<i>`` and ``g.<i//10>``. Publishers send to random personal or
    group channels at an open-loop rate stepping through ``--steps`` (deliveries/s) for
    ``--step-duration`` s each, while ``--slow-fraction`` of the clients never read (their
    reading is paused before the first step) and ``--churn`` clients per second are
    replaced (close a random healthy client, open a new one with the same channels).
    Reported per step.
``idle``
    N connections each subscribed to one of ``--channels`` channels (and, with
    ``--shared-channel``, to one channel they all share), held ``--duration`` s: server
    RSS before/after and per connection, connect rate over the ramp, connections dropped.
    During the hold, optionally: ``--broadcasts`` publications to the shared channel, each
    timed until every connection had it; ``--probe-rate`` publications/s to a channel
    with a single subscriber (their latency while all the others are held); and at the
    end of the hold, with ``--roll-pid``, a SIGHUP to that supervisor, timed until every
    server process was replaced and every client (``--reconnect``: they follow the
    server's ``reconnect`` push or close 1001 after the hinted delay) is back and
    subscribed again.
``roundtrip``
    One connection subscribed to a channel publishes to it, the next message after its own
    publication came back: round trips/s and latency.

Protocols (``fanout`` only)
---------------------------
``--http-publish http://ADMIN`` publishes through the HTTP API on keep-alive connections
instead of WebSocket publishers (open loop: ``--rate`` > 0): ``POST /api/publish`` with
``--api-key`` for ``--protocol native``; with ``--protocol pusher`` the subscribers speak
the Pusher protocol (``--url ws://HOST:PORT/app/{key}?protocol=7``: ``pusher:subscribe``,
``subscription_succeeded``, events) and the publisher is Pusher's signed ``POST
/apps/{id}/events`` (``--pusher-app ID:KEY:SECRET``). The same fan-out through both shows
what the Pusher layer costs (``benchmarks/macro.py`` scenario 6).

How to read the numbers
-----------------------
- ``deliveries_per_s``: publications received by all clients divided by the window from
  the first publish to the last delivery (the last delivery is seen by a 50 ms ticker, so
  the window is at most 50 ms long). ``mixed`` bins deliveries by arrival per step.
- ``latency_ms``: receive wall time minus the publisher's ``time.time_ns()`` carried in
  ``data`` (``{"t":<ns>,"p":"xx.."}``), sampled every ``--sample-every``-th publication per
  connection (default: about 10,000 samples per run). Publishers and receivers are
  separate processes on one clock, so this is one-way latency through the server plus
  the generator's own scheduling delay. Open-loop publishers take the timestamp when they
  actually send, so a generator that falls behind shows as ``publish_rate_per_s`` below
  the offered rate rather than as latency.
- ``lost``: expected minus received. In ``mixed`` only healthy clients count, and only
  publications stamped after the client's subscribe replies arrived and before it was
  chosen for churn (it then stays open ``--churn-grace`` s to receive what is in flight).
- ``server``: for every ``--server-pid`` its whole process tree; ``cpu_s`` is CPU time from
  ``/proc/<pid>/task/*/schedstat`` (ns; utime+stime where absent)
  over the measured window, ``rss_mb`` the sum of VmRSS. The generator shares the cores
  with a local server, so ``deliveries_per_cpu_s`` (deliveries per server CPU-second) is
  the steadier figure to compare runs and servers; deliveries/s depends on how much CPU
  the generator took.
- ``connections.connect_rate_per_s``: WebSocket handshakes completed per second over all
  processes, from the first attempt to the last handshake (``--connect-concurrency`` in
  flight per process; with ``--connect-rate`` the attempts are paced instead, open loop,
  the processes taking turns, so the server sees a steady arrival rate whatever the
  generator's own speed). ``connections.ramp`` splits the connect phase into ten equal
  time slices (``tenths_per_s``); ``first_tenth_per_s``/``last_tenth_per_s`` are its
  first and last. The connect phase may take ``--connect-timeout`` (default: 30 s plus
  one second per 250 connections, or per ``--connect-rate`` connections if lower, so the
  allowance grows with the count); a client whose
  attempt fails (refused, reset, lost during the handshake) tries up to
  ``--connect-attempts`` times (default 3; 0: until the phase ends), after a 503's
  ``Retry-After`` (with jitter) or a back-off (``connect_retries``; ``refused_503``
  counts the attempts a full or overloaded server answered 503), and ``failed`` counts
  the clients that never connected;
  ``subscribe_retries`` counts subscribes answered error 108 (the server could not
  confirm them live) and sent again after a back-off, as shardws's clients do;
  ``per_process`` gives planned, opened and failed per client process.
- ``idle.roll``: ``clients_sent_away`` (a ``reconnect`` push or close 1001),
  ``dropped_without_hint`` (their connection just ended; ``dropped_by_cause`` by the
  server's close code, or ``no close frame`` for a reset or EOF), ``reconnected``,
  ``subscribe_retries`` (subscribes answered error 108, not confirmed live, and sent
  again after a back-off, as shardws's clients do), ``client_loop_lag_max_s`` (the
  latest any client process's event loop ran: a starved client answers handshakes and
  closes that late), ``refused`` (``refused_by_cause``: by exception and message)
  (attempts refused, reset or answered 503), ``timed_out_attempts`` (no answer in 10 s:
  abandoned and retried), ``seconds`` until the last old server process was gone and
  every client was back and subscribed.
- ``cpu``: CPU-seconds and percent of one core, for the server tree and for the client
  processes, over the connect phase and over the measured window. ``bottleneck`` lines
  say when the client processes spent more CPU than the server (they share the cores, so
  the generator, not the server, set the pace) or ran a core flat out.

Connections are spread round-robin over ``--processes`` spawned processes (each must stay
under the per-process open-file limit), over the ``--url`` list and, with ``--source-ips
K > 1``, over local addresses 127.0.0.1 ... 127.0.0.K (loopback servers only). Those
sockets are bound with ``IP_BIND_ADDRESS_NO_PORT``, so the kernel picks the source port
at ``connect()`` for the whole 4-tuple: each (source, server address) pair has the full
ephemeral range, and no port search happens at ``bind()`` (at 100,000+ connections that
search took minutes of kernel time). Every wait is bounded by ``--timeout``; on timeout
the report's ``problems`` says what was missing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import multiprocessing as mp
import os
import random
import re
import resource
import signal
import socket
import ssl
import sys
import time
import traceback
import urllib.parse
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

import numpy as np
import picows

from shardws.client import retry_after

SCENARIOS = ("fanout", "mixed", "idle", "roundtrip")
PROTOCOLS = ("native", "pusher")
CONNECT_TIMEOUT_HTTP = 10.0  # seconds to open an HTTP publisher's connection
# The LoadSpec fields each scenario reads, besides the URLs, source addresses, server
# pids, timeout and connect concurrency (and, for wss://, cafile and insecure): the text
# report shows only these.
SCENARIO_SETTINGS = {
    "fanout": (
        "protocol",
        "http_publish",
        "connections",
        "publishers",
        "processes",
        "size",
        "rate",
        "window",
        "duration",
        "messages",
        "channel",
        "sample_every",
        "drain",
    ),
    "mixed": (
        "connections",
        "publishers",
        "processes",
        "size",
        "messages",
        "steps",
        "step_duration",
        "group_fraction",
        "slow_fraction",
        "churn",
        "churn_grace",
        "sample_every",
        "drain",
    ),
    "idle": (
        "connections",
        "processes",
        "duration",
        "channels",
        "shared_channel",
        "broadcasts",
        "probe_rate",
        "reconnect",
        "roll_pid",
        "drain",
    ),
    "roundtrip": ("size", "duration", "messages", "channel"),
}
PUB_PREFIX = b'{"type":"pub"'
REPLY_PREFIX = b'{"id"'
OK_MARK = b'"ok":true'
T_KEY = b'{"t":'
# Pusher: an HTTP API event as subscribers get it; its data is the JSON as a string.
PUSHER_PUB_PREFIX = b'{"event":"pub",'
PUSHER_T_KEY = b'{\\"t\\":'
PUSHER_SUBSCRIBED = b'{"event":"pusher_internal:subscription_succeeded"'
PUSHER_SUBSCRIPTION_ERROR = b'{"event":"pusher:subscription_error"'
T_DIGITS = 19  # time.time_ns() has 19 digits from 2001 to 2286: fixed-width slicing is safe
MIN_SIZE = len(b'{"t":,"p":""}') + T_DIGITS
GROUP_SIZE = 10
MAX_NS = 2**63 - 1
TICK = 0.05  # worker ticker: last-delivery time resolution and progress cadence base
PROGRESS_EVERY = 0.5  # worker -> coordinator progress messages
STALL_SECONDS = 5.0  # roundtrip: no own publication back for this long = lost
RECONNECT_PREFIX = b'{"type":"reconnect"'
RECONNECT_ATTEMPTS = 5  # a client the server sent away tries this often to come back
CONNECT_ATTEMPTS = 3  # connect phase: attempts per client before it counts as failed
RECONNECT_TIMEOUT = 10.0  # seconds one reconnect attempt may take
MAX_RECONNECT_DELAY = 60.0  # cap on the server's delay hint
FINAL_REPORT_CLOSES_PER_S = 500  # allowance for a process to close its clients and report
LAG_TICK = 0.1  # s between two looks at how late a client process's event loop runs
NOT_LIVE_MARK = b'"code":108'  # a subscribe the server could not confirm live: retry
SUBSCRIBE_RETRIES = 10  # per connection, then the error counts
CONNECTS_PER_S_FLOOR = 250  # auto --connect-timeout: one second per this many connections
MIN_PROBE_SECONDS = 2.0  # idle: probes run to the end of the hold, and at least this long
ROLL_SECONDS_PER_PROCESS = 60.0  # auto --timeout: allowance per server process rolled
# Linux <netinet/in.h>; Python names it only from 3.12 on some builds.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


@dataclass
class LoadSpec:
    """One load run; every field is the CLI option of the same name (``_`` for ``-``)."""

    scenario: str = "fanout"
    url: list[str] = field(default_factory=lambda: ["ws://127.0.0.1:8765/ws"])
    connections: int = 1000  # subscribers (fanout), clients (mixed, idle)
    publishers: int = 1
    processes: int = 2
    source_ips: int = 1
    size: int = 100  # bytes of the published ``data`` JSON
    rate: float = 0.0  # fanout: publications/s over all publishers; 0 = flat out
    window: int = 256  # flat out: un-acked publishes in flight per publisher
    duration: float = 10.0  # seconds; 0 = until --messages
    messages: int = 0  # publications over all publishers; 0 = until --duration
    channel: str = "bench"
    channels: int = 0  # idle: distinct channels; 0 = connections // 10
    steps: list[float] = field(default_factory=lambda: [5000, 10000, 20000, 40000, 80000])
    step_duration: float = 10.0
    group_fraction: float = 0.5  # mixed: share of publications that go to a group channel
    slow_fraction: float = 0.01
    churn: float = 30.0  # mixed: connections replaced per second
    churn_grace: float = 2.0  # mixed: a churned client stays open this long before closing
    sample_every: int = 0  # latency sample every k-th publication per connection; 0 = auto
    server_pid: list[int] = field(default_factory=list)
    timeout: float = 0.0  # whole run; 0 = measured time + 60 s
    drain: float = 3.0  # after the last publish, stop waiting once nothing arrived this long
    connect_concurrency: int = 200  # handshakes in flight per process
    connect_rate: float = 0.0  # connections opened per second over all processes; 0 = flat out
    connect_timeout: float = 0.0  # seconds for the connect phase; 0 = 30 + connections/250
    connect_attempts: int = CONNECT_ATTEMPTS  # per client in the connect phase; 0 = until done
    shared_channel: str = ""  # idle: every connection also subscribes to this channel
    broadcasts: int = 0  # idle: publications to --shared-channel, each timed to all
    probe_rate: float = 0.0  # idle: publications/s to a single-subscriber channel
    reconnect: bool = False  # idle: come back when the server sends a client away
    roll_pid: int = 0  # idle: SIGHUP this supervisor at the end of the hold, time the roll
    protocol: str = "native"  # the subscribers' protocol: native or pusher
    http_publish: str = ""  # http://ADMIN: publish through the HTTP API (fanout, --rate > 0)
    api_key: str = ""  # native HTTP publishing: the admin's X-API-Key
    pusher_app: str = ""  # pusher: ID:KEY:SECRET of the app (signs its HTTP API requests)
    cafile: str = ""  # wss://: CA bundle (PEM) to verify the server with; "" = system CAs
    insecure: bool = False  # wss://: do not verify the server's certificate (test setups)
    json: bool = False
    progress: bool = True

    def validate(self) -> None:
        problems = []
        if self.scenario not in SCENARIOS:
            problems.append(f"scenario must be one of {', '.join(SCENARIOS)}")
        if not self.url:
            problems.append("at least one --url is needed")
        for url in self.url:
            if not url.startswith(("ws://", "wss://")):
                problems.append(f"--url must be a full ws://host:port/path URL, got {url!r}")
        if self.connections < 1 and self.scenario != "roundtrip":
            problems.append("--connections must be >= 1")
        if self.processes < 1 or self.publishers < 1 or self.source_ips < 1:
            problems.append("--processes, --publishers and --source-ips must be >= 1")
        if not 1 <= self.source_ips <= 254:
            problems.append("--source-ips must be in 1..254")
        if self.size < MIN_SIZE:
            problems.append(f"--size must be >= {MIN_SIZE} (timestamp and padding)")
        if self.duration <= 0 and self.messages <= 0 and self.scenario != "mixed":
            problems.append("set --duration or --messages (or both)")
        if self.scenario == "mixed":
            if not self.steps or min(self.steps) <= 0 or len(self.steps) > 100:
                problems.append("--steps must be 1 to 100 positive deliveries/s values")
            if self.connections + math.ceil(self.connections / GROUP_SIZE) >= 2**19:
                problems.append("mixed supports up to 470,000 --connections")
        if self.connect_attempts < 0:
            problems.append("--connect-attempts must be >= 0 (0: until --connect-timeout)")
        if self.rate < 0 or self.window < 1 or self.connect_concurrency < 1:
            problems.append("--rate must be >= 0, --window and --connect-concurrency >= 1")
        if min(self.connect_timeout, self.connect_rate, self.probe_rate, self.broadcasts) < 0:
            problems.append(
                "--connect-timeout, --connect-rate, --probe-rate and --broadcasts must be >= 0"
            )
        if self.scenario != "idle" and (
            self.shared_channel or self.broadcasts or self.probe_rate or self.roll_pid
        ):
            problems.append(
                "--shared-channel, --broadcasts, --probe-rate and --roll-pid are idle only"
            )
        if self.broadcasts and not self.shared_channel:
            problems.append("--broadcasts needs --shared-channel")
        if self.roll_pid and not self.reconnect:
            problems.append("--roll-pid needs --reconnect (clients must come back)")
        if not 0 <= self.slow_fraction < 1 or not 0 <= self.group_fraction <= 1:
            problems.append("--slow-fraction must be in [0, 1), --group-fraction in [0, 1]")
        per_process = math.ceil(self.connections / self.processes) + self.publishers + 64
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if limit != resource.RLIM_INFINITY and per_process > limit:
            problems.append(
                f"{per_process} sockets per process exceed the open-file limit {limit}: "
                "use more --processes"
            )
        if self.protocol not in PROTOCOLS:
            problems.append(f"--protocol must be one of {', '.join(PROTOCOLS)}")
        if (self.protocol == "pusher" or self.http_publish) and (
            self.scenario != "fanout" or self.rate <= 0 or not self.http_publish
        ):
            problems.append(
                "--protocol pusher and --http-publish go with --scenario fanout, --rate > 0 "
                "and --http-publish"
            )
        if self.http_publish and not self.http_publish.startswith("http://"):
            problems.append(f"--http-publish must be http://host:port, got {self.http_publish!r}")
        if self.protocol == "pusher" and self.pusher_app.count(":") != 2:
            problems.append("--protocol pusher needs --pusher-app ID:KEY:SECRET")
        if problems:
            raise ValueError("; ".join(problems))

    def measured_seconds(self) -> float:
        if self.scenario == "mixed":
            return len(self.steps) * self.step_duration
        return self.duration if self.duration > 0 else 60.0

    def connect_seconds(self) -> float:
        """How long the connect phase may take: grows with the count, so a large run is
        not cut off by an allowance sized for a small one."""
        if self.connect_timeout > 0:
            return self.connect_timeout
        floor = float(CONNECTS_PER_S_FLOOR)
        if self.connect_rate > 0:  # a paced ramp takes connections / rate by design
            floor = min(floor, self.connect_rate)
        return 30.0 + self.connections / floor

    def effective_timeout(self) -> float:
        if self.timeout > 0:
            return self.timeout
        extra = 0.0
        if self.roll_pid:
            extra += ROLL_SECONDS_PER_PROCESS * max(1, len(_process_tree([self.roll_pid])))
        if self.broadcasts:
            extra += self.broadcasts * (self.drain + 5.0)
        return self.connect_seconds() + self.measured_seconds() + 60.0 + extra


# --------------------------------------------------------------------------------------
# Worker process: picows clients on uvloop, controlled over a multiprocessing pipe.
# --------------------------------------------------------------------------------------


class _Sub(picows.WSListener):
    """A subscriber connection. The hot path is one bytes copy, one prefix test and one
    counter increment; every ``k``-th publication the timestamp is sliced out of the
    payload (no JSON parsing), everything else goes to the worker's slow path."""

    def __init__(self, worker: _Worker, slot: int, channels: list[bytes]) -> None:
        self.w = worker
        self.slot = slot
        self.channels = channels
        self.transport: picows.WSTransport | None = None
        self.received = 0
        self.acked = 0
        self.next_sample = worker.first_sample()
        self.start_ns = 0  # wall time the last subscribe reply arrived: counting starts
        self.end_ns = MAX_NS  # counting stops (chosen for churn, or dropped by the server)
        self.slow = False
        self.closing = False  # closed by us: a disconnect is not a loss
        self.away_delay: float | None = None  # the server sent it away: back after this
        self.reopened = False  # an incarnation that came back after being sent away
        self.close_code: int | None = None  # of the server's close frame, if one came
        self.retries = 0  # subscribes sent again after error 108 (not live yet)

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        payload = frame.get_payload_as_bytes()
        if payload.startswith(PUB_PREFIX):
            self.received += 1
            if self.received == self.next_sample:
                self.next_sample += self.w.k
                self.w.sample(payload)
        else:
            self.w.control(self, frame, payload)

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.w.disconnected(self)


class _IdleSub(_Sub):
    """An ``idle`` client: every publication it gets is a broadcast on the shared channel;
    its timestamp (a slice and an int) keys the count and the latest arrival."""

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        payload = frame.get_payload_as_bytes()
        if payload.startswith(PUB_PREFIX):
            self.received += 1
            at = payload.find(T_KEY, 13) + 5
            self.w.broadcast_arrived(int(payload[at : at + T_DIGITS]))
        else:
            self.w.control(self, frame, payload)


class _MixedSub(_Sub):
    """A ``mixed`` client: reads the timestamp of every publication (a slice and an int,
    still no JSON) to count only publications inside its healthy window, per step."""

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        payload = frame.get_payload_as_bytes()
        if payload.startswith(PUB_PREFIX):
            self.received += 1
            at = payload.find(T_KEY, 13) + 5
            sent = int(payload[at : at + T_DIGITS])
            w = self.w
            step = (sent - w.t0_ns) // w.step_ns
            if self.start_ns <= sent <= self.end_ns and 0 <= step < w.nsteps:
                w.in_window[step] += 1
            if self.received == self.next_sample:
                self.next_sample += w.k
                w.latencies.append(time.time_ns() - sent)
                w.latency_steps.append(step if 0 <= step < w.nsteps else -1)
        else:
            self.w.control(self, frame, payload)


class _PusherSub(_Sub):
    """A ``fanout`` subscriber speaking the Pusher protocol: an HTTP API event
    (``{"event":"pub",...,"data":"<the JSON as a string>"}``) is a publication, its
    timestamp read from the escaped string; ``subscription_succeeded`` is the ack."""

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        payload = frame.get_payload_as_bytes()
        if payload.startswith(PUSHER_PUB_PREFIX):
            self.received += 1
            if self.received == self.next_sample:
                self.next_sample += self.w.k
                at = payload.find(PUSHER_T_KEY, 13) + len(PUSHER_T_KEY)
                self.w.latencies.append(time.time_ns() - int(payload[at : at + T_DIGITS]))
        elif payload.startswith(PUSHER_SUBSCRIBED):
            self.w.subscribe_acked(self)
        elif payload.startswith(PUSHER_SUBSCRIPTION_ERROR):
            self.w.subscribe_errors += 1
            self.w.note(f"subscribe failed: {payload[:200]!r}")


class _HttpPublisher(asyncio.Protocol):
    """A publisher on one keep-alive HTTP/1.1 connection to the admin listener: each
    ``publish`` writes one request (requests are pipelined: open loop), each response
    is an ack (``errors`` counts those other than 200)."""

    def __init__(self, worker: _Worker, index: int) -> None:
        self.w = worker
        self.index = index
        self.transport: asyncio.Transport | None = None
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.received = 0
        self.subscribed = True
        self.closing = False
        self.sent_away = False
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self.transport = cast("asyncio.Transport", transport)

    def publish(self, channel: bytes) -> int:
        """Send one publication now; returns its timestamp."""
        assert self.transport is not None
        self.sent += 1
        now = time.time_ns()
        self.transport.write(self.w.http_request(channel, now))
        return now

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if len(self._buffer) < end + 4 + length:
                return
            if not head.startswith(b"http/1.1 200"):
                self.errors += 1
                self.w.note(f"HTTP publish: {self._buffer[: end + 4 + length][:200]!r}")
            self._buffer = self._buffer[end + 4 + length :]
            self.acked += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.w.note("an HTTP publisher connection was closed by the server")
            self.w.publishing_done()


class _Publisher(picows.WSListener):
    """A publisher connection. Flat out, each acknowledgement triggers the next publish,
    so at most ``window`` are un-acked; paced publishing is driven by the worker's timer.
    In ``roundtrip`` it is also subscribed and publishes the next message when its own
    publication comes back."""

    def __init__(self, worker: _Worker, index: int) -> None:
        self.w = worker
        self.index = index
        self.transport: picows.WSTransport | None = None
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.received = 0
        self.subscribed = False
        self.closing = False
        self.sent_away = False  # the server asked it to reconnect (a roll): not a failure

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport

    def publish(self, channel: bytes) -> int:
        """Send one publication now; returns its timestamp."""
        assert self.transport is not None
        self.sent += 1
        now = time.time_ns()
        self.transport.send(
            picows.WSMsgType.TEXT,
            b'{"id":%d,"op":"publish","channel":"%b","data":{"t":%d,"p":"%b"}}'
            % (self.sent, channel, now, self.w.pad),
        )
        return now

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        payload = frame.get_payload_as_bytes()
        w = self.w
        if payload.startswith(PUB_PREFIX):
            self.received += 1
            if w.scenario == "roundtrip":
                at = payload.find(T_KEY, 13) + 5
                w.latencies.append(time.time_ns() - int(payload[at : at + T_DIGITS]))
                w.last_rx = time.monotonic()
                if w.running and w.may_publish():
                    self.publish(w.channel)
                else:
                    w.publishing_done()
            elif w.scenario == "idle":  # a probe on its own single-subscriber channel
                at = payload.find(T_KEY, 13) + 5
                w.latencies.append(time.time_ns() - int(payload[at : at + T_DIGITS]))
        elif payload.startswith(RECONNECT_PREFIX):
            self.sent_away = True
        elif payload.startswith(REPLY_PREFIX) and frame.msg_type == picows.WSMsgType.TEXT:
            if OK_MARK not in payload:
                self.errors += 1
                w.note(f"publisher got {payload[:200]!r}")
            if not self.subscribed:
                self.subscribed = True  # roundtrip: the first reply is the subscribe reply
                w.on_publisher_subscribed()
                return
            self.acked += 1
            if w.flat_out and w.running:
                if w.may_publish():
                    self.publish(w.channel)
                elif self.sent == self.acked:
                    w.publishing_done()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        if not self.closing and not self.sent_away:
            self.w.note("a publisher connection was closed by the server")
        if not self.closing:
            self.w.publishing_done()


class _Worker:
    """One generator process: opens its share of the connections, then follows the
    coordinator's ``start``/``stop`` and reports progress every ``PROGRESS_EVERY`` s."""

    def __init__(self, spec: LoadSpec, plan: dict[str, Any], pipe: Connection) -> None:
        self.spec = spec
        self.plan = plan
        self.pipe = pipe
        self.scenario = spec.scenario
        self.k = max(1, int(plan["sample_every"]))
        self.pad = b"x" * (spec.size - MIN_SIZE)
        self.channel = spec.channel.encode()
        self.deadline = plan["deadline"]  # wall clock; the coordinator gives up first
        self.subs: list[_Sub] = []  # every subscriber incarnation ever opened
        self.live: dict[int, _Sub] = {}  # slot -> current incarnation (mixed churn)
        self.pubs: list[_Publisher | _HttpPublisher] = []
        self.latencies = array("q")
        self.latency_steps = array("b")
        self.notes: list[str] = []
        self.connect_failed = 0
        self.subscribed = 0
        self.subscribe_errors = 0
        self.subscribe_retries = 0  # subscribes sent again after error 108
        self.unexpected_disconnects = 0
        # Why connections ended without a reconnect hint: the server's close code, or
        # "no close frame" (reset or EOF: a worker killed, a drain's deadline passed).
        self.drop_causes: collections.Counter[str] = collections.Counter()
        # Refused reconnect attempts by exception and message (a reset in the handshake,
        # an HTTP status instead of the upgrade, a local error such as no free port).
        self.refusals: collections.Counter[str] = collections.Counter()
        self.churned = 0
        self.to_subscribe = 0
        self.subscribed_event = asyncio.Event()
        self.connect_event = asyncio.Event()
        self.start_event = asyncio.Event()
        self.stop_event = asyncio.Event()
        self.t0 = 0.0
        self.t0_ns = 0
        self.step_ns = max(1, int(spec.step_duration * 1e9))
        self.nsteps = len(spec.steps) if spec.scenario == "mixed" else 0
        self.in_window = [0] * max(1, self.nsteps)
        self.boundary_received: list[int] = []
        self.pub_t = array("q")
        self.pub_code = array("l")
        self.running = False
        self.flat_out = spec.scenario == "fanout" and spec.rate <= 0
        self.pub_limit = int(plan["messages"])  # this process's publications, 0 = no limit
        self.pub_stop = MAX_NS  # monotonic_ns after which no more publishing
        self.pub_done = not plan["publishers"]
        self.first_publish = 0.0
        self.last_rx = time.monotonic()
        self.last_rx_wall = 0.0
        self.retired_received = 0
        self.sem = asyncio.Semaphore(spec.connect_concurrency)
        self._ssl: ssl.SSLContext | None = None
        self.connect_started = 0.0
        self.connect_ended = 0.0
        self.connect_deadline = min(self.deadline, time.time() + spec.connect_seconds())
        self.connecting = False
        self.connect_times = array("d")  # wall time of every handshake of the connect phase
        self.cpu_marks: dict[str, float] = {}  # this process's CPU seconds at phase changes
        self.shared = spec.shared_channel.encode()
        self.probe_channel = b"probe.%d" % os.getpid()
        self.probing = False
        self.broadcasts_sent: list[int] = []  # timestamps (ns) of our shared-channel publishes
        self.broadcast_rx: dict[int, list[int]] = {}  # timestamp -> [arrivals, latest ns]
        self.replaced = 0  # incarnations the server sent away (a roll), not losses
        self.away = 0  # clients waiting to reconnect
        self.reconnected = 0
        self.reconnect_refused = 0  # reconnect attempts that failed (refused, 503, timeout)
        self.reconnect_gave_up = 0
        self.reconnect_timeouts = 0
        self.connect_retries = 0
        self.refused_503 = 0  # connect attempts answered 503 (a full or overloaded server)
        self.last_failure: Exception | None = None  # of the latest failed connect
        self.resubscribing = 0  # reconnected, subscribe replies not all in yet
        self.back_wall = 0.0  # wall time the last reconnected client was subscribed again
        self.tasks: list[asyncio.Task[Any]] = []
        self.loop_lag_max = 0.0  # the latest this process's event loop ran (s)

    # -- helpers used by the listeners ---------------------------------------------------

    def first_sample(self) -> int:
        # A random first sample spreads the samples of a large fan-out over publications
        # instead of sampling the same message on every subscriber.
        return random.randint(1, self.k)

    def sample(self, payload: bytes) -> None:
        at = payload.find(T_KEY, 13) + 5
        self.latencies.append(time.time_ns() - int(payload[at : at + T_DIGITS]))

    def note(self, text: str) -> None:
        if len(self.notes) < 10:
            self.notes.append(text)

    def control(self, sub: _Sub, frame: picows.WSFrame, payload: bytes) -> None:
        """Everything that is not a publication: replies (subscribe acks) and pushes."""
        if frame.msg_type == picows.WSMsgType.CLOSE:
            sub.close_code = int(frame.get_close_code().value)
        if self.spec.reconnect:
            if payload.startswith(RECONNECT_PREFIX):
                # {"type":"reconnect","delay":D}: a drain; the close 1001 follows.
                delay = float(json.loads(payload).get("delay", 1.0))
                sub.away_delay = min(max(0.0, delay), MAX_RECONNECT_DELAY)
                return
            if frame.msg_type == picows.WSMsgType.CLOSE:
                # RFC 6455 5.5.1: answer the close, then the server closes the TCP side.
                if frame.get_close_code() == picows.WSCloseCode.GOING_AWAY:
                    if sub.away_delay is None:
                        sub.away_delay = 1.0
                    if sub.transport is not None:
                        sub.transport.send_close(picows.WSCloseCode.OK)
                return
        if frame.msg_type != picows.WSMsgType.TEXT or not payload.startswith(REPLY_PREFIX):
            return  # ``connected`` and any other push, pings, close frames
        if OK_MARK not in payload:
            if NOT_LIVE_MARK in payload and sub.retries < SUBSCRIBE_RETRIES:
                self.retry_subscribe(sub, payload)
                return
            self.subscribe_errors += 1
            self.note(f"subscribe failed: {payload[:200]!r}")
            return
        self.subscribe_acked(sub)

    def retry_subscribe(self, sub: _Sub, reply: bytes) -> None:
        """Error 108 to a subscribe: the server could not confirm it live and undid it;
        send it again after a back-off, as shardws's clients do (counted)."""
        n = int(json.loads(reply)["id"])
        sub.retries += 1
        self.subscribe_retries += 1
        delay = min(5.0, 0.25 * 2 ** min(sub.retries, 5)) * random.uniform(0.5, 1.0)
        message = b'{"id":%d,"op":"subscribe","channel":"%b"}' % (n, sub.channels[n - 1])

        def resend() -> None:
            if sub.transport is not None and not sub.closing:
                sub.transport.send(picows.WSMsgType.TEXT, message)

        asyncio.get_running_loop().call_later(delay, resend)

    def subscribe_acked(self, sub: _Sub) -> None:
        """One of ``sub``'s subscriptions is acknowledged: once all are, it counts."""
        sub.acked += 1
        if sub.acked == len(sub.channels):
            sub.start_ns = time.time_ns()
            self.subscribed += 1
            if sub.reopened:
                self.resubscribing -= 1
                self.back_wall = time.time()
            if self.subscribed >= self.to_subscribe:
                self.subscribed_event.set()

    def broadcast_arrived(self, sent_ns: int) -> None:
        entry = self.broadcast_rx.get(sent_ns)
        if entry is None:
            entry = self.broadcast_rx[sent_ns] = [0, 0]
        entry[0] += 1
        entry[1] = time.time_ns()

    def disconnected(self, sub: _Sub) -> None:
        self.retired_received += sub.received
        sub.received = 0
        if sub.closing:
            return
        sub.end_ns = min(sub.end_ns, time.time_ns())
        if self.live.get(sub.slot) is sub:
            del self.live[sub.slot]
        if sub.reopened and not sub.start_ns:
            self.resubscribing -= 1  # gone before its subscriptions were acknowledged
        if sub.away_delay is not None and self.spec.reconnect:
            self.replaced += 1
        else:
            self.unexpected_disconnects += 1
            code = sub.close_code
            self.drop_causes["no close frame" if code is None else str(code)] += 1
        if self.spec.reconnect and not self.stop_event.is_set():
            # A client sent away waits the hinted delay; one dropped without a hint (its
            # worker died) comes back at once, as real clients do, but stays counted in
            # unexpected_disconnects.
            self.away += 1
            sub.transport = None  # the dead incarnation keeps no buffers
            delay = sub.away_delay if sub.away_delay is not None else 0.0
            asyncio.get_running_loop().call_later(delay, self._schedule_reopen, sub.slot)

    def _schedule_reopen(self, slot: int) -> None:
        self.tasks.append(asyncio.ensure_future(self.reopen(slot)))

    async def reopen(self, slot: int) -> None:
        """Bring back a client the server sent away (or dropped): a bounded number of
        attempts with back-off. An attempt still unanswered after RECONNECT_TIMEOUT s
        (a SYN dropped at a full accept queue waits out the kernel's retransmit back-off
        while holding a connect slot) is abandoned and counted as timed out; every other
        failed attempt (refused, reset, 503) counts as refused."""
        try:
            for attempt in range(RECONNECT_ATTEMPTS):
                if self.stop_event.is_set():
                    return
                sub = await self.open_sub(slot, reopened=True)
                if sub is not None:
                    self.reconnected += 1
                    return
                if isinstance(self.last_failure, TimeoutError):
                    self.reconnect_timeouts += 1
                else:
                    self.reconnect_refused += 1
                    failure = self.last_failure
                    self.refusals[f"{type(failure).__name__}: {str(failure)[:80]}"] += 1
                await asyncio.sleep(min(5.0, 0.5 * 2**attempt))
            self.reconnect_gave_up += 1
            self.note(f"client {slot} did not come back after {RECONNECT_ATTEMPTS} attempts")
        finally:
            self.away -= 1

    def may_publish(self) -> bool:
        if self.pub_limit and self.published() >= self.pub_limit:
            return False
        return time.monotonic_ns() < self.pub_stop

    def publishing_done(self) -> None:
        self.running = False
        self.pub_done = True

    def on_publisher_subscribed(self) -> None:
        self.subscribed += 1
        if self.subscribed >= self.to_subscribe:
            self.subscribed_event.set()

    def published(self) -> int:
        return sum(p.sent for p in self.pubs)

    def received(self) -> int:
        return (
            self.retired_received
            + sum(s.received for s in self.subs)
            + sum(p.received for p in self.pubs)
        )

    # -- connecting ----------------------------------------------------------------------

    def _connect_kwargs(self, index: int) -> tuple[str, dict[str, Any]]:
        urls = self.spec.url
        kwargs: dict[str, Any] = {
            "use_aiofastnet": False,  # choose explicitly: memory and accept rate differ
            "read_buffer_init_size": 4096,  # small frames; keeps 10k clients per process light
            "websocket_handshake_timeout": 30,
            "max_frame_size": 16 * 1024 * 1024,
        }
        if self.spec.source_ips > 1:
            kwargs["socket_factory"] = _source_socket(f"127.0.0.{1 + index % self.spec.source_ips}")
        url = urls[index % len(urls)]
        if url.startswith("wss://"):
            kwargs["ssl_context"] = self._ssl_context()
        return url, kwargs

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context(cafile=self.spec.cafile or None)
            if self.spec.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._ssl = context
        return self._ssl

    async def _open(self, factory: Callable[[], picows.WSListener], index: int) -> Any:
        url, kwargs = self._connect_kwargs(index)
        async with self.sem:
            until = self.connect_deadline if self.connecting else self.deadline
            remaining = until - time.time()
            if self.spec.reconnect and not self.connecting:
                remaining = min(remaining, RECONNECT_TIMEOUT)
            try:
                if remaining <= 0:
                    raise TimeoutError("connect timeout (--connect-timeout) before connecting")
                _transport, listener = await asyncio.wait_for(
                    picows.ws_connect(factory, url, **kwargs), remaining
                )
                if listener is None:
                    # picows returns normally, with no listener, when the connection is
                    # lost before the upgrade response (a server shedding handshakes).
                    raise ConnectionResetError("connection lost during the handshake")
            except Exception as exc:  # any failure to connect is a result to report
                self.last_failure = exc
                self.connect_failed += 1
                self.note(f"connect {url}: {type(exc).__name__}: {exc}")
                return None
        now = time.time()
        if self.connecting:
            self.connect_ended = now
            self.connect_times.append(now)
        return listener

    async def open_sub(self, slot: int, reopened: bool = False) -> _Sub | None:
        if self.scenario == "mixed":
            channels = [b"u.%d" % slot, b"g.%d" % (slot // GROUP_SIZE)]
            cls: type[_Sub] = _MixedSub
        elif self.scenario == "idle":
            channels = [b"idle.%d" % (slot % self.plan["channels"])]
            if self.shared:
                channels.append(self.shared)
            cls = _IdleSub
        else:
            channels = [self.channel]
            cls = _PusherSub if self.spec.protocol == "pusher" else _Sub
        sub = await self._open(lambda: cls(self, slot, channels), slot)
        if sub is None:
            return None
        assert isinstance(sub, _Sub)
        self.subs.append(sub)
        if sub.transport is None:
            # Closed before ws_connect returned (a draining worker sends a client it has
            # just accepted away at once): ``disconnected`` counted it and scheduled its
            # comeback; it stays in ``subs`` so the live count balances.
            return sub
        self.live[slot] = sub
        if reopened:
            sub.reopened = True
            self.resubscribing += 1
        for n, channel in enumerate(channels, 1):
            if cls is _PusherSub:
                message = b'{"event":"pusher:subscribe","data":{"channel":"%b"}}' % channel
            else:
                message = b'{"id":%d,"op":"subscribe","channel":"%b"}' % (n, channel)
            sub.transport.send(picows.WSMsgType.TEXT, message)
        return sub

    async def open_slot(self, slot: int) -> None:
        """Connect phase: open one client, retrying a failed attempt (as a real client
        would) up to ``--connect-attempts`` times (0: until the phase's deadline), after
        the ``Retry-After`` of a 503 (with jitter, as shardws's clients do) or a back-off
        of 0.5 s doubling to 5 s; ``connect_retries`` counts the retries."""
        attempts = self.spec.connect_attempts
        attempt = 0
        while True:
            if await self.open_sub(slot) is not None or time.time() >= self.connect_deadline:
                return
            attempt += 1
            if attempt == attempts:
                return
            self.connect_retries += 1
            self.connect_failed -= 1  # only a client that never connected is a failure
            failure = self.last_failure
            response = getattr(failure, "response", None)
            if response is not None and response.status == 503:
                self.refused_503 += 1
            delay = retry_after(response) or min(5.0, 0.5 * 2 ** (attempt - 1))
            await asyncio.sleep(min(delay, max(0.0, self.connect_deadline - time.time())))

    async def _open_slot_at(self, slot: int, at: float) -> None:
        """``open_slot`` at wall time ``at`` (``--connect-rate``: an open-loop ramp)."""
        await asyncio.sleep(max(0.0, at - time.time()))
        await self.open_slot(slot)

    async def connect_all(self) -> dict[str, Any]:
        slots: list[int] = self.plan["slots"]
        total = self.plan["total"]
        subscribing_pubs = self.scenario in ("roundtrip", "idle")
        self.to_subscribe = len(slots) + (
            len(self.plan["publisher_ids"]) if subscribing_pubs else 0
        )
        self.connect_started = time.time()
        self.cpu_marks["connect"] = _own_cpu()
        self.connecting = True
        reporter = asyncio.ensure_future(self._report_connecting())
        try:
            rate = self.plan["connect_rate"]
            if rate > 0:
                start = self.connect_started + self.plan["connect_offset"]
                jobs = [self._open_slot_at(slot, start + n / rate) for n, slot in enumerate(slots)]
            else:
                jobs = [self.open_slot(slot) for slot in slots]
            pub_jobs = [self._open_publisher(total + j) for j in self.plan["publisher_ids"]]
            await asyncio.gather(*jobs, *pub_jobs)
            opened = len(self.subs) + (len(self.pubs) if subscribing_pubs else 0)
            self.to_subscribe = opened
            if self.subscribed < opened:
                remaining = self.connect_deadline - time.time()
                try:
                    await asyncio.wait_for(self.subscribed_event.wait(), max(0.0, remaining))
                except TimeoutError:
                    self.note(f"only {self.subscribed} of {opened} subscriptions acknowledged")
        finally:
            self.connecting = False
            reporter.cancel()
        return self.connect_info()

    async def _watch_lag(self) -> None:
        """How late this process's event loop runs: a client whose loop is seconds late
        answers the server seconds late (a handshake, a close), which the report must be
        able to tell from the server's own slowness."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK)
            self.loop_lag_max = max(self.loop_lag_max, time.monotonic() - before - LAG_TICK)

    async def _report_connecting(self) -> None:
        """Progress while connecting, so a long ramp is visible as it happens."""
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            self.send("progress", self.progress())

    def connect_info(self) -> dict[str, Any]:
        self.cpu_marks["ready"] = _own_cpu()
        return {
            "connections": len(self.subs) + len(self.pubs),
            "connect_failed": self.connect_failed,
            "subscribed": self.subscribed,
            "subscribe_errors": self.subscribe_errors,
            "subscribe_retries": self.subscribe_retries,
            "connect_started": self.connect_started,
            "connect_ended": self.connect_ended or self.connect_started,
            "connect_times": np.frombuffer(self.connect_times, dtype=np.float64).copy(),
            "planned": len(self.plan["slots"]) + len(self.plan["publisher_ids"]),
            "connect_retries": self.connect_retries,
            "refused_503": self.refused_503,
            "cpu_s": self.cpu_marks["ready"] - self.cpu_marks.get("connect", 0.0),
            "notes": self.notes,
        }

    def http_request(self, channel: bytes, now_ns: int) -> bytes:
        """One HTTP API request publishing ``{"t": now_ns, "p": pad}`` to ``channel``:
        native ``POST /api/publish``, or Pusher's signed ``POST /apps/{id}/events`` (the
        data as a JSON string, as the server SDKs send it)."""
        spec = self.spec
        if spec.protocol == "native":
            body = b'{"channel":"%b","data":{"t":%d,"p":"%b"}}' % (channel, now_ns, self.pad)
            target = b"/api/publish"
            extra = b"X-API-Key: %b\r\n" % spec.api_key.encode()
        else:
            app_id, key, secret = spec.pusher_app.split(":")
            body = b'{"name":"pub","channel":"%b","data":"{\\"t\\":%d,\\"p\\":\\"%b\\"}"}' % (
                channel,
                now_ns,
                self.pad,
            )
            path = f"/apps/{app_id}/events"
            query = (
                f"auth_key={key}&auth_timestamp={now_ns // 1_000_000_000}&auth_version=1.0"
                f"&body_md5={hashlib.md5(body).hexdigest()}"
            )
            signature = hmac.new(
                secret.encode(), f"POST\n{path}\n{query}".encode(), hashlib.sha256
            ).hexdigest()
            target = f"{path}?{query}&auth_signature={signature}".encode()
            extra = b""
        return (
            b"POST %b HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n%b"
            b"Content-Length: %d\r\n\r\n%b" % (target, extra, len(body), body)
        )

    async def _open_http_publisher(self, index: int) -> None:
        url = urllib.parse.urlsplit(self.spec.http_publish)
        try:
            _transport, pub = await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(
                    lambda: _HttpPublisher(self, index), url.hostname or "127.0.0.1", url.port or 80
                ),
                CONNECT_TIMEOUT_HTTP,
            )
        except (OSError, TimeoutError) as exc:
            self.connect_failed += 1
            self.note(f"connect {self.spec.http_publish}: {type(exc).__name__}: {exc}")
            return
        self.pubs.append(pub)

    async def _open_publisher(self, index: int) -> None:
        if self.spec.http_publish:
            await self._open_http_publisher(index)
            return
        pub = await self._open(lambda: _Publisher(self, index), index)
        if pub is None:
            return
        assert isinstance(pub, _Publisher) and pub.transport is not None
        self.pubs.append(pub)
        if self.scenario in ("roundtrip", "idle"):
            channel = self.channel if self.scenario == "roundtrip" else self.probe_channel
            pub.transport.send(
                picows.WSMsgType.TEXT,
                b'{"id":0,"op":"subscribe","channel":"%b"}' % channel,
            )
        else:
            pub.subscribed = True  # not subscribed: every reply is a publish ack

    # -- running -------------------------------------------------------------------------

    async def paced(self, rate_at: Callable[[float], float]) -> None:
        """Open loop: every millisecond send what the schedule says is due by now, however
        the server answers. ``rate_at(elapsed)`` gives the cumulative count due."""
        start = time.monotonic()
        spec = self.spec
        mixed = self.scenario == "mixed"
        n_users = self.plan["total"]
        n_groups = math.ceil(n_users / GROUP_SIZE)
        pubs = self.pubs
        turn = 0
        while self.running:
            now = time.monotonic()
            if now * 1e9 >= self.pub_stop:
                break
            due = int(rate_at(now - start))
            if self.pub_limit:
                due = min(due, self.pub_limit)
            sent = self.published()
            for _ in range(due - sent):
                pub = pubs[turn % len(pubs)]
                turn += 1
                if mixed:
                    if random.random() < spec.group_fraction:
                        code = n_users + random.randrange(n_groups)
                        channel = b"g.%d" % (code - n_users)
                    else:
                        code = random.randrange(n_users)
                        channel = b"u.%d" % code
                    self.pub_t.append(pub.publish(channel))
                    self.pub_code.append(code)
                else:
                    pub.publish(self.channel)
            if self.pub_limit and self.published() >= self.pub_limit:
                break
            await asyncio.sleep(0.001)
        self.publishing_done()

    async def churn(self, rate: float) -> None:
        """Replace a random healthy client ``rate`` times per second (this process's share):
        stop counting for it now, close it after ``churn_grace`` s, open its successor."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate
        next_at = time.monotonic() + interval
        # Time-bound, not tied to publishing: a process may have no publisher at all.
        until = time.monotonic() + self.spec.measured_seconds()
        while not self.stop_event.is_set():
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            if next_at > until:
                break
            healthy = [s for s in self.live.values() if not s.slow and s.start_ns]
            if not healthy:
                continue
            old = random.choice(healthy)
            old.end_ns = time.time_ns()
            old.closing = True
            del self.live[old.slot]
            self.churned += 1
            if old.transport is not None:
                loop.call_later(self.spec.churn_grace, old.transport.disconnect)
            self.tasks.append(asyncio.ensure_future(self.open_sub(old.slot)))

    async def ticker(self) -> None:
        """Progress to the coordinator; last-delivery time; mixed step boundaries;
        roundtrip stall detection. Runs until stop."""
        last_total = -1
        last_sent = 0.0
        boundaries = [self.t0 + (i + 1) * self.spec.step_duration for i in range(self.nsteps)]
        # idle needs no last-delivery time: sum the counters of its (many) connections
        # only when reporting, or 16 processes x 15,000 clients cost a core at idle.
        tick = PROGRESS_EVERY / 2 if self.scenario == "idle" else TICK
        while not self.stop_event.is_set():
            now = time.time()
            total = self.received()
            if total != last_total:
                last_total = total
                self.last_rx_wall = now
            while boundaries and now >= boundaries[0]:
                boundaries.pop(0)
                self.boundary_received.append(total)
            if (
                self.scenario == "roundtrip"
                and self.running
                and time.monotonic() - self.last_rx > STALL_SECONDS
            ):
                self.note(f"own publication not back after {STALL_SECONDS} s: lost")
                self.publishing_done()
            if now - last_sent >= PROGRESS_EVERY:
                last_sent = now
                self.send("progress", self.progress())
            if now > self.deadline:
                self.note("worker deadline passed")
                self.stop_event.set()
            await asyncio.sleep(tick)

    def progress(self) -> dict[str, Any]:
        return {
            "received": self.received(),
            "published": self.published(),
            "acked": sum(p.acked for p in self.pubs),
            "pub_done": self.pub_done,
            "opened": len(self.subs) + len(self.pubs),
            "connect_failed": self.connect_failed,
            "live": len(self.subs) - self.unexpected_disconnects - self.churned - self.replaced,
            "unexpected_disconnects": self.unexpected_disconnects,
            "last_rx_wall": self.last_rx_wall,
            "broadcasts_sent": list(self.broadcasts_sent),
            "broadcast_rx": {t: list(v) for t, v in self.broadcast_rx.items()},
            "replaced": self.replaced,
            "away": self.away,
            "reconnected": self.reconnected,
            "reconnect_refused": self.reconnect_refused,
            "reconnect_gave_up": self.reconnect_gave_up,
            "reconnect_timeouts": self.reconnect_timeouts,
            "resubscribing": self.resubscribing,
            "back_wall": self.back_wall,
            "subscribe_retries": self.subscribe_retries,
            "drop_causes": dict(self.drop_causes),
            "refusals": dict(self.refusals),
            "loop_lag_max_s": round(self.loop_lag_max, 3),
        }

    def publish_broadcast(self) -> None:
        """Publish one message to the shared channel now (process 0's publisher)."""
        if self.pubs and self.pubs[0].transport is not None:
            self.broadcasts_sent.append(self.pubs[0].publish(self.shared))
        else:
            self.note("no publisher connection for a broadcast")

    async def probe(self, rate: float) -> None:
        """Publish to the publisher's own single-subscriber channel ``rate`` times a
        second until told to stop; its receipts are the latency samples."""
        self.probing = True
        interval = 1.0 / rate
        next_at = time.monotonic()
        while self.probing and not self.stop_event.is_set() and time.time() < self.deadline:
            pub = self.pubs[0] if self.pubs else None
            # idle probes publish over WebSocket only (--http-publish is fanout only)
            if (
                not isinstance(pub, _Publisher)
                or pub.transport is None
                or pub.transport.is_disconnected
            ):
                break
            pub.publish(self.probe_channel)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def start_publishing(self) -> None:
        spec = self.spec
        self.running = True
        self.first_publish = time.time()
        stop_after = spec.measured_seconds() if spec.scenario == "mixed" else spec.duration
        if stop_after > 0:
            self.pub_stop = time.monotonic_ns() + int(stop_after * 1e9)
        if not self.pubs:
            self.publishing_done()
            return
        if self.scenario == "roundtrip":
            self.last_rx = time.monotonic()
            self.pubs[0].publish(self.channel)
        elif self.flat_out:
            for pub in self.pubs:
                for _ in range(spec.window):
                    if not self.may_publish():
                        break
                    pub.publish(self.channel)
        elif self.scenario == "fanout":
            rate = self.plan["rate"]
            self.tasks.append(asyncio.ensure_future(self.paced(lambda el: rate * el)))
        else:  # mixed: piecewise-constant publish rate, integrated to a cumulative count
            rates = self.plan["step_rates"]
            step = spec.step_duration

            def due(elapsed: float) -> float:
                whole = min(int(elapsed // step), len(rates))
                done = sum(rates[:whole]) * step
                if whole < len(rates):
                    done += rates[whole] * (elapsed - whole * step)
                return done

            self.tasks.append(asyncio.ensure_future(self.paced(due)))

    def send(self, kind: str, body: Any) -> None:
        try:
            self.pipe.send((kind, body))
        except (OSError, ValueError):
            self.stop_event.set()  # coordinator gone: wind down

    def on_pipe(self) -> None:
        try:
            kind, body = self.pipe.recv()
        except (EOFError, OSError):
            self.stop_event.set()
            self.start_event.set()
            self.connect_event.set()
            return
        if kind == "connect":
            self.connect_event.set()
        elif kind == "start":
            self.t0 = body
            self.t0_ns = int(body * 1e9)
            self.start_event.set()
        elif kind == "broadcast":
            self.publish_broadcast()
        elif kind == "probe":
            self.tasks.append(asyncio.ensure_future(self.probe(body)))
        elif kind == "probe_stop":
            self.probing = False
        elif kind == "stop":
            self.stop_event.set()
            self.start_event.set()
            self.connect_event.set()

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pipe.fileno(), self.on_pipe)
        # uvloop makes a watched fd non-blocking; the pipe's send() of a large final report
        # then fails half-way. Readiness polling works the same on a blocking fd.
        os.set_blocking(self.pipe.fileno(), True)
        # Processes take a second or so to spawn; connecting only once all are up makes
        # the connect rate a measure of the server, not of process start-up.
        self.send("booted", None)
        self.tasks.append(asyncio.ensure_future(self._watch_lag()))
        await _wait_event(self.connect_event, self.deadline)
        # A "stop" (the coordinator timed out) must interrupt connecting too.
        connecting = asyncio.ensure_future(self.connect_all())
        stopping = asyncio.ensure_future(self.stop_event.wait())
        await asyncio.wait(
            {connecting, stopping},
            timeout=max(0.0, self.deadline - time.time()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        stopping.cancel()
        if connecting.done():
            self.send("ready", connecting.result())
        else:
            connecting.cancel()
            self.note(f"stopped while connecting: {len(self.subs) + len(self.pubs)} open")
            self.send("ready", self.connect_info())
        if self.scenario == "mixed":
            # Slow clients stop reading before the first publish, so their (empty) windows
            # never depend on what was in flight when they stopped.
            subs = list(self.live.values())
            for sub in random.sample(subs, round(len(subs) * self.spec.slow_fraction)):
                sub.slow = True
                if sub.transport is not None:
                    sub.transport.underlying_transport.pause_reading()
        await _wait_event(self.start_event, self.deadline)
        if not self.stop_event.is_set():
            await asyncio.sleep(max(0.0, self.t0 - time.time()))
            self.cpu_marks["start"] = _own_cpu()
            self.tasks.append(asyncio.ensure_future(self.ticker()))
            if self.scenario != "idle":
                self.start_publishing()
            if self.scenario == "mixed" and self.plan["churn"] > 0:
                self.tasks.append(asyncio.ensure_future(self.churn(self.plan["churn"])))
        await _wait_event(self.stop_event, self.deadline + 5)
        self.running = False
        report = self.final()
        for task in self.tasks:
            task.cancel()
        self.send("final", report)
        conns: list[_Sub | _Publisher] = [*self.subs]
        for pub in self.pubs:
            if isinstance(pub, _HttpPublisher):
                pub.closing = True
                if pub.transport is not None:
                    pub.transport.close()
            else:
                conns.append(pub)
        for conn in conns:
            conn.closing = True
            if conn.transport is not None and not conn.transport.is_disconnected:
                conn.transport.send_close(picows.WSCloseCode.OK)
                conn.transport.disconnect()
        await asyncio.sleep(0.2)  # let close frames go out

    def final(self) -> dict[str, Any]:
        windows = [(s.slot, s.start_ns, s.end_ns) for s in self.subs if s.start_ns and not s.slow]
        return {
            **self.progress(),
            "notes": self.notes,
            "first_publish": self.first_publish,
            "publish_errors": sum(p.errors for p in self.pubs),
            "latencies": np.frombuffer(self.latencies, dtype=np.int64).copy(),
            "latency_steps": np.frombuffer(self.latency_steps, dtype=np.int8).copy(),
            "in_window": self.in_window,
            "boundary_received": self.boundary_received,
            "pub_t": np.frombuffer(self.pub_t, dtype=np.int64).copy(),
            "pub_code": np.asarray(self.pub_code, dtype=np.int64),
            "windows": np.asarray(windows, dtype=np.int64).reshape(-1, 3),
            "slow": sum(1 for s in self.subs if s.slow),
            "churned": self.churned,
            "subscribed": self.subscribed,
            "connect_failed": self.connect_failed,
            "cpu_s": _own_cpu() - self.cpu_marks["start"] if "start" in self.cpu_marks else 0.0,
        }


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _source_socket(address: str) -> Callable[[Any], socket.socket]:
    """A picows socket factory: a TCP socket bound to ``address`` with the port left to
    ``connect()`` (IP_BIND_ADDRESS_NO_PORT), so the kernel chooses it for the whole
    4-tuple instead of searching for a port no other socket on ``address`` uses."""

    def factory(_url: Any) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((address, 0))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    return factory


async def _wait_event(event: asyncio.Event, deadline: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), max(0.0, deadline - time.time()))
    except TimeoutError:
        pass


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _worker_entry(pipe: Connection, spec_fields: dict[str, Any], plan: dict[str, Any]) -> None:
    """Process entry point (spawned): run one worker, always answer the coordinator."""
    _raise_nofile()
    logging.getLogger("picows").setLevel(logging.CRITICAL)  # closes of 10k clients are noisy
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    try:
        spec = LoadSpec(**spec_fields)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            worker = runner.run(_make_worker(spec, plan, pipe))
            runner.run(worker.main())
    except BaseException:
        try:
            pipe.send(("crash", traceback.format_exc()))
        except (OSError, ValueError):
            pass
    finally:
        pipe.close()


async def _make_worker(spec: LoadSpec, plan: dict[str, Any], pipe: Connection) -> _Worker:
    return _Worker(spec, plan, pipe)  # asyncio objects are created inside the running loop


# --------------------------------------------------------------------------------------
# Server process tree statistics from /proc.
# --------------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _process_tree(roots: Sequence[int]) -> list[int]:
    seen: list[int] = []
    todo = list(roots)
    while todo and len(seen) < 10000:
        pid = todo.pop()
        if pid in seen or not Path(f"/proc/{pid}").exists():
            continue
        seen.append(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in children.read_text().split())
            except OSError:
                pass
    return seen


def process_cpu_seconds(pid: int) -> float:
    """CPU-seconds ``pid`` ran so far, all its threads (ZeroMQ's I/O threads included):
    the sum of ``/proc/<pid>/task/*/schedstat`` (nanoseconds on a CPU), or utime+stime
    from ``/proc/<pid>/stat`` (clock ticks, 10 ms) where the kernel has no schedstat."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended meanwhile: its time is unknowable here
        if total:
            return total / 1e9
    except OSError:
        pass
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def server_cpu_seconds(roots: Sequence[int]) -> float:
    """CPU-seconds so far of every process in the trees under ``roots``."""
    total = 0.0
    for pid in _process_tree(roots):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += process_cpu_seconds(pid)
    return total


def _server_sample(roots: Sequence[int]) -> dict[int, tuple[float, int]]:
    """pid -> (CPU seconds so far, RSS bytes) for every process in the trees."""
    sample: dict[int, tuple[float, int]] = {}
    for pid in _process_tree(roots):
        try:
            cpu = process_cpu_seconds(pid)
            rss = 0
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
            sample[pid] = (cpu, rss)
        except (OSError, IndexError, ValueError):
            pass
    return sample


def server_threads(roots: Sequence[int]) -> dict[tuple[int, int], tuple[str, float, int]]:
    """(pid, tid) -> (where, CPU seconds so far, times run on a CPU so far) for every
    thread in the trees under ``roots`` (``/proc/<pid>/task/<tid>/schedstat``); ``where``
    is the process title without its numbers and the thread's name (``shardws: worker /
    ZMQbg/IO/N``), so the threads of all the workers add up to one line."""
    threads: dict[tuple[int, int], tuple[str, float, int]] = {}
    for pid in _process_tree(roots):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except (OSError, UnicodeDecodeError):
            continue
        title = re.sub(r"\s*\d+$", "", title)
        for task in tasks:
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "schedstat").read_text().split()
                ns, runs = int(fields[0]), int(fields[2])
            except (OSError, IndexError, ValueError):
                continue
            # A main thread is named after its process title: call it main.
            thread = "main" if int(task.name) == pid else re.sub(r"\d+", "N", name)
            threads[pid, int(task.name)] = (f"{title} / {thread}", ns / 1e9, runs)
    return threads


def cpu_by_thread_kind(
    before: dict[tuple[int, int], tuple[str, float, int]],
    after: dict[tuple[int, int], tuple[str, float, int]],
) -> dict[str, dict[str, float]]:
    """Between two ``server_threads`` samples, per ``where``, most CPU first: the CPU
    seconds (``cpu_s``) and the times its threads were put on a CPU (``runs``: wake-ups
    and preemptions). A thread born in between counts whole."""
    spent: dict[str, dict[str, float]] = {}
    for key, (where, seconds, runs) in after.items():
        _where, seconds_before, runs_before = before.get(key, ("", 0.0, 0))
        figures = spent.setdefault(where, {"cpu_s": 0.0, "runs": 0})
        figures["cpu_s"] += seconds - seconds_before
        figures["runs"] += runs - runs_before
    return {
        where: {"cpu_s": round(f["cpu_s"], 4), "runs": f["runs"]}
        for where, f in sorted(spent.items(), key=lambda item: -item[1]["cpu_s"])
    }


def _cpu_between(
    before: dict[int, tuple[float, int]], after: dict[int, tuple[float, int]]
) -> float:
    # A process born during the window counts whole; one that died is missing (unknowable).
    return sum(cpu - before.get(pid, (0.0, 0))[0] for pid, (cpu, _rss) in after.items())


def _rss_mb(sample: dict[int, tuple[float, int]]) -> float:
    return round(sum(rss for _cpu, rss in sample.values()) / 2**20, 1)


# --------------------------------------------------------------------------------------
# Coordinator.
# --------------------------------------------------------------------------------------


def _percentiles(ns: np.ndarray[Any, Any]) -> dict[str, Any]:
    if ns.size == 0:
        return {"samples": 0, "p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(ns, [50, 99]) / 1e6
    return {
        "samples": int(ns.size),
        "p50": round(float(p50), 3),
        "p99": round(float(p99), 3),
        "max": round(float(ns.max()) / 1e6, 3),
    }


class _Run:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.problems: list[str] = []
        self.started = time.monotonic()
        self.deadline = time.time() + spec.effective_timeout()
        self.procs: list[Any] = []
        self.pipes: list[Connection] = []
        self.booted: set[int] = set()
        self.ready: dict[int, dict[str, Any]] = {}
        self.progress: dict[int, dict[str, Any]] = {}
        self.finals: dict[int, dict[str, Any]] = {}
        self.tty = sys.stderr.isatty()
        self.last_line = 0.0
        self.last_received = (time.time(), 0)
        self.phase = "connecting"
        self.timed_out = False
        self.last_opened = (time.time(), 0)
        self.hold_results: dict[str, Any] = {}
        self.connect_threads: dict[str, dict[str, float]] = {}

    # -- plan ----------------------------------------------------------------------------

    def plans(self) -> list[dict[str, Any]]:
        spec = self.spec
        n = 0 if spec.scenario == "roundtrip" else spec.connections
        nproc = 1 if spec.scenario == "roundtrip" else spec.processes
        pubs = (
            int(spec.broadcasts > 0 or spec.probe_rate > 0)  # one, in process 0
            if spec.scenario == "idle"
            else (1 if spec.scenario == "roundtrip" else spec.publishers)
        )
        k = spec.sample_every or self.auto_sample_every()
        publish_rate = spec.rate
        step_rates: list[float] = []
        if spec.scenario == "mixed":
            groups = math.ceil(n / GROUP_SIZE)
            fanout = spec.group_fraction * n / groups + (1 - spec.group_fraction)
            step_rates = [s / fanout for s in spec.steps]
        plans = []
        for p in range(nproc):
            mine = [j for j in range(pubs) if j % nproc == p]
            share = len(mine) / pubs if pubs else 0.0
            messages = 0
            if spec.messages and pubs:
                messages = sum(spec.messages // pubs + (j < spec.messages % pubs) for j in mine)
            plans.append(
                {
                    "slots": list(range(p, n, nproc)),
                    "total": n,
                    "publishers": len(mine),
                    "publisher_ids": mine,
                    "rate": publish_rate * share,
                    "step_rates": [r * share for r in step_rates],
                    "messages": messages,
                    "sample_every": 1 if spec.scenario == "roundtrip" else k,
                    "channels": spec.channels or max(1, n // 10),
                    "churn": spec.churn / nproc,
                    # Paced connects: processes take turns, 1 / rate apart over all of them.
                    "connect_rate": spec.connect_rate / nproc,
                    "connect_offset": p / spec.connect_rate if spec.connect_rate else 0.0,
                    "deadline": self.deadline + 10,
                }
            )
        return plans

    def auto_sample_every(self) -> int:
        spec = self.spec
        if spec.scenario == "mixed":
            expected = sum(spec.steps) * spec.step_duration
        else:
            if spec.messages:
                msgs = float(spec.messages)
            elif spec.rate:
                msgs = spec.rate * spec.duration
            else:  # flat out: assume ~150k deliveries/s, the order seen on one loopback host
                msgs = 150_000 / max(1, spec.connections) * spec.duration
            expected = msgs * spec.connections
        return max(1, int(expected // 10_000))

    # -- process and pipe handling -------------------------------------------------------

    def spawn(self) -> None:
        ctx = mp.get_context("spawn")
        fields = dataclasses.asdict(self.spec)
        for plan in self.plans():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_entry, args=(child, fields, plan), daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.pipes.append(parent)

    def pump(self, until: float) -> None:
        """Handle worker messages until wall time ``until`` (at most)."""
        alive = [p for i, p in enumerate(self.pipes) if i not in self.finals]
        timeout = max(0.0, until - time.time())
        for ready in wait(alive, timeout):
            index = self.pipes.index(ready)  # type: ignore[arg-type]
            pipe = self.pipes[index]
            body: Any
            try:
                kind, body = pipe.recv()
            except (EOFError, OSError):
                if index not in self.finals:
                    self.problems.append(f"process {index} exited without a report")
                    self.finals[index] = {}
                    self.booted.add(index)
                    self.ready.setdefault(index, {})
                continue
            if kind == "booted":
                self.booted.add(index)
            elif kind == "ready":
                self.ready[index] = body
            elif kind == "progress":
                self.progress[index] = body
            elif kind == "final":
                self.finals[index] = body
                self.progress[index] = body
            elif kind == "crash":
                self.problems.append(f"process {index} crashed:\n{body}")
                self.finals[index] = {}
                self.ready.setdefault(index, {})
                self.booted.add(index)
        self.show()

    def wait_for(
        self, what: str, done: Callable[[], bool], until: float, past_deadline: bool = False
    ) -> bool:
        """Pump messages until ``done()`` or ``until``, which is capped by the run's
        deadline unless ``past_deadline``. Only the first timeout is reported: later waits
        that run out are its consequences."""
        if not past_deadline:
            until = min(until, self.deadline)
        while not done():
            if time.time() >= until:
                if (until >= self.deadline or past_deadline) and not self.timed_out:
                    self.timed_out = True
                    self.problems.append(f"timeout waiting for {what}")
                return False
            self.pump(min(until, time.time() + 0.2))
        return True

    def broadcast(self, kind: str, body: Any = None) -> None:
        for i, pipe in enumerate(self.pipes):
            if i not in self.finals:
                try:
                    pipe.send((kind, body))
                except (OSError, ValueError):
                    pass

    def tell(self, index: int, kind: str, body: Any = None) -> None:
        """Send one message to process ``index``, unless it is gone (its report says why)."""
        if index not in self.finals:
            try:
                self.pipes[index].send((kind, body))
            except (OSError, ValueError):
                pass

    def total(self, key: str) -> int:
        return sum(int(p.get(key, 0)) for p in self.progress.values())

    def merged(self, key: str) -> dict[str, int]:
        """The sum of a counter that every process reports as a dict."""
        merged: collections.Counter[str] = collections.Counter()
        for p in self.progress.values():
            merged.update(p.get(key, {}))
        return dict(merged)

    def pubs_done(self) -> bool:
        return all(self.progress.get(i, {}).get("pub_done", False) for i in range(len(self.pipes)))

    def show(self) -> None:
        if not self.spec.progress:
            return
        now = time.time()
        if now - self.last_line < 1.0:
            return
        self.last_line = now
        received = self.total("received")
        then, before = self.last_received
        self.last_received = (now, received)
        rate = (received - before) / max(1e-9, now - then)
        opened = self.total("opened")
        then, before = self.last_opened
        self.last_opened = (now, opened)
        connecting = (opened - before) / max(1e-9, now - then)
        line = (
            f"[{time.monotonic() - self.started:6.1f}s] {self.spec.scenario} {self.phase}: "
            f"ready {len(self.ready)}/{len(self.pipes)} procs, {opened:,} conns"
            f" (+{connecting:,.0f}/s, {self.total('connect_failed')} failed), "
            f"published {self.total('published')}, received {received:,} ({rate:,.0f}/s)"
        )
        if self.total("away"):
            line += f", {self.total('away'):,} away"
        if self.spec.server_pid:
            line += f", server RSS {_rss_mb(_server_sample(self.spec.server_pid))} MB"
        if self.tty:
            sys.stderr.write("\r" + line[:160].ljust(160))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def shutdown(self) -> None:
        self.broadcast("stop")
        # A process closes its connections before it reports: at 15,000 a process on a
        # saturated box that takes longer than a fixed 10 s.
        per_process = self.spec.connections / max(1, len(self.pipes))
        self.wait_for(
            "final reports",
            lambda: len(self.finals) == len(self.pipes),
            time.time() + 10 + per_process / FINAL_REPORT_CLOSES_PER_S,
            past_deadline=True,
        )
        for proc in self.procs:
            proc.join(2)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for pipe in self.pipes:
            pipe.close()
        if self.spec.progress and self.tty:
            sys.stderr.write("\n")

    # -- the run -------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        spec = self.spec
        baseline = _server_sample(spec.server_pid)
        threads_before = server_threads(spec.server_pid)
        self.spawn()
        try:
            nproc = len(self.pipes)
            self.wait_for("processes to start", lambda: len(self.booted) == nproc, self.deadline)
            self.broadcast("connect")
            self.wait_for("connections", lambda: len(self.ready) == nproc, self.deadline)
            self.phase = "running"
            after_connect = _server_sample(spec.server_pid)
            self.connect_threads = cpu_by_thread_kind(
                threads_before, server_threads(spec.server_pid)
            )
            t0 = time.time() + 0.2  # every process starts on the same tick
            self.broadcast("start", t0)
            step_samples: list[dict[int, tuple[float, int]]] = [after_connect]
            if spec.scenario == "idle":
                self.hold(t0)
            elif spec.scenario == "mixed":
                for i in range(len(spec.steps)):
                    self.phase = f"step {i + 1}/{len(spec.steps)} ({spec.steps[i]:,.0f}/s)"
                    self.wait_for("step", lambda: False, t0 + (i + 1) * spec.step_duration)
                    step_samples.append(_server_sample(spec.server_pid))
                self.phase = "draining"
                self.wait_for("publishers to finish", self.pubs_done, self.deadline)
                self.drain(lambda: False)
            else:
                self.wait_for("publishers to finish", self.pubs_done, self.deadline)
                self.phase = "draining"
                subscribed = sum(r.get("subscribed", 0) for r in self.ready.values())
                if spec.scenario == "fanout":
                    self.drain(
                        lambda: self.total("received") >= self.total("published") * subscribed
                    )
            end = _server_sample(spec.server_pid)
            end_time = time.time()
        finally:
            self.shutdown()
        return self.report(baseline, after_connect, step_samples, end, t0, end_time)

    def hold(self, t0: float) -> None:
        """idle: hold for ``--duration``; inside it, first the broadcasts, then probes
        until its end; then the roll, if asked for. Results go to ``self.hold_results``."""
        spec = self.spec
        self.wait_for("the hold to start", lambda: False, t0 + 0.5)
        for n in range(spec.broadcasts):
            self.phase = f"broadcast {n + 1}/{spec.broadcasts}"
            self.hold_results.setdefault("broadcasts", []).append(self.one_broadcast(n))
        end = t0 + spec.duration
        if spec.probe_rate:
            self.phase = "probing"
            self.tell(0, "probe", spec.probe_rate)
            end = max(end, time.time() + MIN_PROBE_SECONDS)
        else:
            self.phase = "holding"
        self.wait_for("the hold to end", lambda: False, end)
        if spec.probe_rate:
            self.tell(0, "probe_stop")
            self.wait_for("the probes in flight", lambda: False, time.time() + 0.5)
        if spec.roll_pid:
            self.phase = "rolling"
            self.hold_results["roll"] = self.roll(spec.roll_pid)

    def one_broadcast(self, n: int) -> dict[str, Any]:
        """Publish one message to the shared channel; wait until every live subscriber
        had it (or nothing arrived for ``--drain`` s); time from publish to the last."""
        expected = self.total("live")
        self.tell(0, "broadcast")
        self.wait_for(
            "a broadcast to be sent",
            lambda: len(self.progress.get(0, {}).get("broadcasts_sent", [])) > n,
            time.time() + 10,
        )
        sent = self.progress.get(0, {}).get("broadcasts_sent", [])
        if len(sent) <= n:
            return {"expected": expected, "delivered": 0, "time_to_all_ms": None}
        stamp = sent[n]

        def arrived() -> tuple[int, int]:
            rx = [p.get("broadcast_rx", {}).get(stamp, [0, 0]) for p in self.progress.values()]
            return sum(r[0] for r in rx), max((r[1] for r in rx), default=0)

        last = (-1, time.time())
        while arrived()[0] < expected and time.time() < self.deadline:
            count = arrived()[0]
            if count != last[0]:
                last = (count, time.time())
            elif time.time() - last[1] >= self.spec.drain:
                break
            self.pump(time.time() + 0.1)
        # The workers report every PROGRESS_EVERY s: one more round has the final counts.
        self.wait_for("broadcast counts", lambda: False, time.time() + 2 * PROGRESS_EVERY + 0.1)
        count, latest = arrived()
        if count < expected:
            self.problems.append(f"broadcast {n + 1} reached {count} of {expected} connections")
        return {
            "expected": expected,
            "delivered": count,
            "time_to_all_ms": round((latest - stamp) / 1e6, 1) if count else None,
        }

    def roll(self, pid: int) -> dict[str, Any]:
        """SIGHUP the supervisor ``pid``; wait until none of its processes from before is
        left and every client it sent away is back and subscribed again."""
        before = _rolled_processes(pid)
        live = self.total("live")
        dropped_before = self.total("unexpected_disconnects")
        started = time.time()
        os.kill(pid, signal.SIGHUP)
        allowance = ROLL_SECONDS_PER_PROCESS * max(1, len(before))
        marks: dict[str, float] = {}

        def done() -> bool:
            now = time.time()
            if before & set(_process_tree([pid])):
                return False
            marks.setdefault("processes_gone", now)
            # A client that gave up is counted (gave_up), not waited for.
            if self.total("away") or self.total("resubscribing"):
                marks.pop("settled", None)
                return False
            # Workers report every PROGRESS_EVERY s: a client dropped just before the last
            # old process went may not be counted yet. Settled = true for two reports.
            return now - marks.setdefault("settled", now) > 2 * PROGRESS_EVERY + 0.1

        complete = self.wait_for("the roll", done, started + allowance)
        back = max((p.get("back_wall", 0.0) for p in self.progress.values()), default=0.0)
        finished = max(back, marks.get("processes_gone", 0.0))
        result = {
            "server_processes_replaced": len(before - set(_process_tree([pid]))),
            "server_processes_before": len(before),
            "seconds": round(finished - started, 1) if complete else None,
            "last_client_back_s": round(back - started, 1) if back > started else None,
            "clients_sent_away": self.total("replaced"),
            "dropped_without_hint": self.total("unexpected_disconnects") - dropped_before,
            "dropped_by_cause": self.merged("drop_causes"),
            "subscribe_retries": self.total("subscribe_retries"),
            "client_loop_lag_max_s": max(
                (p.get("loop_lag_max_s", 0.0) for p in self.progress.values()), default=0.0
            ),
            "reconnected": self.total("reconnected"),
            "refused": self.total("reconnect_refused"),
            "refused_by_cause": self.merged("refusals"),
            "timed_out_attempts": self.total("reconnect_timeouts"),
            "gave_up": self.total("reconnect_gave_up"),
            "live_before": live,
            "live_after": self.total("live"),
        }
        if not complete:
            self.problems.append(f"the roll did not complete in {allowance:.0f} s: {result}")
        elif result["refused"] or result["gave_up"]:
            self.problems.append(f"{result['refused']} reconnect attempt(s) refused in the roll")
        if result["dropped_without_hint"]:
            self.problems.append(
                f"{result['dropped_without_hint']} client(s) dropped in the roll without a"
                " reconnect hint (a worker died instead of draining)"
            )
        return result

    def drain(self, complete: Callable[[], bool]) -> None:
        """Wait until ``complete()`` or until nothing arrived for ``--drain`` s."""
        last = (-1, time.time())
        while not complete() and time.time() < self.deadline:
            received = self.total("received")
            if received != last[0]:
                last = (received, time.time())
            elif time.time() - last[1] >= self.spec.drain:
                return
            self.pump(time.time() + 0.1)

    # -- report --------------------------------------------------------------------------

    def report(
        self,
        baseline: dict[int, tuple[float, int]],
        after_connect: dict[int, tuple[float, int]],
        step_samples: list[dict[int, tuple[float, int]]],
        end: dict[int, tuple[float, int]],
        t0: float,
        end_time: float,
    ) -> dict[str, Any]:
        spec = self.spec
        finals = [f for f in self.finals.values() if f]
        ready = list(self.ready.values())
        notes = [n for r in ready for n in r.get("notes", [])]
        notes += [n for f in finals for n in f.get("notes", []) if n not in notes]
        connected = sum(r.get("connections", 0) for r in ready)
        starts = [r["connect_started"] for r in ready if "connect_started" in r]
        ends = [r["connect_ended"] for r in ready if "connect_ended" in r]
        connect_s = max(ends) - min(starts) if starts and ends else 0.0
        times = [r["connect_times"] for r in ready if "connect_times" in r]
        ramp = connect_ramp(
            np.concatenate(times) if times else np.zeros(0), min(starts, default=0.0)
        )
        requested = {"roundtrip": 1, "idle": spec.connections}.get(
            spec.scenario, spec.connections + spec.publishers
        )
        subscribed = sum(r.get("subscribed", 0) for r in ready)
        report: dict[str, Any] = {
            "scenario": spec.scenario,
            "ok": True,
            "problems": self.problems,
            "spec": {
                k: v for k, v in dataclasses.asdict(spec).items() if k not in ("json", "progress")
            },
            "connections": {
                "requested": requested,
                "connected": connected,
                "failed": sum(f.get("connect_failed", 0) for f in finals)
                if len(finals) == len(ready)
                else sum(r.get("connect_failed", 0) for r in ready),
                "reconnects": sum(f.get("churned", 0) for f in finals),
                "subscribed": subscribed,
                "subscribe_retries": sum(r.get("subscribe_retries", 0) for r in ready),
                "connect_s": round(connect_s, 3),
                "connect_rate_per_s": round(connected / connect_s)
                if connect_s > 0 and connected
                else None,
                "connect_timeout_s": round(spec.connect_seconds(), 1),
                "connect_retries": sum(r.get("connect_retries", 0) for r in ready),
                "refused_503": sum(r.get("refused_503", 0) for r in ready),
                # planned, opened and failed per client process: a shortfall shows where
                "per_process": [
                    [r.get("planned", 0), r.get("connections", 0), r.get("connect_failed", 0)]
                    for _i, r in sorted(self.ready.items())
                ],
                "ramp": ramp,
                "unexpected_disconnects": sum(f.get("unexpected_disconnects", 0) for f in finals),
                "dropped_by_cause": self.merged("drop_causes"),
            },
            "notes": notes[:10],
        }
        if connected < requested:
            self.problems.append(f"only {connected} of {requested} connections opened")
        if subscribed < connected - (
            spec.publishers if spec.scenario in ("fanout", "mixed") else 0
        ):
            self.problems.append(f"only {subscribed} subscriptions acknowledged")
        latencies = (
            np.concatenate([f["latencies"] for f in finals]) if finals else np.zeros(0, np.int64)
        )
        cpu = _cpu_between(after_connect, end)
        server: dict[str, Any] = {
            "pids": sorted(end),
            "cpu_s": round(cpu, 3),
            "rss_mb_before": _rss_mb(baseline),
            "rss_mb_after_connect": _rss_mb(after_connect),
            "rss_mb_end": _rss_mb(end),
        }
        report["server"] = server
        published = sum(f.get("published", 0) for f in finals)
        received = sum(f.get("received", 0) for f in finals)
        first = min((f["first_publish"] for f in finals if f.get("first_publish")), default=t0)
        last = max((f.get("last_rx_wall", 0.0) for f in finals), default=0.0)
        window = max(1e-9, last - first)
        measured = end_time - t0  # <= 0 when the run ended before the measured window began
        server_connect_cpu = _cpu_between(baseline, after_connect)
        client_connect_cpu = sum(r.get("cpu_s", 0.0) for r in ready)
        client_cpu = sum(f.get("cpu_s", 0.0) for f in finals)
        report["cpu"] = {
            "connect": {
                **_cpu_figures(server_connect_cpu, client_connect_cpu, connect_s),
                "server_by_thread": self.connect_threads,
            },
            "measured": _cpu_figures(cpu, client_cpu, measured),
        }
        server["cpu_percent"] = report["cpu"]["measured"]["server_percent"]
        report["bottleneck"] = [
            line
            for phase, wall in (("connect", connect_s), ("measured", measured))
            if (
                line := _bottleneck(
                    phase, report["cpu"][phase], wall, len(ready), bool(spec.server_pid)
                )
            )
        ]
        if spec.scenario == "idle":
            n = max(1, connected)
            delta = sum(r for _c, r in after_connect.values()) - sum(
                r for _c, r in baseline.values()
            )
            report["idle"] = {
                "held_s": round(max(0.0, measured), 1),
                "live_at_end": sum(f.get("live", 0) for f in finals),
                "rss_kb_per_connection": round(delta / n / 1024, 2) if spec.server_pid else None,
                **self.hold_results,
            }
            if spec.probe_rate:
                report["idle"]["probe_latency_ms"] = _percentiles(latencies)
        elif spec.scenario == "roundtrip":
            report["roundtrips"] = received
            report["published"] = published
            report["lost"] = published - received
            report["roundtrips_per_s"] = round(received / window, 1)
            report["latency_ms"] = _percentiles(latencies)
            server["roundtrips_per_cpu_s"] = round(received / cpu) if cpu > 0 else None
            if published != received:
                self.problems.append(f"{published - received} publication(s) never came back")
        elif spec.scenario == "fanout":
            expected = published * subscribed
            report.update(
                {
                    "published": published,
                    "acked": sum(f.get("acked", 0) for f in finals),
                    "publish_errors": sum(f.get("publish_errors", 0) for f in finals),
                    "publish_rate_per_s": round(published / max(1e-9, window), 1),
                    "expected": expected,
                    "received": received,
                    "lost": expected - received,
                    "window_s": round(window, 3),
                    "deliveries_per_s": round(received / window),
                    "latency_ms": _percentiles(latencies),
                }
            )
            server["deliveries_per_cpu_s"] = round(received / cpu) if cpu > 0 else None
            if expected != received:
                self.problems.append(f"received {received} of {expected} expected deliveries")
        else:
            report.update(self.mixed_report(finals, latencies, step_samples, t0))
            report["published"] = published
            report["received"] = received
            report["publish_errors"] = sum(f.get("publish_errors", 0) for f in finals)
            server["deliveries_per_cpu_s"] = round(received / cpu) if cpu > 0 else None
        report["ok"] = not self.problems
        return report

    def mixed_report(
        self,
        finals: list[dict[str, Any]],
        latencies: np.ndarray[Any, Any],
        samples: list[dict[int, tuple[float, int]]],
        t0: float,
    ) -> dict[str, Any]:
        spec = self.spec
        n = spec.connections
        nsteps = len(spec.steps)
        step_ns = int(spec.step_duration * 1e9)
        t0_ns = int(t0 * 1e9)
        pub_t = np.concatenate([f["pub_t"] for f in finals]) if finals else np.zeros(0, np.int64)
        pub_code = np.concatenate([f["pub_code"] for f in finals]) if finals else pub_t
        windows = np.concatenate([f["windows"] for f in finals]) if finals else np.zeros((0, 3))
        lat_steps = np.concatenate([f["latency_steps"] for f in finals]) if finals else pub_t
        # Expected deliveries: for every healthy window (client incarnation) and each of its
        # two channels, the publications on that channel stamped inside the window, per
        # step. Keys combine channel and time so one sorted array answers every query.
        shift = 2**44  # ns: 4.9 hours of run per channel; channel codes < 2**19
        pub_step = (pub_t - t0_ns) // step_ns
        keys = np.sort(pub_code * shift + np.clip(pub_t - t0_ns, 0, shift - 1))
        expected = np.zeros(nsteps, np.int64)
        if windows.size:
            slots, starts, ends = windows[:, 0], windows[:, 1], windows[:, 2]
            for code in (slots, n + slots // GROUP_SIZE):
                for s in range(nsteps):
                    lo = np.maximum(starts, t0_ns + s * step_ns) - t0_ns
                    hi = np.minimum(ends, t0_ns + (s + 1) * step_ns - 1) - t0_ns
                    lo_key = code * shift + np.clip(lo, 0, shift - 1)
                    hi_key = code * shift + np.clip(hi, 0, shift - 1)
                    count = np.searchsorted(keys, hi_key, "right") - np.searchsorted(
                        keys, lo_key, "left"
                    )
                    expected[s] += int(np.where(hi >= lo, count, 0).sum())
        in_window = np.sum([f["in_window"] for f in finals], axis=0) if finals else expected * 0
        group_sizes = np.minimum(GROUP_SIZE, n - GROUP_SIZE * np.arange(math.ceil(n / GROUP_SIZE)))
        fan = np.where(pub_code < n, 1, group_sizes[np.clip(pub_code - n, 0, None)])
        steps = []
        for s in range(nsteps):
            boundary = [
                (f["boundary_received"] + [f["received"]] * nsteps)[:nsteps] for f in finals
            ]
            at_end = sum(b[s] for b in boundary)
            at_start = sum(b[s - 1] for b in boundary) if s else 0
            before, after = samples[s], samples[s + 1] if s + 1 < len(samples) else samples[-1]
            cpu = _cpu_between(before, after)
            achieved = (at_end - at_start) / spec.step_duration
            in_step = pub_step == s
            steps.append(
                {
                    "offered_deliveries_per_s": spec.steps[s],
                    "sent_deliveries_per_s": round(int(fan[in_step].sum()) / spec.step_duration),
                    "achieved_deliveries_per_s": round(achieved),
                    "published": int(in_step.sum()),
                    "expected_healthy": int(expected[s]),
                    "received_healthy": int(in_window[s]),
                    "lost_healthy": int(expected[s] - in_window[s]),
                    "latency_ms": _percentiles(latencies[lat_steps == s]),
                    "server_cpu_s": round(cpu, 3),
                    "server_rss_mb": _rss_mb(after),
                }
            )
            if expected[s] != in_window[s]:
                self.problems.append(
                    f"step {s + 1}: healthy clients received {int(in_window[s])} of "
                    f"{int(expected[s])} expected"
                )
        return {
            "steps": steps,
            "slow_clients": sum(f.get("slow", 0) for f in finals),
            "churned": sum(f.get("churned", 0) for f in finals),
            "latency_ms": _percentiles(latencies),
        }


def _rolled_processes(supervisor: int) -> set[int]:
    """The processes a roll replaces that clients see: the supervisor's workers (by
    shardws's process titles). The bus forwarder is never replaced, and the admin and
    the bridge only when their configuration changed; the clients connect to neither.
    Without titles (another server), its whole tree less itself."""
    pids = set(_process_tree([supervisor])) - {supervisor}
    titled = False
    workers = set()
    for pid in pids:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        titled = titled or title.startswith(b"shardws: ")
        if title.startswith(b"shardws: worker"):
            workers.add(pid)
    return workers if titled else pids


def connect_ramp(times: np.ndarray[Any, Any], started: float) -> dict[str, Any]:
    """Handshakes per second in ten equal time slices of the connect phase, from the
    first attempt (``started``) to the last handshake (wall times ``times``)."""
    if times.size == 0 or times.max() <= started:
        return {"tenths_per_s": [], "first_tenth_per_s": None, "last_tenth_per_s": None}
    span = float(times.max()) - started
    counts, _edges = np.histogram(times, bins=10, range=(started, started + span))
    rates = [round(float(c) / (span / 10)) for c in counts]
    return {"tenths_per_s": rates, "first_tenth_per_s": rates[0], "last_tenth_per_s": rates[-1]}


def _cpu_figures(server_cpu: float, client_cpu: float, wall: float) -> dict[str, Any]:
    """CPU-seconds and percent of one core over ``wall`` s (no percent for an empty
    window: a ratio over nothing is not a figure)."""

    def percent(cpu: float) -> float | None:
        return round(100 * cpu / wall, 1) if wall > 0 else None

    return {
        "wall_s": round(max(0.0, wall), 3),
        "server_cpu_s": round(server_cpu, 3),
        "server_percent": percent(server_cpu),
        "client_cpu_s": round(client_cpu, 3),
        "client_percent": percent(client_cpu),
    }


def _bottleneck(
    phase: str, cpu: dict[str, Any], wall: float, processes: int, measured_server: bool
) -> str | None:
    """A report line when the generator, not the server, set the pace of ``phase``: its
    processes spent more CPU than the server (on shared cores that CPU is what the server
    did not get), or together ran flat out on every core they could use."""
    if wall < 1.0 or processes <= 0:  # too short to say anything about rates
        return None
    client, server = cpu["client_cpu_s"], cpu["server_cpu_s"]
    usable = min(processes, os.cpu_count() or 1)
    if client >= 0.9 * usable * wall:
        return (
            f"{phase}: the client processes ran {cpu['client_percent']}% of a core over"
            f" {usable} core(s), flat out: the load generator was the bottleneck"
        )
    if measured_server and client > server and client >= 0.25 * wall:
        return (
            f"{phase}: the client processes used {client:.1f} CPU-s, the server {server:.1f}:"
            " the load generator, not the server, was the bottleneck"
        )
    return None


def run(spec: LoadSpec) -> dict[str, Any]:
    """Run one load scenario and return its report (the ``--json`` output)."""
    spec.validate()
    _raise_nofile()
    return _Run(spec).execute()


# --------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    d = LoadSpec()
    p = argparse.ArgumentParser(
        prog="shardws bench",
        description=(__doc__ or "").splitlines()[0],
        epilog="Each scenario, and how to read the numbers: python -m pydoc shardws.tools.loadgen.",
    )
    p.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default=d.scenario,
        help="fanout: many subscribers on one channel; mixed: personal and group channels at"
        " stepped rates with slow clients and churn; idle: connections held open; roundtrip:"
        " one client's publications coming back to it (default: %(default)s)",
    )
    p.add_argument(
        "--url",
        action="append",
        help=f"ws:// or wss:// URL of the server, repeatable to spread the connections"
        f" (default: {d.url[0]})",
    )
    p.add_argument(
        "-n",
        "--connections",
        type=int,
        default=d.connections,
        help="subscribers (fanout) or clients (mixed, idle) (default: %(default)s)",
    )
    p.add_argument(
        "--publishers",
        type=int,
        default=d.publishers,
        help="fanout, mixed: publishing connections, besides --connections (default: %(default)s)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=d.processes,
        help="client processes the connections are spread over (default: %(default)s)",
    )
    p.add_argument(
        "--source-ips",
        type=int,
        default=d.source_ips,
        help="bind connections to 127.0.0.1..K, loopback servers only (default: %(default)s)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=d.size,
        help="bytes of each publication's data JSON (default: %(default)s)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=d.rate,
        help="fanout: publications/s over all publishers, 0 = flat out (default: %(default)s)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=d.window,
        help="fanout flat out: un-acknowledged publishes per publisher (default: %(default)s)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=d.duration,
        help="seconds to publish (fanout, roundtrip) or to hold the connections (idle),"
        " 0 = until --messages (default: %(default)s)",
    )
    p.add_argument(
        "--messages",
        type=int,
        default=d.messages,
        help="stop publishing after this many publications over all publishers, 0 = no"
        " limit (default: %(default)s)",
    )
    p.add_argument(
        "--channel",
        default=d.channel,
        help="fanout, roundtrip: the channel published to (default: %(default)s)",
    )
    p.add_argument(
        "--channels",
        type=int,
        default=d.channels,
        help="idle: distinct channels the connections subscribe to, 0 = connections / 10"
        " (default: %(default)s)",
    )
    p.add_argument(
        "--steps",
        default=",".join(f"{s:g}" for s in d.steps),
        help="mixed: comma-separated offered deliveries/s, one per step (default: %(default)s)",
    )
    p.add_argument(
        "--step-duration",
        type=float,
        default=d.step_duration,
        help="mixed: seconds per step (default: %(default)s)",
    )
    p.add_argument(
        "--group-fraction",
        type=float,
        default=d.group_fraction,
        help="mixed: share of publications sent to a group channel rather than a personal"
        " one (default: %(default)s)",
    )
    p.add_argument(
        "--slow-fraction",
        type=float,
        default=d.slow_fraction,
        help="mixed: share of clients that never read (default: %(default)s)",
    )
    p.add_argument(
        "--churn",
        type=float,
        default=d.churn,
        help="mixed: clients replaced per second (default: %(default)s)",
    )
    p.add_argument(
        "--churn-grace",
        type=float,
        default=d.churn_grace,
        help="mixed: seconds a replaced client stays open to receive what is in flight"
        " (default: %(default)s)",
    )
    p.add_argument(
        "--sample-every",
        type=int,
        default=d.sample_every,
        help="measure the latency of every k-th publication per connection, 0 = about"
        " 10,000 samples per run (default: %(default)s)",
    )
    p.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        help="server pid whose process tree's CPU and memory are reported, repeatable",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=d.timeout,
        help="seconds the whole run may take, 0 = the measured time + 60 (default: %(default)s)",
    )
    p.add_argument(
        "--drain",
        type=float,
        default=d.drain,
        help="seconds without any delivery after which it stops waiting for more"
        " (default: %(default)s)",
    )
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=d.connect_concurrency,
        help="WebSocket handshakes in flight per process (default: %(default)s)",
    )
    p.add_argument(
        "--connect-rate",
        type=float,
        default=d.connect_rate,
        help="connections opened per second over all processes, paced (open loop);"
        " 0 = as fast as --connect-concurrency allows (default: %(default)s)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=d.connect_timeout,
        help="seconds the connect phase may take, 0 = 30 + one per"
        f" {CONNECTS_PER_S_FLOOR} connections (default: %(default)s)",
    )
    p.add_argument(
        "--connect-attempts",
        type=int,
        default=d.connect_attempts,
        help="connect phase: attempts per client before it counts as failed, 0 = until"
        " --connect-timeout; a 503's Retry-After is followed (default: %(default)s)",
    )
    p.add_argument(
        "--shared-channel",
        default=d.shared_channel,
        help="idle: a channel every connection also subscribes to (default: none)",
    )
    p.add_argument(
        "--broadcasts",
        type=int,
        default=d.broadcasts,
        help="idle: publications to --shared-channel during the hold, each timed until"
        " every connection had it (default: %(default)s)",
    )
    p.add_argument(
        "--probe-rate",
        type=float,
        default=d.probe_rate,
        help="idle: publications/s to a channel with one subscriber during the hold, for"
        " their latency (default: %(default)s)",
    )
    p.add_argument(
        "--reconnect",
        action="store_true",
        help="idle: clients the server sends away (reconnect push, close 1001) come back"
        " after the hinted delay",
    )
    p.add_argument(
        "--roll-pid",
        type=int,
        default=d.roll_pid,
        help="idle: SIGHUP this shardws supervisor after the hold and time the roll until"
        " every client is back (needs --reconnect) (default: none)",
    )
    p.add_argument(
        "--cafile",
        default=d.cafile,
        help="wss://: CA bundle (PEM) to verify the server with (default: the system CAs)",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=d.protocol,
        help="fanout: the subscribers' protocol; pusher needs --url .../app/{key}?protocol=7,"
        " --http-publish and --pusher-app (default: %(default)s)",
    )
    p.add_argument(
        "--http-publish",
        default=d.http_publish,
        help="fanout, --rate > 0: publish through the HTTP API of this admin listener"
        " (http://host:port) instead of WebSocket publishers",
    )
    p.add_argument("--api-key", default=d.api_key, help="--http-publish native: X-API-Key")
    p.add_argument(
        "--pusher-app", default=d.pusher_app, help="--protocol pusher: ID:KEY:SECRET of the app"
    )
    p.add_argument("--insecure", action="store_true", help="wss://: skip certificate verification")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    return p


def _spec_from_args(args: argparse.Namespace) -> LoadSpec:
    values = vars(args).copy()
    values["url"] = values["url"] or LoadSpec().url
    values["steps"] = [float(s) for s in str(values["steps"]).split(",") if s.strip()]
    values["progress"] = not values.pop("no_progress")
    names = {f.name for f in dataclasses.fields(LoadSpec)}
    return LoadSpec(**{k: v for k, v in values.items() if k in names})


def scenario_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The fields of a report's ``spec`` that its scenario used, in field order (no churn
    for a fanout run, no --window when publishing is paced, no TLS options for ws://
    URLs); the scenario itself is left out."""
    used = {
        "url",
        "source_ips",
        "server_pid",
        "timeout",
        "connect_concurrency",
        "connect_rate",
        "connect_timeout",
        "connect_attempts",
    }
    used.update(SCENARIO_SETTINGS.get(spec.get("scenario", ""), ()))
    if spec.get("rate"):
        used.discard("window")
    if any(str(url).startswith("wss://") for url in spec.get("url", ())):
        used.update(("cafile", "insecure"))
    return {key: value for key, value in spec.items() if key in used}


def format_report(report: dict[str, Any]) -> str:
    """The report as indented text, one value per line; steps as a table. Of the spec,
    only the settings the scenario used (``--json`` has them all)."""
    lines: list[str] = []

    def emit(indent: str, key: str, value: Any) -> None:
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            for sub_key, sub in value.items():
                emit(indent + "  ", sub_key, sub)
        else:
            lines.append(f"{indent}{key}: {value}")

    for key, value in report.items():
        if key == "spec":
            emit("", key, scenario_settings(value))
        elif key not in ("steps", "problems", "notes", "bottleneck"):
            emit("", key, value)
    if report.get("steps"):
        lines.append(
            "steps: offered  sent  achieved  |  healthy expected  received  lost"
            "  |  p50  p99  max ms  |  server cpu_s  rss MB"
        )
        for i, s in enumerate(report["steps"], 1):
            lat = s["latency_ms"]
            lines.append(
                f"  {i}: {s['offered_deliveries_per_s']:>9,.0f} {s['sent_deliveries_per_s']:>9,}"
                f" {s['achieved_deliveries_per_s']:>9,} | {s['expected_healthy']:>10,}"
                f" {s['received_healthy']:>10,} {s['lost_healthy']:>6,} | {lat['p50']} "
                f"{lat['p99']} {lat['max']} | {s['server_cpu_s']} {s['server_rss_mb']}"
            )
    for key in ("bottleneck", "notes", "problems"):
        for item in report.get(key, []):
            lines.append(f"{key.removesuffix('s')}: {item}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``shardws bench``: exit 0 if the run had no problems, 1 if it had, 2 on bad usage."""
    args = _parser().parse_args(argv)
    try:
        spec = _spec_from_args(args)
        spec.validate()
    except ValueError as exc:
        print(f"shardws bench: {exc}", file=sys.stderr)
        return 2
    report = run(spec)
    if spec.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
