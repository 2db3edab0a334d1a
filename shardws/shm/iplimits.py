"""Connections per client IP across every worker of the host, in shared memory.

A table of one row per worker slot (``max_workers`` of them, so a reload can add
workers) by ``BUCKETS`` columns (client IPs hashed into buckets). A worker adds to and
subtracts from only its own row; the count of an IP is the sum of its column. When a
worker dies the supervisor zeroes its row (``reset_worker``), so a killed worker's
connections stop counting at once instead of locking IPs out. A worker's row is
contiguous, so slots that never ran cost no memory (the block starts as unallocated
zero pages).

Guarantees and limits:

* Each cell is written by one process only (its worker), so no lock is needed; readers
  may see a count one connection stale, which can let a burst of simultaneous
  handshakes on different workers exceed the limit by at most (workers - 1).
* IPs that hash into the same bucket share a count. With 2**18 buckets that is rare
  for the per-IP limits operators use (tens to hundreds); it errs on the strict side.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from shardws.shm.segment import SharedArray

BUCKETS = 1 << 18


def bucket(ip: str) -> int:
    """The table row of ``ip`` (stable across processes: no per-process hash seed)."""
    digest = hashlib.blake2b(ip.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % BUCKETS


class IPTable:
    """The shared per-IP connection counts (create before fork; children inherit it)."""

    def __init__(self, workers: int) -> None:
        self._shared = SharedArray((workers, BUCKETS), np.int32)
        self.workers = workers
        self.table: np.ndarray[Any, np.dtype[np.int32]] = self._shared.array

    @classmethod
    def create(cls, workers: int) -> IPTable:
        return cls(workers)

    def count(self, ip: str) -> int:
        """Connections from ``ip`` (and any IP sharing its bucket) on all workers."""
        return int(self.table[:, bucket(ip)].sum())

    def add(self, worker: int, ip: str, delta: int) -> None:
        """Change ``worker``'s count of ``ip`` by ``delta`` (+1 on accept, -1 on close)."""
        self.table[worker, bucket(ip)] += delta

    def reset_worker(self, worker: int) -> None:
        """Forget every connection of a dead worker."""
        self.table[worker] = 0

    def close(self) -> None:
        del self.table
        self._shared.close()
