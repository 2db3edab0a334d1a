"""What an open event tap on a hot channel costs the server: deliveries per server
CPU-second of a fan-out with and without a tap of its channel.

* ``closed``: no tap open (the workers' hooks test an empty dict);
* ``open``: ``GET /api/tap?channel=bench`` read by ``curl`` for the whole run:
  every publication of the hot channel goes through the tap's rate cap in its worker,
  200 a second per worker are sent to the admin and written to the stream, the rest
  sampled away.

    python -m benchmarks.tap_cost --rounds 7

Rounds of the two modes, the order alternating from round to round (interleaved pairs),
each on a fresh 2-worker server: ``loadgen`` fan-out to ``--connections`` subscribers,
publisher flat out, ``--duration`` s, server CPU over the measured window from every
thread of the server's process tree (the admin's, which serves the stream, included).
Reported: the median of each mode, its spread (min..max), and the median of the
differences to ``closed`` within each round. Results: ``benchmarks/results/tap-*.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import tempfile
from collections.abc import Iterator

from benchmarks.macro import (
    against_baseline,
    fanout_cost,
    interleaved_rounds,
    save_medians,
    serve,
)

API_KEY = "tap-benchmark-key-0123456789"


@contextlib.contextmanager
def _tap(admin_url: str, channel: str) -> Iterator[dict[str, int]]:
    """Read a tap of ``channel`` while inside, by ``curl`` in a process of its own (not
    a thread of this one, which drives the load); the dict it yields is filled on the
    way out: events read, the largest "1 in N"."""
    seen = {"events": 0, "every": 1}
    url = f"{admin_url}/api/tap?channel={channel}"
    with tempfile.TemporaryFile() as output:
        reader = subprocess.Popen(
            ["curl", "-sN", "-H", f"X-API-Key: {API_KEY}", url],
            stdout=output,
        )
        try:
            yield seen
        finally:
            reader.terminate()
            reader.wait(10)
        output.seek(0)
        for line in output:
            if line.startswith(b'data: {"events"'):
                batch = json.loads(line[6:])
                seen["events"] += len(batch["events"])
                seen["every"] = max(seen["every"], batch["every"])


def one_round(args: argparse.Namespace, mode: str) -> dict[str, float]:
    with serve("shardws", 2, admin=f'api_key = "{API_KEY}"') as server:
        with contextlib.ExitStack() as taps:
            seen = taps.enter_context(_tap(server.admin_url, "bench")) if mode == "open" else None
            figures = fanout_cost(server, args.connections, args.duration)
        if seen is not None:  # the tap did see the hot channel, sampled
            assert seen["events"] >= args.duration * 50, f"the tap sent {seen['events']} events"
    if seen is not None:
        figures["tap_events"] = float(seen["events"])
        figures["tap_every"] = float(seen["every"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved pairs")
    parser.add_argument("--connections", type=int, default=500, help="fan-out subscribers")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load a round")
    args = parser.parse_args()

    def note(figures: dict[str, float]) -> str:
        if "tap_events" not in figures:
            return ""
        return f" (tap: {figures['tap_events']:,.0f} events, up to 1 in {figures['tap_every']:.0f})"

    runs = interleaved_rounds(args.rounds, ("closed", "open"), lambda m: one_round(args, m), note)
    summary, path = save_medians("tap", args, runs)
    for line in against_baseline(runs, summary, "closed"):
        print(line)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
