"""What every test module shares: scaled timeouts, a bounded ``run``, polling waits.

Every timeout here is multiplied by ``SHARDWS_TEST_TIMEOUT_SCALE`` (default 1): set it
above 1 on a slow or busy machine instead of editing numbers in tests.

This is a plain module, not ``conftest.py``, so that helpers outside pytest can import
it (``clusterproc`` from ``benchmarks/cluster.py``); ``conftest.py`` holds the fixtures.
A wait that has a condition to poll uses ``wait_until``/``wait_until_async``; a fixed
sleep is left only where a test means "nothing happens for X s".
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from shardws import config

SCALE = float(os.environ.get("SHARDWS_TEST_TIMEOUT_SCALE", "1"))

#: The engines a test can run against (``[cluster] engine``; docs/architecture.md, "The
#: engine"). A test that takes the ``engine`` fixture (``conftest.py``), or every test of a
#: module that sets ``ENGINES = toolkit.ENGINES``, runs once per engine and passes it to
#: ``ServerProcess(..., engine=engine)`` or ``loopback_cluster(..., engine=engine)``: a new
#: engine is one more entry in ``config.ENGINES``, not copies of the tests.
ENGINES = config.ENGINES
DEFAULT_ENGINE = ENGINES[0]

T = TypeVar("T")

Message = str | Callable[[], str]


def timeout(seconds: float) -> float:
    """A test timeout scaled for slow machines."""
    return seconds * SCALE


def run(coro: Coroutine[Any, Any, T], limit: float = 60) -> T:
    """Run ``coro`` on a fresh event loop to completion, failing after ``limit`` s (scaled)."""
    return asyncio.run(asyncio.wait_for(coro, timeout(limit)))


class _Poll(Generic[T]):
    """One check of ``predicate`` per call: its value if true, None if not yet, and
    AssertionError with ``message`` once ``timeout`` s (scaled) have passed."""

    def __init__(self, predicate: Callable[[], T | None], timeout: float, message: Message):
        self.predicate = predicate
        self.message = message
        self.deadline = time.monotonic() + timeout * SCALE

    def __call__(self) -> T | None:
        value = self.predicate()
        if value:
            return value
        if time.monotonic() > self.deadline:
            raise AssertionError(self.message() if callable(self.message) else self.message)
        return None


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: Message = "condition not reached in time",
) -> T:
    """Poll ``predicate`` every ``interval`` s until it returns something true, and return
    that; fail with ``message`` (a string, or a function called only then, for logs) when
    ``timeout`` s (scaled) pass first."""
    poll = _Poll(predicate, timeout, message)
    while (value := poll()) is None:
        time.sleep(interval)
    return value


async def wait_until_async(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: Message = "condition not reached in time",
) -> T:
    """``wait_until`` for a coroutine: the event loop runs between polls. ``predicate``
    itself is a plain function (it may read state the loop's tasks update)."""
    poll = _Poll(predicate, timeout, message)
    while (value := poll()) is None:
        await asyncio.sleep(interval)
    return value
