"""The Pusher upgrade request ``/app/{key}?protocol=7&client=js&version=8.6.0`` admitted
or refused (no I/O). Protocols 4 to 7 are admitted (``versions``: what differs between them).

Pusher answers a refused connection after the WebSocket upgrade: a ``pusher:error`` with
the code, then a close frame with it (pusher-js reads the code from either). The worker
upgrades every request under ``/app/`` and carries out :func:`admit`'s decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from shardws.config import PusherAppConfig, PusherConfig
from shardws.pure.pusher import versions
from shardws.pure.pusher.closecodes import MESSAGES, PusherCode

#: Where Pusher clients connect: ``/app/{key}``.
PATH_PREFIX = "/app/"


@dataclass(frozen=True, slots=True)
class Admitted:
    """Serve the connection for ``app`` in Pusher protocol ``protocol`` (one of
    ``versions.SUPPORTED``); ``client`` and ``version`` are what the client said it is
    (``js``, ``8.6.0``), for logs and metrics, ``""`` when absent."""

    app: PusherAppConfig
    protocol: int
    client: str
    version: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Send ``pusher:error`` with ``code`` and ``message``, then close with ``code``."""

    code: PusherCode
    message: str


def _refused(code: PusherCode, detail: str = "") -> Refused:
    return Refused(code, f"{MESSAGES[code]}{': ' + detail if detail else ''}")


def admit(target: str, pusher: PusherConfig) -> Admitted | Refused:
    """The decision for an upgrade request whose target (path and query) is ``target``."""
    path, _, query = target.partition("?")
    key = unquote(path[len(PATH_PREFIX) :]) if path.startswith(PATH_PREFIX) else ""
    if not key or "/" in key:
        return _refused(PusherCode.PATH_NOT_FOUND)
    app = pusher.app_by_key(key)
    if app is None:
        return _refused(PusherCode.APP_NOT_FOUND)
    if not app.enabled:
        return _refused(PusherCode.APP_DISABLED)
    args = parse_qs(query, keep_blank_values=True)
    raw = args.get("protocol", [""])[0]
    if not raw:
        return _refused(PusherCode.NO_PROTOCOL)
    if not raw.isascii() or not raw.isdigit():
        return _refused(PusherCode.INVALID_VERSION)
    # Past a few digits no version can be served, and int() of thousands of digits
    # raises (Python's int_max_str_digits): refuse without converting.
    protocol = int(raw) if len(raw) <= 3 else versions.NEWEST + 1
    if protocol not in versions.SUPPORTED:
        shown = raw if len(raw) <= 10 else raw[:10] + "..."
        return _refused(
            PusherCode.UNSUPPORTED_PROTOCOL, f"{shown} (supported: {versions.SUPPORTED_TEXT})"
        )
    return Admitted(app, protocol, args.get("client", [""])[0], args.get("version", [""])[0])
