"""Opening the configured engine (``[cluster] engine``): the one place that knows which
implementation of ``server.engine`` serves each name, so the fronts never do."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardws.server.mesh import MeshBackend, MeshEngine

if TYPE_CHECKING:
    from shardws.bus.host import Bus
    from shardws.config import Config
    from shardws.pure.pusher.webhooks import WebhookEvent
    from shardws.server.engine import BackendEngine, WorkerEngine
    from shardws.server.mesh import MeshHost
    from shardws.shm.view import Members


def worker_engine(
    config: Config,
    worker: MeshHost,
    answer_local: Callable[[str, dict[str, Any]], dict[str, Any]],
    webhook: Callable[[str, WebhookEvent], None],
    occupied_here: Callable[[int], tuple[str, ...]],
) -> WorkerEngine:
    """A worker's engine: ``answer_local(op, request)`` answers the members' questions
    about the worker itself; ``webhook`` and ``occupied_here`` are its Pusher front's."""
    name = config.cluster.engine
    if name == "mesh":
        return MeshEngine(worker, answer_local, webhook, occupied_here)
    raise ValueError(f"[cluster] engine: unknown engine {name!r}")  # config.ENGINES allows it


def backend_engine(
    config: Config, members: Members, bus: Callable[[], Bus | None]
) -> BackendEngine:
    """The admin's engine."""
    name = config.cluster.engine
    if name == "mesh":
        return MeshBackend(members, bus)
    raise ValueError(f"[cluster] engine: unknown engine {name!r}")
