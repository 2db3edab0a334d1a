"""A numpy array in shared memory, created by the supervisor before it forks.

Children inherit the mapping (nobody opens the block by name), so the array is the same
memory in every process. Only the creating process removes the block's name at close;
a forked child calls ``disown`` first so its own ``close`` never does.
"""

from __future__ import annotations

from multiprocessing import shared_memory
from typing import Any

import numpy as np


class SharedArray:
    """A zero-filled array of ``shape`` and ``dtype`` backed by a new shared block."""

    def __init__(self, shape: tuple[int, ...], dtype: type[np.generic]) -> None:
        size = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        self._shm = shared_memory.SharedMemory(create=True, size=size)
        self._owner = True
        # A new block is a fresh tmpfs file: it reads as zeros already. Not writing the
        # zeros keeps untouched pages unallocated, so tables sized for ``max_workers``
        # cost memory only for the workers that exist.
        self.array: np.ndarray[Any, Any] = np.ndarray(shape, dtype=dtype, buffer=self._shm.buf)

    def disown(self) -> None:
        """Called in a forked child: its ``close`` must not remove the block's name."""
        self._owner = False

    def close(self) -> None:
        """Drop this process's mapping; the creator also removes the block's name."""
        del self.array
        self._shm.close()
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
