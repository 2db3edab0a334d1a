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
        ("/app/key-one?protocol=6", 4007),
        ("/app/key-one?protocol=8", 4007),
    ],
)
def test_refusals_carry_pushers_codes(target: str, code: int) -> None:
    decision = admit(target, CONFIG)
    assert isinstance(decision, Refused) and decision.code == code, decision
