"""What a host's cross-host process shares, whatever carries the host bus across hosts
(the mesh's bridge, ``server.bridge``; the Redis hub, ``server.redishub``): its sockets
on the host bus and the membership it keeps.

**The host bus side.** ``local_sub`` (SUB, connected to the forwarder's outbound
endpoint, subscribed to everything) takes every frame of the host; ``local_xpub`` (XPUB,
connected to the forwarder's inbound endpoint like a member's PUB) delivers what comes
from other hosts, and reads the host's subscriptions: the forwarder passes the first
subscription to a topic and the last unsubscription upstream, so this process sees each
topic once however many members subscribe it.

**Membership.** Every ``heartbeat_interval`` the process sends its host id, host number,
a nonce (tells a restarted peer, or our own heartbeat coming back) and configured worker
slots (:meth:`PeerView.beat`); a peer silent for ``peer_timeout`` is down. The live
hosts form the view written to shared memory (``shm.view``), which ``/health``,
``/metrics`` and ``Members`` read. Two hosts with one host number are refused (logged
once, their traffic ignored). A new process takes over the peers of the view its
predecessor wrote (:meth:`PeerView._inherit`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq
from setproctitle import setproctitle

from shardws.bus.forwarder import PUBLISH_HWM_FLOOR, endpoints
from shardws.config import Config
from shardws.log import RateLimitedLogger, setup_logging
from shardws.pure.busframe import (
    KIND_CHANNEL,
    KIND_INBOX,
    KIND_SYNC,
    KIND_USER,
    ORIGIN,
    well_formed,
)
from shardws.pure.cluster import Host, View, host_of, view_number
from shardws.shm.scoreboard import Column, ProcessState
from shardws.shm.tables import SharedTables
from shardws.shm.view import ViewTable

#: The topic of the membership heartbeats between the hosts (never a bus topic).
HEARTBEAT_TOPIC = b"m\0"
#: The bus topics that cross hosts (barriers are answered, never forwarded).
FORWARDED = frozenset({KIND_CHANNEL, KIND_USER, KIND_INBOX})


def start_process(
    name: str, slot: int, config: Config, tables: SharedTables
) -> np.ndarray[Any, Any]:
    """The forked cross-host process's first steps: its title (``shardws: NAME``), its
    logging, and its scoreboard row (pid, BOOTING, a first heartbeat), returned."""
    setproctitle(f"shardws: {name}")
    setup_logging(config.log.level, config.log.format, name)
    row = tables.board.row(slot)
    row[Column.PID] = os.getpid()
    row[Column.STATE] = ProcessState.BOOTING
    row[Column.HEARTBEAT_NS] = time.monotonic_ns()
    return row


def host_bus_sockets(
    ctx: zmq.Context[zmq.Socket[bytes]], config: Config, run_dir: str
) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    """``(local_xpub, local_sub)``, connected to this host's forwarder."""
    forwarder = endpoints(run_dir)
    # It publishes to the forwarder like a member: the same floor on that hop.
    local_xpub = relay_socket(ctx, zmq.XPUB, max(config.server.bus_hwm, PUBLISH_HWM_FLOOR))
    local_sub = relay_socket(ctx, zmq.SUB, config.server.bus_hwm)
    local_sub.setsockopt(zmq.RECONNECT_IVL, 100)
    local_sub.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    local_xpub.connect(forwarder.inbound)
    local_sub.setsockopt(zmq.SUBSCRIBE, b"")
    local_sub.connect(forwarder.outbound)
    return local_xpub, local_sub


