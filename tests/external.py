"""The programs outside Python that some tests need, and the one rule for a missing one.

The rule: a test whose tool is missing is **skipped with the reason** on a developer's
machine and **fails** under CI (the environment variable ``CI`` is ``true``, as CI
services and ``.ci/run`` set it), so that CI can never pass by skipping. The reason
names the tool and the Debian package that brings it.

A test states what it needs in one of two ways, both ending in :func:`require`:

* ``@pytest.mark.needs("netns")`` (or ``pytestmark = pytest.mark.needs("node")`` for a
  whole module): ``conftest.py`` applies the rule before any fixture is set up;
* ``path = external.require("chromium")`` in a fixture or helper that runs the program.

Other things a test cannot get that are not a bug of shardws (``npm ci`` failing, say)
go through :func:`unavailable`, the same rule with the caller's reason.

Chromium runs as root only with ``--no-sandbox``: :data:`CHROMIUM_ARGS` passes it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import NoReturn

import pytest
from netns import netns_unavailable

__all__ = ["CHROMIUM_ARGS", "TOOLS", "Tool", "require", "unavailable", "under_ci"]


@dataclass(frozen=True)
class Tool:
    """A program some tests run: its command name, the Debian package that brings it, and
    where else to look than ``PATH`` (``/usr/sbin`` is not on a user's ``PATH``)."""

    command: str
    package: str
    also_at: tuple[str, ...] = ()

    def find(self) -> str | None:
        """The program's path, or None when it is not installed."""
        found = shutil.which(self.command)
        if found is not None:
            return found
        return next((path for path in self.also_at if os.access(path, os.X_OK)), None)


#: Every external program the suite uses, by the name tests give :func:`require`. The
#: README's list of tools is this table; ``.ci/run`` installs each package. ``netns``
#: (network namespaces: root and iproute2's ``ip``) is checked by ``netns.py`` instead.
#: A new tool is an entry here, in ``.ci/run``'s list and in the README's table.
TOOLS = {
    "node": Tool("node", "nodejs"),
    "npm": Tool("npm", "npm"),
    "chromium": Tool("chromium", "chromium"),
    "nginx": Tool("nginx", "nginx", ("/usr/sbin/nginx",)),
    "haproxy": Tool("haproxy", "haproxy", ("/usr/sbin/haproxy",)),
    "systemd-analyze": Tool("systemd-analyze", "systemd"),
    "redis-server": Tool("redis-server", "redis-server"),
    "redis-sentinel": Tool("redis-sentinel", "redis-sentinel"),
    "redis-cli": Tool("redis-cli", "redis-tools"),
}

# Chromium for the browser tests: as root (a container, CI) it starts only with
# --no-sandbox; the rest keeps it off the network (the machine has none) and quick to
# start. Playwright adds --headless and a fresh temporary profile (--user-data-dir) itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def under_ci() -> bool:
    """Whether this run is CI's: ``CI`` is ``true`` (or ``1``, ``yes``)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip the calling test with ``reason``, or fail it with ``reason`` under CI."""
    if under_ci():
        pytest.fail(
            f"{reason} [CI=true: a missing tool fails the test, never skips it]", pytrace=False
        )
    pytest.skip(reason)


def require(name: str) -> str:
    """The path of tool ``name`` (a key of :data:`TOOLS`), or ``""`` for ``netns`` once
    network namespaces work; when it is missing, :func:`unavailable` with a reason that
    names it and its Debian package."""
    if name == "netns":
        reason = netns_unavailable()
        if reason:
            unavailable(f"network namespaces: {reason}")
        return ""
    tool = TOOLS[name]
    path = tool.find()
    if path is None:
        unavailable(f"{tool.command} is not installed (apt-get install {tool.package})")
    return path
