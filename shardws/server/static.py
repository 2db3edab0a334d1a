"""Plain HTTP GETs on the WebSocket port: the browser client and the demo page.

No I/O beyond reading the package's ``static/`` files once. The worker asks
:func:`static_response` for every upgrade request whose path is not the WebSocket path;
None means 404, as before. What is served:

* ``/shardws.js``, always: the browser client (no build step), so pages load it from
  the server they talk to and always get the matching protocol version; and
  ``/msgpack.min.js``, the MessagePack codec it loads when a page chooses that format.
* ``/`` and ``/demo.js``, only with ``[server] demo = true``: the chat demo. The page
  learns the WebSocket path from a ``data-ws-path`` attribute filled in here.

Responses carry ``Cache-Control: no-cache`` (revalidate: the files change with the
server), ``X-Content-Type-Options: nosniff`` and, for the page, a Content-Security-Policy
that allows only this origin's scripts and connections.
"""

from __future__ import annotations

import functools
import html
from importlib import resources

from picows import WSUpgradeResponse, WSUpgradeResponseWithListener

_JS = "text/javascript; charset=utf-8"
_HTML = "text/html; charset=utf-8"
# What the demo page needs and nothing more (its styles are inline).
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline';"
    " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_ALWAYS = {
    "/shardws.js": ("shardws.js", _JS),
    # @msgpack/msgpack (vendored, ISC: static/msgpack.LICENSE.txt): shardws.js loads it
    # only for a client that chose the MessagePack format.
    "/msgpack.min.js": ("msgpack.min.js", _JS),
}
_DEMO = {
    "/": ("demo.html", _HTML),
    "/index.html": ("demo.html", _HTML),
    "/demo.js": ("demo.js", _JS),
}


@functools.cache
def _file(name: str) -> bytes:
    return resources.files("shardws").joinpath("static", name).read_bytes()


@functools.cache
def _page(ws_path: str) -> bytes:
    attribute = f'<html lang="en" data-ws-path="{html.escape(ws_path, quote=True)}">'
    return _file("demo.html").replace(b'<html lang="en">', attribute.encode(), 1)


def static_response(
    request_path: bytes, demo: bool, ws_path: str
) -> WSUpgradeResponseWithListener | None:
    """The 200 response for ``request_path`` (query string ignored), or None (404)."""
    path = request_path.split(b"?", 1)[0].decode("latin-1")
    entry = _ALWAYS.get(path) or (_DEMO.get(path) if demo else None)
    if entry is None:
        return None
    name, content_type = entry
    headers = {
        "Content-Type": content_type,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if name == "demo.html":
        body = _page(ws_path)
        headers["Content-Security-Policy"] = _PAGE_POLICY
    else:
        body = _file(name)
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(body, headers), None)
