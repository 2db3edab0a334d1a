"""Opening the configured engine (``[cluster] engine``): the one place that knows which
implementation of ``server.engine`` serves each name, so the fronts never do.

The Redis hub (``"redis"``) runs ``server.redisengine`` in the workers and the admin: the
mesh's engine, with what Redis decides taken over. The host bus stays inside a host; the
process that carries it across hosts is the bridge or the hub (:func:`run_cross_host`).
The Redis modules are imported only for ``"redis"``, so that only a hub needs the
``redis`` package."""

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
    from shardws.shm.tables import SharedTables
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
    if name == "redis":
        from shardws.server.redisengine import RedisEngine

        return RedisEngine(config, worker, answer_local, webhook, occupied_here)
    raise ValueError(f"[cluster] engine: unknown engine {name!r}")  # config.ENGINES allows it


def backend_engine(
    config: Config, members: Members, bus: Callable[[], Bus | None]
) -> BackendEngine:
    """The admin's engine."""
    name = config.cluster.engine
    if name == "mesh":
        return MeshBackend(members, bus)
    if name == "redis":
        from shardws.server.redisengine import RedisBackend

        return RedisBackend(config, members, bus)
    raise ValueError(f"[cluster] engine: unknown engine {name!r}")


def run_cross_host(slot: int, config: Config, tables: SharedTables, run_dir: str) -> int:
    """The forked process that carries this host's bus across hosts (the supervisor's
    ``bridge`` slot): the mesh's bridge, or the Redis hub. Imported here, so that only
    a hub needs the ``redis`` package. Returns the process exit code."""
    name = config.cluster.engine
    if name == "mesh":
        from shardws.server.bridge import run_bridge

        return run_bridge(slot, config, tables, run_dir)
    if name == "redis":
        from shardws.server.redishub import run_hub

        return run_hub(slot, config, tables, run_dir)
    raise ValueError(f"[cluster] engine: unknown engine {name!r}")
