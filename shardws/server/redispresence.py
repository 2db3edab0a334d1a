"""Presence kept in Redis on the hub (``[cluster] engine = "redis"``): who is subscribed
to a presence channel, cluster-wide, readable by any worker of any host in one round
trip, and gone within a stated bound when the process that held a member dies.

Two parts, each reusable on its own:

* :class:`ExpiringSets` -- sets of members that expire unless refreshed, kept in Redis
  by the processes that hold them. A set is two keys, a hash (member id -> value) and a
  sorted set (member id -> the Redis time it expires at), as Centrifugo keeps presence.
  The holder puts and drops members (merged per set and written once per event-loop
  iteration) and refreshes every set it holds every ``ttl / 3`` seconds, one script
  per set (in chunks of :data:`CHUNK` members), the sets' turns spread over that
  interval (no burst of every set at once, but after a reconnection), the scripts
  pipelined; a reader's script drops the expired members before it answers. Times are Redis's own
  (``TIME`` in the scripts), so hosts' clocks do not matter. A value starts with its
  *owner* (length-prefixed, :func:`encode_value`): :meth:`ExpiringSets.counts` answers
  the members and their distinct non-empty owners without sending the set. (The Pusher
  rosters on the hub, ``server.redispusher``, expire per worker instead: their expiry
  must be announced, not only left out of the next read.)
* :class:`RedisPresence` -- the native protocol's presence on top of it: a worker puts
  a connection with an identity when it subscribes a ``presence = true`` channel and
  drops it when it leaves (unsubscribe, disconnect, a refused subscribe); the
  ``presence`` and ``presence_stats`` ops read Redis.

Guarantees (``docs/guarantees.md``, "Presence"):

* A member put by a worker is in Redis one round trip later (a plain subscribe's ok
  waits for it), and read back by every worker of every host; a drop likewise.
* The bound: a member whose worker died (SIGKILL, a host lost) is gone from every answer
  within ``[cluster.redis] presence_ttl`` seconds of its worker's last refresh, since
  every answer is read by a script that drops the expired ones first; a live worker
  refreshes every ``presence_ttl / 3`` seconds, so one lost refresh does not expire it.
* Redis down: an answer that cannot be read is an error (108, retry), never a partial
  list. A drop that could not be written is written again with the set's next write;
  a put is written again by the next refresh, so a Redis restarted empty (no
  persistence) holds every live member again once each worker reconnected (every set
  is refreshed at the first heartbeat after a reconnection).
* A restarted worker keeps no ghosts: its connections' client ids die with the process,
  and what it did not drop expires as above.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from shardws.log import RateLimitedLogger
from shardws.pure import protocol
from shardws.pure.control import PresenceMember
from shardws.pure.protocol import ErrorCode
from shardws.server.redisconn import RedisError, RedisUnavailable, Script

if TYPE_CHECKING:
    from shardws.config import RedisConfig
    from shardws.server.engine import Connection
    from shardws.server.redisconn import RedisCalls

log = logging.getLogger("shardws.presence")

#: Members per script call: bounds the time one script holds Redis, and Lua's stack
#: (``unpack`` of two values per member).
CHUNK = 1000
#: A refresh comes every ``ttl / REFRESHES_PER_TTL`` seconds: a member survives one lost
#: refresh (and a late loop) before it expires.
REFRESHES_PER_TTL = 3

# KEYS: hash, sorted set. ARGV: ttl (seconds), how many puts n, n (id, value) pairs, then
# the ids to drop. Puts (re)set each member's expiry to Redis's now + ttl; both keys live
# ttl seconds past the last write, so a set nobody refreshes vanishes whole.
_UPDATE = """
local ttl = tonumber(ARGV[1])
local puts = tonumber(ARGV[2])
local now = redis.call('TIME')
local expires = tonumber(now[1]) + tonumber(now[2]) / 1000000 + ttl
local last = 2 + 2 * puts
if last < #ARGV then
  local gone = {}
  for i = last + 1, #ARGV do gone[#gone + 1] = ARGV[i] end
  redis.call('HDEL', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
if puts > 0 then
  local fields, scores = {}, {}
  for i = 3, last, 2 do
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
    scores[#scores + 1] = expires
    scores[#scores + 1] = ARGV[i]
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('ZADD', KEYS[2], unpack(scores))
  redis.call('EXPIRE', KEYS[1], math.ceil(ttl))
  redis.call('EXPIRE', KEYS[2], math.ceil(ttl))
end
return puts
"""

# Drop the members expired by Redis's clock (in chunks: Lua's stack), shared by readers.
_EXPIRE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for i = 1, #stale, 1000 do
  redis.call('HDEL', KEYS[1], unpack(stale, i, math.min(i + 999, #stale)))
end
if #stale > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
"""

_READ = _EXPIRE + "return redis.call('HGETALL', KEYS[1])\n"

# Members, and distinct non-empty owners (a value is "<length>:<owner><rest>").
_COUNT = (
    _EXPIRE
    + """
local values = redis.call('HVALS', KEYS[1])
local owners, distinct = {}, 0
for _, value in ipairs(values) do
  local colon = string.find(value, ':', 1, true)
  local length = tonumber(string.sub(value, 1, colon - 1))
  if length > 0 then
    local owner = string.sub(value, colon + 1, colon + length)
    if not owners[owner] then owners[owner] = true; distinct = distinct + 1 end
  end
end
return {#values, distinct}
"""
)

UPDATE = Script("presence.update", _UPDATE)
READ = Script("presence.read", _READ)
COUNT = Script("presence.count", _COUNT)
#: The scripts this module runs: load them on every (re)connection.
SCRIPTS = (UPDATE, READ, COUNT)


def encode_value(owner: str, rest: bytes) -> bytes:
    """A member's value: its owner, length-prefixed (``counts`` counts distinct owners
    without decoding the rest), then ``rest``."""
    raw = owner.encode()
    return b"%d:%s%s" % (len(raw), raw, rest)


def decode_value(value: bytes) -> tuple[str, bytes]:
    """(owner, rest) of :func:`encode_value`; ValueError on anything else."""
    length, colon, tail = value.partition(b":")
    if not colon or not length.isdigit() or int(length) > len(tail):
        raise ValueError(f"not a member value: {value[:40]!r}")
    size = int(length)
    return tail[:size].decode(), tail[size:]


class SetKeys(NamedTuple):
    """The two keys of one set, in the same Redis Cluster slot (the hash tag)."""

    members: bytes  # hash: member id -> value
    expiries: bytes  # sorted set: member id -> the Redis time it expires at


def channel_keys(prefix: str, channel: str) -> SetKeys:
    """The presence keys of a native channel: ``<prefix>{<channel>}:p`` and ``:pe``,
    hash-tagged by the channel as its history keys are."""
    base = f"{prefix}{{{channel}}}".encode()
    return SetKeys(base + b":p", base + b":pe")


def update_args(ttl: float, puts: dict[str, bytes], drops: Iterable[str]) -> list[bytes | str]:
    """The ARGV of one update script: puts, then drops."""
    args: list[bytes | str] = [repr(ttl), str(len(puts))]
    for member, value in puts.items():
        args += (member, value)
    args.extend(drops)
    return args


def chunks(members: dict[str, bytes], size: int = CHUNK) -> list[dict[str, bytes]]:
    """``members`` in dicts of at most ``size``, one script each (none when empty)."""
    items = list(members.items())
    return [dict(items[start : start + size]) for start in range(0, len(items), size)]


class ExpiringSets:
    """Sets of members this process holds in Redis, each refreshed until dropped.

    :meth:`put` and :meth:`drop` change what this process holds; the changes of one
    event-loop iteration are merged per set and written at the next (``call_soon``), and
    a read flushes them first, so this process reads its own writes. Call
    :meth:`on_tick` often (every heartbeat): each held set is refreshed every
    ``ttl / 3`` seconds (at the first tick past its turn), the sets' turns spread over
    that interval, so a refresh is never one burst of every set; every set at once
    after the connection came back (Redis may have restarted empty). ``keep(keys,
    member)``, when given, is asked before a member is refreshed: False drops it (a
    member whose holder forgot to drop it). ``calls`` is the process's pipelined Redis
    connection (the scripts of :data:`SCRIPTS` are registered with it)."""

    def __init__(
        self,
        calls: RedisCalls,
        ttl: float,
        keep: Callable[[SetKeys, str], bool] | None = None,
    ) -> None:
        self._calls = calls
        for script in SCRIPTS:  # loaded on every (re)connection, before any call
            calls.register(script)
        self.ttl = ttl
        self.interval = ttl / REFRESHES_PER_TTL
        self._keep = keep
        self._held: dict[SetKeys, dict[str, bytes]] = {}
        # Changes not yet written: set -> member -> value (a put) or None (a drop).
        self._pending: dict[SetKeys, dict[str, bytes | None]] = {}
        self._waiters: dict[SetKeys, list[asyncio.Future[bool]]] = {}  # of pending puts
        self._flush_scheduled = False
        self._refusals = RateLimitedLogger("shardws.presence", burst=5, level=logging.WARNING)
        # The next refresh of each held set, and the same as a heap of (due, n, set);
        # an entry whose due is no longer the set's is stale and skipped.
        self._due: dict[SetKeys, float] = {}
        self._turns: list[tuple[float, int, SetKeys]] = []
        self._numbers = itertools.count()
        self._reconnects = calls.reconnects
        #: Scripts sent, and writes that failed (counters).
        self.scripts = 0
        self.failed = 0

    def put(self, keys: SetKeys, member: str, value: bytes) -> asyncio.Future[bool]:
        """Hold ``member`` in ``keys``: a future that is True once Redis has it, False
        if the write failed (the next refresh writes it again)."""
        held = self._held.get(keys)
        if held is None:
            held = self._held[keys] = {}
            # The first turn at random within the interval: sets made together (a
            # reconnection storm) are refreshed apart.
            self._schedule(keys, time.monotonic() + self.interval * random.uniform(0.1, 1.0))
        held[member] = value
        written: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(keys, []).append(written)
        self._change(keys, member, value)
        return written

    def drop(self, keys: SetKeys, member: str) -> None:
        held = self._held.get(keys)
        if held is None or held.pop(member, None) is None:
            return
        if not held:
            del self._held[keys]
            self._due.pop(keys, None)
        self._change(keys, member, None)

    def _schedule(self, keys: SetKeys, due: float) -> None:
        self._due[keys] = due
        heapq.heappush(self._turns, (due, next(self._numbers), keys))

    def _change(self, keys: SetKeys, member: str, value: bytes | None) -> None:
        self._pending.setdefault(keys, {})[member] = value
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the pending changes now: one script per changed set (per chunk)."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for keys, changes in pending.items():
            puts = {m: v for m, v in changes.items() if v is not None}
            drops = [m for m, v in changes.items() if v is None]
            self._write(keys, puts, drops)

    def _write(self, keys: SetKeys, puts: dict[str, bytes], drops: list[str]) -> None:
        """One script per chunk of ``puts`` (the ``drops`` with the first); answers the
        waiters of the set's puts when every chunk is answered."""
        parts = chunks(puts) or [{}]
        written = []
        for number, part in enumerate(parts):
            # The drops ride with the first chunk; on failure they are written again.
            gone = drops if number == 0 else []
            future = self._calls.call(UPDATE, list(keys), update_args(self.ttl, part, gone))
            self.scripts += 1
            future.add_done_callback(functools.partial(self._written, keys=keys, drops=gone))
            written.append(future)
        waiters = self._waiters.pop(keys, None)
        if waiters:
            every = asyncio.gather(*written, return_exceptions=True)
            every.add_done_callback(functools.partial(_settle, waiters))

    def _written(self, done: asyncio.Future[Any], *, keys: SetKeys, drops: list[str]) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if error is None:
            return
        self.failed += 1
        if isinstance(error, RedisUnavailable):  # said by the connection already
            log.debug("presence write to %r failed: %s", keys.members, error)
        else:  # refused by Redis (e.g. an ACL without +expire): the operator must act
            self._refusals.warning("presence write to %r refused: %s", keys.members, error)
        # A drop not written must not wait for the expiry when Redis comes back soon:
        # written again with the set's next write (unless put back meanwhile).
        if drops:
            held = self._held.get(keys, {})
            for member in drops:
                if member not in held:
                    self._pending.setdefault(keys, {}).setdefault(member, None)

    def on_tick(self, now: float) -> None:
        """Refresh the sets whose turn came (``now``: monotonic seconds), or every set
        when the connection came back since the last tick."""
        reconnects = self._calls.reconnects
        if reconnects != self._reconnects:
            self._reconnects = reconnects
            self.refresh()
            return
        turns = self._turns
        while turns and turns[0][0] <= now:
            due, _, keys = heapq.heappop(turns)
            if self._due.get(keys) != due:
                continue  # stale: the set was dropped (and maybe made again) since
            # Keeps its phase; a loop that ran late starts a new one rather than a burst.
            self._schedule(keys, due + self.interval if due + self.interval > now else now)
            self._refresh(keys)

    def refresh(self) -> None:
        """Write every held member of every set again (a new expiry), with the pending
        changes."""
        for keys in self._held.keys() | self._pending.keys():
            self._refresh(keys)

    def _refresh(self, keys: SetKeys) -> None:
        changes = self._pending.pop(keys, {})
        held = self._held.get(keys, {})
        if self._keep is not None:
            for member in [m for m in held if not self._keep(keys, m)]:
                del held[member]
                changes[member] = None
            if not held and keys in self._held:
                del self._held[keys]
                self._due.pop(keys, None)
        drops = [m for m, v in changes.items() if v is None]
        if held or drops:
            self._write(keys, held, drops)
        else:
            _settle(self._waiters.pop(keys, []), None)

    def read(self, keys: SetKeys) -> asyncio.Future[Any]:
        """Every unexpired member: a future of the flat ``HGETALL`` list."""
        self._flush_if_pending(keys)
        return self._calls.call(READ, list(keys), [])

    def counts(self, keys: SetKeys) -> asyncio.Future[Any]:
        """A future of [members, distinct non-empty owners] (unexpired)."""
        self._flush_if_pending(keys)
        return self._calls.call(COUNT, list(keys), [])

    def _flush_if_pending(self, keys: SetKeys) -> None:
        if keys in self._pending:
            self.flush()


def _settle(waiters: list[asyncio.Future[bool]], written: asyncio.Future[list[Any]] | None) -> None:
    """Answer the waiters of a set's puts: True unless a write of ``written`` failed."""
    ok = written is None or not (
        written.cancelled() or any(isinstance(r, BaseException) for r in written.result())
    )
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(ok)


def members_of(flat: list[bytes]) -> list[list[Any]]:
    """The ``presence`` reply's members from a :data:`READ` answer (``HGETALL``: id,
    value, ...): ``[user, client, info JSON text or None]``, sorted by client id; a
    value that does not decode is left out (logged), never a crash."""
    members: list[tuple[str, str, str | None]] = []
    for index in range(0, len(flat) - 1, 2):
        client = flat[index].decode(errors="replace")
        try:
            user, rest = decode_value(flat[index + 1])
        except (ValueError, UnicodeDecodeError) as error:
            log.warning("presence: skipping %s: %s", client, error)
            continue
        # rest: "-" for no info, else "=" and the info's JSON text.
        info = rest[1:].decode() if rest[:1] == b"=" else None
        members.append((user, client, info))
    members.sort(key=lambda member: member[1])
    return [list(member) for member in members]


async def read_members(
    calls: RedisCalls, prefix: str, channel: str, timeout: float
) -> list[PresenceMember] | None:
    """Every unexpired member of the native channel ``channel`` (the :data:`READ` script
    of the ``presence`` op, for a process that holds no members: the admin's
    ``GET /api/presence``), sorted by client id; None when Redis did not answer within
    ``timeout`` seconds or refused (logged)."""
    try:
        keys = list(channel_keys(prefix, channel))
        flat = await asyncio.wait_for(calls.call(READ, keys, []), timeout)
    except (RedisUnavailable, TimeoutError):
        return None
    except RedisError as error:  # a refusal (an ACL): the operator must act
        log.warning("presence read of %s refused: %s", channel, error)
        return None
    return [PresenceMember(*member) for member in members_of(flat)]


def member_value(user: str, info: bytes | None) -> bytes:
    """A native presence member's value: the user (the owner), then its info."""
    return encode_value(user, b"-" if info is None else b"=" + info)


#: Error 108's message when Redis did not answer a presence read.
NOT_AVAILABLE_MESSAGE = "presence is kept in Redis, which did not answer; retry"


class RedisPresence:
    """The native ``presence`` / ``presence_stats`` ops on the hub, answered from Redis.

    The worker calls :meth:`present` for every subscriber of a ``presence = true``
    channel when it joins and when it leaves (unsubscribe, disconnect, a refused
    subscribe), and :meth:`on_tick` on every heartbeat. A connection that left without
    being told (a path that forgot) is dropped at the next refresh: only the channels
    still in ``conn.channels`` of an open connection are refreshed."""

    def __init__(self, calls: RedisCalls, settings: RedisConfig) -> None:
        self.sets = ExpiringSets(calls, settings.presence_ttl, self._keep)
        self._prefix = settings.prefix
        # (set, client id) -> (channel, its connection), for each member held here.
        self._conns: dict[tuple[SetKeys, str], tuple[str, Connection]] = {}

    def keys(self, channel: str) -> SetKeys:
        return channel_keys(self._prefix, channel)

    def present(self, channel: str, conn: Connection, here: bool) -> asyncio.Future[bool] | None:
        """``conn`` joined (``here``) or left ``channel``; one without an identity (not
        connected yet) is no member. A join's future is True once Redis lists it (the
        subscribe's reply waits for it), False if that write failed."""
        keys = self.keys(channel)
        if not here:
            if self._conns.pop((keys, conn.client_id), None) is not None:
                self.sets.drop(keys, conn.client_id)
            return None
        identity = conn.identity
        if identity is None:
            return None
        self._conns[(keys, conn.client_id)] = (channel, conn)
        return self.sets.put(keys, conn.client_id, member_value(identity.user, identity.info))

    def _keep(self, keys: SetKeys, client: str) -> bool:
        """Whether a member is still subscribed (asked before each refresh of it); one
        that is not is forgotten here and dropped from Redis."""
        held = self._conns.get((keys, client))
        if held is not None:
            channel, conn = held
            if not conn.closing and channel in conn.channels:
                return True
            del self._conns[(keys, client)]
        return False

    def on_tick(self, now: float) -> None:
        """Refresh the members whose turn came (``ExpiringSets.on_tick``)."""
        self.sets.on_tick(now)

    def answer(self, conn: Connection, command_id: int | None, channel: str, stats: bool) -> None:
        """Answer ``conn``'s ``presence`` (or ``presence_stats``) from Redis: the list (or
        counts) of every host, or error 108 if Redis did not answer."""
        keys = self.keys(channel)
        future = self.sets.counts(keys) if stats else self.sets.read(keys)

        def reply(done: asyncio.Future[Any]) -> None:
            error = None if done.cancelled() else done.exception()
            if done.cancelled() or error is not None:
                if not isinstance(error, RedisUnavailable | None):  # a bug: never a wrong list
                    log.error("presence read of %s failed: %s", channel, error)
                message = NOT_AVAILABLE_MESSAGE
                conn.send(protocol.encode_error(command_id, ErrorCode.NOT_AVAILABLE, message))
                return
            if stats:
                clients, users = done.result()
                conn.send(protocol.encode_ok(command_id, clients=int(clients), users=int(users)))
            else:
                conn.send(protocol.encode_presence(command_id, members_of(done.result())))

        future.add_done_callback(reply)
