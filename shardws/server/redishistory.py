"""History channels decided and kept in Redis (``[cluster] engine = "redis"``).

On the hub no worker owns a history channel: Redis is its decider. Each answer is one
Lua script (``EVALSHA`` on the process's pipelined connection, ``server.redisconn``), so
the offset, the epoch, the idempotency window and the stored history of a channel
change atomically, in one round trip, whatever process asks:

* **publish** -- a repeated ``idem`` still in the ring answers its first position and
  does nothing; otherwise ``HINCRBY`` the offset, ``XADD`` to the channel's stream
  (``MAXLEN history_size``, exact), and ``PUBLISH`` to ``prefix + "c<channel>\\0"``
  (``SPUBLISH`` to its shard channel on a Redis Cluster) a
  payload that *is* a host bus frame body: ``HEADER(origin=DECIDER_MEMBER,
  incarnation from the epoch, first_seq=offset, count=1, stamp)`` + the publication
  record with its position. Every hub puts it on its host bus unchanged
  (``RedisHub._on_remote_frame``), so a host that misses one sees a gap in offsets
  (``bus_lost``) and its workers' trackers repair it from here (``server.owners``).
* **position** (a subscribe, a repair, the periodic check) -- the channel's position,
  and with ``since`` whether that is recoverable: the publications after it, or why not.
* **page** -- a page of the history (the ``history`` op, ``GET /api/history``).

Keys of a channel share one hash tag (``<prefix>{<channel>}:m`` meta hash, ``:s``
stream, ``:i`` idempotency keys by offset), so Redis Cluster can hold a channel on one
node. As on the mesh (``pure.history.Ring``): publications older than
``history_ttl`` leave the ring, and a channel unused for twice its TTL is forgotten
(the keys expire; ``history_ttl = 0``: never).

**The epoch that never lies.** Every script first compares the channel's writer (the
``run_id`` and replication id of the Redis server that last wrote it: one lineage of
writes; and whether that server was durable: ``appendonly yes`` with ``appendfsync
always``, a master without replicas, no Sentinel or Cluster configured) with the server
running it (``ServerIdentity``, learnt at connect). When the writer changed, the channel keeps its
epoch only if the former writer was durable and the current server is no promoted
replica; otherwise -- and when the channel's meta is missing -- it starts a new epoch
(offset 0, its stream and idempotency keys dropped). So a restart of a durable Redis
keeps every epoch; a restart without persistence, from an older RDB file, with
``appendfsync everysec`` after a crash, and every failover (even a lossless one: from
outside nobody can prove that the promoted replica had every publication that
subscribers saw, since ``PUBLISH`` precedes any ``WAIT``) starts new epochs: an offset
is never handed out twice within one epoch, whatever Redis lost. The cost: one
``HMGET`` in each script. Clients recovering across a new epoch get ``recovered:
false`` with ``reason: "epoch_changed"``. Not covered: an operator who restores an older
backup into a server configured durable must delete the prefix's keys first (the
restored meta would claim a durable writer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from redis.exceptions import RedisError

from shardws.pure.busframe import channel_topic
from shardws.pure.cluster import DECIDER_MEMBER
from shardws.pure.control import (
    HistoryPageReply,
    HistoryPageRequest,
    HistoryPositionReply,
    HistoryPositionRequest,
    HistoryPositionsReply,
    HistoryPositionsRequest,
    HistoryPublishReply,
    HistoryPublishRequest,
    OwnerReply,
    OwnerRequest,
)
from shardws.pure.history import Position, Unrecovered, new_epoch
from shardws.pure.protocol import MAX_HISTORY_PAGE
from shardws.pure.publication import Publication
from shardws.pure.redisslots import redis_channel
from shardws.server.redisconn import RedisCalls, RedisUnavailable, Script

if TYPE_CHECKING:
    from shardws.config import NamespaceConfig, RedisConfig

log = logging.getLogger("shardws.redishistory")

_ReplyT = TypeVar("_ReplyT", bound=OwnerReply)

# Every script starts here. KEYS: meta, stream, idempotency keys. ARGV: the server's
# identity (writer: its run id and replication id, durable, promoted: see
# redisconn.ServerIdentity), a fresh epoch in case
# one must start, the TTL in ms (0: none), the ring's size; the script's own after.
_OPEN = """
local meta, stream, idem = KEYS[1], KEYS[2], KEYS[3]
local writer, durable, promoted, fresh = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl_ms, size = tonumber(ARGV[5]), tonumber(ARGV[6])
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local epoch, offset
local state = redis.call('HMGET', meta, 'e', 'o', 'w', 'd')
if state[1] and (state[3] == writer or (state[4] == '1' and promoted == '0')) then
  -- The same server in one lineage (no restart, promotion or resync since it wrote), or
  -- a durable one's data (a lone master, every write fsynced) on a server that is no
  -- promoted replica.
  epoch, offset = state[1], tonumber(state[2])
  if state[3] ~= writer or state[4] ~= durable then
    redis.call('HSET', meta, 'w', writer, 'd', durable)
  end
