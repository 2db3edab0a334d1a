"""Whether a supervised process is alive, late but working, or stuck: the supervisor's
verdict from what the process stamped and what the kernel says of it.

Three signs, from the most direct to the least:

* the **heartbeat**, stamped by the process's event loop each time its timer runs;
* its **progress**, stamped by a thread of the process while its work counters move,
  and the **look**, stamped by that thread each time it runs at all
  (``server.progress.ProgressWatch``; workers only);
* the **CPU time** the kernel counted for it, which moves even while one C call holds
  the GIL for seconds (a garbage collection of a large heap on a starved host), when
  neither the loop nor the thread can run.

A process is stuck, and killed, when none of them says otherwise for ``timeout``:

* its thread runs (a fresh look) but nothing moved: a loop spinning in Python code
  that does no work;
* nothing ran and it used no CPU: stopped (SIGSTOP, a paused VM), blocked on a lock or
  in the kernel;
* it burned CPU without a stamp for ``BURN_CAP`` timeouts: spinning in C.

No I/O: the supervisor reads the stamps and ``/proc``, this decides.
"""

from __future__ import annotations

import enum

#: A process that uses CPU without any stamp is given this many timeouts (a long C call
#: holding the GIL on a starved host) before it counts as spinning in C.
BURN_CAP = 6


class Verdict(enum.Enum):
    ALIVE = "alive"  # its loop is on time
    WORKING = "working"  # its loop is late, its work counters move
    BUSY = "busy"  # no stamp, but it used CPU: one long call holds its loop and thread
    SPINNING = "spinning"  # its thread runs, nothing moves: a loop that does no work
    STOPPED = "stopped"  # nothing ran and it used no CPU
    BURNING = "burning"  # CPU and no stamp for BURN_CAP timeouts

    @property
    def stuck(self) -> bool:
        return self in (Verdict.SPINNING, Verdict.STOPPED, Verdict.BURNING)


def verdict(
    heartbeat_age: float,
    progress_age: float,
    look_age: float,
    cpu_used: float | None,
    timeout: float,
) -> Verdict:
    """The verdict on a process whose signs are these many seconds old (``inf`` for a
    sign it never gave), ``cpu_used`` the CPU seconds it used over the last window of
    at least half a ``timeout`` (None when not measured yet: then it is given time)."""
    if heartbeat_age <= timeout:
        return Verdict.ALIVE
    if progress_age <= timeout:
        return Verdict.WORKING
    if look_age <= timeout / 2:
        return Verdict.SPINNING
    if cpu_used is None:
        return Verdict.BUSY
    if cpu_used <= 0:
        return Verdict.STOPPED
    if min(heartbeat_age, progress_age) > BURN_CAP * timeout:
        return Verdict.BURNING
    return Verdict.BUSY
