"""Pusher presence rosters, occupancy and cache channels decided in Redis on the hub
(``[cluster] engine = "redis"``; docs/pusher.md, "Per engine").

On the mesh a Pusher channel's owner worker decides (``server.pusherowner``). On the hub
there is no owner: Redis is the authority, and the decisions the owner made are made by
one Lua script per channel operation, atomically, so whichever worker of whichever host
runs the script that decides an event is the one that announces it -- exactly once,
cluster-wide. The fronts are unchanged: they ask the engine the mesh's owner operations
(``pure.control``'s ``pusher.*``), which :class:`RedisPusher` answers from Redis.

Keys (every key of a channel carries the channel's internal name as its hash tag,
``<prefix>{<channel>}:...``, so one script touches one Redis Cluster slot):

* ``:sk`` hash, socket id -> ``"<holder> <user id>"``: the presence subscriptions;
* ``:us`` hash, user id -> its subscriptions; ``:ui`` hash, user id -> user_info;
* ``:wn`` hash, holder -> its subscriptions; ``:oc`` set, the holders with subscribers
  (occupancy webhooks' apps only: ``channel_occupied`` when it gets its first member,
  ``channel_vacated`` when it loses its last);
* ``:wk`` sorted set, holder -> the Redis time (ms) it expires at unless refreshed;
* ``:cache``, a cache channel's last event, with the app's ``cache_ttl`` (``PX``);
* ``<prefix>pusher:due`` (one key, not a channel's): sorted set, channel -> when a sweep
  should look at it (no later than its first holder's expiry).

A *holder* is one worker process (its member id and start time, :func:`holder_of`): a
restarted worker is a new holder. Beside the channels' keys, ``<prefix>pusher:holder:
<member>`` names a worker slot's current holder and ``<prefix>pusher:held:<holder>`` is
the set of channels where a holder has an entry.

Guarantees:

* ``member_added`` once per user per run of overlapping subscriptions, cluster-wide, and
  ``member_removed`` once when its last subscription leaves; the member limit counts
  distinct users across every host; a join that arrives twice counts once.
* ``channel_occupied`` / ``channel_vacated`` once per change, cluster-wide.
* A holder that stops refreshing (a worker SIGKILLed, a host lost or cut from Redis)
  expires ``ttl`` seconds (``[cluster.redis] presence_ttl``, as native presence) after
  its last refresh; its subscriptions leave then
  (``member_removed`` for users with none left, ``channel_vacated`` for channels with
  no holder left), decided by the first script on the channel after that: a live
  holder's refresh (every ``ttl / 3`` seconds) or a sweep (the first worker of every
  host, every :data:`SWEEP` seconds, picks the due channels of ``pusher:due`` and runs
  the same script; the script decides, so several sweepers announce once). The bound:
  gone within ``ttl + SWEEP`` seconds plus a round trip (:func:`bound`).
* A worker SIGKILLed and restarted by the supervisor: its next process, once connected,
  expires its predecessor's entries at once (:meth:`RedisPusher._take_over`), with the
  same announcements.
* A holder that blinks for less than ``2 * ttl / 3`` seconds announces nothing. One
  that was expired and comes back (a partition healed, Redis restarted empty) is told
  so by its next refresh: its fronts tell their subscriptions again (``decider``
  changes) and they are announced as new (``member_added``, ``channel_occupied``).
* A cache channel's last event is in Redis: it survives every shardws process.
* Redis unreachable or slow: an ask is answered None (the front refuses with 503, or
  retries), never a guess. A script whose answer came after its asker gave up still
  announces what it decided.

Not covered: a ``member_added`` decided on another host just before a join may reach
the joining connection after its ``subscription_succeeded`` listed that member (both
paths cross Redis, in different orders); pusher-js keeps one member. A script whose
answer is lost (the connection to Redis cut between the script and its answer, or
closed by the end of a drain) has its decision kept in Redis but not announced: other
clients keep that member (or miss that arrival) until they subscribe again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from redis.exceptions import ResponseError

from shardws.pure.cluster import slot_of
from shardws.pure.control import (
    OwnerReply,
    OwnerRequest,
    PusherCacheGetReply,
    PusherCacheGetRequest,
    PusherCachePutReply,
    PusherCachePutRequest,
    PusherJoinReply,
    PusherJoinRequest,
    PusherLeaveReply,
    PusherLeaveRequest,
    PusherOccupancyReply,
    PusherOccupancyRequest,
    PusherUsersReply,
    PusherUsersRequest,
)
from shardws.pure.publication import Kind, Publication
from shardws.pure.pusher.channels import pusher_name
from shardws.pure.pusher.webhooks import WebhookEvent, member_event
from shardws.server.engine import ASK_TIMEOUT
from shardws.server.mesh import MeshClient
from shardws.server.redisconn import RedisUnavailable, Script

if TYPE_CHECKING:
    from shardws.server.redisconn import RedisCalls

log = logging.getLogger("shardws.pusher.redis")

_ReplyT = TypeVar("_ReplyT", bound=OwnerReply)

#: A holder refreshes its entries every ``ttl / REFRESHES_PER_TTL`` seconds: one lost
#: refresh (or a late loop) does not expire it.
REFRESHES_PER_TTL = 3
#: Seconds between two sweeps of the due channels by each worker.
SWEEP = 1.0
#: Due channels one sweep takes, and the seconds it claims them for (other sweepers skip
#: them meanwhile; a sweeper that dies leaves them due again after the claim).
SWEEP_BATCH = 100
SWEEP_CLAIM = 5.0
#: A holder's own keys (its slot's holder name, its held set) live this many TTLs past
#: its last refresh: a successor booting later has nothing left to expire.
_KEYS_LIVE_TTLS = 3


def bound(ttl: float) -> float:
    """The stated bound: a dead holder's members are removed, and its channels vacated,
    within this many seconds of its death (``ttl`` after its last refresh, the next
    sweep, and a margin for the round trips)."""
    return ttl + SWEEP + 2.0


# The expiry every script on a channel runs first. KEYS: sk us ui wk wn oc. Sets
# ``now`` (Redis time, ms) and ``removed`` (users whose last subscription was a dead
# holder's) and ``vacated`` (1: the dead holders were the channel's last occupants).
_PRELUDE = """
local sk, us, ui, wk, wn, oc = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function drop_socket(socket, held, removed)
  local sp = string.find(held, ' ', 1, true)
  local holder, user = string.sub(held, 1, sp - 1), string.sub(held, sp + 1)
  redis.call('HDEL', sk, socket)
  if redis.call('HINCRBY', wn, holder, -1) <= 0 then redis.call('HDEL', wn, holder) end
  if redis.call('HINCRBY', us, user, -1) <= 0 then
    redis.call('HDEL', us, user)
    redis.call('HDEL', ui, user)
    removed[#removed + 1] = user
  end
end
local removed, vacated = {}, 0
local dead = redis.call('ZRANGEBYSCORE', wk, '-inf', now)
if #dead > 0 then
  local is_dead = {}
  for _, holder in ipairs(dead) do is_dead[holder] = true end
  local all = redis.call('HGETALL', sk)
  for i = 1, #all, 2 do
    local held = all[i + 1]
    if is_dead[string.sub(held, 1, string.find(held, ' ', 1, true) - 1)] then
      drop_socket(all[i], held, removed)
    end
  end
  for _, holder in ipairs(dead) do
    redis.call('ZREM', wk, holder)
    redis.call('HDEL', wn, holder)
    if redis.call('SREM', oc, holder) == 1 and redis.call('SCARD', oc) == 0 then
      vacated = 1
    end
  end
end
local function settle(holder, ttl)
  if redis.call('HEXISTS', wn, holder) == 1 or redis.call('SISMEMBER', oc, holder) == 1 then
    redis.call('ZADD', wk, now + ttl, holder)
    return 1
  end
  redis.call('ZREM', wk, holder)
  return 0
end
local function due()
  local first = redis.call('ZRANGE', wk, 0, 0, 'WITHSCORES')
  if #first == 0 then return 0 end
  return tonumber(first[2])
end
"""

# Every channel script answers {removed, vacated, due, holds, ...}: the expiry's outcome,
# when the channel is next due for a sweep (0: it holds nothing), and whether the holder
# that ran it still holds something there (1/0); then its own answer.

# ARGV: holder, socket, user, info ("" = none), max users, ttl ms, restore (1/0).
# Then: full (0 or the limit), first (1/0), {user, info, ...}.
_JOIN = Script(
    "pusher_join",
    _PRELUDE
    + """
local holder, socket, user, info = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local full, first = 0, 0
if not redis.call('HGET', sk, socket) then
  if redis.call('HEXISTS', us, user) == 0 and ARGV[7] ~= '1'
      and redis.call('HLEN', us) >= tonumber(ARGV[5]) then
    full = tonumber(ARGV[5])
  else
    redis.call('HSET', sk, socket, holder .. ' ' .. user)
    redis.call('HINCRBY', wn, holder, 1)
    if redis.call('HINCRBY', us, user, 1) == 1 then
      first = 1
      redis.call('HSET', ui, user, info)
    end
  end
end
local members = {}
if full == 0 then members = redis.call('HGETALL', ui) end
local holds = settle(holder, tonumber(ARGV[6]))
return {removed, vacated, due(), holds, full, first, members}
""",
)

# ARGV: holder, socket, ttl ms. Then: {user} -- the user whose last subscription this
# was, if any.
_LEAVE = Script(
    "pusher_leave",
    _PRELUDE
    + """
local left = {}
local held = redis.call('HGET', sk, ARGV[2])
if held then drop_socket(ARGV[2], held, left) end
local holds = settle(ARGV[1], tonumber(ARGV[3]))
return {removed, vacated, due(), holds, left}
""",
)

# ARGV: holder, occupied (1/0), ttl ms. Then: 1 channel_occupied, 2 channel_vacated, 0
# none.
_OCCUPANCY = Script(
    "pusher_occupancy",
    _PRELUDE
    + """
local holder, event = ARGV[1], 0
if ARGV[2] == '1' then
  if redis.call('SADD', oc, holder) == 1 and redis.call('SCARD', oc) == 1 then event = 1 end
elseif redis.call('SREM', oc, holder) == 1 and redis.call('SCARD', oc) == 0 then
  event = 2
end
local holds = settle(holder, tonumber(ARGV[3]))
return {removed, vacated, due(), holds, event}
""",
)

# ARGV: holder ("" for a sweep), ttl ms. ``holds`` 0: the holder had expired (or held
# nothing), so it must tell its entries again.
_REFRESH_BODY = """
local holds = 0
if ARGV[1] ~= '' and redis.call('ZSCORE', wk, ARGV[1]) then
  holds = 1
  redis.call('ZADD', wk, now + tonumber(ARGV[2]), ARGV[1])
end
return {removed, vacated, due(), holds}
"""
_REFRESH = Script("pusher_refresh", _PRELUDE + _REFRESH_BODY)

# ARGV: "", 0, a dead holder: expired at once (its entry's time set to 0 before the
# expiry runs), then as a sweep. A restarted worker runs it for its predecessor.
_DROP_HOLDER = Script(
    "pusher_drop_holder",
    "redis.call('ZADD', KEYS[4], 'XX', 0, ARGV[3])\n" + _PRELUDE + _REFRESH_BODY,
)

# Read only (the admin asks it, and does not announce): the users and subscriptions of
# live holders. KEYS: sk us wk. Returns {subscriptions, {user, ...}}.
_USERS = Script(
    "pusher_users",
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #dead == 0 then
  return {redis.call('HLEN', KEYS[1]), redis.call('HKEYS', KEYS[2])}
end
local is_dead, seen, users, count = {}, {}, {}, 0
for _, holder in ipairs(dead) do is_dead[holder] = true end
local all = redis.call('HGETALL', KEYS[1])
for i = 2, #all, 2 do
  local sp = string.find(all[i], ' ', 1, true)
  if not is_dead[string.sub(all[i], 1, sp - 1)] then
    count = count + 1
    local user = string.sub(all[i], sp + 1)
    if not seen[user] then
      seen[user] = true
      users[#users + 1] = user
    end
  end
end
return {count, users}
""",
)

