"""``server.redisconn``: one pipelined connection per process for scripts and commands,
against a real ``redis-server`` (tests/redisproc.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ResponseError
from redisproc import RedisServer, redis_command
from toolkit import wait_until

from shardws.config import RedisConfig
from shardws.server.redisconn import RedisCalls, RedisUnavailable, Script

ECHO = Script("echo", "return {KEYS[1], ARGV[1]}")
INCR = Script("incr", "return redis.call('INCR', KEYS[1])")
FAIL = Script("fail", "return redis.error_reply('ERR refused on purpose')")


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")).start() as server:
        yield server


def settings(server: RedisServer) -> RedisConfig:
    return RedisConfig(address=server.address, timeout=2.0, reconnect_max=0.2)


async def connected(calls: RedisCalls) -> None:
    calls.start()
    for _ in range(200):
        if calls.up:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("RedisCalls did not connect")


def test_the_calls_of_one_iteration_go_out_in_one_write_answered_in_order(
    redis: RedisServer,
) -> None:
    async def run() -> None:
        calls = RedisCalls(settings(redis), [ECHO, INCR])
        await connected(calls)
        before = calls.batches
        futures = [calls.call(INCR, ["counter"], []) for _ in range(50)]
        futures.append(calls.call(ECHO, ["k"], ["v"]))
        futures.append(calls.command("GET", "counter"))
        answers = await asyncio.gather(*futures)
        assert calls.batches == before + 1  # one write for the whole iteration
        first = answers[0]
        assert answers[:50] == list(range(first, first + 50))  # executed in call order
        assert answers[50] == [b"k", b"v"]
        assert int(answers[51]) == first + 49
        await calls.stop()

    asyncio.run(run())


def test_identity_of_a_server_without_persistence(redis: RedisServer) -> None:
    async def run() -> None:
        calls = RedisCalls(settings(redis))
        await connected(calls)
        identity = calls.identity
        assert identity is not None and len(identity.run_id) == 40
        assert not identity.durable and not identity.promoted
        await calls.stop()

    asyncio.run(run())


def test_identity_of_a_durable_server(tmp_path: Path) -> None:
    durable = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    with durable.start():

        async def run() -> None:
            calls = RedisCalls(settings(durable))
            await connected(calls)
            assert calls.identity is not None and calls.identity.durable
            await calls.stop()

        asyncio.run(run())


def test_a_durable_master_with_a_replica_is_not_trusted_and_a_promotion_is_another_writer(
    tmp_path: Path,
) -> None:
    """Durable is a promise about a restart of one server alone: with a replica attached, a
    promoted copy may lag, so it is not made (nor where shardws is configured with
    sentinels or cluster nodes). A promoted replica is ``promoted``, and its writer (run id
    and replication id) is not its former master's, though it holds the master's data."""
    flags = ("--appendonly", "yes", "--appendfsync", "always")
    with RedisServer(tmp_path / "master", *flags).start() as master:
        replica = RedisServer(
            tmp_path / "replica", *flags, "--replicaof", "127.0.0.1", str(master.port)
        )
        with replica.start():
            wait_until(
                lambda: b"connected_slaves:1" in redis_command(master.port, "INFO", "replication"),
                timeout=10,
            )

            async def run() -> None:
                calls = RedisCalls(settings(master))
                await connected(calls)
                assert calls.identity is not None
                assert not calls.identity.durable and not calls.identity.promoted
                former = calls.identity.writer
                await calls.stop()
                redis_command(replica.port, "REPLICAOF", "NO", "ONE")
                promoted = RedisCalls(settings(replica))
                await connected(promoted)
                assert promoted.identity is not None and promoted.identity.promoted
                assert promoted.identity.writer != former
                await promoted.stop()

            asyncio.run(run())


def test_a_flushed_script_cache_is_reloaded_and_a_script_error_is_the_calls_own(
    redis: RedisServer,
) -> None:
    async def run() -> None:
        calls = RedisCalls(settings(redis), [ECHO])
        await connected(calls)
        await calls.command("SCRIPT", "FLUSH")
        assert await calls.call(ECHO, ["a"], ["b"]) == [b"a", b"b"]  # NOSCRIPT, retried
        with pytest.raises(ResponseError, match="refused on purpose"):
            await calls.call(FAIL, [], [])
        assert await calls.command("PING") in (b"PONG", "PONG", True)  # still in step
        await calls.stop()

    asyncio.run(run())


def test_calls_fail_with_redis_unavailable_while_redis_is_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    with server.start():

        async def run() -> None:
            calls = RedisCalls(settings(server), [ECHO])
            await connected(calls)
            server.kill()
            with pytest.raises(RedisUnavailable):
                await calls.call(ECHO, ["a"], ["b"])
            for _ in range(100):  # down: fails at once, without a connection
                if not calls.up:
                    break
                await asyncio.sleep(0.02)
            with pytest.raises(RedisUnavailable):
                await calls.command("PING")
            assert calls.failures >= 2
            server.start()  # the same port: it reconnects by itself
            await connected(calls)
            assert await calls.call(ECHO, ["a"], ["b"]) == [b"a", b"b"]
            assert calls.reconnects >= 1
            await calls.stop()

        asyncio.run(run())
