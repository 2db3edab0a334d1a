"""The bridge process (``shardws: bridge``): this host's bus to and from the peer hosts.

Runs only when ``[cluster] peers`` is set. It is a member of the host bus (slot
``board.bridge_slot``) and owns four ZeroMQ sockets:

* ``local_sub`` (SUB, connected to the bus forwarder's outbound endpoint, subscribed to
  everything) and ``remote_xpub`` (XPUB, bound at ``[cluster] listen``): what this
  host's members publish on a topic some peer subscribes to goes out to the peers.
* ``remote_sub`` (SUB, connected to every peer's ``remote_xpub``) and ``local_xpub``
  (XPUB, connected to the forwarder's inbound endpoint like a member's PUB): what the
  peers publish is delivered here.

Subscription forwarding is ZeroMQ's own: the forwarder passes the first subscription
to a topic (and the last unsubscription) upstream to ``local_xpub`` (a local member
subscribed a channel, user or inbox topic), which is made on ``remote_sub``, so it
reaches the peers' ``remote_xpub``, which then sends that topic to us. A message
therefore crosses the network only to hosts with a subscriber for it. The bridge is the
one process whose Python sees the host's subscriptions (once per topic, not once per
member). Its ``local_sub`` takes every frame of the host (a per-topic subscription there
would reach ``local_xpub`` as if a local member had made it) and drops, at one set
lookup each, those no peer subscribes to.

Guarantees:

* No loops, no duplicates: a message from a peer goes only to ``local_xpub`` (never back
  out: what comes back to ``local_sub`` through the forwarder with another host's
  origin is dropped), and a frame from a peer whose origin is this host (a peer list
  that names this host) is dropped. Every host connects to every other host directly
  (a full mesh), so each message crosses one network hop.
* Order: frames of one origin are forwarded in the order received, so per-origin order
  and the bus's sequence numbers (which detect loss) hold across hosts.
* The link is CurveZMQ with the cluster key unless ``allow_plaintext``: a peer without
  the key fails the handshake and is never read from or sent to.
* Membership (``server.crosshost.PeerView``): heartbeats on the ``m`` topic, a peer
  silent for ``peer_timeout`` is down, the live hosts form the view written to shared
  memory. A peer that comes back is picked up by ZeroMQ's reconnect; ``peers`` names are
  resolved again every ``resolve_interval`` (new addresses connected, vanished ones
  disconnected; a failed resolution keeps the previous addresses).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from shardws.config import ClusterConfig, Config
from shardws.log import RateLimitedLogger
from shardws.pure.busframe import (
    HEADER,
    KIND_SYNC,
    ORIGIN,
)
from shardws.pure.cluster import host_number, host_of, member_id
from shardws.server.crosshost import (
    FORWARDED,
    HEARTBEAT_TOPIC,
    PeerView,
    host_bus_sockets,
    relay_socket,
    start_process,
)
from shardws.shm.scoreboard import Column, ProcessState
from shardws.shm.tables import SharedTables
from shardws.shm.view import effective_host_id

log = logging.getLogger("shardws.bridge")

_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_RECV_BUDGET = 1024  # frames per socket per poll round: one busy direction cannot starve
_ATTACH_INTERVAL = 1.0  # seconds between peer address checks
#: Seconds a local member's barrier waits for the peers: below the bus's sync timeout
#: (2 s), so a slow peer delays, never fails, it.
BARRIER_TIMEOUT = 1.2


@dataclass
class _Round:
    """A local member's barrier being relayed: the peers (host numbers) that must
    answer, and until when."""

    expected: set[int]
    deadline: float
    answered: set[int] = field(default_factory=set)

    def missing(self) -> list[int]:
        return sorted(self.expected - self.answered)


class _Resolver:
    """Resolves ``peers`` in a thread every ``interval`` (DNS may block for seconds)."""

    def __init__(self, peers: tuple[str, ...], interval: float, own_port: int) -> None:
        self.addresses: frozenset[str] = frozenset()
        self._peers = peers
        self._interval = interval
        self._own_port = own_port
        self._by_name: dict[str, frozenset[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resolver", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            for peer in self._peers:
                host, _, port = peer.rpartition(":")
                try:
                    infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
                except OSError as exc:  # keep the last answer: DNS hiccups must not split us
                    log.warning("cannot resolve peer %s: %s", peer, exc)
                    continue
                found = set()
                for family, _, _, _, address in infos:
                    ip = str(address[0])
                    if _is_own_address(family, ip, int(port), self._own_port):
                        continue
                    found.add(
                        f"tcp://[{ip}]:{port}"
                        if family == socket.AF_INET6
                        else f"tcp://{ip}:{port}"
                    )
                self._by_name[peer] = frozenset(found)
            self.addresses = frozenset().union(*self._by_name.values())
            self._stop.wait(self._interval)


def _is_own_address(family: int, ip: str, port: int, own_port: int) -> bool:
    """True if ``ip:port`` is this bridge's own listener (a peer list naming this host):
    ``ip`` is an address of this host when a socket can be bound to it."""
    if port != own_port:
        return False
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError:
            return False
    return True


class Bridge:
    """The bridge's sockets and state; :meth:`run` until :meth:`stop`."""

    def __init__(self, slot: int, config: Config, tables: SharedTables, run_dir: str) -> None:
        board = tables.board
        cluster = config.cluster
        self.config = config
        self.cluster = cluster
        self.board = board
        self.view_table = tables.view
        self.slot = slot
        self.host_id = effective_host_id(cluster.host_id)
        self.number = host_number(self.host_id)
        self.member = member_id(self.number, slot)
        self.sent = 0  # bus frames sent to the peers
        self.sent_bytes = 0
        self._run_dir = run_dir
        self._stopping = False
        self._connected: set[str] = set()
        self._incarnation = int.from_bytes(os.urandom(4), "big")
        self.membership = PeerView(
            self.host_id, self.number, tables.view, cluster.peer_timeout, log
        )
        self._outbound: dict[bytes, _Round] = {}  # local members' barriers, by topic
        self._wanted: set[bytes] = set()  # topics some peer subscribes to
        self.barrier_timeouts = 0
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
        self._auth: ThreadAuthenticator | None = None
        self.local_xpub, self.local_sub = host_bus_sockets(self._ctx, config, run_dir)
        self.remote_xpub = relay_socket(self._ctx, zmq.XPUB, cluster.hwm)
        self.remote_sub = relay_socket(self._ctx, zmq.SUB, cluster.hwm)
        self.remote_sub.setsockopt(zmq.RECONNECT_IVL, 100)
        self.remote_sub.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self.remote_sub.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # finds a dead TCP link
        self.remote_sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        self._setup_curve(cluster)
        # Handshakes that fail (a bridge without the cluster key, or not a bridge at all)
        # never show up as peers: count and log them so they are not invisible.
        self.handshake_failures = 0
        self._refusal_log = RateLimitedLogger("shardws.bridge", burst=5, level=logging.WARNING)
        self._monitors = [
            sock.get_monitor_socket(_HANDSHAKE_FAILED)
            for sock in (self.remote_xpub, self.remote_sub)
        ]
        port = int(cluster.listen.rpartition(":")[2])
        self._resolver = _Resolver(cluster.peers, cluster.resolve_interval, port)

    def _setup_curve(self, cluster: ClusterConfig) -> None:
        if not cluster.curve_secret_key:
            return
        secret = cluster.curve_secret_key.encode()
        public = zmq.curve_public(secret)
        # The ZAP handler must run before the first handshake, so before bind.
        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("shardws.zap"))
        self._auth.start()
        self._auth.configure_curve_callback("*", credentials_provider=_ClusterKey(public))
        self.remote_xpub.curve_secretkey = secret
        self.remote_xpub.curve_publickey = public
        self.remote_xpub.curve_server = True
        self.remote_sub.curve_secretkey = secret
        self.remote_sub.curve_publickey = public
        self.remote_sub.curve_serverkey = public

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Bind the remote XPUB, subscribe to heartbeats, start resolving and connecting."""
        try:
            self.remote_xpub.bind(self.cluster.listen)
        except zmq.ZMQError as exc:
            raise zmq.ZMQError(
                exc.errno, f"[cluster] listen {self.cluster.listen!r}: {exc}"
            ) from None
        self.remote_sub.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)
        self._resolver.start()
        log.info(
            "bridge of host %r (number %d) on %s (%s), peers %s",
            self.host_id,
            self.number,
            self.cluster.listen,
            "curve" if self._auth is not None else "plaintext",
            list(self.cluster.peers),
        )

    def stop(self) -> None:
        self._stopping = True

    def close(self) -> None:
        self._resolver.stop()
        for sock in self._remote_sockets():
            sock.disable_monitor()
        for sock in (*self._monitors, self.local_xpub, self.local_sub, *self._remote_sockets()):
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def run(self) -> None:
        """Forward until :meth:`stop`; stamps the scoreboard heartbeat as it goes."""
        poller = zmq.Poller()
        handlers = {
            self.local_xpub: self._on_local_subscription,
            self.remote_xpub: self._on_remote_subscription,
            self.local_sub: self._on_local_frame,
            self.remote_sub: self._on_remote_frame,
        }
        for sock in (*handlers, *self._monitors):
            poller.register(sock, zmq.POLLIN)
        row = self.board.row(self.slot)
        interval = self.cluster.heartbeat_interval
        next_beat = next_attach = 0.0
        while not self._stopping:
            for sock, _ in poller.poll(timeout=100):
                if sock in self._monitors:
                    self._on_monitor(sock)
                    continue
                handler = handlers[sock]
                for _ in range(_RECV_BUDGET):
                    try:
                        message = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    handler(message)
            now = time.monotonic()
            row[Column.HEARTBEAT_NS] = time.monotonic_ns()
            if now >= next_beat:
                next_beat = now + interval
                self._heartbeat(now)
            if self._outbound:
                self._expire_barriers(now)
            if now >= next_attach:
                next_attach = now + _ATTACH_INTERVAL
                self._connect_peers()

    def _on_monitor(self, monitor: zmq.Socket[bytes]) -> None:
        for _ in range(_RECV_BUDGET):
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] & _HANDSHAKE_FAILED:
                self.handshake_failures += 1
                self._refusal_log.warning(
                    "cluster handshake failed on %s (%s): a peer without the cluster key?",
                    event["endpoint"].decode(errors="replace"),
                    zmq.Event(event["event"]).name,
                )

    def _remote_sockets(self) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
        return self.remote_xpub, self.remote_sub

    # -- local members ------------------------------------------------------------------

    def _connect_peers(self) -> None:
        wanted = self._resolver.addresses
        for address in wanted - self._connected:
            log.info("connecting to peer %s", address)
            self.remote_sub.connect(address)
        for address in self._connected - wanted:
            log.info("peer address %s is no longer listed: disconnecting", address)
            self.remote_sub.disconnect(address)
        self._connected = set(wanted)

    # -- forwarding ---------------------------------------------------------------------

    def _on_local_subscription(self, message: bytes) -> None:
        """A local member (un)subscribed: subscribe at the peers (a barrier: see
        :meth:`_barrier_to_peers`)."""
        self._forward_subscription(message, self.remote_sub, self._barrier_to_peers)

    def _on_remote_subscription(self, message: bytes) -> None:
        """A peer (un)subscribed: ``remote_xpub`` (C) now sends it what we pass on for
        the topic; we pass on only topics some peer wants. A peer's barrier topic comes
        after the topics it confirms on the same pipe, so when we read it they are
        applied: we answer at once, and the answer travels before any later data."""
        subscribe, topic = message[0] == 1, message[1:]
        kind = topic[0] if topic else 0
        if kind == KIND_SYNC:
            if subscribe:
                self._answer(self.remote_xpub, topic)
        elif kind in FORWARDED:
            if subscribe:
                self._wanted.add(topic)
            else:
                self._wanted.discard(topic)

    @staticmethod
    def _forward_subscription(
        message: bytes, onward: zmq.Socket[bytes], barrier: Callable[[bytes], None]
    ) -> None:
        """An XPUB's (un)subscription ``message``: channel, user and inbox topics are
        made on the ``onward`` SUB; a barrier's subscription goes to ``barrier``."""
        subscribe, topic = message[0] == 1, message[1:]
        kind = topic[0] if topic else 0
        if kind == KIND_SYNC:
            if subscribe:
                barrier(topic)
        elif kind in FORWARDED:
            onward.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, topic)

    # -- barriers ---------------------------------------------------------------------------
    #
    # A local member's subscribe barrier (bus.Bus.subscribe) must mean "live on every
    # host". The barrier topic follows the member's subscriptions on each pipe, so: the
    # forwarder passes it to our local XPUB after the new topic and we made both on
    # remote_sub in that order; each peer bridge sees both in that order, makes both on
    # its remote_xpub in that order, and answers when it reads the barrier topic (its
    # local_sub takes every frame of its host, so nothing more is needed there). Its
    # answer travels on the same pipe as its later data. We answer the member once
    # every peer that is up answered, or after BARRIER_TIMEOUT (a peer that is going
    # down), which stays below the bus's own sync timeout.

    def _answer(self, sock: zmq.Socket[bytes], topic: bytes) -> None:
        sock.send(topic + HEADER.pack(self.member, self._incarnation, 0, 0, 0))

    def _barrier_to_peers(self, topic: bytes) -> None:
        expected = self.membership.up_numbers()
        if not expected:
            self._answer(self.local_xpub, topic)
            return
        self._outbound[topic] = _Round(expected, time.monotonic() + BARRIER_TIMEOUT)
        self.remote_sub.setsockopt(zmq.SUBSCRIBE, topic)

    def _barrier_answer(self, rounds: dict[bytes, _Round], topic: bytes, who: int) -> None:
        round_ = rounds.get(topic)
        if round_ is not None:
            round_.answered.add(who)
            if round_.expected <= round_.answered:
                self._finish(rounds, topic)

    def _finish(self, rounds: dict[bytes, _Round], topic: bytes) -> None:
        del rounds[topic]
        self.remote_sub.setsockopt(zmq.UNSUBSCRIBE, topic)
        self._answer(self.local_xpub, topic)

    def _expire_barriers(self, now: float) -> None:
        rounds = self._outbound
        for topic in [t for t, r in rounds.items() if r.deadline <= now]:
            self.barrier_timeouts += 1
            log.warning("barrier %r: no answer from %s", topic, rounds[topic].missing())
            self._finish(rounds, topic)

    # -- frames -----------------------------------------------------------------------------

    def _on_local_frame(self, frame: bytes) -> None:
        end = frame.index(b"\0") + 1
        if frame[:end] not in self._wanted:
            return  # no peer subscribes (or a barrier probe, or our own inbox)
        (origin,) = ORIGIN.unpack_from(frame, end)
        if host_of(origin) != self.number:
            return  # a peer's frame we delivered here, back through the forwarder
        self.sent += 1
        self.sent_bytes += len(frame)
        self.remote_xpub.send(frame, 0, copy=len(frame) < 16384)

    def _on_remote_frame(self, frame: bytes) -> None:
        end = frame.find(b"\0") + 1
        if frame[:end] == HEARTBEAT_TOPIC:
            self._on_heartbeat(frame[end:])
            return
        # Only a key holder can send, but a bug or another version must not be able to
        # break the workers' bus readers: malformed frames stop here, counted.
        host = self.membership.origin_of(frame, end)
        if host is None:
            return
        if frame[0] == KIND_SYNC:  # a peer bridge's answer to our barrier
            self._barrier_answer(self._outbound, frame[:end], host)
            return
        self.local_xpub.send(frame, 0, copy=len(frame) < 16384)

    # -- membership ---------------------------------------------------------------------

    def _heartbeat(self, now: float) -> None:
        workers = self.board.workers()
        self.remote_xpub.send(HEARTBEAT_TOPIC + self.membership.beat(workers))
        self.membership.refresh(now, tuple(workers), self._own_stats())

    def _own_stats(self) -> dict[str, Any]:
        return {
            "host_id": self.host_id,
            "addresses": sorted(self._connected),
            "messages_sent": self.sent,
            "bytes_sent": self.sent_bytes,
            "own_messages_dropped": self.membership.received_own,
            "barrier_timeouts": self.barrier_timeouts,
            "handshake_failures": self.handshake_failures,
            "malformed": self.membership.malformed,
            "conflicts": sorted(self.membership.conflicts),
        }

    def _on_heartbeat(self, body: bytes) -> None:
        self.membership.on_heartbeat(body)


class _ClusterKey:
    """ZAP credentials provider: only the cluster key's public half may connect."""

    def __init__(self, public: bytes) -> None:
        self._public = public

    def callback(self, _domain: str, key: bytes) -> bool:
        return key == self._public


def run_bridge(slot: int, config: Config, tables: SharedTables, run_dir: str) -> int:
    """Entry point in the forked child. Returns the process exit code."""
    row = start_process("bridge", slot, config, tables)
    bridge = Bridge(slot, config, tables, run_dir)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        signal.signal(signum, lambda *_: bridge.stop())
    try:
        bridge.start()
    except zmq.ZMQError:
        log.exception("bridge failed to start")
        bridge.close()
        return 3
    row[Column.STATE] = ProcessState.READY
    try:
        bridge.run()
    finally:
        bridge.close()
        row[Column.STATE] = ProcessState.DEAD
    log.info("bridge stopped")
    return 0
