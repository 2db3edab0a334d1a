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

``engine``: the engine (``[cluster] engine``) a test runs against, once per engine of
``toolkit.ENGINES``, for a test that takes it and for every test of a module that sets
``ENGINES`` (a tuple of engine names: the module's ``server`` is started once per
engine)::

    def test_something(tmp_path: Path, engine: str) -> None:
        a, b = loopback_cluster(tmp_path, engine=engine)

``@pytest.mark.engines("mesh")`` limits a test to those engines (what the others do not
serve yet). The hub's runs share one ``redis-server`` of the session (``redis_server``).
The engine run ``"redis-cluster"`` (``redisproc.REDIS_CLUSTER``; not a config value: the
hub, ``engine = "redis"``, with ``[cluster.redis] cluster_nodes``) is added where a
module or mark names it, and shares the session's Redis Cluster (``redis_cluster``).

``browser``: a headless Chromium (Playwright) for the test, closed after it.

``@pytest.mark.needs("node", ...)``: the test runs only where those external tools are
(``external.TOOLS``, and ``"netns"``); a missing one skips it, or fails it under CI
(``external.require``), before any of its fixtures is set up.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import external
import pytest
from playwright import sync_api
from redisproc import REDIS_CLUSTER, EngineRun, RedisClusterServer, RedisServer
from serverproc import ServerProcess
from toolkit import DEFAULT_ENGINE, ENGINES


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs(*tools): external tools the test runs (tests/external.py): a missing one"
        " skips the test, or fails it under CI=true",
    )
    config.addinivalue_line(
        "markers",
        "engines(*names): run the test on these engines only (what the others do not serve yet)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Apply the missing-tool rule of every ``needs`` mark before the fixtures run."""
    for mark in item.iter_markers("needs"):
        for tool in mark.args:
            external.require(tool)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test once per engine: one that takes ``engine`` itself, and every test of
    a module with ``ENGINES`` that uses the ``engine`` fixture (its ``server`` does)."""
    if "engine" not in metafunc.fixturenames:
        return
    engines = getattr(metafunc.module, "ENGINES", None)
    only = metafunc.definition.get_closest_marker("engines")
    if only is not None:  # what only some engines serve yet
        engines = tuple(only.args)
    asks = "engine" in inspect.signature(metafunc.function).parameters
    if engines is not None or asks:
        metafunc.parametrize("engine", engines or ENGINES, indirect=True, scope="module")


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest) -> str:
    """The engine this run of the test is for (the default one unless parametrized); for
    the Redis hub, an ``EngineRun`` carrying the session's Redis."""
    name = str(getattr(request, "param", DEFAULT_ENGINE))
    if name == "redis":
        return EngineRun(name, request.getfixturevalue("redis_server").address)
    if name == REDIS_CLUSTER:  # the hub, through the session's Redis Cluster
        seeds = request.getfixturevalue("redis_cluster").seeds
        return EngineRun("redis", cluster_nodes=tuple(seeds))
    return name


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real ``redis-server`` on a free port for the session's hub runs (each
    cluster has its own key prefix: ``serverproc.with_engine``)."""
    with RedisServer(tmp_path_factory.mktemp("redis")).start() as redis:
        yield redis


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """One real Redis Cluster (three masters, a replica each) for the session's
    ``"redis-cluster"`` runs."""
    with RedisClusterServer(tmp_path_factory.mktemp("redis-cluster")).start() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, engine: str
) -> Iterator[ServerProcess]:
    """The module's server, started once (once per engine in a module with ``ENGINES``)
    with the module's ``SERVER`` settings."""
    settings = getattr(request.module, "SERVER", {})
    directory = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    with ServerProcess(directory, engine=engine, **settings).start() as proc:
        yield proc


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium (the system's, driven by Playwright: no browser download)."""
    chromium = external.require("chromium")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, args=external.CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()
