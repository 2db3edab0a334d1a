"""Every shared-memory table of one host, created together by the supervisor.

The supervisor calls :meth:`SharedTables.create` before it forks anything and hands the
same object to each process it forks (workers, admin, bridge); children inherit the
mappings. Nothing else creates a table, and no process opens one by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardws.shm.iplimits import IPTable
from shardws.shm.scoreboard import Scoreboard
from shardws.shm.view import ViewTable


@dataclass(frozen=True)
class SharedTables:
    """The scoreboard (``board``), the cluster view (``view``) and the per-IP connection
    counts (``ips``) of one host."""

    board: Scoreboard
    view: ViewTable
    ips: IPTable

    @classmethod
    def create(cls, capacity: int) -> SharedTables:
        """New zeroed tables for ``capacity`` worker slots (plus the admin's and the
        bridge's scoreboard rows)."""
        return cls(Scoreboard.create(capacity), ViewTable(), IPTable.create(capacity))

    def close(self) -> None:
        """Drop this process's mappings of every table."""
        self.board.close()
        self.view.close()
        self.ips.close()
