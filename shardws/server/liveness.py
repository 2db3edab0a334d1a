"""Proof of progress: tells a process whose event loop runs late because it is busy from
one that is stuck, for the supervisor's liveness check.

The event loop stamps ``HEARTBEAT_NS`` each time its periodic tick runs. Under overload
one iteration of the loop can last longer than ``heartbeat_timeout`` (uvloop handles every
ready socket of an iteration before its timers, and tens of thousands of handshakes or
frames take seconds): the tick is late, yet the process serves. Killing it then drops
every connection it holds onto the others, which fall behind in turn (a host that
destroys itself under a reconnect storm). ``ProgressWatch`` runs a thread that wakes
every ``interval`` seconds, reads a signature of the work done (a tuple of counters the
loop increments as it works) and stamps ``PROGRESS_NS`` when it changed.

Guarantees:

* While the loop does work that moves the counters, ``PROGRESS_NS`` is at most
  ``interval`` plus one GIL switch interval old, however late the loop's timers run.
* A stopped process (SIGSTOP, a paused VM) stamps nothing: none of its threads run.
* A loop stuck in Python code that does no counted work (a busy loop of its own) stamps
  nothing, since the counters do not move; one stuck in C code holding the GIL stamps
  nothing either, since the thread cannot run. Both are killed by the supervisor once
  ``heartbeat_timeout`` passes, as before.
* The thread only reads the counters (under the GIL, each read is atomic) and writes one
  column of the process's own scoreboard row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from shardws.shm.scoreboard import Column


class ProgressWatch:
    """A daemon thread stamping ``row[PROGRESS_NS]`` while ``signature()`` changes."""

    def __init__(
        self,
        row: np.ndarray[Any, np.dtype[np.int64]],
        signature: Callable[[], Hashable],
        interval: float,
    ) -> None:
        self._row = row
        self._signature = signature
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shardws-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop stamping (returns at once; the thread ends within ``interval``)."""
        self._stop.set()

    def _run(self) -> None:
        last = self._signature()
        while not self._stop.wait(self._interval):
            now = self._signature()
            if now != last:
                last = now
                self._row[Column.PROGRESS_NS] = time.monotonic_ns()
