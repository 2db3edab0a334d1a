"""What backends ask of the server -- publish, disconnect a user, list channels -- parsed
and validated (no I/O). The HTTP API and the ZeroMQ ingress share these parsers, so both
accept exactly the same requests.

Guarantees:

* Every parser returns a fully validated value or raises :class:`BadRequest`, whose
  message names the member at fault and what would be valid; nothing else escapes, for
  any input bytes (deep nesting and invalid UTF-8 included).
* A :class:`Publication` is encoded once for the bus (:meth:`Publication.bus_messages`:
  one publication record for all its channels; a user's push in the native
  protocol): channels must be valid names in configured
  namespaces; a user must be a valid user id. Client permission rules (``publish =
  false``, user-only channels) do not apply: the backend is the server's own voice.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from shardws.config import Config
from shardws.core import BadEnvelope, InvalidUTF8, parse_envelope
from shardws.pure import control, protocol, publication
from shardws.pure.auth import user_id_error
from shardws.pure.busframe import channel_topic, user_topic
from shardws.pure.history import Position
from shardws.pure.protocol import CloseCode

#: Most channels one publish request may name.
MAX_CHANNELS_PER_REQUEST = 1000
#: Longest close reason, bytes of UTF-8: RFC 6455 5.5 leaves 123 bytes for it in a close
#: frame, and the worker truncates at 120.
MAX_REASON_BYTES = 120
DEFAULT_DISCONNECT_REASON = "disconnected by the server"
#: Seconds a backend should wait before retrying an unconfirmed publication (the 503's
#: ``Retry-After``).
RETRY_AFTER = 1


class BadRequest(ValueError):
    """A request a backend got wrong; the message says what would be valid."""


@dataclass(frozen=True, slots=True)
class Publication:
    """A validated publication to ``channels``, or to every connection of ``user``;
    ``data`` is valid JSON, embedded as is in what subscribers receive."""

    channels: tuple[str, ...]
    user: str | None
    data: bytes
    #: The backend's idempotency key: a retry with the same key is stored once in each
    #: history channel (``Ring.duplicate``); None: the server makes one per request.
    idem: str | None = None

    def bus_messages(self, skip: list[str] | None = None) -> list[tuple[bytes, bytes]]:
        """(bus topic, payload) pairs that deliver this publication, but for the
        channels in ``skip`` (those with history go through their owner); encoded once
        here (one record for every channel) and never re-serialized downstream."""
        if self.user is not None:
            return [(user_topic(self.user), self.user_message())]
        record = self.record()
        return [(channel_topic(c), record) for c in self.channels if not skip or c not in skip]

    def user_message(self) -> bytes:
        """The message for a user-targeted publication's user (``user`` is set)."""
        assert self.user is not None
        return control.encode_user_push(protocol.encode_user_pub(self.user, self.data))

    def record(self) -> bytes:
        """The publication record every target channel gets (``publication.encode``)."""
        return publication.encode(publication.Publication(self.data))


def publish_answer(publication: Publication, positions: Mapping[str, Position]) -> dict[str, Any]:
    """The 200 body of ``POST /api/publish``: ``{"ok": true, "user": U}`` or ``{"ok":
    true, "channels": N}``, with ``positions`` (``{channel: {"epoch": E, "offset": N}}``)
    for the channels with history, where the owner stored the publication; with one
    target channel also its ``epoch`` and ``offset`` at the top."""
    if publication.user is not None:
        return {"ok": True, "user": publication.user}
    answer: dict[str, Any] = {"ok": True, "channels": len(publication.channels)}
    if positions:
        answer["positions"] = {
            channel: {"epoch": at.epoch, "offset": at.offset} for channel, at in positions.items()
        }
        if len(publication.channels) == 1:
            (at,) = positions.values()
            answer.update(epoch=at.epoch, offset=at.offset)
    return answer


def publish_result(
    publication: Publication, positions: Mapping[str, Position], missing: list[str]
) -> tuple[int, dict[str, Any]]:
    """The status and body of the answer to a stored publication (the HTTP API's, and
    the acknowledged ingress's): 200 with :func:`publish_answer`, or, when history
    ``missing`` channels were not confirmed, 503 whose body names them (``Retry-After``:
    ``retry_after`` seconds, which the caller adds)."""
    if missing:
        return 503, {"error": unconfirmed_message(missing, publication.idem), "channels": missing}
    return 200, publish_answer(publication, positions)


def unconfirmed_message(channels: list[str], idem: str | None) -> str:
    """The 503 message of a publication whose history ``channels`` were not confirmed
    stored by their owners (so its plain channels and user were not published)."""
    again = (
        f'retry with the same "idem" ({idem!r}): what was stored is not stored again'
        if idem is not None
        else 'retry, and give "idem" to make a retry safe (without it the publication may be'
        " stored twice)"
    )
    names = ", ".join(repr(c) for c in channels[:5]) + (" ..." if len(channels) > 5 else "")
    return (
        f"not confirmed stored in {names}: the channel's owner did not answer (being"
        f" replaced or restarted), so it may or may not be stored; no plain channel or"
        f" user of this request was published; {again}"
    )


