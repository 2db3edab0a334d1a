"""``shardws.server.static``: which plain GETs the WebSocket port answers, and how."""

from __future__ import annotations

from shardws.server.static import static_response


def test_browser_client_always_demo_only_when_enabled() -> None:
    for demo in (False, True):
        found = static_response(b"/shardws.js?v=1", demo, "/ws")
        assert found is not None
        response = found.response
        assert response.status == 200 and found.listener is None
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert b"class ShardWS" in response.body
    for path in (b"/", b"/index.html", b"/demo.js"):
        assert static_response(path, False, "/ws") is None
        assert static_response(path, True, "/ws") is not None
    for path in (b"/nope", b"/static/shardws.js", b"/../pyproject.toml", b"/shardws.js/"):
        assert static_response(path, True, "/ws") is None


def test_demo_page_knows_the_websocket_path_and_is_locked_down() -> None:
    found = static_response(b"/", True, '/live"x')
    assert found is not None
    page = found.response
    assert b'data-ws-path="/live&quot;x"' in page.body  # attribute-escaped
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert b'<script src="/shardws.js"></script>' in page.body
