"""Proof of progress: what tells a process whose event loop runs late because it is busy
from one that is stuck, for the supervisor's liveness check (``pure.liveness``).

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
  no progress, since the counters do not move, but the thread's look shows it runs: the
  supervisor kills it once ``heartbeat_timeout`` passes. One call holding the GIL for
  seconds stamps nothing at all, since the thread cannot run: the supervisor then goes
  by the CPU the kernel counted for it (``pure.liveness``).
* The thread only reads the counters (under the GIL, each read is atomic) and writes two
  columns of the process's own scoreboard row: ``PROGRESS_NS``, and ``LOOK_NS`` each time
  it runs at all, which tells a loop spinning in Python (the thread runs, nothing moves)
  from one long C call holding the GIL (the thread cannot run; the supervisor then asks
  the kernel whether the process uses CPU: ``cpu_seconds``, and ``pure.liveness``).
"""

from __future__ import annotations

import os
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
        row = self._row
        while not self._stop.wait(self._interval):
            now = self._signature()
            stamp = time.monotonic_ns()
            row[Column.LOOK_NS] = stamp  # this thread runs (the GIL is not held for long)
            if now != last:
                last = now
                row[Column.PROGRESS_NS] = stamp


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the kernel counted for process ``pid``, all its threads,
    or None if it is gone or ``/proc`` cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    try:
        # After the command's closing parenthesis: state is field 3, utime 14, stime 15.
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (IndexError, ValueError):
        return None


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` in bytes (``/proc/PID/statm``, one short read),
    or None if it is gone or ``/proc`` cannot tell."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
