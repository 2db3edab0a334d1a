"""handshake.py: client IP behind trusted proxies, Origin allowlist, token extraction."""

from __future__ import annotations

from shardws.pure.handshake import client_ip, origin_allowed, parse_networks, request_token

PROXIES = parse_networks(["10.0.0.0/8", "192.0.2.1"])


def test_client_ip_untrusted_peer_ignores_header() -> None:
    assert client_ip("203.0.113.5", "1.2.3.4", PROXIES) == "203.0.113.5"
    assert client_ip("203.0.113.5", "1.2.3.4", ()) == "203.0.113.5"


def test_client_ip_from_trusted_proxy_takes_rightmost_untrusted_hop() -> None:
    # The client wrote "6.6.6.6" itself; the proxy appended the real peer.
    assert client_ip("10.1.1.1", "6.6.6.6, 198.51.100.7", PROXIES) == "198.51.100.7"
    assert client_ip("192.0.2.1", "198.51.100.7, 10.2.2.2", PROXIES) == "198.51.100.7"
    assert client_ip("10.1.1.1", None, PROXIES) == "10.1.1.1"
    assert client_ip("10.1.1.1", "not-an-ip", PROXIES) == "10.1.1.1"
    assert client_ip("10.1.1.1", "2001:db8::1", PROXIES) == "2001:db8::1"


def test_origin_allowlist() -> None:
    allowed = ("https://example.com", "https://*.example.org")
    assert origin_allowed("https://example.com", allowed)
    assert origin_allowed("https://EXAMPLE.com/", allowed)
    assert origin_allowed("https://app.example.org", allowed)
    assert not origin_allowed("https://example.org", allowed)  # wildcard: subdomains only
    assert not origin_allowed("http://example.com", allowed)
    assert not origin_allowed("https://evil.com", allowed)
    assert not origin_allowed("https://example.com.evil.com", allowed)
    assert not origin_allowed(None, allowed)
    assert origin_allowed(None, ())
    assert origin_allowed("https://anything", ())


def test_request_token() -> None:
    assert request_token(b"/ws?token=abc.def", {}) == "abc.def"
    assert request_token(b"/ws?x=1&token=a%2Bb", {}) == "a+b"
    assert request_token(b"/ws", {"authorization": "Bearer xyz"}) == "xyz"
    assert request_token(b"/ws?token=q", {"authorization": "bearer h"}) == "h"
    assert request_token(b"/ws", {"authorization": "Basic abc"}) is None
    assert request_token(b"/ws", {}) is None