# KEYS: the due index. ARGV: now is Redis's; how many; claim ms. The channels due, each
# claimed (its due time moved past the claim) so that other sweepers skip it meanwhile.
_CLAIM_DUE = Script(
    "pusher_claim_due",
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, channel in ipairs(due) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), channel)
end
return due
""",
)

SCRIPTS = (_JOIN, _LEAVE, _OCCUPANCY, _REFRESH, _DROP_HOLDER, _USERS, _CLAIM_DUE)

#: The owner operations answered from Redis on the hub.
REDIS_PUSHER_REQUESTS = (
    PusherJoinRequest,
    PusherLeaveRequest,
    PusherUsersRequest,
    PusherCachePutRequest,
    PusherCacheGetRequest,
    PusherOccupancyRequest,
)


def channel_keys(prefix: str, channel: str) -> list[str]:
    """The keys of ``channel``'s scripts, in the order of ``_PRELUDE``'s ``KEYS``."""
    base = f"{prefix}{{{channel}}}:"
    return [base + part for part in ("sk", "us", "ui", "wk", "wn", "oc")]


def cache_key(prefix: str, channel: str) -> str:
    return f"{prefix}{{{channel}}}:cache"


def due_key(prefix: str) -> str:
    return f"{prefix}pusher:due"


def holder_key(prefix: str, member: int) -> str:
    """The current holder of worker slot ``member`` (its process's name, below)."""
    return f"{prefix}pusher:holder:{member}"


def held_key(prefix: str, holder: str) -> str:
    """The channels where ``holder`` has an entry (what its successor expires at once)."""
    return f"{prefix}pusher:held:{holder}"


def holder_of(member: int, started_ms: int) -> str:
    """A worker process's name in the keys: its member id and start time (a restarted
    worker is a new holder). Never contains a space (the ``:sk`` values' separator)."""
    return f"{member}.{started_ms}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class Decided:
    """What a channel script decided beside its own answer: the users whose last
    subscription was a dead holder's (announce ``member_removed``), whether that vacated
    the channel, and when the channel is next due for a sweep (0: it holds nothing)."""

    removed: tuple[str, ...]
    vacated: bool
    due: int

    @classmethod
    def of(cls, answer: Sequence[Any]) -> Decided:
        return cls(tuple(_text(u) for u in answer[0]), bool(answer[1]), int(answer[2]))


def _members(flat: Sequence[bytes | str]) -> tuple[tuple[str, bytes | None], ...]:
    """``HGETALL``'s user/info pairs as ``PusherJoinReply.members``."""
    pairs = []
    for i in range(0, len(flat), 2):
        info = flat[i + 1]
        raw = info if isinstance(info, bytes) else info.encode()
        pairs.append((_text(flat[i]), raw or None))
    return tuple(pairs)


class RedisPusherReader:
    """What any process of a host asks of Redis about Pusher channels (the admin: the
    users of a presence channel, a cache channel's last event to keep). It decides
    nothing that must be announced."""

    def __init__(self, redis: RedisCalls, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        for script in SCRIPTS:
            redis.register(script)

    def handles(self, request: OwnerRequest[Any]) -> bool:
        """Whether ``request`` is answered from Redis (the Pusher owner operations)."""
        return isinstance(request, REDIS_PUSHER_REQUESTS)

    async def ask(self, request: OwnerRequest[_ReplyT], timeout: float) -> _ReplyT | None:
        """The answer to a Pusher owner operation, or None when Redis did not answer in
        ``timeout`` seconds (whatever it decided is still announced)."""
        call = self._call(request)
        if call is None:
            return None
        future, reply_of = call
        try:
            answer = await asyncio.wait_for(asyncio.shield(future), timeout)
        except (RedisUnavailable, TimeoutError) as exc:
            log.debug("pusher %s: Redis did not answer: %s", request.op, exc)
            return None
        except ResponseError as exc:  # e.g. Redis out of memory: refused, never a guess
            log.warning("pusher %s: Redis refused: %s", request.op, exc)
            return None
        return cast("_ReplyT", reply_of(answer))

    def tell(self, request: OwnerRequest[Any]) -> None:
        """:meth:`ask` with nobody waiting (notifications: a cache put, a restore)."""
        call = self._call(request)
        if call is not None:
            call[0].add_done_callback(_consume)

    def _call(
        self, request: OwnerRequest[Any]
    ) -> tuple[asyncio.Future[Any], Callable[[Any], OwnerReply]] | None:
        prefix = self.prefix
        if isinstance(request, PusherUsersRequest):
            keys = channel_keys(prefix, request.channel)
            future = self.redis.call(_USERS, [keys[0], keys[1], keys[3]], ())
            return future, _users_reply
        if isinstance(request, PusherCachePutRequest):
            ttl_ms = max(1, int(request.ttl * 1000))
            key = cache_key(prefix, request.channel)
            future = self.redis.command("SET", key, request.event, "PX", ttl_ms)
            return future, lambda _answer: PusherCachePutReply()
        if isinstance(request, PusherCacheGetRequest):
            future = self.redis.command("GET", cache_key(prefix, request.channel))
            return future, lambda answer: PusherCacheGetReply(
                None if answer is None else bytes(answer)
            )
        log.warning("pusher %s is not answered by this process", request.op)
        return None


def _users_reply(answer: Sequence[Any]) -> PusherUsersReply:
    return PusherUsersReply(tuple(_text(u) for u in answer[1]), int(answer[0]))


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve a call's outcome nobody waits for: a failure is logged, never raised (an
    unreachable Redis quietly: it is logged by the connection)."""
    if future.cancelled():
        return
    error = future.exception()
    if isinstance(error, ResponseError):
        log.warning("pusher: Redis refused a call: %s", error)
    elif error is not None:
        log.debug("pusher: a call failed: %s", error)


class PusherInRedis(MeshClient):
    """The engines' part on the hub (``server.redisengine``): the Pusher owner
    operations asked of a channel's decider are answered from Redis (``pusher``), the
    others as the mesh answers them."""

    pusher: RedisPusherReader

    async def ask(
        self, channel: str, request: OwnerRequest[_ReplyT], timeout: float = ASK_TIMEOUT
    ) -> _ReplyT | None:
        if self.pusher.handles(request):
            return await self.pusher.ask(request, timeout)
        return await super().ask(channel, request, timeout)

    def tell(self, channel: str, request: OwnerRequest[Any]) -> None:
        if self.pusher.handles(request):
            self.pusher.tell(request)
        else:
            super().tell(channel, request)


class Announcer(Protocol):
    """What a worker announces a channel's decided events with: a publication to the
    channel's subscribers everywhere (``Worker.publish_publication``)."""

    def publish_publication(self, channel: str, publication: Publication) -> None: ...


class RedisPusher(RedisPusherReader):
    """A worker's Pusher decisions in Redis (see the module): joins, leaves, occupancy,
    refreshes of what it holds and sweeps of the due channels. ``host`` publishes the
    announcements, ``webhook`` hands a webhook event to this host's admin (the Pusher
    front's, which drops those the app does not want)."""

    def __init__(
        self,
        redis: RedisCalls,
        prefix: str,
        member: int,
        host: Announcer,
        webhook: Callable[[str, WebhookEvent], None],
        ttl: float,
    ) -> None:
        super().__init__(redis, prefix)
        self.ttl = ttl
        self.holder = holder_of(member, int(time.time() * 1000))
        self._host = host
        self._webhook = webhook
        self._held: set[str] = set()  # channels where Redis has this holder's entry
        self._lost: dict[str, int] = {}  # channel -> times this holder's entry was lost
        self._due: dict[str, int] = {}  # due index changes to write (0: out of it)
        self._held_changes: dict[str, bool] = {}  # held set changes to write
        self._member = member
        self._took_over = False  # the previous process of this slot was expired
        #: The slot's previous holder as the SET that named this one answered ("": none),
        #: None until it answered.
        self._predecessor: str | None = None
        self._next_refresh = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_sweep = 0.0
        self._sweeps = slot_of(member) == 0  # each host's first worker sweeps

    def _call(
        self, request: OwnerRequest[Any]
    ) -> tuple[asyncio.Future[Any], Callable[[Any], OwnerReply]] | None:
        ttl_ms = int(self.ttl * 1000)
        if isinstance(request, PusherJoinRequest):
            channel = request.channel
            args: tuple[Any, ...] = (
                self.holder,
                request.socket_id,
                request.user_id,
                request.user_info or b"",
                request.max_members,
                ttl_ms,
                int(request.restore),
            )
            future = self._channel_call(_JOIN, channel, args, self._joined(request))
            return future, lambda answer: PusherJoinReply(_members(answer[6]), int(answer[4]))
        if isinstance(request, PusherLeaveRequest):
            args = (self.holder, request.socket_id, ttl_ms)
            future = self._channel_call(
                _LEAVE, request.channel, args, self._left(request.channel, request.socket_id)
            )
            return future, lambda _answer: PusherLeaveReply()
        if isinstance(request, PusherOccupancyRequest):
            args = (self.holder, int(request.occupied or request.restore), ttl_ms)
            future = self._channel_call(
                _OCCUPANCY, request.channel, args, self._occupancy(request.channel)
            )
            return future, lambda _answer: PusherOccupancyReply()
        return super()._call(request)

    # -- decisions ----------------------------------------------------------------------

    def _channel_call(
        self,
        script: Script,
        channel: str,
        args: Sequence[Any],
        decided: Callable[[Sequence[Any]], None] | None = None,
    ) -> asyncio.Future[Any]:
        """Run a channel script; when it answers (whoever waits), announce what its
        expiry decided, then what the operation decided (``decided``), and keep the
        due index and this holder's channels up to date. ``args[0]`` is the holder
        (``""``: a sweep, which holds nothing)."""
        future = self.redis.call(script, channel_keys(self.prefix, channel), args)
        sweep = not args[0]

        def done(answered: asyncio.Future[Any]) -> None:
            if answered.cancelled() or answered.exception() is not None:
                return
            answer = answered.result()
            self._expired(channel, Decided.of(answer))
            if decided is not None:
                decided(answer)
            if sweep:
                self._schedule(channel, int(answer[2]))
                return
            newly = channel not in self._held
            holds = bool(int(answer[3]))
            if holds != (not newly):
                self._note_held(channel, holds)
            if newly or not int(answer[2]) or script is _REFRESH:
                self._schedule(channel, int(answer[2]))

        future.add_done_callback(done)
        return future

    def _expired(self, channel: str, decided: Decided) -> None:
        for user in decided.removed:
            self._announce(channel, Publication(b"", Kind.LEAVE, "", "", user))
        if decided.vacated:
            self._send_webhook(channel, "channel_vacated")

    def _schedule(self, channel: str, due: int) -> None:
        """Keep ``channel``'s sweep time in the due index (no later than its first
        holder's expiry; out of it once the channel holds nothing). Sent after a
        holder's first entry, each refresh and each sweep: an index entry a race lost
        is written again by its holders' next refresh."""
        self._write_soon()
        self._due[channel] = due

    def _note_held(self, channel: str, holds: bool) -> None:
        """This holder has (``holds``) or no longer has an entry in ``channel``: kept in
        its held set too, for its successor (:meth:`_take_over`)."""
        if holds:
            self._held.add(channel)
        else:
            self._held.discard(channel)
        self._write_soon()
        self._held_changes[channel] = holds

    def _write_soon(self) -> None:
        if not (self._due or self._held_changes):
            asyncio.get_running_loop().call_soon(self._write_indexes)

    def _write_indexes(self) -> None:
        """The due index's and the held set's changes of one loop iteration: at most one
        ``ZADD``, ``ZREM``, ``SADD`` and ``SREM``."""
        due, self._due = self._due, {}
        held, self._held_changes = self._held_changes, {}
        key = due_key(self.prefix)
        scores = [item for channel, at in due.items() if at for item in (at, channel)]
        if scores:
            self.redis.command("ZADD", key, *scores).add_done_callback(_consume)
        gone = [channel for channel, at in due.items() if not at]
        if gone:
            self.redis.command("ZREM", key, *gone).add_done_callback(_consume)
        mine = held_key(self.prefix, self.holder)
        added = [channel for channel, holds in held.items() if holds]
        if added:
            self.redis.command("SADD", mine, *added).add_done_callback(_consume)
        removed = [channel for channel, holds in held.items() if not holds]
        if removed:
            self.redis.command("SREM", mine, *removed).add_done_callback(_consume)

    def _joined(self, request: PusherJoinRequest) -> Callable[[Sequence[Any]], None]:
        def joined(answer: Sequence[Any]) -> None:
            if int(answer[5]):
                data = request.user_info or b""
                publication = Publication(data, Kind.JOIN, "", request.socket_id, request.user_id)
                self._announce(request.channel, publication)

        return joined

    def _left(self, channel: str, socket_id: str) -> Callable[[Sequence[Any]], None]:
        def left(answer: Sequence[Any]) -> None:
            for user in answer[4]:
                self._announce(channel, Publication(b"", Kind.LEAVE, "", socket_id, _text(user)))

        return left

    def _occupancy(self, channel: str) -> Callable[[Sequence[Any]], None]:
        def decided(answer: Sequence[Any]) -> None:
            event = int(answer[4])
            if event == 1:
                self._send_webhook(channel, "channel_occupied")
            elif event == 2:
                self._send_webhook(channel, "channel_vacated")

        return decided

    def _announce(self, channel: str, publication: Publication) -> None:
        self._host.publish_publication(channel, publication)
        self._webhook(channel, member_event(channel, publication))

    def _send_webhook(self, channel: str, name: str) -> None:
        self._webhook(channel, WebhookEvent(name, pusher_name(channel)))

    # -- deciders -------------------------------------------------------------------------

    def decider(self, channel: str) -> Hashable:
        """Changes when Redis lost this holder's entries of ``channel`` (they expired, or
        Redis restarted empty): the front tells its subscriptions again then."""
        return self._lost.get(channel, 0)

    def can_decide(self) -> bool:
        return self.redis.up

    # -- refreshes and sweeps --------------------------------------------------------------

    def on_heartbeat(self, now: float) -> None:
        """Refresh what this worker holds every ``ttl / 3`` seconds, sweep the due
        channels every :data:`SWEEP` seconds if this is its host's first worker (``now``:
        monotonic seconds)."""
        if not self._took_over:
            # Not waiting for the connection: the first heartbeat comes before the worker
            # accepts connections, so this SET is queued on the pipelined connection ahead
            # of any join, and a process killed right after its first join has named
            # itself its slot's holder (its successor finds its entries).
            self._took_over = True
            self._spawn(self._take_over())
        if now >= self._next_refresh and self.redis.up:
            self._next_refresh = now + self.ttl / REFRESHES_PER_TTL
            self._refresh()
        if self._sweeps and now >= self._next_sweep and self.redis.up:
            self._next_sweep = now + SWEEP
            self._spawn(self._sweep())

    async def _take_over(self) -> None:
        """Once connected: name this process the holder of its slot, and expire at once
        the entries of the slot's previous process (a worker SIGKILLed and restarted by
        the supervisor, which starts the next process of a slot only once the previous
        one is gone), announcing what that decides -- instead of after its TTL."""
        keep_ms = int(self.ttl * 1000) * _KEYS_LIVE_TTLS
        try:
            if self._predecessor is None:
                previous = await self.redis.command(
                    "SET", holder_key(self.prefix, self._member), self.holder, "PX", keep_ms, "GET"
                )
                # Kept, so that a retry after a failure below does not read this process's
                # own name back (the SET ran) and expire its own live entries.
                self._predecessor = "" if previous is None else _text(previous)
            gone = self._predecessor
            if not gone or gone == self.holder:
                return
            channels = await self.redis.command("SMEMBERS", held_key(self.prefix, gone))
        except (RedisUnavailable, ResponseError) as exc:
            log.debug("pusher: the previous process's entries: %s", exc)
            self._took_over = False  # asked again on the next heartbeat
            return
        for raw in channels:
            channel = _text(raw)
            call = self._channel_call(_DROP_HOLDER, channel, ("", 0, gone))
            call.add_done_callback(_consume)
        self.redis.command("DEL", held_key(self.prefix, gone)).add_done_callback(_consume)

    def _refresh(self) -> None:
        ttl_ms = int(self.ttl * 1000)
        keep_ms = ttl_ms * _KEYS_LIVE_TTLS
        for key in (holder_key(self.prefix, self._member), held_key(self.prefix, self.holder)):
            self.redis.command("PEXPIRE", key, keep_ms).add_done_callback(_consume)
        for channel in list(self._held):
            self._channel_call(
                _REFRESH, channel, (self.holder, ttl_ms), self._refreshed(channel)
            ).add_done_callback(_consume)

    def _refreshed(self, channel: str) -> Callable[[Sequence[Any]], None]:
        def refreshed(answer: Sequence[Any]) -> None:
            # Runs before ``_channel_call`` updates ``_held`` from the answer.
            if not int(answer[3]) and channel in self._held:
                # Expired while away (or Redis lost it): the front tells it again.
                self._lost[channel] = self._lost.get(channel, 0) + 1
                log.warning(
                    "pusher: Redis lost this worker's entries of %s; telling again", channel
                )

        return refreshed

    async def _sweep(self) -> None:
        """Run the expiry of each due channel (claimed so that other sweepers skip it)."""
        try:
            due = await self.redis.call(
                _CLAIM_DUE, [due_key(self.prefix)], (SWEEP_BATCH, int(SWEEP_CLAIM * 1000))
            )
        except (RedisUnavailable, ResponseError) as exc:
            log.debug("pusher sweep: %s", exc)
            return
        for raw in due:
            self._channel_call(_REFRESH, _text(raw), ("", 0)).add_done_callback(_consume)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)  # keep a reference until done (asyncio holds weak ones)
        task.add_done_callback(self._tasks.discard)


__all__ = ["SWEEP", "PusherInRedis", "RedisPusher", "RedisPusherReader", "bound"]
