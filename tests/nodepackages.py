"""Install a folder's npm packages from its lock file, once, on first use.

``install(folder)`` makes ``folder/node_modules`` hold exactly what
``folder/package-lock.json`` pins, running ``npm ci`` only when it does not yet:

* **Once.** A successful install leaves a stamp in ``node_modules`` naming the lock
  file's SHA-256; while the stamp matches, nothing runs (no npm, no network). The stamp
  is written last, by a rename, so an interrupted install is never taken for a done one;
  a changed lock file installs again. The process that runs ``npm ci`` says so on stderr.
* **Safe when several processes get there together** (two pytest runs, a test and a
  benchmark): ``npm ci`` deletes ``node_modules`` first, so installs of one folder are
  serialized by an exclusive ``flock`` on a lock file, and whoever waited finds the stamp
  and returns. The wait is bounded by the holder's: its ``npm ci`` has a timeout.

Used by ``tests/pusherjs.py`` (``tests/js``: pusher-js, Laravel Echo) and by
``benchmarks/peers/launch.py`` (``benchmarks/peers``: the ``ws`` peer).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["STAMP", "NpmUnavailable", "install", "installed"]

#: The file in ``node_modules`` that records which lock file it was installed from.
STAMP = ".installed-from-lock"


class NpmUnavailable(RuntimeError):
    """The packages cannot be installed here (no npm, no registry, a failed ``npm ci``);
    the message says why. Not a bug in what uses them."""


def _lock_digest(folder: Path) -> str:
    return hashlib.sha256((folder / "package-lock.json").read_bytes()).hexdigest()


def installed(folder: Path) -> bool:
    """Whether ``folder/node_modules`` was installed from the current lock file."""
    try:
        stamp = (folder / "node_modules" / STAMP).read_text().strip()
    except OSError:
        return False
    return stamp == _lock_digest(folder)


def install(folder: Path, timeout: float = 300) -> Path:
    """``folder/node_modules``, installed from ``folder/package-lock.json`` by ``npm ci``
    unless it already was (see the module docstring). Raises :class:`NpmUnavailable`
    when npm is missing, fails or takes over ``timeout`` seconds."""
    folder = folder.resolve()
    modules = folder / "node_modules"
    if installed(folder):
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise NpmUnavailable("npm is not installed (apt-get install npm)")
    # One lock per folder, outside it (the folder may be read-only to others' checkouts).
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"shardws-npm-{key}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if installed(folder):  # installed by whoever held the lock before us
            return modules
        command = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        # Said on stderr: the first use of a folder's packages may take a while (the
        # registry), and a test can tell the one process that installed.
        print(f"nodepackages: npm ci in {folder}", file=sys.stderr, flush=True)
        try:
            result = subprocess.run(
                command, cwd=folder, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise NpmUnavailable(f"npm ci in {folder} took over {timeout:g} s") from None
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip()[-2000:]
            raise NpmUnavailable(f"npm ci in {folder} failed ({result.returncode}): {tail}")
        partial = modules / f"{STAMP}.new"
        partial.write_text(_lock_digest(folder) + "\n")
        os.replace(partial, modules / STAMP)
    return modules
