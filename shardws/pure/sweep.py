"""A sweep spread over steps: each pass looks at every item once, a slice per step.

The worker's keepalive looks at every connection once per pass (``ping_interval / 4``).
Looking at them all in one go sends the pings of every connection that went quiet in
the same pass at the same instant, and their pongs come back as one wave: after a
reconnect storm, tens of thousands at once. Slicing the pass sends them evenly.

No I/O: the caller takes a slice per step and acts on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class RotatingSweep(Generic[T]):
    """Slices of the items, ``steps`` per pass.

    Guarantees: within a pass every item present at its start is in exactly one slice,
    in order; a pass has at most ``steps`` slices, each of ``ceil(n / steps)`` items but
    the last; items added during a pass wait for the next one; the pass holds its list
    until its last slice is taken, then lets it go.
    """

    __slots__ = ("_items", "_next", "_steps")

    def __init__(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self._steps = steps
        self._items: list[T] = []
        self._next = 0

    def take(self, current: Callable[[], Iterable[T]]) -> tuple[list[T], bool]:
        """The next slice, and whether it starts a new pass (``current()`` is read then,
        and only then)."""
        new_pass = self._next >= len(self._items)
        if new_pass:
            self._items = list(current())
            self._next = 0
        start = self._next
        self._next = start + -(-len(self._items) // self._steps)
        chunk = self._items[start : self._next]
        if self._next >= len(self._items):
            self._items = []  # what closed during the pass is not kept until the next
            self._next = 0
        return chunk, new_pass
