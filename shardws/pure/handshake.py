"""Admission decisions on the HTTP upgrade request, before any WebSocket traffic.

No I/O: the worker hands in what picows parsed (path, headers) and the peer address
from the transport, and gets back decisions. Everything here is about requests from
the network, so nothing trusts a header unless the configuration says so.

* ``client_ip``: the peer address from the transport, unless the peer is one of the
  configured trusted proxies; then the right-most ``X-Forwarded-For`` entry that is not
  itself a trusted proxy (RFC 7239 section 7.4: the left-most entries are client
  controlled and can be forged).
* ``origin_allowed``: the ``Origin`` allowlist against cross-site WebSocket hijacking.
  An empty allowlist allows any origin (and requests without one: non-browser clients).
* ``request_token``: the token from ``?token=`` or ``Authorization: Bearer``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``"10.0.0.1"`` or ``"10.0.0.0/8"`` entries (validated by config) as networks."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _in(ip: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


def client_ip(peer_ip: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address as far as the trusted proxies vouch for it."""
    if not trusted or not forwarded_for or not _in(peer_ip, trusted):
        return peer_ip
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer_ip  # garbage from a proxy's client: fall back to the proxy
    return hops[0] if hops else peer_ip


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """``allowed`` entries: exact origins (``https://example.com``) or a ``*.`` host
    wildcard with a scheme (``https://*.example.com``) matching subdomains only."""
    if not allowed:
        return True
    if origin is None:
        return False
    origin = origin.lower().rstrip("/")
    for entry in allowed:
        entry = entry.lower().rstrip("/")
        if origin == entry:
            return True
        scheme, sep, host = entry.partition("://*.")
        if sep and origin.startswith(scheme + "://") and origin.endswith("." + host):
            return True
    return False


def request_token(path: bytes, headers: Mapping[str, str]) -> str | None:
    """The connection token from the query string or an ``Authorization: Bearer``
    header; None when neither is present."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    _, _, query = path.partition(b"?")
    if query:
        values = parse_qs(query.decode("latin-1")).get("token")
        if values:
            return values[0]
    return None
