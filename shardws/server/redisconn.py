"""Connections to the Redis of ``[cluster] engine = "redis"`` (docs/cluster.md, "The
Redis hub"), for every process of a host that talks to it.

* :func:`connect` -- one connection as ``[cluster.redis]`` says: the master through the
  sentinels, ACL user and password, TLS, timeouts, RESP2; redis-py never retries on its
  own (the callers reconnect themselves, and count it).
* :class:`Pipeline` -- what one connection carries: the commands given during one
  event-loop iteration go out in one write, without waiting for the answers of the
  writes before it (at most ``_MAX_IN_FLIGHT`` writes unanswered), answers read in order.
  The hub's publisher and :class:`RedisCalls` both run on it.
* :class:`RedisCalls` -- one pipelined connection per process for Lua scripts
  (:class:`Script`, ``EVALSHA``) and plain commands, each answered on an
  ``asyncio.Future``. Redis executes the calls of one connection in the order they were
  made. A call made while Redis is down, whose connection fails before its answer, or
  unanswered within ``timeout``, fails with :class:`RedisUnavailable` -- it may or may
  not have run (the caller decides what that means: a publication retried with its
  ``idem`` is stored once). On every (re)connection the registered scripts are loaded and
  the server's :class:`ServerIdentity` is read, so scripts can tell a restarted or
  promoted server from the one that wrote a key (``server.redishistory``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from shardws.log import RateLimitedLogger
from shardws.pure.redisslots import SlotMap

if TYPE_CHECKING:
    from shardws.config import RedisConfig

log = logging.getLogger("shardws.redis")

_FIRST_BACKOFF = 0.1
_MAX_IN_FLIGHT = 64  # writes to one connection not answered yet
_READ_BUDGET = 256  # replies read before the loop's other work gets a turn
_IDLE_CHECK = 1.0  # seconds between checks that an idle connection is still open

ItemT = TypeVar("ItemT")


#: A Redis Cluster's answers that a command's slot is elsewhere or moving (``MOVED`` is an
#: ``AskError``), or that the cluster is failing over: read the slot map again, retry.
REDIRECTS = (AskError, TryAgainError, ClusterDownError)


class RedisUnavailable(Exception):
    """A call that Redis did not answer: it was down, the connection failed before the
    answer, or the answer took longer than ``[cluster.redis] timeout``. The call may or
    may not have run."""


class Backoff:
    """Seconds to wait before the next connection attempt: doubling from 0.1 up to
    ``ceiling``."""

    def __init__(self, ceiling: float) -> None:
        self._ceiling = ceiling
        self._next = _FIRST_BACKOFF

    def reset(self) -> None:
        self._next = _FIRST_BACKOFF

    def next(self) -> float:
        delay = self._next
        self._next = min(self._ceiling, self._next * 2)
        return min(delay, self._ceiling)


def host_port(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[v6]:PORT"``) as a (host, port) pair."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def sentinel_of(settings: RedisConfig) -> Sentinel | None:
    """The sentinels' client when ``settings`` names sentinels (one per process: it keeps
    no connection open between discoveries)."""
    if not settings.sentinels:
        return None
    return Sentinel(
        [host_port(address) for address in settings.sentinels],
        socket_timeout=settings.timeout,
        sentinel_kwargs={"socket_timeout": settings.timeout},
    )


async def connect(
    settings: RedisConfig, sentinel: Sentinel | None = None, address: str = ""
) -> Connection:
    """A new connection to the master (asked of ``sentinel`` first, when given; see
    :func:`sentinel_of`), or to the node at ``address`` (one of a Redis Cluster's).
    Raises RedisError or OSError when it cannot connect."""
    if address:
        host, port = host_port(address)
    elif sentinel is not None:
        host, port = await sentinel.discover_master(settings.master_name)
    else:
        host, port = host_port(settings.address)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "username": settings.username or None,
        "password": settings.secret() or None,
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
        "retry": Retry(NoBackoff(), 0),  # the callers reconnect themselves, and count it
        "protocol": 2,  # pub/sub messages as replies (RESP3 would make them pushes)
    }
    connection = (
        SSLConnection(ssl_ca_certs=settings.tls_ca_file or None, **common)
        if settings.tls
        else Connection(**common)
    )
    await connection.connect()
    return connection


async def read_slot_map(settings: RedisConfig, addresses: Iterable[str]) -> SlotMap | None:
    """A Redis Cluster's slot map (``CLUSTER SLOTS``) from the first of ``addresses``
    that answers one covering some slot; None when none does."""
    for address in dict.fromkeys(addresses):
        try:
            connection = await connect(settings, address=address)
        except (RedisError, OSError):
            continue
        try:
            await connection.send_command("CLUSTER", "SLOTS")
            slots = SlotMap.from_cluster_slots(await connection.read_response())
        except (RedisError, OSError, TimeoutError):
            continue
        finally:
            await connection.disconnect(nowait=True)
        if slots.covered:
            return slots
    return None


async def replies(connection: Connection, silence: float) -> AsyncIterator[Any]:
    """What a subscribed connection reads, in order: each reply, an error reply as its
    ``ResponseError`` (read whole: the stream stays in step). Raises TimeoutError after
    ``silence`` seconds without one. Yields to the event loop every ``_READ_BUDGET``
    replies: buffered replies never would, and the process's other work needs turns."""
    budget = _READ_BUDGET
    while True:
        budget -= 1
        if not budget:
            budget = _READ_BUDGET
            await asyncio.sleep(0)
        try:
            reply = await connection.read_response(timeout=silence)
        except ResponseError as error:
            yield error
            continue
        if reply is None:
            raise TimeoutError(f"nothing from Redis for {silence:.1f} s")
        yield reply


async def until_one_ends(*tasks: asyncio.Task[None]) -> None:
    """Run ``tasks`` (the two directions of one connection) until one ends; cancel the
    others and raise what ended it."""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()


class Pipeline(Generic[ItemT]):
    """Items (each one command) written to one connection: what waits goes out in one
    write per wake-up, without waiting for the answers of the writes before it (at most
    ``max_in_flight`` unanswered); the answers are read in order and handed to
    ``answered(item, answer)`` -- an error reply is handed as its ``ResponseError``.

    :meth:`run` carries one connection until it fails; :meth:`take` then gives back every
    item not answered (written or not), which the owner fails or counts as lost."""

    def __init__(
        self,
        command_of: Callable[[ItemT], Sequence[Any]],
        answered: Callable[[ItemT, Any], None],
        max_in_flight: int = _MAX_IN_FLIGHT,
    ) -> None:
        self._command_of = command_of
        self._answered = answered
        self._max_in_flight = max_in_flight
        self.outbox: list[ItemT] = []
        self._in_flight: deque[deque[ItemT]] = deque()
        self._wake = asyncio.Event()
        self._due = asyncio.Event()
        self.batches = 0  # writes made

    def put(self, item: ItemT) -> None:
        self.outbox.append(item)
        self._wake.set()

    def take(self) -> list[ItemT]:
        """Every item not answered, oldest first; the pipeline is empty after."""
        items = [item for batch in self._in_flight for item in batch]
        items.extend(self.outbox)
        self._in_flight.clear()
        self.outbox = []
        return items

    async def run(self, connection: Connection) -> None:
        """Write and read on ``connection`` until it fails (raises what ended it)."""
        if self.outbox:
            self._wake.set()
        await until_one_ends(
            asyncio.create_task(self._write(connection)),
            asyncio.create_task(self._read(connection)),
        )

    async def _write(self, connection: Connection) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self._in_flight) >= self._max_in_flight:
                continue  # the reader wakes us when one is answered
            batch, self.outbox = self.outbox, []
            if not batch:
                continue
            self._in_flight.append(deque(batch))
            self._due.set()
            self.batches += 1
            commands = [self._command_of(item) for item in batch]
            await connection.send_packed_command(connection.pack_commands(commands), False)

    async def _read(self, connection: Connection) -> None:
        while True:
            if not self._in_flight:
                self._due.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._due.wait(), _IDLE_CHECK)
                if not self._in_flight:
                    # Idle: learn now, not at the next call, that Redis closed the
                    # connection (its owner then counts itself down and reconnects).
                    await connection.can_read()  # raises ConnectionError once closed
                continue
            batch = self._in_flight[0]
            while batch:
                # A timeout (socket_timeout) raises: the connection is given up.
                try:
                    answer = await connection.read_response()
                except ResponseError as error:  # read whole: the stream stays in step
                    answer = error
                self._answered(batch.popleft(), answer)
            self._in_flight.popleft()
            if self.outbox:
                self._wake.set()


