"""The host bus's forwarder: one XSUB/XPUB pair that every bus member of the host
publishes to and subscribes from, forwarding in libzmq's C code (``zmq.proxy``, the GIL
released), so no member's Python sees another member's subscriptions.

* Members' PUB sockets connect to ``inbound`` (the XSUB). The XSUB subscribes to every
  topic itself, so a publisher sends every frame and filtering happens here, once, per
  subscriber pipe: a publication to a channel whose subscribers sit on k members costs
  k sends here and one at the publisher, however many members the host has.
* Members' SUB sockets connect to ``outbound`` (the XPUB). A subscription travels one
  pipe (member -> forwarder) and is applied here, in C; it is passed upstream only to
  publishers' C code (XSUB forwarding), never to a member's Python, except the bridge's
  (it forwards subscriptions to the peer hosts).

Order: frames of one publisher pass one pipe in, one proxy thread and one pipe out per
subscriber, so per-publisher order holds. Subscriptions from one member are applied in
the order it made them (one pipe), which is what the bus's barrier relies on.

Loss: the XPUB drops at ``hwm`` for a subscriber that does not read; publishers'
sequence numbers let receivers count it (``shardws.bus.host``). Subscriptions are never
dropped (no high-water mark in that direction).
"""

from __future__ import annotations

import os
import threading

import zmq

#: The least high-water mark of the hop from a publisher to the forwarder. Every frame
#: a member publishes takes that one pipe (inbox requests and replies, barrier probes,
#: every channel), so ``bus_hwm`` (what may wait for one subscriber) would make a burst
#: of unrelated frames drop each other there.
PUBLISH_HWM_FLOOR = 10_000

# An XSUB subscription message: subscribe (1) to the empty prefix, i.e. every topic.
_SUBSCRIBE_ALL = b"\x01"


def endpoints(run_dir: str) -> tuple[str, str]:
    """The forwarder's (inbound, outbound) ipc endpoints in ``run_dir``."""
    return (
        f"ipc://{os.path.join(run_dir, 'bus-in.sock')}",
        f"ipc://{os.path.join(run_dir, 'bus-out.sock')}",
    )


class Forwarder:
    """The forwarding sockets and the thread running ``zmq.proxy`` between them."""

    def __init__(self, run_dir: str, hwm: int) -> None:
        self.inbound, self.outbound = endpoints(run_dir)
        self._ctx = zmq.Context(io_threads=1)
        self._xsub = self._ctx.socket(zmq.XSUB)
        self._xpub = self._ctx.socket(zmq.XPUB)
        for sock in (self._xsub, self._xpub):
            sock.setsockopt(zmq.LINGER, 0)
        # Publications are bounded (a subscriber that does not read loses, counted);
        # subscriptions and barrier probes are not: ZeroMQ would drop them silently.
        self._xsub.setsockopt(zmq.RCVHWM, max(hwm, PUBLISH_HWM_FLOOR))
        self._xsub.setsockopt(zmq.SNDHWM, 0)
        self._xpub.setsockopt(zmq.SNDHWM, hwm)
        self._xpub.setsockopt(zmq.RCVHWM, 0)
        self._thread = threading.Thread(target=self._run, name="bus-forwarder", daemon=True)

    def start(self) -> None:
        """Bind both endpoints (replacing a dead predecessor's files) and start
        forwarding in a background thread."""
        for address in (self.inbound, self.outbound):
            path = address.removeprefix("ipc://")
            if os.path.exists(path):
                os.unlink(path)
        self._xsub.bind(self.inbound)
        self._xpub.bind(self.outbound)
        self._xsub.send(_SUBSCRIBE_ALL)
        self._thread.start()

    def is_alive(self) -> bool:
        """Whether the forwarding thread still runs (the process's liveness)."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop forwarding and unbind (the members' sockets keep trying to reconnect)."""
        if self._thread.is_alive():
            self._ctx.term()  # the proxy returns, the thread closes the sockets
            self._thread.join()
        else:
            self._xsub.close(linger=0)
            self._xpub.close(linger=0)
            self._ctx.term()

    def _run(self) -> None:
        try:
            zmq.proxy(self._xsub, self._xpub)
        except zmq.ContextTerminated:
            pass
        finally:
            self._xsub.close(linger=0)
            self._xpub.close(linger=0)
