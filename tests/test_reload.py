"""SIGHUP reloads that change the worker count, and a reload whose workers cannot boot.

Real ``shardws serve`` processes; a stream of new connections runs through every roll and
counts attempts that were refused (connection refused or reset, or an HTTP error instead
of the upgrade). A connection that is accepted and then sent away with a ``reconnect``
push by a draining worker is not refused: that is the drain protocol.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time
from pathlib import Path

import websockets
from rawws import FrameReader, upgrade
from serverproc import ServerProcess, http_json
from toolkit import run, timeout
from wsclient import clients_on_workers

from benchmarks.tlscert import self_signed

STREAM_CONNECTORS = 4


class ConnectionStream:
    """Opens connections back to back from a few tasks until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.accepted = 0
        self.refused: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(STREAM_CONNECTORS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                async with websockets.connect(self.url, open_timeout=timeout(10)) as ws:
                    first = json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))
                    assert first["type"] in ("connected", "reconnect"), first
                    self.accepted += 1
            except (OSError, websockets.InvalidStatus, websockets.InvalidHandshake) as exc:
                self.refused.append(repr(exc))
            except websockets.ConnectionClosed as exc:
                # Closed before the first message: only a drain's 1001 is acceptable.
                if exc.rcvd is None or exc.rcvd.code != 1001:
                    self.refused.append(repr(exc))
                else:
                    self.accepted += 1
            await asyncio.sleep(0.005)


async def _roll_under_stream(proc: ServerProcess, workers: int, completed: int) -> int:
    """Rewrite ``workers``, SIGHUP, and wait for reload number ``completed`` to finish
    while connections stream in; returns how many connections were accepted meanwhile."""
    text = proc.config_path.read_text()
    proc.config_path.write_text(re.sub(r"(?m)^workers = \d+", f"workers = {workers}", text))
    stream = ConnectionStream(proc.url)
    stream.start()
    await asyncio.sleep(0.3)
    proc.signal(signal.SIGHUP)
    await asyncio.to_thread(proc.wait_log, "reload complete", completed, 60)
    await asyncio.sleep(0.3)
    await stream.stop()
    assert stream.refused == [], f"{len(stream.refused)} refused: {stream.refused[:5]}"
    return stream.accepted


def test_reload_grows_and_shrinks_the_worker_count_refusing_no_connection(
    tmp_path: Path,
) -> None:
    with ServerProcess(tmp_path, workers=2, server="max_workers = 4").start() as proc:
        proc.wait_log(r"process\(es\) ready")
        accepted = run(_roll_under_stream(proc, 3, 1), 90)
        assert accepted > 0
        body = proc.wait_healthy()
        assert [w["worker"] for w in body["per_worker"]] == [0, 1, 2]

        async def pubsub_across(workers: int) -> None:
            clients = await clients_on_workers(proc.url, workers)
            for client in clients:
                assert (await client.call("subscribe", channel="roll"))["ok"]
            for sender in clients:
                assert (await sender.call("publish", channel="roll", data=sender.worker))["ok"]
                for receiver in clients:
                    push = await receiver.next_push()
                    assert push["data"] == sender.worker, push
            for client in clients:
                await client.close()

        run(pubsub_across(3))  # the added worker is on the bus both ways

        run(_roll_under_stream(proc, 1, 2), 90)
        body = proc.wait_healthy()
        assert [w["worker"] for w in body["per_worker"]] == [0]
        assert "retired worker 2" in proc.logs() and "retired worker 1" in proc.logs()
        run(pubsub_across(1))

        # Beyond max_workers: refused, the key named, nothing changes.
        text = proc.config_path.read_text()
        proc.config_path.write_text(re.sub(r"(?m)^workers = \d+", "workers = 5", text))
        proc.signal(signal.SIGHUP)
        proc.wait_log(r"\[server\] max_workers")
        assert "reload refused" in proc.logs()
        assert len(proc.wait_healthy()["per_worker"]) == 1


def test_a_sighup_during_a_reload_reloads_again_once_it_is_over(tmp_path: Path) -> None:
    """The config changed after the running reload read it: a SIGHUP then is not lost
    (found by the soak: a worker count changed during a roll stayed unapplied)."""
    with ServerProcess(tmp_path, workers=1, server="max_workers = 4").start() as proc:
        proc.wait_log(r"process\(es\) ready")
        text = proc.config_path.read_text()
        proc.config_path.write_text(re.sub(r"(?m)^workers = \d+", "workers = 2", text))
        proc.signal(signal.SIGHUP)
        proc.wait_log(r"reload: \d+ step\(s\), 1 -> 2 worker")
        proc.config_path.write_text(re.sub(r"(?m)^workers = \d+", "workers = 3", text))
        proc.signal(signal.SIGHUP)  # the first reload is still rolling (drains take seconds)
        proc.wait_log("reloading again once it is over")
        proc.wait_log(r"reload: \d+ step\(s\), 2 -> 3 worker", limit=60)
        proc.wait_log("reload complete", count=2, limit=60)
        assert [w["worker"] for w in proc.wait_healthy()["per_worker"]] == [0, 1, 2]


def test_a_reload_says_the_bus_forwarder_keeps_its_high_water_mark(tmp_path: Path) -> None:
    """A reload changing ``bus_hwm`` rolls out (the workers take it) and says that the
    bus forwarder, which a reload does not replace, keeps its own until a restart."""
    with ServerProcess(tmp_path, workers=1, server="bus_hwm = 5000").start() as proc:
        proc.wait_log(r"process\(es\) ready")
        text = proc.config_path.read_text()
        proc.config_path.write_text(text.replace("bus_hwm = 5000", "bus_hwm = 7000"))
        proc.signal(signal.SIGHUP)
        proc.wait_log("reload complete", limit=60)
        assert (
            "[server] bus_hwm = 7000 reaches the workers; the bus forwarder keeps 5000"
            in proc.logs()
        )