@dataclass(frozen=True)
class Script:
    """A Lua script run with ``EVALSHA`` (its SHA1 computed here, loaded on connect).

    With ``identity``, every call's ``ARGV`` starts with the identity of the server that
    runs it (:class:`ServerIdentity`: ``writer``, then ``durable`` and ``promoted`` as
    ``"1"``/``"0"``), the caller's arguments after them: it is the identity of the
    connection the call is written on, learnt before anything was written on it, so a
    call made before a reconnection never carries the former server's."""

    name: str
    source: str
    identity: bool = False

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


@dataclass(frozen=True)
class ServerIdentity:
    """Which Redis server answers, as learnt on connecting: ``run_id`` (new at each start
    of ``redis-server``), ``replid`` (its replication id: new at each start, at each
    promotion, and taken from its master by a replica, so one ``(run_id, replid)`` is one
    unbroken lineage of writes), ``durable`` (what it acknowledged survives its own crash:
    ``appendonly yes`` with ``appendfsync always``, a master with no replica, and shardws
    configured with neither ``sentinels`` nor ``cluster_nodes`` -- where a replica may be
    promoted, a later restart could otherwise trust a copy that lagged; False when
    ``CONFIG`` is refused) and ``promoted`` (a replica promoted to master, or not a master
    at all: it may lack writes its former master acknowledged). A server that hides its
    ``run_id`` or ``replid`` (a proxy) gets a random one per connection: every
    reconnection then counts as another server (only ever a new epoch)."""

    run_id: str
    durable: bool
    promoted: bool
    replid: str = ""

    @property
    def writer(self) -> str:
        """What a script compares with the writer a channel's data records."""
        return f"{self.run_id}:{self.replid}"


