"""tests/external.py's rule for a missing tool, on real test modules run by pytest in a
subprocess whose ``PATH`` has no ``node``: skipped with the reason on a developer's
machine, failed naming the tool under ``CI=true``; with the tool there, CI runs the test.

The modules: ``test_shardws_js.py`` (``pytest.mark.needs("node")``) and the ``node_ws``
peer of ``test_peers.py`` (``external.unavailable`` from a fixture).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import external
import pytest
from toolkit import timeout

REPO = Path(__file__).resolve().parents[1]
SELECTION = ["tests/test_shardws_js.py", "tests/test_peers.py", "-k", "test_shardws_js or node_ws"]


def run_pytest(path: str, ci: bool) -> tuple[int, str, dict[str, int]]:
    """Run ``SELECTION`` with ``PATH`` = ``path`` and ``CI`` set or not: the exit status,
    the output and the closing line's counts (``{"skipped": 3, ...}``)."""
    env = {name: value for name, value in os.environ.items() if name != "CI"}
    env["PATH"] = path
    if ci:
        env["CI"] = "true"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rsfE", *SELECTION],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout(180),
    )
    output = done.stdout + done.stderr
    closing = output.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", closing)}
    return done.returncode, output, counts


@pytest.fixture
def no_node(tmp_path: Path) -> str:
    """A ``PATH`` with nothing on it (the subprocess is started by its absolute path)."""
    assert shutil.which("node", path=str(tmp_path)) is None
    assert external.TOOLS["node"].package == "nodejs"
    return str(tmp_path)


def test_a_missing_tool_skips_with_the_reason_on_a_developers_machine(no_node: str) -> None:
    status, output, counts = run_pytest(no_node, ci=False)
    assert status == 0, output
    assert counts.get("skipped", 0) >= 3 and set(counts) == {"skipped", "deselected"}, output
    assert "node is not installed (apt-get install nodejs)" in output  # the mark
    assert "node_ws peer unavailable: node_ws needs 'node' on PATH" in output  # the fixture


def test_a_missing_tool_fails_under_ci_naming_it(no_node: str) -> None:
    status, output, counts = run_pytest(no_node, ci=True)
    assert status == 1, output
    # Setup failures: the mark and the fixture apply the rule before the test body runs.
    errors = counts.get("error", 0) + counts.get("errors", 0)
    assert "skipped" not in counts and errors >= 3, output
    assert "node is not installed (apt-get install nodejs) [CI=true" in output
    assert "node_ws peer unavailable: node_ws needs 'node' on PATH [CI=true" in output


@pytest.mark.needs("node", "npm")
def test_with_the_tool_there_ci_runs_the_tests() -> None:
    status, output, counts = run_pytest(os.environ["PATH"], ci=True)
    assert status == 0, output
    assert counts.get("passed", 0) >= 3 and set(counts) == {"passed", "deselected"}, output
