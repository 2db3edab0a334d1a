"""History rings kept across a worker's replacement, in the service's run directory.

A draining worker saves its rings to ``rings-<slot>.pickle``; the next process of that
slot (or, when a reload retired the slot, the workers that own its channels now) loads
them. The directory is private to the service (mode 0700, files 0600), so the pickle is
this service's own trusted output.
"""

from __future__ import annotations

import os
import pickle

from shardws.pure.history import RingState


def rings_path(run_dir: str, slot: int) -> str:
    """Where worker slot ``slot`` saves its rings when it drains."""
    return os.path.join(run_dir, f"rings-{slot}.pickle")


def save_rings(path: str, states: dict[str, RingState]) -> int:
    """Write ``states`` to ``path`` atomically (owner-only file). Returns how many rings
    were saved."""
    temporary = f"{path}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        pickle.dump(states, file, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(temporary, path)
    return len(states)


def load_rings(path: str, keep: bool = False) -> dict[str, RingState]:
    """The rings saved at ``path`` (none if there is no file); the file is removed unless
    ``keep``."""
    try:
        with open(path, "rb") as file:
            states: dict[str, RingState] = pickle.load(file)
    except FileNotFoundError:
        return {}
    if not keep:
        os.unlink(path)
    return states
