"""Fixtures every test module can use. The plain helpers are imported, not injected:
``toolkit`` (scaled ``timeout``, bounded ``run``, ``wait_until``/``wait_until_async``) and
``serverproc`` (``ServerProcess``, ``run_cli``). They are not here because a conftest is
not importable by name: ``benchmarks/`` has its own, and ``benchmarks/cluster.py`` imports
the test helpers outside pytest.

``server``: one ``shardws serve`` for the whole module, configured by the module's
``SERVER`` dict of ``ServerProcess`` keywords, e.g.::

    SERVER = {"workers": 2, "extra": "[compression]\\nenabled = true\\n"}

    def test_something(server: ServerProcess) -> None: ...

A test that needs a server of its own writes ``with ServerProcess(tmp_path, ...).start() as proc:``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serverproc import ServerProcess


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The module's server, started once with the module's ``SERVER`` settings."""
    settings = getattr(request.module, "SERVER", {})
    directory = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    with ServerProcess(directory, **settings).start() as proc:
        yield proc
