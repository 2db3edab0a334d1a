"""The hot-path primitives, from the Cython extension when it is built.

``IMPLEMENTATION`` says which one was loaded: ``"cython"`` (``shardws._core``) or
``"python"`` (``shardws._core_ref``, the slow reference, used when the extension is not
built or when ``SHARDWS_PURE_PYTHON=1``). Both have the same API and behaviour; the
server should log ``IMPLEMENTATION`` at startup, since the reference is far slower.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING, Literal


def _load() -> tuple[ModuleType, Literal["cython", "python"]]:
    if os.environ.get("SHARDWS_PURE_PYTHON") != "1":
        try:
            return importlib.import_module("shardws._core"), "cython"
        except ImportError:
            pass
    return importlib.import_module("shardws._core_ref"), "python"


_module, IMPLEMENTATION = _load()

if TYPE_CHECKING:  # both have the same API; users are checked against the extension's stub
    from shardws._core import (
        DEFAULT_MAX_PENDING,
        MAX_DEPTH,
        MAX_ID,
        MSGPACK_BIN,
        MSGPACK_EXT,
        MSGPACK_FLOAT,
        MSGPACK_KEY,
        BadEnvelope,
        Deflated,
        DeltaError,
        Envelope,
        InvalidUTF8,
        Sink,
        TokenBucket,
        build_frame,
        build_text_frame,
        delta_apply,
        delta_checksum,
        delta_create,
        fanout,
        flush,
        msgpack_members,
        parse_envelope,
        release_handshake,
        take_overflowed,
        total_drops,
        utf8_valid,
    )
else:
    MAX_DEPTH = _module.MAX_DEPTH
    MAX_ID = _module.MAX_ID
    BadEnvelope = _module.BadEnvelope
    Deflated = _module.Deflated
    DeltaError = _module.DeltaError
    Envelope = _module.Envelope
    InvalidUTF8 = _module.InvalidUTF8
    Sink = _module.Sink
    TokenBucket = _module.TokenBucket
    build_frame = _module.build_frame
    build_text_frame = _module.build_text_frame
    delta_apply = _module.delta_apply
    delta_checksum = _module.delta_checksum
    delta_create = _module.delta_create
    fanout = _module.fanout
    flush = _module.flush
    release_handshake = _module.release_handshake
    take_overflowed = _module.take_overflowed
    total_drops = _module.total_drops
    DEFAULT_MAX_PENDING = _module.DEFAULT_MAX_PENDING
    parse_envelope = _module.parse_envelope
    msgpack_members = _module.msgpack_members
    MSGPACK_KEY = _module.MSGPACK_KEY
    MSGPACK_FLOAT = _module.MSGPACK_FLOAT
    MSGPACK_BIN = _module.MSGPACK_BIN
    MSGPACK_EXT = _module.MSGPACK_EXT
    utf8_valid = _module.utf8_valid

__all__ = [
    "DEFAULT_MAX_PENDING",
    "IMPLEMENTATION",
    "MAX_DEPTH",
    "MAX_ID",
    "MSGPACK_BIN",
    "MSGPACK_EXT",
    "MSGPACK_FLOAT",
    "MSGPACK_KEY",
    "BadEnvelope",
    "Deflated",
    "DeltaError",
    "Envelope",
    "InvalidUTF8",
    "Sink",
    "TokenBucket",
    "build_frame",
    "build_text_frame",
    "delta_apply",
    "delta_checksum",
    "delta_create",
    "fanout",
    "flush",
    "msgpack_members",
    "parse_envelope",
    "release_handshake",
    "take_overflowed",
    "total_drops",
    "utf8_valid",
]
