"""The hot-path primitives, from the Cython extension when it is built.

``IMPLEMENTATION`` says which one was loaded: ``"cython"`` (``shardws._core``) or
``"python"`` (``shardws._core_ref``, the slow reference, used when the extension is not
built or when ``SHARDWS_PURE_PYTHON=1``). Both have the same API and behaviour; the
server should log ``IMPLEMENTATION`` at startup, since the reference is far slower.
"""

from __future__ import annotations

import os
from typing import Literal

IMPLEMENTATION: Literal["cython", "python"]

try:
    if os.environ.get("SHARDWS_PURE_PYTHON") == "1":
        raise ImportError("SHARDWS_PURE_PYTHON=1")
    from shardws._core import (
        MAX_DEPTH,
        MAX_ID,
        BadEnvelope,
        Envelope,
        InvalidUTF8,
        Sink,
        build_text_frame,
        fanout,
        parse_envelope,
    )

    IMPLEMENTATION = "cython"
except ImportError:
    # Same API; mypy checks callers against the extension's stub.
    from shardws._core_ref import (  # type: ignore[assignment]
        MAX_DEPTH,
        MAX_ID,
        BadEnvelope,
        Envelope,
        InvalidUTF8,
        Sink,
        build_text_frame,
        fanout,
        parse_envelope,
    )

    IMPLEMENTATION = "python"

__all__ = [
    "IMPLEMENTATION",
    "MAX_DEPTH",
    "MAX_ID",
    "BadEnvelope",
    "Envelope",
    "InvalidUTF8",
    "Sink",
    "build_text_frame",
    "fanout",
    "parse_envelope",
]
