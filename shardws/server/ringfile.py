"""History rings kept across a worker's replacement, in the service's run directory.

A draining worker saves its rings to ``rings-<slot>.pickle``; the next process of that
slot (or, when a reload retired the slot, the workers that own its channels now) loads
them. The directory is private to the service (mode 0700, files 0600), so the pickle is
this service's own trusted output.

A file holds ``(FORMAT, {channel: RingState})``. Files of the previous format (a bare
dict whose entries held the native push instead of the publication's data) are
converted when loaded, so an upgrade that restarts the service keeps its history; a ring
that cannot be converted is left out and logged (its subscribers then get
``recovered: false``, never wrong data).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle

from shardws.pure.history import RingState
from shardws.pure.protocol import decode_pub_at

log = logging.getLogger("shardws.owners")

FORMAT = 2  # 2: entries hold the publication's data; 1 (a bare dict): the native push


def rings_path(run_dir: str, slot: int) -> str:
    """Where worker slot ``slot`` saves its rings when it drains."""
    return os.path.join(run_dir, f"rings-{slot}.pickle")


def save_rings(path: str, states: dict[str, RingState]) -> int:
    """Write ``states`` to ``path`` atomically (owner-only file). Returns how many rings
    were saved."""
    temporary = f"{path}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        pickle.dump((FORMAT, states), file, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(temporary, path)
    return len(states)


def load_rings(path: str, keep: bool = False) -> dict[str, RingState]:
    """The rings saved at ``path`` (none if there is no file); the file is removed unless
    ``keep``."""
    try:
        with open(path, "rb") as file:
            saved = pickle.load(file)
    except FileNotFoundError:
        return {}
    if not keep:
        os.unlink(path)
    if isinstance(saved, dict):  # format 1
        return _from_pushes(saved)
    _format, states = saved
    return dict(states)


def _from_pushes(states: dict[str, RingState]) -> dict[str, RingState]:
    """Format-1 rings with each entry's native push (``protocol.encode_pub_at``) turned
    back into the publication's data; a ring with an entry of another shape is left out."""
    converted = {}
    for channel, state in states.items():
        entries = []
        for entry in state.entries:
            publication = decode_pub_at(entry.data, channel)
            if publication is None or publication.position != (state.epoch, entry.offset):
                log.warning("ring of %s: a saved entry is not a push; ring left out", channel)
                break
            entries.append(dataclasses.replace(entry, data=publication.data))
        else:
            converted[channel] = dataclasses.replace(state, entries=tuple(entries))
    return converted
