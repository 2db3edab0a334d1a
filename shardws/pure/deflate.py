"""permessage-deflate (RFC 7692): the handshake negotiation and the inflating of client
messages. No I/O; the worker moves the bytes.

Server-to-client compression lives in the hot path (``_core.Deflated``): the server
always sends with ``server_no_context_takeover``, so a message compresses the same way
for every connection with the same window size and one compressed frame per publication
and window size serves every compressing subscriber.

Guarantees of :func:`negotiate`:

* It accepts the first offer it can honour and returns the exact
  ``Sec-WebSocket-Extensions`` response value; ``None`` means "no compression" (the
  upgrade goes on, uncompressed). Offers with an unknown, duplicated or malformed
  parameter are declined (RFC 7692 5, 7.1).
* The server's window never exceeds the client's ``server_max_window_bits`` nor
  ``[compression] max_window_bits``. An offer that limits the server to 8 bits is
  declined: zlib cannot produce raw deflate with a 256-byte window.
* The client is held to ``max_window_bits`` when its offer allows it
  (``client_max_window_bits``); otherwise its window may be 15 bits and the inflater
  sized for that. ``client_no_context_takeover`` is accepted whenever offered, and then
  no inflate state outlives a message.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from shardws.config import MAX_WINDOW_BITS, MIN_WINDOW_BITS, CompressionConfig

EXTENSION = "permessage-deflate"

# RFC 7692 7.2.2: the sender removed this empty stored block's last 4 octets.
_TAIL = b"\x00\x00\xff\xff"

_NO_VALUE = ("server_no_context_takeover", "client_no_context_takeover")
_KNOWN = (*_NO_VALUE, "server_max_window_bits", "client_max_window_bits")


class MessageTooBig(ValueError):
    """The inflated message would exceed the size cap; close with 1009."""


class BadCompressedData(ValueError):
    """The payload is not a valid deflate stream; close with 1007 (RFC 7692 8: data
    inconsistent with the message type)."""


@dataclass(frozen=True, slots=True)
class Agreement:
    """What one connection negotiated."""

    #: LZ77 window (bits) the server compresses this connection's messages with.
    server_window_bits: int
    #: LZ77 window (bits) the client may use; sizes the inflater.
    client_window_bits: int
    #: Whether the client compresses each message on its own (no inflate state kept).
    client_no_context_takeover: bool
    #: The ``Sec-WebSocket-Extensions`` value of the upgrade response.
    response: str


def _window_bits(value: str | None) -> int | None:
    """RFC 7692 7.1.2: 1*DIGIT 8..15 without leading zeros (quotes allowed, 7.1)."""
    if value is None:
        return None
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not value.isdigit() or value.startswith("0") or not 8 <= int(value) <= MAX_WINDOW_BITS:
        raise ValueError(value)
    return int(value)


def _offers(headers: list[str]) -> list[dict[str, str | None]]:
    """The permessage-deflate offers of the ``Sec-WebSocket-Extensions`` header(s), in
    order; each as parameter -> value (None for a parameter without a value). A
    duplicated parameter makes the offer ``{}`` with a marker so it gets declined."""
    offers: list[dict[str, str | None]] = []
    for header in headers:
        for element in header.split(","):
            parts = [p.strip() for p in element.split(";")]
            if parts[0].lower() != EXTENSION:
                continue
            params: dict[str, str | None] = {}
            for part in parts[1:]:
                name, eq, value = part.partition("=")
                name = name.strip().lower()
                if name in params:
                    params = {"": None}  # RFC 7692 7: duplicates make the offer invalid
                    break
                params[name] = value.strip() if eq else None
            offers.append(params)
    return offers


def negotiate(headers: list[str], config: CompressionConfig) -> Agreement | None:
    """Answer the client's ``Sec-WebSocket-Extensions`` header values (see module doc)."""
    if not config.enabled:
        return None
    for params in _offers(headers):
        if any(name not in _KNOWN for name in params):
            continue
        if any(params.get(name, None) is not None for name in _NO_VALUE):
            continue
        try:
            server_bits = _window_bits(params.get("server_max_window_bits"))
            client_bits = _window_bits(params.get("client_max_window_bits"))
        except ValueError:
            continue
        if "server_max_window_bits" in params and server_bits is None:
            continue  # the server parameter needs a value
        if server_bits is not None and server_bits < MIN_WINDOW_BITS:
            continue
        response = [EXTENSION, "server_no_context_takeover"]
        server_window = min(server_bits or MAX_WINDOW_BITS, config.max_window_bits)
        if server_bits is not None:
            response.append(f"server_max_window_bits={server_window}")
        client_window = MAX_WINDOW_BITS
        if "client_max_window_bits" in params:
            client_window = min(client_bits or MAX_WINDOW_BITS, config.max_window_bits)
            response.append(f"client_max_window_bits={client_window}")
        no_takeover = "client_no_context_takeover" in params
        if no_takeover:
            response.append("client_no_context_takeover")
        return Agreement(server_window, client_window, no_takeover, "; ".join(response))
    return None


class Inflater:
    """Inflates one connection's compressed messages, each capped at ``max_size`` bytes.

    The zlib state (about 7 KB plus a ``2**client_window_bits`` window) is created at the
    first compressed message; it is kept between messages only while the client uses
    context takeover.
    """

    __slots__ = ("_keep", "_max_size", "_stream", "_wbits")

    def __init__(self, agreement: Agreement, max_size: int) -> None:
        self._wbits = -agreement.client_window_bits  # negative: raw deflate, no header
        self._keep = not agreement.client_no_context_takeover
        self._max_size = max_size
        self._stream: zlib._Decompress | None = None

    def inflate(self, data: bytes) -> bytes:
        """The message compressed as ``data`` (RFC 7692 7.2.2). Raises
        :class:`MessageTooBig` past the cap and :class:`BadCompressedData` for a broken
        stream; after either the connection must be closed."""
        stream = self._stream
        if stream is None:
            stream = zlib.decompressobj(self._wbits)
        try:
            # max_length stops a zip bomb at the cap instead of inflating all of it.
            out = stream.decompress(data + _TAIL, self._max_size + 1)
        except zlib.error as exc:
            raise BadCompressedData(str(exc)) from None
        if len(out) > self._max_size or stream.unconsumed_tail:
            raise MessageTooBig(f"inflated message exceeds {self._max_size} bytes")
        # A stream the client ended (BFINAL) cannot continue: start afresh next time.
        self._stream = stream if self._keep and not stream.eof else None
        return out

    @property
    def holds_state(self) -> bool:
        """Whether inflate state is kept until the next message."""
        return self._stream is not None
