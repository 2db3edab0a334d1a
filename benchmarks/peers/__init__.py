"""Single-process WebSocket broadcast servers that users would pick instead of shardws.

Each speaks the same subset of the shardws protocol (``subscribe``, ``unsubscribe``,
``publish``, ``ping`` on ``/ws``), so one load generator can drive all of them and shardws
alike. ``launch`` starts and stops them; see ``benchmarks/README.md``.
"""

from .launch import PEERS, PeerProcess, PeerUnavailable, start_peer, stop_peer

__all__ = ["PEERS", "PeerProcess", "PeerUnavailable", "start_peer", "stop_peer"]
