"""shardws.js's subscription logic under Node (no browser, no server): the same cases as
``test_client.py`` checks for the Python client. Skipped when ``node`` is missing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from toolkit import timeout

import shardws

NODE = shutil.which("node")
SCRIPT = Path(shardws.__file__).parent / "static" / "shardws.js"

pytestmark = pytest.mark.skipif(NODE is None, reason="no node on this machine")

#: Feeds publications to a Subscription and prints what the application saw.
DRIVER = """
require(process.argv[1]);
const seen = [], gaps = [];
const sub = new globalThis.ShardWS.Subscription(null, "chat:a", {
  onPublication: (p) => seen.push([p.epoch, p.offset]),
  onGap: (g) => gaps.push([g.epoch, g.reason]),
});
const take = (epoch, offset) => sub._takePub({type: "pub", epoch, offset, data: offset});
const results = [];
for (const n of [1, 2, 3, 4]) results.push(take("kept", n));
results.push(take("other", 1));
for (const n of [1, 2, 3, 4, 5]) results.push(take("kept", n));
results.push(take("kept", 7));
console.log(JSON.stringify({seen, gaps, results, at: [sub.epoch, sub.offset]}));
"""


def test_a_numbering_that_comes_back_to_an_epoch_is_not_delivered_twice() -> None:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "-e", DRIVER, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["seen"] == [
        ["kept", 1],
        ["kept", 2],
        ["kept", 3],
        ["kept", 4],
        ["other", 1],
        ["kept", 5],
    ]
    assert out["gaps"] == [["other", "epoch_changed"]]
    assert out["results"] == [True] * 10 + [False]  # kept:7 after 5: reconnect and recover
    assert out["at"] == ["kept", 5]