@dataclass(eq=False)
class _Call:
    args: tuple[Any, ...]  # a command's words; a script's keys then arguments
    future: asyncio.Future[Any]
    script: Script | None = None
    keys: int = 0
    retried: bool = False


class RedisCalls:
    """One pipelined connection of this process for scripts and commands (see the
    module). It connects on :meth:`start` or on the first call, whichever comes first
    (in the process's event loop), until :meth:`close` or :meth:`stop`."""

    def __init__(
        self, settings: RedisConfig, scripts: Iterable[Script] = (), address: str = ""
    ) -> None:
        """``address``: a given node (a Redis Cluster's master: ``server.redisclustercalls``)
        instead of the configured Redis."""
        self.settings = settings
        self._address = address
        self._scripts: dict[str, Script] = {}
        for script in scripts:
            self.register(script)
        self._sentinel = sentinel_of(settings)
        self._pipeline: Pipeline[_Call] = Pipeline(self._command_of, self._answered)
        self._task: asyncio.Task[None] | None = None
        self._log = RateLimitedLogger("shardws.redis", burst=5, level=logging.WARNING)
        self.identity: ServerIdentity | None = None  # the server of the current connection
        self.up = False
        self._connecting = False
        self.calls = 0
        self.failures = 0  # calls failed with RedisUnavailable
        self.reconnects = 0  # successful connections after the first
        self._connects = 0
        #: Script calls by part (:func:`part_of`), and those that failed (unanswered
        #: or refused): what history, presence and Pusher ask of Redis.
        self.scripts: dict[str, int] = dict.fromkeys(PARTS, 0)
        self.script_failures: dict[str, int] = dict.fromkeys(PARTS, 0)

    @property
    def batches(self) -> int:
        """Writes made (each carries every call of one event-loop iteration)."""
        return self._pipeline.batches

    def register(self, script: Script) -> None:
        """Load ``script`` on every connection (from the next one; the calls load it
        anyway when the server does not know it)."""
        self._scripts[script.sha] = script

    def totals(self) -> dict[str, int]:
        """Every counter as an integer, by its ``shm.scoreboard.REDIS_COLUMNS`` name
        (what a process copies to its scoreboard row: ``/health``, ``/metrics``)."""
        totals = {
            "up": int(self.up),
            "calls": self.calls,
            "batches": self.batches,
            "failures": self.failures,
            "reconnects": self.reconnects,
        }
        for part in PARTS:
            totals[f"{part}_scripts"] = self.scripts[part]
            totals[f"{part}_failed"] = self.script_failures[part]
        return totals

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._connecting = True
            self._task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        """Stop: the connection is dropped, calls not answered fail."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        self.up = self._connecting = False
        self._fail(self._pipeline.take(), "stopped")

    async def stop(self) -> None:
        """:meth:`close`, and wait until the connection is closed."""
        task = self._task
        self.close()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    # -- calls ----------------------------------------------------------------------------

    def call(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        """Run ``script`` with ``keys`` and ``args`` (after the server's identity, for a
        script that asks for it): its answer (an error reply is a ResponseError), or
        RedisUnavailable."""
        if script.sha not in self._scripts:
            self.register(script)
        future = self._put(_Call((*keys, *args), _future(), script, len(keys)))
        part = part_of(script)
        if part:
            self.scripts[part] += 1
            future.add_done_callback(functools.partial(self._script_done, part))
        return future

    def _script_done(self, part: str, future: asyncio.Future[Any]) -> None:
        # Reading the exception here does not take it from the caller, who awaits it.
        if not future.cancelled() and future.exception() is not None:
            self.script_failures[part] += 1

    def command(self, *args: Any) -> asyncio.Future[Any]:
        """Run one command: its answer (an error reply is a ResponseError), or
        RedisUnavailable."""
        return self._put(_Call(args, _future()))

    def _put(self, call: _Call) -> asyncio.Future[Any]:
        self.calls += 1
        self.start()
        if not (self.up or self._connecting) or len(self._pipeline.outbox) >= _MAX_WAITING:
            self._fail([call], "Redis is unreachable" if not self.up else "too many calls waiting")
        else:
            self._pipeline.put(call)
        return call.future

    def _command_of(self, call: _Call) -> Sequence[Any]:
        script = call.script
        if script is None:
            return call.args
        verb = ("EVAL", script.source) if call.retried else ("EVALSHA", script.sha)
        keys, args = call.args[: call.keys], call.args[call.keys :]
        identity = self.identity
        if script.identity and identity is not None:  # set before the pipeline runs
            flags = ("1" if identity.durable else "0", "1" if identity.promoted else "0")
            args = (identity.writer, *flags, *args)
        return (*verb, call.keys, *keys, *args)

    def _answered(self, call: _Call, answer: Any) -> None:
        if call.future.done():
            return
        if isinstance(answer, NoScriptError) and call.script is not None and not call.retried:
            call.retried = True  # the script cache was flushed under us: EVAL loads it, once
            self._pipeline.put(call)
            return
        if isinstance(answer, ResponseError):
            call.future.set_exception(answer)
        else:
            call.future.set_result(answer)

    def _fail(self, calls: Iterable[_Call], why: str) -> None:
        for call in calls:
            if not call.future.done():
                self.failures += 1
                call.future.set_exception(RedisUnavailable(why))

    # -- the connection -------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self.settings.reconnect_max)
        while True:
            self._connecting = True
            try:
                connection = await connect(self.settings, self._sentinel, self._address)
                self.identity = await self._greet(connection)
            except (RedisError, OSError, TimeoutError) as exc:
                self._log.warning("Redis calls: cannot connect: %s", exc)
                self._connecting = False
                self._fail(self._pipeline.take(), f"cannot connect: {exc}")
                await asyncio.sleep(backoff.next())
                continue
            self._connects += 1
            self.reconnects = self._connects - 1
            self.up = True
            self._connecting = False
            backoff.reset()
            try:
                await self._pipeline.run(connection)
            except (RedisError, OSError, TimeoutError) as exc:
                self._log.warning("Redis calls: connection lost: %s", exc or type(exc).__name__)
            finally:
                self.up = False
                self._fail(self._pipeline.take(), "the connection to Redis was lost")
                await connection.disconnect(nowait=True)
            await asyncio.sleep(backoff.next())

    async def _greet(self, connection: Connection) -> ServerIdentity:
        """Load the scripts and read who the server is (before any call is written)."""
        for script in list(self._scripts.values()):
            await connection.send_command("SCRIPT", "LOAD", script.source)
            await connection.read_response()
        await connection.send_command("INFO", "server")
        server = _info(await connection.read_response())
        await connection.send_command("INFO", "replication")
        replication = _info(await connection.read_response())
        master = replication.get("role") == "master"
        promoted = not master or replication.get("second_repl_offset", "-1") != "-1"
        settings = self.settings
        standalone = not (settings.sentinels or settings.cluster_nodes or self._address)
        durable = (
            standalone
            and master
            and replication.get("connected_slaves", "0") == "0"
            and await _config(connection, "appendonly") == "yes"
            and await _config(connection, "appendfsync") == "always"
        )
        return ServerIdentity(
            server.get("run_id") or secrets.token_hex(20),
            durable,
            promoted,
            replication.get("master_replid") or secrets.token_hex(20),
        )


#: What asks Redis for scripts, by the first word of a script's name ("history.publish",
#: "pusher_join"): the parts counted apart (``RedisCalls.scripts``).
PARTS = ("history", "presence", "pusher")


def part_of(script: Script) -> str:
    """The part of :data:`PARTS` that ``script`` belongs to, or ``""``."""
    part = script.name.replace("_", ".").partition(".")[0]
    return part if part in PARTS else ""


#: Calls waiting for the connection (not yet written) beyond which new ones fail at once.
_MAX_WAITING = 100_000


def _future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


def _info(answer: Any) -> dict[str, str]:
    text = answer.decode() if isinstance(answer, bytes) else str(answer)
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


async def _config(connection: Connection, name: str) -> str:
    """``CONFIG GET name``'s value; ``""`` when the server refuses ``CONFIG`` (an ACL or
    a managed Redis): the caller then assumes the weaker setting."""
    await connection.send_command("CONFIG", "GET", name)
    try:
        answer = await connection.read_response()
    except ResponseError:
        return ""
    if isinstance(answer, list) and len(answer) == 2:
        value = answer[1]
        return value.decode() if isinstance(value, bytes) else str(value)
    return ""
