"""shardws.js's subscription logic under Node (no browser, no server): the same cases as
``test_client.py`` checks for the Python client. Needs ``node`` (``tests/external.py``:
skipped when it is missing, failed under CI)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from external import require
from toolkit import timeout

import shardws

SCRIPT = Path(shardws.__file__).parent / "static" / "shardws.js"

pytestmark = pytest.mark.needs("node")

#: A Subscription whose application keeps what it saw: ``seen`` ([epoch, offset] of each
#: publication) and ``gaps`` ([epoch, offset, reason]); ``take`` feeds it a publication.
PREAMBLE = """
require(process.argv[1]);
const seen = [], gaps = [];
const sub = new globalThis.ShardWS.Subscription(null, "chat:a", {
  onPublication: (p) => seen.push([p.epoch, p.offset]),
  onGap: (g) => gaps.push([g.epoch, g.offset, g.reason]),
});
const take = (epoch, offset) => sub._takePub({type: "pub", epoch, offset, data: offset});
"""

#: The numbering goes to another epoch and comes back to the first.
COMES_BACK = """
const results = [];
for (const n of [1, 2, 3, 4]) results.push(take("kept", n));
results.push(take("other", 1));
for (const n of [1, 2, 3, 4, 5]) results.push(take("kept", n));
results.push(take("kept", 7));
console.log(JSON.stringify({seen, gaps, results, at: [sub.epoch, sub.offset]}));
"""

#: A resubscribe answered ``recovered: false`` with a position already delivered.
BEHIND = """
take("old", 1);
take("new", 26);
const reply = {ok: true, epoch: "new", offset: 25, recovered: false};
sub._positioned({...reply, reason: "epoch_changed"}, true);
take("new", 26);
take("new", 27);
console.log(JSON.stringify({seen, gaps}));
"""


def _node(script: str) -> dict[str, Any]:
    done = subprocess.run(
        [require("node"), "-e", PREAMBLE + script, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_a_failed_recovery_behind_what_was_delivered_reports_no_second_gap() -> None:
    out = _node(BEHIND)
    assert out["seen"] == [["old", 1], ["new", 26], ["new", 27]]
    assert out["gaps"] == [["new", 25, "epoch_changed"]]


def test_a_numbering_that_comes_back_to_an_epoch_is_not_delivered_twice() -> None:
    out = _node(COMES_BACK)
    assert out["seen"] == [
        ["kept", 1],
        ["kept", 2],
        ["kept", 3],
        ["kept", 4],
        ["other", 1],
        ["kept", 5],
    ]
    assert out["gaps"] == [["other", 0, "epoch_changed"]]
    assert out["results"] == [True] * 10 + [False]  # kept:7 after 5: reconnect and recover
    assert out["at"] == ["kept", 5]
