"""shardws.pure.pusher.admission: /app/{key}?protocol=... admitted or refused."""

from __future__ import annotations

import pytest

from shardws.config import parse_config
from shardws.pure.pusher.admission import Admitted, Refused, admit

CONFIG = parse_config(
    """
[[pusher.apps]]
id = "1"
key = "key-one"
secret = "secret-one-0123456789"
[[pusher.apps]]
id = "2"
key = "key-two"
secret = "secret-two-0123456789"
enabled = false
""",
    "t",
).pusher


def test_what_pusher_js_sends_is_admitted() -> None:
    decision = admit("/app/key-one?protocol=7&client=js&version=8.6.0&flash=false", CONFIG)
    assert isinstance(decision, Admitted)
    assert decision.app is CONFIG.apps[0]
    assert (decision.protocol, decision.client, decision.version) == (7, "js", "8.6.0")
    bare = admit("/app/key-one?protocol=7", CONFIG)
    assert isinstance(bare, Admitted) and (bare.client, bare.version) == ("", "")


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/app/?protocol=7", 4005),
        ("/app/key-one/x?protocol=7", 4005),
        ("/apps/key-one?protocol=7", 4005),
        ("/app/nope?protocol=7", 4001),
        ("/app/key-two?protocol=7", 4003),
        ("/app/key-one", 4008),
        ("/app/key-one?protocol=", 4008),
        ("/app/key-one?protocol=seven", 4006),
        ("/app/key-one?protocol=%D9%A7", 4006),  # an Arabic-Indic seven: not ASCII digits
        ("/app/key-one?protocol=3", 4007),
        ("/app/key-one?protocol=0", 4007),
        ("/app/key-one?protocol=8", 4007),
        ("/app/key-one?protocol=0007000", 4007),
        ("/app/key-one?protocol=" + "9" * 5000, 4007),  # past int()'s digit limit
    ],
)
def test_refusals_carry_pushers_codes(target: str, code: int) -> None:
    decision = admit(target, CONFIG)
    assert isinstance(decision, Refused) and decision.code == code, decision


@pytest.mark.parametrize("protocol", [4, 5, 6, 7])
def test_protocols_4_to_7_are_admitted_with_their_version(protocol: int) -> None:
    decision = admit(f"/app/key-one?client=Pysher&version=1.0.7&protocol={protocol}", CONFIG)
    assert isinstance(decision, Admitted) and decision.protocol == protocol
    assert (decision.client, decision.version) == ("Pysher", "1.0.7")


def test_an_unsupported_version_is_named_with_what_is_served() -> None:
    decision = admit("/app/key-one?protocol=3", CONFIG)
    assert isinstance(decision, Refused)
    assert decision.message == "Unsupported protocol version: 3 (supported: 4-7)"
    long = admit("/app/key-one?protocol=" + "1" * 40, CONFIG)
    assert isinstance(long, Refused) and long.message.endswith("1111111111... (supported: 4-7)")
