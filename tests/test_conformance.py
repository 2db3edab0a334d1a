"""RFC 6455 conformance: the Autobahn cases against a real server, and the frame rules
the server enforces itself (picows leaves RSV bits and some close codes to it).

The Autobahn run fails on any case that does not pass and is not in
``autobahn_cases.EXCLUDED``; ``docs/conformance.md`` has the full report.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from autobahn_cases import (
    CI_CASES,
    EXCLUDED,
    EXTRA_SETTINGS,
    SERVER_SETTINGS,
    echo_url,
    run_cases,
    summary_table,
)
from rawws import client_frame, close_code_after, handshake
from serverproc import ServerProcess

SERVER = {"workers": 2, "server": SERVER_SETTINGS, "extra": EXTRA_SETTINGS}


@pytest.mark.timeout(900)
def test_autobahn_cases_pass(server: ServerProcess) -> None:
    outcome = asyncio.run(run_cases(echo_url(server), CI_CASES))
    print(summary_table(outcome))
    print(f"{len(outcome.results)} cases in {outcome.seconds:.1f} s")
    assert len(outcome.results) >= 500, "the case selection shrank"
    problems = "\n".join(
        f"{r.case_id}: {r.behavior.value}/{r.behavior_close.value}: {r.result} {r.result_close}"
        for r in outcome.failures
    )
    assert not outcome.failures, f"Autobahn cases failed:\n{problems}"
    for result in outcome.excluded:
        assert result.case_id in EXCLUDED


# ---------------------------------------------------------------- raw frames, native path


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([client_frame(0x81 | 0x20, b'{"op":"ping"}')], 1002),  # RSV2
        ([client_frame(0x81 | 0x10, b'{"op":"ping"}')], 1002),  # RSV3
        ([client_frame(0x81 | 0x40, b'{"op":"ping"}')], 1002),  # RSV1, nothing negotiated
        ([client_frame(0x80, b"x")], 1002),  # continuation without a message
        ([client_frame(0x01, b"{"), client_frame(0x81, b"{}")], 1002),  # new msg mid-way
        ([client_frame(0x88, struct.pack("!H", 1005))], 1002),  # code nobody may send
        ([client_frame(0x88, struct.pack("!H", 1006))], 1002),
        ([client_frame(0x88, struct.pack("!H", 5000))], 1002),
        ([client_frame(0x88, struct.pack("!H", 4321))], 4321),  # application code: echoed
        ([client_frame(0x88, b"")], 1000),
    ],
)
def test_native_endpoint_frame_rules(
    server: ServerProcess, frames: list[bytes], expected: int
) -> None:
    assert close_code_after(server.ws_port, frames)[0] == expected


def test_echo_endpoint_is_off_by_default(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=1).start() as proc:
        sock, head, _ = handshake(proc.ws_port, "/autobahn")
        sock.close()
        assert head.startswith(b"HTTP/1.1 404"), head