else
  -- No history, or a server that may lack what an earlier one acknowledged: a new epoch.
  redis.call('DEL', stream, idem)
  epoch, offset = fresh, 0
  redis.call('HSET', meta, 'e', epoch, 'o', 0, 'w', writer, 'd', durable)
end
local function touch()
  -- An idle channel is forgotten after twice its TTL, as the mesh forgets a ring.
  if ttl_ms > 0 then
    for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, 2 * ttl_ms) end
  end
end
local function offset_of(id) return tonumber(string.match(id, '^(%d+)')) end
-- Publications older than the TTL leave the ring; first_at: the oldest offset held.
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
if ttl_ms > 0 then
  local horizon = now_ms - ttl_ms
  for _ = 1, size do
    if not first or tonumber(first[2][4]) >= horizon then break end
    redis.call('XDEL', stream, first[1])
    first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  end
end
local first_at = first and offset_of(first[1]) or offset + 1
local function entry_id(at) return string.format('%d-0', at) end
local function entries(list, answer)
  for _, entry in ipairs(list) do
    answer[#answer + 1] = offset_of(entry[1])
    answer[#answer + 1] = entry[2][2]
  end
  return answer
end
"""

# ARGV[7..]: idem ('' for none), data, the Redis channel, the origin member id, the
# command that publishes (PUBLISH, or SPUBLISH on a Redis Cluster).
# Answers {epoch, offset, stored (1, or 0 for a repeated idem)}.
PUBLISH = Script(
    "history.publish",
    _OPEN
    + """
local key, data, topic, origin, verb = ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10]), ARGV[11]
if key ~= '' then
  local earlier = redis.call('ZSCORE', idem, key)
  if earlier and tonumber(earlier) >= first_at then
    touch()
    return {epoch, tonumber(earlier), 0}
  end
end
offset = redis.call('HINCRBY', meta, 'o', 1)
redis.call('XADD', stream, 'MAXLEN', size, entry_id(offset), 'd', data, 't', now_ms)
if key ~= '' then
  -- The keys of publications that left the ring (MAXLEN keeps the last size offsets).
  redis.call('ZADD', idem, offset, key)
  redis.call('ZREMRANGEBYSCORE', idem, '-inf', '(' .. math.max(first_at, offset - size + 1))
