"""Every benchmark script imports and answers ``--help``: a script that a change to a
shared helper broke is found here, not when someone next runs it. The fleet benchmark,
which needs root, also runs end to end on 3 hosts (a smoke test, per engine)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from netns import NETNS_DIR

from benchmarks import fleet

ROOT = Path(__file__).resolve().parent.parent
# The scripts (their own argument parser), not the modules they share.
SCRIPTS = sorted(
    p.stem
    for p in (ROOT / "benchmarks").glob("*.py")
    if not p.stem.startswith("test_") and "argparse.ArgumentParser(" in p.read_text()
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_answers_help(script: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout


def test_every_benchmark_option_has_a_help_text() -> None:
    """Every ``add_argument`` of every benchmark script says what the option is."""
    silent = [
        f"{path.name}:{node.lineno} {ast.unparse(node.args[0]) if node.args else ''}"
        for path in sorted((ROOT / "benchmarks").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_argument"
        and not any(keyword.arg == "help" for keyword in node.keywords)
    ]
    assert silent == []


@pytest.mark.needs("netns")
@pytest.mark.parametrize("variant", [engine.name for engine in fleet.ENGINES])
def test_fleet_benchmark_runs_every_phase_on_three_hosts(variant: str, tmp_path: Path) -> None:
    """``benchmarks/fleet.py`` end to end on 3 hosts, tiny windows, one engine per run:
    every phase reports, nothing is lost, and it leaves no namespace behind."""
    results = tmp_path / "fleet.json"
    command = [sys.executable, "-m", "benchmarks.fleet", "--hosts", "3", "--engines", variant]
    command += ["--idle", "0.5", "--window", "0.5", "--subscribes", "2", "--settle", "0"]
    command += ["--after-kill", "0.3"]
    command += ["--heartbeat-interval", "0.2", "--peer-timeout", "1.0", "--json", str(results)]
    namespaces = set(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else set()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(results.read_text())["engines"][variant]
    assert set(report) >= {"idle", "subscribe_reply_ms", "load", "host_killed", "host_joined"}
    assert report["load"]["deliveries"]["cross_host"] > 0
    assert report["load"]["lost"] == 0 and report["load"]["duplicates"] == 0
    assert report["host_killed"]["seen_gone_by_all_s"] > 0
    assert report["host_joined"]["seen_by_all_after_start_s"] > 0
    assert not {n for n in os.listdir(NETNS_DIR) if n.startswith("sws")} - namespaces
