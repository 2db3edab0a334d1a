"""Admission under load: when a worker refuses new connections to keep serving the ones
it holds.

A worker's event loop runs late when it has more to do than its CPU share allows: a
reconnect storm (a deploy, a network blip, a load balancer failover) brings thousands of
handshakes and subscribes at once, and every held connection's pings, commands and
deliveries wait behind them. Past ``limit`` seconds of lag the worker answers new
upgrades with 503 and ``Retry-After`` instead (cheap: no connection, no subscription),
so the excess backs off and comes back later, and what it holds keeps being served.

No I/O: the worker feeds it the lag of each periodic tick and asks it at each upgrade.
"""

from __future__ import annotations


class Overload:
    """The admission decision of one worker, with hysteresis.

    * Refusing starts when a tick ran more than ``limit`` seconds late, or when the next
      tick is already overdue by more than ``limit`` at an upgrade (one long iteration of
      the loop: no tick can report it until it ends).
    * Refusing stops at the first tick that runs less than ``limit / 2`` late, so the
      state does not flap around the threshold.
    * ``limit`` 0 turns admission control off: nothing is refused for lag.
    """

    __slots__ = ("lag", "limit", "refusing")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.refusing = False
        self.lag = 0.0  # of the last tick, seconds

    def observe(self, lag: float) -> None:
        """A periodic tick ran ``lag`` seconds after it was due."""
        self.lag = lag
        if self.limit <= 0:
            return
        if lag > self.limit:
            self.refusing = True
        elif lag < self.limit / 2:
            self.refusing = False

    def refuses(self, overdue: float) -> bool:
        """Whether a new connection is refused now, the next tick being ``overdue``
        seconds past its due time (negative while it is not due yet)."""
        return self.limit > 0 and (self.refusing or overdue > self.limit)
