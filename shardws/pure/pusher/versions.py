"""What differs between the Pusher protocol versions shardws serves, 4 to 7 (no I/O).

Pusher's protocol page documents version 7 alone. The differences come from the
CHANGELOG of that page's earlier text ("Pusher Protocol", section CHANGELOG: "Currently
protocol 4 and later are supported by Pusher"), checked against the clients that send
each version (docs/pusher.md, "Protocol versions", says which and where):

* 4 (2011-12): ``subscription_succeeded`` for public and private channels too. The oldest
  version served, so every connection gets it: no branch.
* 5 (2012-01): "Pusher expects the client to respond to ping messages". A version 4
  client is not bound to answer ``pusher:ping``, so it is never sent one: its liveness
  check is a WebSocket Ping frame, which its WebSocket layer answers by itself (RFC 6455
  5.5.2/5.5.3). :func:`pings_with_event`.
* 6 (2013-03): the close code travels in the close frame; ``pusher:error`` is sent
  before a close only on old WebSocket drafts without close codes. Not a branch:
  shardws sends ``pusher:error`` before every close, to every version, because versions
  below 6 need it ("Legacy protocols") and the version 6 clients in use (pysher,
  pusherclient) act on the ``pusher:error`` alone, never on the close frame's code.
* 7 (2013-11): ``activity_timeout`` in ``pusher:connection_established``.
  :func:`handshake_has_activity_timeout`.

Versions 1 to 3 (Pusher: "no longer supported") and any above 7 are refused with 4007
(``admission.admit``).
"""

from __future__ import annotations

#: The protocol versions served at ``/app/{key}``.
OLDEST = 4
NEWEST = 7
SUPPORTED = range(OLDEST, NEWEST + 1)

#: What a 4007 refusal says is served.
SUPPORTED_TEXT = f"{OLDEST}-{NEWEST}"


def handshake_has_activity_timeout(protocol: int) -> bool:
    """Whether ``pusher:connection_established`` carries ``activity_timeout`` (7 and up:
    pusher-js refuses a handshake without it; the older clients read the socket id only)."""
    return protocol >= 7


def pings_with_event(protocol: int) -> bool:
    """Whether a quiet connection is pinged with a ``pusher:ping`` event (5 and up, bound
    to answer ``pusher:pong``); else with a WebSocket Ping frame, which the client's
    WebSocket answers with a Pong frame whatever its Pusher library knows."""
    return protocol >= 5
