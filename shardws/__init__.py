"""shardws: a real-time WebSocket pub/sub server (one worker per core, Cython hot path,
ZeroMQ bus between workers, no external broker)."""

__version__ = "0.1.0"