end
touch()
-- The payload is a host bus frame body (pure.busframe, pure.publication).
local record = struct.pack('>BHHHHI8', 0, 0, 0, 0, #epoch, offset) .. epoch .. data
local incarnation = tonumber(string.sub(epoch, 1, 8), 16)
local stamp = tonumber(clock[1]) * 1000000000 + tonumber(clock[2]) * 1000
local header = struct.pack('>I4I4I8I4I8I4', origin, incarnation, offset, 1, stamp, #record)
redis.call(verb, topic, header .. record)
return {epoch, offset, 1}
""",
    identity=True,
)

# ARGV[7..]: the client's epoch ('' for none) and offset. Answers {epoch, offset} without
# one; with one {epoch, offset, ''} and the publications after it (offset, data)*, or
# {epoch, offset, reason}.
POSITION = Script(
    "history.position",
    _OPEN
    + """
touch()
local answer = {epoch, offset}
local since_epoch, since = ARGV[7], tonumber(ARGV[8])
if since_epoch == '' then return answer end
local reason = ''
if since_epoch ~= epoch then reason = 'epoch_changed'
elseif since > offset then reason = 'ahead'
elseif since < 0 or since + 1 < first_at then reason = 'left_ring' end
answer[3] = reason
if reason ~= '' or since == offset then return answer end
return entries(redis.call('XRANGE', stream, entry_id(since + 1), '+'), answer)
""",
    identity=True,
)

# ARGV[7..]: since, limit, reverse ('1'/'0'). Answers {epoch, offset, (offset, data)*}.
PAGE = Script(
    "history.page",
    _OPEN
    + """
touch()
local since, limit, reverse = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9] == '1'
-- A since past the top is an empty page (or, reversed, the newest): never an entry id
-- too large for XRANGE.
since = math.min(since, offset + 1)
local answer = {epoch, offset}
if limit <= 0 then return answer end
if not reverse then
  local start = entry_id(math.max(since, 0) + 1)
  return entries(redis.call('XRANGE', stream, start, '+', 'COUNT', limit), answer)
end
local below = since <= 0 and offset + 1 or since
if below <= 1 then return answer end
return entries(redis.call('XREVRANGE', stream, entry_id(below - 1), '-', 'COUNT', limit), answer)
""",
    identity=True,
)

SCRIPTS = (PUBLISH, POSITION, PAGE)


class RedisHistory:
    """History channels decided in Redis, for one process (a worker or the admin):
    answers the history requests of ``pure.control`` as a mesh owner would. ``calls``
    is the process's Redis connection, ``settings`` its ``[cluster.redis]`` (the keys'
    prefix; on a Redis Cluster, ``cluster_nodes``: publications go out with
    ``SPUBLISH`` on the channel's shard channel, ``pure.redisslots.redis_channel``, whose
    slot is its keys'), ``options_of(channel)`` the channel's namespace; ``on_stored()``
    is called for each publication stored (not for a repeated ``idem``)."""

    def __init__(
        self,
        calls: RedisCalls,
        settings: RedisConfig,
        options_of: Callable[[str], NamespaceConfig],
        on_stored: Callable[[], None] = lambda: None,
    ) -> None:
        self._calls = calls
        self._prefix = settings.prefix
        self._sharded = bool(settings.cluster_nodes)
        self._options_of = options_of
        self._on_stored = on_stored
        for script in SCRIPTS:
            calls.register(script)
        self.failures = 0  # requests not answered (Redis down, timeout, refused)

    async def ask(self, request: OwnerRequest[_ReplyT], timeout: float) -> _ReplyT | None:
        """The answer to a history request (``owners.is_history_request``), or None when
        Redis did not answer within ``timeout`` seconds (or refused: logged)."""
        try:
            answer, parse = self._start(request)
            # On the script's future itself: no task per request (one per publication).
            reply = parse(await asyncio.wait_for(answer, timeout))
        except (RedisUnavailable, RedisError, TimeoutError, ValueError) as exc:
            self.failures += 1
            log.debug("history request %s not answered: %r", request.op, exc)
            return None
        return cast("_ReplyT", reply)

    def _start(
        self, request: OwnerRequest[Any]
    ) -> tuple[asyncio.Future[Any], Callable[[Any], OwnerReply]]:
        """The script calls for ``request`` (made now, in order with this process's
        others) and how to read their answer."""
        if isinstance(request, HistoryPublishRequest):
            return self._publish(request.channel, request.data, request.idem), self._published
        if isinstance(request, HistoryPositionRequest):
            since = request.since
            epoch, offset = ("", 0) if since is None else since
            answer = self._run(POSITION, request.channel, epoch, offset)
            return answer, lambda raw: _position_reply(raw, since is not None)
        if isinstance(request, HistoryPageRequest):
            limit = min(max(request.limit, 0), MAX_HISTORY_PAGE)
            reverse = "1" if request.reverse else "0"
            answer = self._run(PAGE, request.channel, request.since, limit, reverse)
            return answer, _page_reply
        if isinstance(request, HistoryPositionsRequest):
            channels = request.channels
            answers = asyncio.gather(*(self._run(POSITION, c, "", 0) for c in channels))
            return answers, lambda raw: HistoryPositionsReply(
                {c: _position(one) for c, one in zip(channels, raw, strict=True)}
            )
        raise ValueError(f"not a history request: {request.op}")

    def _run(self, script: Script, channel: str, *args: Any) -> asyncio.Future[Any]:
        options = self._options_of(channel)
        base = f"{self._prefix}{{{channel}}}:"
        keys = (base + "m", base + "s", base + "i")
        ttl_ms = int(options.history_ttl * 1000)
        return self._calls.call(script, keys, (new_epoch(), ttl_ms, options.history_size, *args))

    def _publish(self, channel: str, data: bytes, idem: str | None) -> asyncio.Future[Any]:
        """Store and publish ``data`` (see the module): answers its position (the first
        one's, for a repeated ``idem``) and whether it was stored."""
        prefix, topic = self._prefix.encode(), channel_topic(channel)
        if self._sharded:
            redis_topic, verb = redis_channel(prefix, topic), "SPUBLISH"
        else:
            redis_topic, verb = prefix + topic, "PUBLISH"
        return self._run(PUBLISH, channel, idem or "", data, redis_topic, DECIDER_MEMBER, verb)

    def _published(self, answer: list[Any]) -> HistoryPublishReply:
        if int(answer[2]):
            self._on_stored()
        return HistoryPublishReply(_position(answer))


def _position_reply(answer: list[Any], recovering: bool) -> HistoryPositionReply:
    """The channel's position; when ``recovering``, whether the client's position is
    recovered (and the publications after it) or why not."""
    top = _position(answer)
    if not recovering:
        return HistoryPositionReply(top)
    reason = _text(answer[2])
    if reason:
        return HistoryPositionReply(top, False, reason=Unrecovered(reason))
    return HistoryPositionReply(top, True, _publications(top.epoch, answer[3:]))


def _page_reply(answer: list[Any]) -> HistoryPageReply:
    top = _position(answer)
    return HistoryPageReply(top, _publications(top.epoch, answer[2:]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _position(answer: list[Any]) -> Position:
    return Position(_text(answer[0]), int(answer[1]))


def _publications(epoch: str, flat: list[Any]) -> tuple[Publication, ...]:
    """(offset, data)* from a script's answer, as publications of ``epoch``."""
    return tuple(
        Publication(bytes(flat[i + 1]), position=Position(epoch, int(flat[i])))
        for i in range(0, len(flat), 2)
    )
