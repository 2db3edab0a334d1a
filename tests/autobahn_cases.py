"""Run the Autobahn WebSocket conformance cases against a real ``shardws serve``.

The cases are Autobahn TestSuite's own case files, driven from Python by ``kosoku``
(its fuzzing client, in Rust): every case opens its own connection to the server's
diagnostics echo endpoint (``[diagnostics] echo_path``), which goes through the same
frame handling, limits and close logic as the native endpoint.

A case "passes" when both its verdicts are acceptable (OK, NON-STRICT or
INFORMATIONAL). Every case that does not pass is a failure unless it is in
``EXCLUDED`` with the reason written next to it; only picows's own behaviour may put a
case there (``docs/conformance.md``).

Used by ``tests/test_conformance.py`` (CI: ``CI_CASES``) and, for every section, by
``make conformance``::

    python tests/autobahn_cases.py                 # all sections, compression on
    python tests/autobahn_cases.py -c '1.*' -c '7.*' --report reports/autobahn
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kosoku import FailureError, run_fuzzingclient
from serverproc import ServerProcess

ECHO_PATH = "/autobahn"

#: Cases allowed not to pass, each because of picows, never because of shardws.
EXCLUDED: dict[str, str] = {
    "7.1.2": (
        "picows parses one frame ahead: the client's second Close (sent right behind the "
        "first, in the same TCP segment) makes picows send 1002 'Received CLOSE for the "
        "second time' before it hands the first Close to the server, so the answer to "
        "that first Close is 1002 instead of 1000. The server never sees the frames in "
        "time to answer differently."
    ),
}

#: What CI runs (tests/test_conformance.py): every section. ``make conformance`` runs
#: the same set and also writes the HTML/JSON reports.
CI_CASES: tuple[str, ...] = ("*",)

#: Sections 9, 12 and 13 send up to 16 MiB messages; the echo must accept them.
SERVER_SETTINGS = """
max_message_size = 67108864
max_pending_bytes = 134217728
"""

EXTRA_SETTINGS = f"""
[diagnostics]
echo_path = "{ECHO_PATH}"

[compression]
enabled = true
threshold = 0

[limits]
new_connections_per_ip_per_second = 0.0
connections_per_ip = 0
"""


@dataclass
class Outcome:
    """The result of one run: every case's result and the cases that fail CI."""

    results: list[Any]
    failures: list[Any]
    excluded: list[Any]
    seconds: float

    def by_section(self) -> dict[str, collections.Counter[str]]:
        """Per top-level section: how many cases got each verdict."""
        sections: dict[str, collections.Counter[str]] = {}
        for result in self.results:
            section = result.case_id.split(".")[0]
            sections.setdefault(section, collections.Counter())[verdict(result)] += 1
        return dict(sorted(sections.items(), key=lambda item: int(item[0])))


def verdict(result: Any) -> str:
    """One word per case: its behaviour, or its close verdict when only that failed."""
    if result.passed:
        return str(result.behavior.value)
    if result.behavior.value in ("OK", "NON-STRICT", "INFORMATIONAL"):
        return str(result.behavior_close.value)
    return str(result.behavior.value)


def start_server(tmp_path: Path, workers: int = 2) -> ServerProcess:
    """A ``shardws serve`` with the echo endpoint and permessage-deflate on."""
    return ServerProcess(
        tmp_path, workers=workers, server=SERVER_SETTINGS, extra=EXTRA_SETTINGS
    ).start()


def echo_url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.ws_port}{ECHO_PATH}"


async def run_cases(url: str, cases: Sequence[str], concurrency: int = 2) -> Outcome:
    """Run ``cases`` (ids or globs) against ``url``; sort out what fails CI."""
    start = time.monotonic()
    try:
        results = list(await run_fuzzingclient(url, list(cases), None, concurrency=concurrency))
    except FailureError as failure:  # raised when any case did not pass; keeps them all
        results = list(failure.results)
    seconds = time.monotonic() - start
    failing = [r for r in results if not r.passed]
    return Outcome(
        results=results,
        failures=[r for r in failing if r.case_id not in EXCLUDED],
        excluded=[r for r in failing if r.case_id in EXCLUDED],
        seconds=seconds,
    )


def describe(result: Any) -> str:
    return (
        f"{result.case_id}: {result.behavior.value} / {result.behavior_close.value}: "
        f"{result.result} {result.result_close} (close code from server: "
        f"{result.remote_close_code})"
    )


def summary_table(outcome: Outcome) -> str:
    """Markdown: one row per section with the count of each verdict."""
    columns = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "WRONG CODE"]
    sections = outcome.by_section()
    seen = {v for counter in sections.values() for v in counter}
    columns += sorted(seen - set(columns))
    lines = [
        "| section | cases | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for section, counter in sections.items():
        cells = [str(counter.get(c, 0)) for c in columns]
        lines.append(f"| {section} | {sum(counter.values())} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-c", "--case", action="append", help="case id or glob (repeatable; default: all)"
    )
    parser.add_argument("-j", "--concurrency", type=int, default=2)
    parser.add_argument("--report", help="also write kosoku's HTML/JSON reports here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp))
        try:
            outcome = asyncio.run(run_cases(echo_url(server), args.case or ["*"], args.concurrency))
        finally:
            server.stop()
    print(summary_table(outcome))
    print(f"\n{len(outcome.results)} cases in {outcome.seconds:.1f} s")
    for result in outcome.excluded:
        print(f"excluded: {describe(result)}")
    if args.report:
        from kosoku._report import write_reports  # not public API; reports are optional

        write_reports(outcome.results, args.report)
        print(f"reports in {args.report}/")
    for result in outcome.failures:
        print(f"FAILED: {describe(result)}")
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    sys.exit(main())