def test_a_reload_refused_for_a_bad_file_logs_every_error_on_one_line(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=1).start() as proc:
        proc.wait_log(r"process\(es\) ready")
        text = proc.config_path.read_text()
        proc.config_path.write_text(text + '\n[limits]\ncommand_burst = "x"\nprot = 1\n')
        proc.signal(signal.SIGHUP)
        proc.wait_log("reload refused")
        (line,) = [line for line in proc.logs().splitlines() if "reload refused" in line]
        assert "[limits] command_burst: expected an integer >= 1, got 'x'" in line
        assert "; " in line and "unknown key [limits] prot" in line
        assert proc.wait_healthy()["status"] == "ok"  # still serving, on the old config


def test_reload_whose_workers_cannot_boot_rolls_back(tmp_path: Path) -> None:
    """The new config validates, but its TLS key is broken before the new workers start
    (an operator's deploy replaced the file): the roll is reversed, the service keeps
    serving the old config, and nothing restarts in a loop."""
    cert, key = self_signed(tmp_path)
    with ServerProcess(tmp_path, workers=2).start() as proc:
        proc.wait_log(r"process\(es\) ready")
        old_pids = {w["pid"] for w in proc.wait_healthy()["per_worker"]}
        original = proc.config_path.read_text()
        proc.config_path.write_text(
            original.replace("workers = 2", "workers = 3")
            + f'\n[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        )
        proc.signal(signal.SIGHUP)
        proc.wait_log(r"reload: \d+ step")
        Path(key).write_text("not a key any more\n")  # before the first new worker boots

        async def stream_through_rollback() -> None:
            stream = ConnectionStream(proc.url)
            stream.start()
            await asyncio.to_thread(proc.wait_log, "reload rolled back", 1, 60)
            await stream.stop()
            assert stream.refused == [], stream.refused[:5]
            assert stream.accepted > 0

        run(stream_through_rollback(), 90)
        logs = proc.logs()
        assert "did not boot with the new configuration; rolling back" in logs
        body = proc.wait_healthy()
        assert [w["worker"] for w in body["per_worker"]] == [0, 1]

        # Plain ws:// still works on both workers (the old config, without TLS).
        async def plain_on_both() -> None:
            for client in await clients_on_workers(proc.url, 2):
                await client.close()

        run(plain_on_both())
        # Worker 1 was never replaced (the roll stopped at the first failure).
        assert [w for w in body["per_worker"] if w["pid"] in old_pids]
        # No restart storm: a handful of boots, not a loop.
        assert len(re.findall(r"started worker", proc.logs())) <= 6


def test_a_drain_waits_for_a_handshake_in_flight(tmp_path: Path) -> None:
    """A client whose loop runs late sends its upgrade request after the worker that
    accepted its TCP connection began draining: it still gets the upgrade, then the
    reconnect hint and close 1001, not a reset when that worker exits."""
    with ServerProcess(tmp_path, workers=1).start() as proc:
        proc.wait_log(r"process\(es\) ready")
        sock = socket.create_connection(("127.0.0.1", proc.ws_port), timeout=timeout(10))
        try:
            time.sleep(0.5)  # accepted by the worker, no request yet
            proc.signal(signal.SIGHUP)
            proc.wait_log("draining 0 connection")
            time.sleep(1.5)  # past the drain's handshake grace (0.3 s) and its sends
            head, rest = upgrade(sock, "/ws")
            assert head.startswith(b"HTTP/1.1 101"), head
            reader = FrameReader(sock, rest)
            first, payload = reader.next()
            while first == 0x81 and b'"reconnect"' not in payload:
                first, payload = reader.next()  # the connected greeting
            assert first == 0x81 and json.loads(payload)["type"] == "reconnect", payload
            assert reader.close_code() == 1001
        finally:
            sock.close()
        proc.wait_log("reload complete")


def test_a_reload_keeps_the_admin_unless_its_configuration_changes(tmp_path: Path) -> None:
    """A SIGHUP with the same configuration, or another worker count, replaces the workers
    only: the admin keeps running (replacing it would lose what is inside it). A change
    the admin reads (here its API key) replaces it, and the new key works."""
    key, new_key = "a" * 24, "b" * 24
    with ServerProcess(
        tmp_path, workers=2, server="max_workers = 3", admin=f'api_key = "{key}"'
    ).start() as proc:
        proc.wait_log(r"process\(es\) ready")
        pids = {w["pid"] for w in proc.wait_healthy()["per_worker"]}
        proc.signal(signal.SIGHUP)
        proc.wait_log("reload complete", 1, 60)
        assert "keeping the admin running" in proc.logs()
        assert not {w["pid"] for w in proc.wait_healthy()["per_worker"]} & pids  # replaced
        text = proc.config_path.read_text()
        proc.config_path.write_text(re.sub(r"(?m)^workers = \d+", "workers = 3", text))
        proc.signal(signal.SIGHUP)
        proc.wait_log("reload complete", 2, 60)
        assert proc.logs().count("keeping the admin running") == 2
        assert proc.logs().count("admin ready on") == 1
        proc.config_path.write_text(proc.config_path.read_text().replace(key, new_key))
        proc.signal(signal.SIGHUP)
        proc.wait_log("reload complete", 3, 60)
        assert proc.logs().count("admin ready on") == 2
        status, _body = http_json(proc.admin_url + "/api/stats", key=new_key)
        assert status == 200
