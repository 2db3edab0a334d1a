"""shardws: a real-time WebSocket pub/sub server (one worker per core, Cython hot path,
ZeroMQ bus between workers, no external broker)."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shardws.client.publisher import Publisher, PublisherError

__all__ = ["Publisher", "PublisherError", "__version__"]


def __getattr__(name: str) -> object:
    # Lazy: the server's processes import this package, most never need pyzmq's client.
    if name in ("Publisher", "PublisherError"):
        from shardws.client import publisher

        return getattr(publisher, name)
    raise AttributeError(f"module 'shardws' has no attribute {name!r}")
