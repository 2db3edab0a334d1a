"""Every benchmark script imports and answers ``--help``: a script that a change to a
shared helper broke is found here, not when someone next runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