def request_idem(idem: str | None) -> str:
    """``idem`` itself, or a fresh key for a request that has none (so the admin's own
    attempts never store a publication twice); 24 characters, within a client's 64."""
    return idem if idem is not None else "api-" + secrets.token_hex(10)


def max_request_bytes(config: Config) -> int:
    """Largest request body (HTTP) or message (ingress) accepted: room for a message of
    ``max_message_size`` written loosely (whitespace, escapes) and a long channel list,
    but never more than ``max_message_size`` + 16 MiB (the size cap is 64 MiB)."""
    size = config.server.max_message_size
    return min(size * 16, size + 16 * 1024 * 1024)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 section 6)")


def _load_object(body: bytes, expected: str) -> dict[str, Any]:
    try:
        # parse_constant: Python's parser accepts NaN and Infinity, JSON clients do not.
        request = json.loads(body, parse_constant=_reject_constant)
    except ValueError as exc:  # includes invalid UTF-8
        raise BadRequest(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body is not JSON: nested too deeply") from None
    if not isinstance(request, dict):
        raise BadRequest(f"body must be an object with {expected}")
    return request


def check_channel(channel: object, config: Config) -> str:
    """``channel`` if it is a valid channel name in a configured namespace."""
    problem = protocol.channel_error(channel if isinstance(channel, str) else None)
    if problem is not None:
        raise BadRequest(f"{channel!r}: {problem}")
    assert isinstance(channel, str)
    namespace = protocol.namespace_of(channel)
    if namespace not in config.namespaces:
        raise BadRequest(f"{channel!r}: namespace {namespace!r} is not configured")
    return channel


def check_user(user: object) -> str:
    """``user`` if it is a valid user id (see :func:`shardws.pure.auth.user_id_error`)."""
    problem = user_id_error(user)
    if problem is not None:
        raise BadRequest(f'"user": {problem}')
    assert isinstance(user, str)
    return user


def check_idem(idem: object) -> str | None:
    """``idem`` if it is absent (None) or a string of 1..``MAX_IDEM_LENGTH`` characters,
    the limit of a client's ``publish``."""
    if idem is None:
        return None
    if not isinstance(idem, str) or not 0 < len(idem) <= protocol.MAX_IDEM_LENGTH:
        raise BadRequest(
            f'"idem" must be a string of 1 to {protocol.MAX_IDEM_LENGTH} characters,'
            f" got {idem!r:.80}"
        )
    return idem


def parse_publish(body: bytes, config: Config) -> Publication:
    """``{"channel": C | "channels": [C, ...] | "user": U, "data": <any JSON>, "idem": K}``
    (exactly one target; ``idem`` optional) -> a :class:`Publication` with ``data``
    re-encoded once as compact JSON."""
    request = _load_object(body, '"data" and one of "channel", "channels" or "user"')
    targets = [key for key in ("channel", "channels", "user") if key in request]
    if "data" not in request or len(targets) != 1:
        raise BadRequest(
            'body must be an object with "data" and exactly one of "channel" (a string),'
            f' "channels" (1..{MAX_CHANNELS_PER_REQUEST} strings) or "user" (a user id)'
        )
    try:
        data = json.dumps(
            request["data"], separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except ValueError as exc:
        raise BadRequest(f'"data": {exc}') from None
    idem = check_idem(request.get("idem"))
    if targets[0] == "user":
        return Publication((), check_user(request["user"]), data, idem)
    channels = request.get("channels", [request.get("channel")])
    if not isinstance(channels, list) or not 1 <= len(channels) <= MAX_CHANNELS_PER_REQUEST:
        raise BadRequest(f'"channels" must be a list of 1..{MAX_CHANNELS_PER_REQUEST} channels')
    return Publication(tuple(check_channel(c, config) for c in channels), None, data, idem)


# The two-frame ingress form is checked by the C scanner clients' publishes go through:
# wrapped as a publish command, the data must come back as the whole of the data member.
_WRAP_HEAD = b'{"op":"publish","data":'
_JSON_WHITESPACE = b" \t\r\n"


def check_json(raw: bytes) -> bytes:
    """``raw`` without surrounding whitespace if it is exactly one JSON value (strict
    UTF-8, RFC 8259, nesting at most ``core.MAX_DEPTH - 1``: the limits of a client's
    ``data``), validated without building Python objects."""
    try:
        env = parse_envelope(_WRAP_HEAD + raw + b"}")
    except (InvalidUTF8, BadEnvelope) as exc:
        raise BadRequest(f"data is not one JSON value: {exc}") from None
    # Anything else in the envelope means raw smuggled in more members, e.g. '1,"x":2'.
    data = env.data
    if data is None or env.id is not None or env.fields or env.channel is not None:
        raise BadRequest("data is not one JSON value")
    if len(data) != len(raw.strip(_JSON_WHITESPACE)):
        raise BadRequest("data is not one JSON value")
    return data


def parse_ingress(frames: list[bytes], config: Config) -> Publication:
    """One ingress message: a single frame holding the JSON body of ``POST /api/publish``,
    or two frames ``[channel, data]`` (``data`` is raw JSON, passed on byte-for-byte)."""
    if len(frames) == 1:
        return parse_publish(frames[0], config)
    if len(frames) != 2:
        raise BadRequest(
            f"expected 1 frame (a JSON publish request) or 2 (channel, data), got {len(frames)}"
        )
    try:
        channel = frames[0].decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("channel frame is not an ASCII channel name") from None
    return Publication((check_channel(channel, config),), None, check_json(frames[1]))


def parse_acked_ingress(frames: list[bytes], config: Config) -> Publication:
    """One message of the acknowledged ingress: ``[request id, message frames...]`` (the
    frames as :func:`parse_ingress` takes them). The request id (1..64 ASCII characters,
    unique per publication, e.g. a UUID; the same on a retry) is the publication's
    idempotency key, unless a JSON message carries its own ``idem``."""
    if len(frames) < 2:
        raise BadRequest("expected [request id, message frames...]")
    try:
        request_id = check_idem(frames[0].decode("ascii"))
    except (UnicodeDecodeError, BadRequest):
        raise BadRequest(
            f"the request id must be 1 to {protocol.MAX_IDEM_LENGTH} ASCII characters"
        ) from None
    publication = parse_ingress(frames[1:], config)
    if publication.idem is not None:
        return publication
    return replace(publication, idem=request_id)


def parse_disconnect(body: bytes) -> tuple[str, control.Disconnect]:
    """``{"user": U, "code": 4000..4999 (optional), "reason": "..." (optional)}`` ->
    (user, what to close its connections with). The default code is
    ``CloseCode.DISCONNECTED`` (4009: do not reconnect)."""
    request = _load_object(body, '"user"')
    if "user" not in request:
        raise BadRequest('body must be an object with "user"')
    user = check_user(request["user"])
    code = request.get("code", int(CloseCode.DISCONNECTED))
    if isinstance(code, bool) or not isinstance(code, int) or not 4000 <= code <= 4999:
        raise BadRequest(
            f'"code" must be an integer from 4000 to 4999 (4000-4499: the client should not'
            f" reconnect, 4500-4999: it should), got {code!r}"
        )
    reason = request.get("reason", DEFAULT_DISCONNECT_REASON)
    if not isinstance(reason, str):
        raise BadRequest('"reason" must be a string')
    try:
        size = len(reason.encode())
    except UnicodeEncodeError:  # a lone surrogate from JSON "\\ud800"
        raise BadRequest('"reason" must be valid Unicode text') from None
    if size > MAX_REASON_BYTES:
        raise BadRequest(f'"reason" must be at most {MAX_REASON_BYTES} bytes of UTF-8')
    return user, control.Disconnect(code, reason)


def parse_channels_query(query: Mapping[str, str]) -> tuple[str, int]:
    """``?prefix=P&limit=N`` of ``GET /api/channels`` -> (prefix, limit); limit defaults
    to and is at most ``control.MAX_CHANNELS``."""
    prefix = query.get("prefix", "")
    if len(prefix) > protocol.CHANNEL_MAX_LENGTH:
        raise BadRequest(f'"prefix" is longer than {protocol.CHANNEL_MAX_LENGTH} characters')
    raw = query.get("limit", str(control.MAX_CHANNELS))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not (
        1 <= int(raw) <= control.MAX_CHANNELS
    ):
        raise BadRequest(f'"limit" must be an integer from 1 to {control.MAX_CHANNELS}')
    return prefix, int(raw)


def parse_channel_query(query: Mapping[str, str], config: Config, need: str) -> str:
    """``?channel=C`` of ``GET /api/presence`` and ``/api/history``: a valid channel in
    a configured namespace whose option ``need`` (``presence`` or ``history_size``) is
    on; BadRequest says which part is wrong."""
    channel = query.get("channel")
    problem = protocol.channel_error(channel)
    if problem is not None:
        raise BadRequest(f'"channel": {problem}')
    assert channel is not None
    options = config.namespaces.get(protocol.namespace_of(channel))
    if options is None:
        raise BadRequest(f"{channel!r}: namespace is not configured")
    if not getattr(options, need):
        what = "presence is off" if need == "presence" else "history_size is 0"
        raise BadRequest(f"{channel!r}: {what} for its namespace")
    return channel


def parse_history_query(query: Mapping[str, str]) -> dict[str, Any]:
    """``since`` (offset, default 0), ``limit`` (1..1000, default 100), ``reverse``
    (true/false) of ``GET /api/history``."""
    args: dict[str, Any] = {"since": 0, "limit": 100, "reverse": False}
    for name in ("since", "limit"):
        raw = query.get(name)
        if raw is None:
            continue
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 15):
            raise BadRequest(f'"{name}" must be a non-negative integer')
        args[name] = int(raw)
    if not 1 <= args["limit"] <= 1000:
        raise BadRequest('"limit" must be an integer from 1 to 1000')
    reverse = query.get("reverse", "false")
    if reverse not in ("true", "false"):
        raise BadRequest('"reverse" must be true or false')
    args["reverse"] = reverse == "true"
    return args
