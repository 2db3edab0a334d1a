"""tests/nodepackages.py: a folder's npm packages installed from its lock file once, by
whichever of several processes gets there first, and never again while the lock file
is unchanged. Real ``npm ci`` of a copy of ``tests/js`` (the registry, or npm's cache)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nodepackages import STAMP, installed
from toolkit import timeout

TESTS = Path(__file__).resolve().parent

# One process's install, as a test session's first use does it; prints the folder.
INSTALL = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from pathlib import Path
from nodepackages import install
print(install(Path(sys.argv[1])))
"""


def install_in_processes(
    folder: Path, count: int, path: str
) -> list[subprocess.CompletedProcess[str]]:
    """``count`` processes calling ``install(folder)`` at once, with ``PATH`` = ``path``."""
    env = {**os.environ, "PATH": path}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", INSTALL, str(folder)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout(300))
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


@pytest.mark.needs("npm")
def test_processes_installing_together_install_once_then_need_no_npm(tmp_path: Path) -> None:
    folder = (tmp_path / "js").resolve()  # as install() names it
    folder.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy(TESTS / "js" / name, folder / name)
    assert not installed(folder)

    results = install_in_processes(folder, 3, os.environ["PATH"])
    for result in results:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(folder / "node_modules")
    ran = [r for r in results if f"nodepackages: npm ci in {folder}" in r.stderr]
    assert len(ran) == 1, [r.stderr for r in results]
    assert installed(folder)
    assert (folder / "node_modules" / "pusher-js" / "package.json").is_file()
    assert not (folder / "node_modules" / f"{STAMP}.new").exists()

    # Installed: a later first use needs no npm (none on this PATH) and changes nothing.
    stamp = (folder / "node_modules" / STAMP).stat().st_mtime_ns
    no_npm = str(tmp_path / "empty")  # a PATH with nothing on it
    (tmp_path / "empty").mkdir()
    (later,) = install_in_processes(folder, 1, no_npm)
    assert later.returncode == 0, later.stderr
    assert (folder / "node_modules" / STAMP).stat().st_mtime_ns == stamp

    # A changed lock file is not taken for installed: it installs again (here: no npm).
    lock = folder / "package-lock.json"
    lock.write_text(lock.read_text() + "\n")
    assert not installed(folder)
    (again,) = install_in_processes(folder, 1, no_npm)
    assert again.returncode == 1 and "npm is not installed (apt-get install npm)" in again.stderr
