"""Fossil delta subscriptions against full publications on a real server: bytes on the
wire per delivery and deliveries per server CPU-second, for the dashboard state of issue
32 with the ``value`` of 1-3 records changed per update (issue 33), in the same run.

    python -m benchmarks.deltas [--subscribers 200] [--publications 1000] [--rounds 3]

One ``shardws serve`` with one worker (``[compression] threshold = 0``; the namespace
allows ``fossil`` deltas). Per case, ``--subscribers`` raw sockets subscribe to one
channel, full or with ``"delta": "fossil"``, in JSON or MessagePack, with or without a
permessage-deflate offer; ``mixed`` puts half full and half delta JSON subscribers on one
channel (the bar's "same channel": its row splits nothing, it shows the channel's cost).
One JSON publisher sends the same ``--publications`` successive states in every case,
in batches of 50 waited for at every subscriber (see ``benchmarks.wireformats``, whose
socket helpers this reuses). ``delta/200 vs delta/50``: the worker CPU per publication
of the delta case at a quarter of the subscribers, to show the delta is made once per
publication, not per subscriber.

Results: ``benchmarks/results/deltas-*.json`` and a table on stdout.
"""

from __future__ import annotations

import copy
import json
import random
import time
from typing import Any

from benchmarks.macro import serve
from benchmarks.wireformats import (
    BATCH,
    DASHBOARD,
    DEFLATE,
    _connect,
    _cpu_seconds,
    _encode,
    _masked,
    _pump,
    _worker_pid,
    cli,
)

#: case -> (subscribers speak MessagePack, they offer deflate, share of delta subscribers)
CASES = {
    "json": (False, False, 0.0),
    "json+deflate": (False, True, 0.0),
    "msgpack": (True, False, 0.0),
    "msgpack+deflate": (True, True, 0.0),
    "delta json": (False, False, 1.0),
    "delta json+deflate": (False, True, 1.0),
    "delta msgpack": (True, False, 1.0),
    "delta msgpack+deflate": (True, True, 1.0),
    "mixed json": (False, False, 0.5),
}


def states(count: int, seed: int = 33) -> list[dict[str, Any]]:
    """``count`` successive dashboard states, each changing the value of 1-3 records."""
    rng = random.Random(seed)
    state = copy.deepcopy(DASHBOARD)
    out = []
    for _ in range(count):
        for record in rng.sample(range(40), rng.randint(1, 3)):
            state["records"][record]["value"] = round(rng.uniform(0, 1000), 2)
        out.append(copy.deepcopy(state))
    return out


def _case(
    port: int, worker: int, name: str, subscribers: int, frames: list[bytes], tag: str
) -> dict[str, Any]:
    binary, offer, share = CASES[name]
    channel = f"dash:{tag}{list(CASES).index(name)}"
    subs = [_connect(port, binary, DEFLATE if offer else "") for _ in range(subscribers)]
    _pump(subs, 1)  # the connected push
    deltas = round(subscribers * share)
    for i, reader in enumerate(subs):
        command: dict[str, Any] = {"id": 1, "op": "subscribe", "channel": channel}
        if i < deltas:
            command["delta"] = "fossil"
        reader.sock.sendall(_masked(_encode(command, binary), binary))
    _pump(subs, 2)
    publisher = _connect(port, False, "")
    _pump([publisher], 1)
    framed = [frame.replace(b"{channel}", channel.encode()) for frame in frames]
    masked = [_masked(frame, False) for frame in framed]
    before_bytes = sum(r.bytes for r in subs)
    cpu = _cpu_seconds(worker)
    for sent in range(BATCH, len(masked) + 1, BATCH):
        publisher.sock.sendall(b"".join(masked[sent - BATCH : sent]))
        _pump(subs, 2 + sent)
        _pump([publisher], 1 + sent)
    cpu = _cpu_seconds(worker) - cpu
    publications = len(masked)
    deliveries = subscribers * publications
    wire = sum(r.bytes for r in subs) - before_bytes
    for reader in [*subs, publisher]:
        reader.sock.close()
    return {
        "case": name,
        "subscribers": subscribers,
        "publications": publications,
        "bytes_per_delivery": round(wire / deliveries, 1),
        "server_cpu_s": round(cpu, 3),
        "cpu_us_per_publication": round(cpu / publications * 1e6, 1),
        "deliveries_per_cpu_s": round(deliveries / cpu) if cpu else None,
    }


def run(subscribers: int, publications: int, rounds: int) -> dict[str, Any]:
    extra = (
        "[compression]\nenabled = true\nthreshold = 0\n"
        '[namespaces.dash]\nallowed_delta_types = ["fossil"]\n'
    )
    commands = [
        json.dumps({"op": "publish", "channel": "{channel}", "data": state}, separators=(",", ":"))
        for state in states(publications)
    ]
    frames = [command.encode() for command in commands]
    small = max(subscribers // 4, 1)
    samples: dict[str, list[dict[str, Any]]] = {}
    with serve("shardws", 1, extra) as server:
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        time.sleep(0.5)
        worker = _worker_pid(server.pid)
        for round_ in range(rounds):  # interleaved: a busy moment of the host hits every case
            for name in CASES:
                row = _case(port, worker, name, subscribers, frames, f"r{round_}c")
                samples.setdefault(name, []).append(row)
            for name in ("json", "delta json"):
                row = _case(port, worker, name, small, frames, f"r{round_}s")
                samples.setdefault(f"{name}/{small}", []).append(row)
    rows = []
    for key, runs in samples.items():
        runs.sort(key=lambda r: r["server_cpu_s"])
        median = dict(runs[len(runs) // 2])
        median["key"] = key
        median["rates"] = [r["deliveries_per_cpu_s"] for r in runs]
        rows.append(median)
    by_key = {row["key"]: row for row in rows}
    for row in rows:
        full = by_key["json"] if row["subscribers"] == subscribers else by_key[f"json/{small}"]
        row["bytes_vs_json"] = round(row["bytes_per_delivery"] / full["bytes_per_delivery"], 3)
        if row["deliveries_per_cpu_s"] and full["deliveries_per_cpu_s"]:
            row["rate_vs_json"] = round(
                row["deliveries_per_cpu_s"] / full["deliveries_per_cpu_s"], 2
            )
    # Once per publication: the delta case's extra CPU per publication over the full one,
    # at both subscriber counts.
    extra_cpu = {
        str(n): round(
            by_key[delta]["cpu_us_per_publication"] - by_key[full_key]["cpu_us_per_publication"], 1
        )
        for n, delta, full_key in (
            (subscribers, "delta json", "json"),
            (small, f"delta json/{small}", f"json/{small}"),
        )
    }
    return {
        "subscribers": subscribers,
        "publications": publications,
        "rounds": rounds,
        "rows": rows,
        "delta_extra_cpu_us_per_publication": extra_cpu,
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| case | subscribers | bytes/delivery | x JSON | deliveries/CPU-s, median | x JSON |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['case']} | {row['subscribers']} | {row['bytes_per_delivery']} | "
            f"{row['bytes_vs_json']} | {row['deliveries_per_cpu_s'] or 0:,} | "
            f"{row.get('rate_vs_json', '-')} |"
        )
    extra = results["delta_extra_cpu_us_per_publication"]
    lines.append("")
    lines.append(
        "Delta JSON's extra worker CPU per publication over full JSON: "
        + ", ".join(f"{us} µs at {n} subscribers" for n, us in extra.items())
    )
    return "\n".join(lines)


def main() -> None:
    cli(__doc__ or "", "deltas", run, table, publications=1000, rounds=3)


if __name__ == "__main__":
    main()
