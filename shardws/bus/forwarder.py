"""The host bus's forwarder: where every bus member of the host publishes and
subscribes, forwarding in libzmq's C code (``zmq.proxy``, the GIL released), so no
member's Python, and no member's ZeroMQ thread, sees another member's subscriptions.

* Members' PUSH sockets connect to ``publish`` (a PULL). A first proxy thread passes what
  it reads to a PUB, connected in-process to the XSUB of the second stage. PUSH sockets
  take no subscriptions: a new topic wakes no publisher (through an XSUB, every member's
  PUB would receive every new subscription of the host, and its ZeroMQ threads apply
  it, W wake-ups per subscription).
* The XSUB (bound at ``inbound``, and in-process for the first stage) subscribes to
  every topic itself, so every frame reaches the second proxy thread and filtering
  happens once, at the XPUB, per subscriber pipe: a publication to a channel whose
  subscribers sit on k members costs k sends here and one at the publisher, however
  many members the host has. The cluster bridge publishes into ``inbound`` with an XPUB:
  the XSUB passes each topic's first subscription (and last unsubscription) to it and
  to the in-process PUB (C, in this process), never to a member.
* Members' SUB sockets connect to ``outbound`` (the XPUB). A subscription travels one
  pipe (member -> forwarder) and is applied here, in C.

Order: frames of one member pass one pipe in, one proxy thread per stage and one pipe
out per subscriber, so per-publisher order holds. Subscriptions from one member are
applied in the order it made them (one pipe), which is what the bus's barrier relies on.

Loss: the XPUB drops at ``hwm`` for a subscriber that does not read; a member's PUSH
refuses a frame at its high-water mark (the member does not block: it drops it) and
the in-process PUB drops when the second stage falls behind by its high-water mark.
Publishers' sequence numbers let receivers count every such drop (``shardws.bus.host``).
Subscriptions are never dropped (no high-water mark in that direction).
"""

from __future__ import annotations

import os
import threading
from typing import NamedTuple

import zmq

#: The least high-water mark of the hop from a publisher to the forwarder. Every frame
#: a member publishes takes that one pipe (inbox requests and replies, barrier probes,
#: every channel), so ``bus_hwm`` (what may wait for one subscriber) would make a burst
#: of unrelated frames drop each other there.
PUBLISH_HWM_FLOOR = 10_000

# An XSUB subscription message: subscribe (1) to the empty prefix, i.e. every topic.
_SUBSCRIBE_ALL = b"\x01"


class Endpoints(NamedTuple):
    """The forwarder's ipc endpoints: ``publish`` for members' PUSH sockets,
    ``inbound`` for the bridge's XPUB (it must see the host's subscriptions), and
    ``outbound`` for every member's SUB."""

    publish: str
    inbound: str
    outbound: str


def endpoints(run_dir: str) -> Endpoints:
    """The forwarder's endpoints in ``run_dir``."""
    return Endpoints(
        *(
            f"ipc://{os.path.join(run_dir, name)}"
            for name in ("bus-push.sock", "bus-in.sock", "bus-out.sock")
        )
    )


class Forwarder:
    """The forwarding sockets and the two threads running ``zmq.proxy`` between them."""

    def __init__(self, run_dir: str, hwm: int) -> None:
        self.endpoints = endpoints(run_dir)
        self._ctx = zmq.Context(io_threads=1)
        self._pull = self._ctx.socket(zmq.PULL)
        self._pub = self._ctx.socket(zmq.PUB)
        self._xsub = self._ctx.socket(zmq.XSUB)
        self._xpub = self._ctx.socket(zmq.XPUB)
        for sock in (self._pull, self._pub, self._xsub, self._xpub):
            sock.setsockopt(zmq.LINGER, 0)
        # Publications are bounded (a subscriber that does not read loses, counted);
        # subscriptions and barrier probes are not: ZeroMQ would drop them silently.
        inbound_hwm = max(hwm, PUBLISH_HWM_FLOOR)
        self._pull.setsockopt(zmq.RCVHWM, inbound_hwm)
        self._pub.setsockopt(zmq.SNDHWM, inbound_hwm)
        self._pub.setsockopt(zmq.RCVHWM, 0)
        self._xsub.setsockopt(zmq.RCVHWM, inbound_hwm)
        self._xsub.setsockopt(zmq.SNDHWM, 0)
        self._xpub.setsockopt(zmq.SNDHWM, hwm)
        self._xpub.setsockopt(zmq.RCVHWM, 0)
        self._stages = [
            threading.Thread(target=self._run, args=pair, name=name, daemon=True)
            for pair, name in (
                ((self._pull, self._pub), "bus-forwarder-in"),
                ((self._xsub, self._xpub), "bus-forwarder"),
            )
        ]

    @property
    def inbound(self) -> str:
        return self.endpoints.inbound

    @property
    def outbound(self) -> str:
        return self.endpoints.outbound

    def start(self) -> None:
        """Bind the endpoints (replacing a dead predecessor's files) and start
        forwarding in background threads."""
        for address in self.endpoints:
            path = address.removeprefix("ipc://")
            if os.path.exists(path):
                os.unlink(path)
        stage = f"inproc://bus-stage-{id(self):x}"
        self._xsub.bind(stage)
        self._xsub.bind(self.endpoints.inbound)
        self._pub.connect(stage)
        self._xpub.bind(self.endpoints.outbound)
        self._pull.bind(self.endpoints.publish)
        self._xsub.send(_SUBSCRIBE_ALL)
        for thread in self._stages:
            thread.start()

    def is_alive(self) -> bool:
        """Whether both forwarding threads still run (the process's liveness)."""
        return all(thread.is_alive() for thread in self._stages)

    def close(self) -> None:
        """Stop forwarding and unbind (the members' sockets keep trying to reconnect)."""
        if any(thread.is_alive() for thread in self._stages):
            self._ctx.term()  # the proxies return, the threads close their sockets
            for thread in self._stages:
                thread.join()
        else:
            for sock in (self._pull, self._pub, self._xsub, self._xpub):
                sock.close(linger=0)
            self._ctx.term()

    @staticmethod
    def _run(frontend: zmq.Socket[bytes], backend: zmq.Socket[bytes]) -> None:
        try:
            zmq.proxy(frontend, backend)
        except zmq.ContextTerminated:
            pass
        finally:
            frontend.close(linger=0)
            backend.close(linger=0)