def relay_socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int, hwm: int) -> zmq.Socket[bytes]:
    """A socket of a relay: ``hwm`` bounds publications (XPUB -> SUB) only. The other
    direction carries subscriptions and barrier probes, which ZeroMQ drops at the
    high-water mark without a trace; they are bounded by the topics subscribed: no limit
    there."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    publications = kind == zmq.XPUB
    sock.setsockopt(zmq.SNDHWM, hwm if publications else 0)
    sock.setsockopt(zmq.RCVHWM, 0 if publications else hwm)
    return sock


@dataclass
class Peer:
    host_id: str
    number: int
    nonce: str
    workers: tuple[int, ...] = ()
    last_seen: float = 0.0
    received: int = 0  # bus frames received from this peer's members
    received_bytes: int = 0
    ups: int = 0  # times it came up (first contact included)
    up: bool = False


class PeerView:
    """The peers heard from and the view they make with this host (see the module)."""

    def __init__(
        self,
        host_id: str,
        number: int,
        view_table: ViewTable,
        peer_timeout: float,
        log: logging.Logger,
    ) -> None:
        self.host_id = host_id
        self.number = number
        self.nonce = os.urandom(8).hex()
        self.peers: dict[str, Peer] = {}
        self.conflicts: set[str] = set()
        self.malformed = 0  # frames from other hosts that the workers could not parse
        self.received_own = 0  # this host's own frames that came back
        self._view_table = view_table
        self._timeout = peer_timeout
        self._log = log
        self._refusals = RateLimitedLogger(log.name, burst=5, level=logging.WARNING)
        self._view: View | None = None
        self._inherit(time.monotonic())

    def beat(self, workers: tuple[int, ...] | list[int]) -> bytes:
        """This host's heartbeat body."""
        workers_text = ",".join(map(str, workers))
        return f"{self.host_id}\n{self.number}\n{self.nonce}\n{workers_text}".encode()

    def refresh(self, now: float, workers: tuple[int, ...], own: dict[str, Any]) -> View:
        """Mark the silent peers down and write the view (``own``: this process's
        counters, shown in ``/health``); returns it."""
        for peer in self.peers.values():
            alive = now - peer.last_seen < self._timeout
            if peer.up and not alive:
                self._log.warning(
                    "peer %r is down (no heartbeat for %.1f s)", peer.host_id, self._timeout
                )
            peer.up = alive
        hosts = [Host(self.host_id, self.number, tuple(workers))]
        hosts += [Host(p.host_id, p.number, p.workers) for p in self.peers.values() if p.up]
        hosts.sort(key=lambda host: host.host_id)
        number = view_number(hosts)
        if self._view is None or number != self._view.number:
            self._log.info("membership view %08x: %s", number, [host.host_id for host in hosts])
        self._view = View(number, tuple(hosts), {**self._peer_stats(now), "": own})
        self._view_table.write(self._view)
        return self._view

    def origin_of(self, frame: bytes, end: int) -> int | None:
        """The host number of a frame from another host (``end``: after its topic), or
        None when it must not reach the workers: malformed (a bug or another version
        must not break their bus readers), or this host's own coming back. Counts it
        for its peer."""
        if not well_formed(frame, end):
            self.malformed += 1
            self._refusals.warning("dropped a malformed bus frame from another host")
            return None
        (origin,) = ORIGIN.unpack_from(frame, end)
        host = host_of(origin)
        if host == self.number:
            self.received_own += 1
            return None
        peer = self.by_number(host)
        if peer is not None and frame[0] != KIND_SYNC:  # a barrier's answer is no traffic
            peer.received += 1
            peer.received_bytes += len(frame)
        return host

    def up_numbers(self) -> set[int]:
        """The host numbers of the peers that are up."""
        return {peer.number for peer in self.peers.values() if peer.up}

    def by_number(self, number: int) -> Peer | None:
        for peer in self.peers.values():  # a handful of peers: cheaper than an index
            if peer.number == number:
                return peer
        return None

    def _peer_stats(self, now: float) -> dict[str, dict[str, object]]:
        return {
            p.host_id: {
                "up": p.up,
                "last_seen": round(now - p.last_seen, 3),
                "ups": p.ups,
                "workers": list(p.workers),
                "messages_received": p.received,
                "bytes_received": p.received_bytes,
            }
            for p in self.peers.values()
        }

    def _inherit(self, now: float) -> None:
        """Take over the peers of the view a previous process of this host wrote (it was
        killed, or replaced by a reload): they stay up until ``peer_timeout`` passes
        without their heartbeat, as they would have for the old process. One that
        started from nothing would write a view of this host alone at its first tick, and
        until the peers' heartbeats arrived the workers would elect owners here for the
        history channels owned on the other hosts: new epochs, the history split as in a
        partition, by a mere restart."""
        previous = self._view_table.read()
        for host in previous.hosts if previous is not None else ():
            if host.number != self.number:
                # No nonce yet: the first heartbeat fills it in without a "restarted".
                self.peers[host.host_id] = Peer(
                    host.host_id, host.number, "", host.workers, now, ups=1, up=True
                )

    def on_heartbeat(self, body: bytes) -> None:
        """A heartbeat (:meth:`beat`) from some host, ours included."""
        try:
            host_id, number_text, nonce, workers_text = body.decode().split("\n")
            number = int(number_text)
            workers = tuple(int(w) for w in workers_text.split(",") if w)
        except ValueError:
            self._log.warning("bad heartbeat from a peer: %r", body[:100])
            return
        if nonce == self.nonce:
            return  # our own
        if host_id == self.host_id or (number == self.number) or self._clashes(host_id, number):
            if host_id not in self.conflicts:
                self.conflicts.add(host_id)
                self._log.error(
                    "peer %r (host number %d) clashes with %s: set a unique [cluster] host_id;"
                    " its traffic is ignored",
                    host_id,
                    number,
                    "this host" if number == self.number else "another peer",
                )
            return
        peer = self.peers.get(host_id)
        now = time.monotonic()
        if peer is not None and not peer.nonce:  # inherited from the previous process
            peer.nonce = nonce
        if peer is None or peer.nonce != nonce:
            if peer is not None:
                self._log.info("peer %r restarted", host_id)
            received = (peer.received, peer.received_bytes, peer.ups) if peer else (0, 0, 0)
            peer = self.peers[host_id] = Peer(host_id, number, nonce)
            peer.received, peer.received_bytes, peer.ups = received
        if not peer.up:
            peer.ups += 1
            self._log.info("peer %r is up (workers %s)", host_id, list(workers))
        peer.up = True
        peer.workers = workers
        peer.last_seen = now

    def _clashes(self, host_id: str, number: int) -> bool:
        return any(p.number == number and p.host_id != host_id for p in self.peers.values())
