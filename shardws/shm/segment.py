"""A numpy array in shared memory, created by the supervisor before it forks.

Children inherit the mapping (nobody opens the block by name), so the array is the same
memory in every process. The block's name is removed as soon as it is created: the
mapping lives on in the creator and in every process it forks, and the memory goes back
to the kernel when the last of them exits, however they exit. So no ``/dev/shm`` entry
outlives a server, not even one whose supervisor was SIGKILLed.
"""

from __future__ import annotations

from multiprocessing import shared_memory
from typing import Any

import numpy as np


class SharedArray:
    """A zero-filled array of ``shape`` and ``dtype`` backed by a new, already unnamed,
    shared block (shared with the processes forked after this call)."""

    def __init__(self, shape: tuple[int, ...], dtype: type[np.generic]) -> None:
        size = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        self._shm = shared_memory.SharedMemory(create=True, size=size)
        # Unnamed from here on: a crash of every process cannot leave the block behind.
        self._shm.unlink()
        # A new block is a fresh tmpfs file: it reads as zeros already. Not writing the
        # zeros keeps untouched pages unallocated, so tables sized for ``max_workers``
        # cost memory only for the workers that exist.
        self.array: np.ndarray[Any, Any] = np.ndarray(shape, dtype=dtype, buffer=self._shm.buf)

    def close(self) -> None:
        """Drop this process's mapping (the memory stays while another process maps it)."""
        del self.array
        self._shm.close()
