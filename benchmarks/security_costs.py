"""What the security layer costs: TLS in shardws vs plain, and a command flood's effect
on another client's round trips. Each comparison runs both sides in the same run.

    python -m benchmarks.security_costs            # both; or: tls | flood

1. Fan-out, 2,000 subscribers, publisher flat out, 10 s: ``ws://`` vs ``wss://`` served
   by shardws itself (``[tls]``, self-signed certificate). With TLS every subscriber's
   copy is encrypted separately and the fan-out goes through the TLS transport, so this
   is the price of not terminating TLS at a proxy.
2. Round trips of one client, alone and while another client on the same worker floods
   commands (rate limited, closed with 4008 after 50 refusals, reconnecting at once),
   with the default limits and with a per-IP new-connection rate.

Results: ``benchmarks/results/security-*.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import picows

from benchmarks.macro import serve
from benchmarks.tlscert import self_signed
from shardws.tools.loadgen import LoadSpec, run

RESULTS = Path(__file__).parent / "results"


@contextlib.contextmanager
def shardws(
    extra: str = "", tls: bool = False, unlimited: bool = True
) -> Iterator[tuple[int, int]]:
    """A one-worker shardws server (``benchmarks.macro.serve``); yields (port, pid)."""
    with tempfile.TemporaryDirectory() as tmp:
        if tls:
            cert, key = self_signed(Path(tmp))
            extra += f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        with serve("shardws", 1, extra, unlimited) as server:
            yield int(server.url.rsplit(":", 1)[1].split("/")[0]), server.pid


def tls_cost() -> dict[str, Any]:
    results = {}
    for scheme in ("ws", "wss"):
        with shardws(tls=scheme == "wss") as (port, pid):
            report = run(
                LoadSpec(
                    scenario="fanout",
                    url=[f"{scheme}://127.0.0.1:{port}/ws"],
                    connections=2000,
                    processes=2,
                    duration=10,
                    server_pid=[pid],
                    insecure=True,
                    progress=False,
                )
            )
        results[scheme] = {
            "deliveries_per_s": report.get("deliveries_per_s"),
            "deliveries_per_cpu_s": report["server"].get("deliveries_per_cpu_s"),
            "p99_ms": report.get("latency_ms", {}).get("p99"),
            "lost": report.get("lost"),
        }
    return results


def _masked_ping_frames(count: int) -> bytes:
    # RFC 6455 5.3: client frames are masked; an all-zero mask leaves the payload as is.
    payload = b'{"op":"ping"}'
    return (bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload) * count


def _flood(url: str, seconds: float) -> None:
    """What an attacker does: one prebuilt buffer of 1,000 commands written again and
    again (cheap for the client, work for the server), reconnecting whenever closed."""

    async def main() -> None:
        burst = _masked_ping_frames(1000)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                transport, _ = await picows.ws_connect(picows.WSListener, url)
            except (OSError, picows.WSError):
                await asyncio.sleep(0.01)
                continue
            raw = transport.underlying_transport
            while time.monotonic() < end and not transport.is_disconnected:
                if raw.get_write_buffer_size() < 1 << 20:
                    raw.write(burst)
                await asyncio.sleep(0.001)
            transport.disconnect()

    asyncio.run(main())


def flood_latency() -> dict[str, Any]:
    results: dict[str, Any] = {}
    configs = (
        ("default limits", ""),
        (
            "new_connections_per_ip_per_second = 2",
            "[limits]\nnew_connections_per_ip_per_second = 2\n",
        ),
    )
    for label, extra in configs:
        with shardws(extra, unlimited=False) as (port, pid):  # the shipped limits
            url = f"ws://127.0.0.1:{port}/ws"
            spec: dict[str, Any] = {
                "scenario": "roundtrip",
                "url": [url],
                "connections": 1,
                "processes": 1,
                "duration": 8,
                "server_pid": [pid],
                "progress": False,
            }
            quiet = run(LoadSpec(**spec))
            flooder = mp.get_context("spawn").Process(target=_flood, args=(url, 12.0))
            flooder.start()
            time.sleep(1)
            flooded = run(LoadSpec(**spec))
            flooder.join(30)
        for when, report in (("alone", quiet), ("during flood", flooded)):
            results[f"{label}, {when}"] = {
                "roundtrips_per_s": report.get("roundtrips_per_s"),
                "p50_ms": report.get("latency_ms", {}).get("p50"),
                "p99_ms": report.get("latency_ms", {}).get("p99"),
                "lost": report.get("lost"),
            }
    return results


def main() -> None:
    which = sys.argv[1:] or ["tls", "flood"]
    results: dict[str, Any] = {}
    if "tls" in which:
        results["tls"] = tls_cost()
    if "flood" in which:
        results["flood"] = flood_latency()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"security-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
