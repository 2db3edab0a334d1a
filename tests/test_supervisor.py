"""Supervisor duties seen from outside: stuck workers replaced, systemd notifications."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rawws import handshake
from serverproc import ServerProcess
from toolkit import run, timeout, wait_until, wait_until_async
from wsclient import Client, clients_on_workers

#: Admission control off, so the flood below is served, not refused.
_NO_ADMISSION = "[limits]\noverload_loop_lag = 0\n"
#: Raw connections flooding one worker with frames.
FLOOD_CONNECTIONS = 40


def test_worker_with_a_stuck_loop_is_killed_and_replaced(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=2, server="heartbeat_timeout = 1").start() as proc:
        _, body = proc.health()
        stuck = body["per_worker"][1]["pid"]
        os.kill(stuck, signal.SIGSTOP)  # its event loop stops stamping the heartbeat
        body = proc.wait_healthy(20.0, exclude_pids={stuck})
        assert body["per_worker"][1]["restarts"] == 1
        assert body["per_worker"][0]["restarts"] == 0
        assert "heartbeat is" in proc.logs() and "killing it" in proc.logs()


def test_a_worker_spinning_in_a_loop_of_its_own_is_killed_and_replaced(tmp_path: Path) -> None:
    """Busy is not the same as working: a loop spinning in code that does no work (a bug)
    uses a whole core and shows no progress, so it is replaced like a stopped one."""
    extra = '[diagnostics]\nstall_path = "/stall"\n'
    server = ServerProcess(tmp_path, workers=2, server="heartbeat_timeout = 1", extra=extra)
    with server.start() as proc:
        _, body = proc.health()
        pids = {w["pid"] for w in body["per_worker"]}
        with socket.create_connection(("127.0.0.1", proc.ws_port), timeout=timeout(5)) as sock:
            sock.sendall(b"GET /stall?seconds=120 HTTP/1.1\r\nHost: x\r\n\r\n")
            proc.wait_log("killing it", limit=20)
        body = proc.wait_healthy(20.0)  # degraded from the kill until the new one is ready
        restarted = [w for w in body["per_worker"] if w["restarts"]]
        assert len(restarted) == 1 and restarted[0]["pid"] not in pids, body
        assert "made no progress" in proc.logs()


def test_a_worker_late_because_it_is_busy_is_not_killed(tmp_path: Path) -> None:
    """A loop flooded with frames (here unsolicited PONGs, RFC 6455 5.5.3, from raw
    sockets) runs its timers seconds late while it works through them: its heartbeat is
    older than heartbeat_timeout, its progress is not, and it is left alone (before,
    the supervisor killed it and dropped every connection it held)."""
    with ServerProcess(
        tmp_path, workers=1, server="heartbeat_timeout = 1", extra=_NO_ADMISSION
    ).start() as proc:
        _, body = proc.health()
        pid = body["per_worker"][0]["pid"]
        stop = threading.Event()
        sockets = [handshake(proc.ws_port, "/ws")[0] for _ in range(FLOOD_CONNECTIONS)]
        pongs = b"\x8a\x80\x00\x00\x00\x00" * 100_000  # masked, empty, mask key 0

        def flood(sock: socket.socket) -> None:
            sock.settimeout(timeout(1))
            while not stop.is_set():
                try:
                    sock.sendall(pongs)
                except TimeoutError:
                    continue  # the server is behind: look at stop again
                except OSError:
                    return

        threads = [threading.Thread(target=flood, args=(sock,)) for sock in sockets]
        for thread in threads:
            thread.start()
        try:
            proc.wait_log("late but still working", limit=60)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout(10))
            for sock in sockets:
                sock.close()
        body = proc.wait_healthy(20.0)
        assert body["per_worker"][0]["pid"] == pid and body["per_worker"][0]["restarts"] == 0
        assert "killing it" not in proc.logs()


def test_a_service_paused_whole_is_not_killed_when_it_resumes(tmp_path: Path) -> None:
    """The whole service stopped (a paused VM, SIGSTOP to every process), then resumed
    supervisor first: every heartbeat is old only because nothing ran, so the supervisor
    gives the processes a full heartbeat_timeout to stamp again instead of killing them."""
    with ServerProcess(tmp_path, workers=2, server="heartbeat_timeout = 2").start() as proc:
        assert proc.proc is not None
        _, body = proc.health()
        children = [w["pid"] for w in body["per_worker"]]
        children += [
            int(pid) for pid in os.popen(f"ps -o pid= --ppid {proc.proc.pid}").read().split()
        ]
        everything = [proc.proc.pid, *sorted(set(children))]
        for pid in everything:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(3)  # longer than heartbeat_timeout
        os.kill(proc.proc.pid, signal.SIGCONT)
        time.sleep(0.5)  # the supervisor alone runs and looks at the old heartbeats
        for pid in everything[1:]:
            os.kill(pid, signal.SIGCONT)
        body = proc.wait_healthy(20.0)
        assert [w["pid"] for w in body["per_worker"]] == children[:2]
        assert all(w["restarts"] == 0 for w in body["per_worker"])
        assert "supervisor loop stalled" in proc.logs()
        assert "killing it" not in proc.logs()


def test_sd_notify_ready_status_watchdog_reloading_stopping(tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(0.2)
        # WatchdogSec=1: systemd expects WATCHDOG=1 at least every 0.5 s.
        proc = ServerProcess(tmp_path, workers=2).start(
            env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
        )
        messages: list[str] = []

        def collect_until(done: Callable[[list[str]], bool], limit: float) -> None:
            """Receive notifications (0.2 s at most each) until ``done(messages)``."""

            def heard() -> bool:
                if not done(messages):
                    try:
                        messages.append(listener.recv(4096).decode())
                    except TimeoutError:
                        pass
                return done(messages)

            wait_until(heard, limit, interval=0, message=lambda: f"not in time: {messages}")

        def one_starting(prefix: str) -> Callable[[list[str]], bool]:
            return lambda received: any(m.startswith(prefix) for m in received)

        try:
            collect_until(one_starting("READY=1"), 10)
            collect_until(one_starting("STATUS=2/2 workers ready"), 10)
            # The watchdog is fed from the supervisor's loop, at half of WatchdogSec.
            start = len(messages)
            collect_until(lambda received: received[start:].count("WATCHDOG=1") >= 3, 3)
            # SIGHUP: RELOADING=1, then READY=1 once the roll completed.
            proc.signal(signal.SIGHUP)
            collect_until(one_starting("RELOADING=1"), 10)
            reloading = messages.index("RELOADING=1")
            collect_until(lambda received: "READY=1" in received[reloading:], 30)
            assert "reload complete" in proc.logs()
            proc.signal(signal.SIGTERM)
            collect_until(one_starting("STOPPING=1"), 10)
            assert proc.wait_exit(10) == 0
        finally:
            proc.stop()


def test_sighup_reload_rolls_workers_without_refusing_connections(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=2).start() as proc:
        proc.wait_log(r"process\(es\) ready")  # systemd reloads only after READY
        _, body = proc.health()
        old_pids = {w["pid"] for w in body["per_worker"]}
        # Invalid config: refused, nothing replaced.
        original = proc.config_path.read_text()
        proc.config_path.write_text(original + "\n[namespaces.extra\n")
        proc.signal(signal.SIGHUP)
        proc.wait_log("reload refused")
        assert "reload refused" in proc.logs()
        assert {w["pid"] for w in proc.health()[1]["per_worker"]} == old_pids
        # A change that needs a restart: refused with the option named.
        proc.config_path.write_text(original.replace(f"port = {proc.ws_port}", "port = 1"))
        proc.signal(signal.SIGHUP)
        proc.wait_log(r"\[server\] port cannot change without a restart")
        assert "[server] port cannot change without a restart" in proc.logs()
        # A valid change: every process replaced one at a time, connections keep landing.
        proc.config_path.write_text(original + '\n[namespaces.extra]\nslow_consumer = "drop"\n')
        proc.signal(signal.SIGHUP)

        async def connect_during_roll() -> int:
            connected = 0
            deadline = time.monotonic() + timeout(20)
            while time.monotonic() < deadline:
                client = await Client.connect(proc.url)  # raises if refused
                connected += 1
                await client.close()
                try:
                    _, health = await asyncio.to_thread(proc.health)
                except (OSError, http.client.HTTPException):  # the admin is being replaced
                    continue
                pids = {w["pid"] for w in health["per_worker"]}
                if (
                    health["status"] == "ok"
                    and not pids & old_pids
                    and "reload complete" in proc.logs()
                ):
                    return connected
            raise AssertionError(f"reload did not complete:\n{proc.logs()}")

        assert run(connect_during_roll()) > 0

        async def new_namespace_everywhere() -> None:
            clients = await clients_on_workers(proc.url, 2)
            for client in clients:
                assert (await client.call("subscribe", channel="extra:x"))["ok"]
                await client.close()

        run(new_namespace_everywhere())
        assert all(w["restarts"] == 0 for w in proc.health()[1]["per_worker"])


def test_sigterm_with_no_clients_drains_cleanly(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=2).start() as proc:
        proc.signal(signal.SIGTERM)
        assert proc.wait_exit(10) == 0
        assert "Traceback" not in proc.logs() and "worker 0 stopped" in proc.logs()


def test_new_connections_are_refused_at_once_during_a_drain(tmp_path: Path) -> None:
    """While the service drains (a client holds it open), a new client is refused
    quickly instead of being queued on a listener nobody accepts from."""
    with ServerProcess(tmp_path, workers=1).start() as proc:  # drain_timeout = 5

        async def main() -> None:
            held = await Client.connect(proc.url)
            assert (await held.call("subscribe", channel="x"))["ok"]
            proc.signal(signal.SIGTERM)

            def refused() -> bool:
                try:
                    with socket.create_connection(("127.0.0.1", proc.ws_port), timeout=1):
                        return False
                except ConnectionRefusedError:
                    return True

            await wait_until_async(refused, 5, message="never refused during the drain")
            assert proc.proc is not None and proc.proc.poll() is None  # still draining

        run(main())
        assert proc.wait_exit(15) == 0


def _shared_blocks(pid: int) -> set[str]:
    """The /dev/shm blocks process ``pid`` maps, as its maps file names them."""
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split(None, 5)[5].strip() for line in maps if "/dev/shm/" in line}


def test_no_shared_memory_name_outlives_a_sigkilled_server(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, workers=2).start() as proc:
        assert proc.proc is not None
        _, body = proc.health()
        pids = [proc.proc.pid, *(w["pid"] for w in body["per_worker"])]
        mapped = set().union(*(_shared_blocks(pid) for pid in pids))
        # The scoreboard, the cluster view and the per-IP table, each unnamed already.
        assert len(mapped) >= 3, mapped
        assert all(name.endswith("(deleted)") for name in mapped), mapped
        for pid in pids:  # the supervisor first: nothing is left to clean up
            os.kill(pid, signal.SIGKILL)
        proc.proc.wait(timeout(10))
        wait_until(
            lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids[1:]),
            10,
            message="workers did not exit",
        )
        paths = {name.removesuffix("(deleted)").strip() for name in mapped}
        assert not [path for path in paths if os.path.exists(path)]


def test_a_killed_bus_forwarder_is_restarted_and_subscribers_keep_receiving(
    tmp_path: Path,
) -> None:
    """SIGKILL the bus forwarder under a stream: the supervisor restarts it, /health and
    /metrics count it, subscribers made before keep receiving without subscribing again
    (their subscriptions are made again at the new forwarder), and every publication
    of the stream either arrives, in order, or is counted lost: never silently gone."""
    with ServerProcess(tmp_path, workers=2).start() as proc:

        async def scenario() -> None:
            sub, pub = await clients_on_workers(proc.url, 2)
            assert (await sub.call("subscribe", channel="through"))["ok"]
            health = proc.wait_healthy()
            forwarder = health["bus_forwarder"]["pid"]
            count = 200
            for n in range(count):
                await pub.send({"op": "publish", "channel": "through", "data": n})
                if n == count // 2:
                    os.kill(forwarder, signal.SIGKILL)
                await asyncio.sleep(0.005)

            def restarted() -> bool:
                _, body = proc.health()
                return body["bus_forwarder"]["alive"] and body["bus_forwarder"]["pid"] != forwarder

            await asyncio.to_thread(wait_until, restarted, 20)
            # A publication after the restart reveals any gap before it.
            got: list[int] = []

            async def delivered_after_restart() -> bool:
                await pub.send({"op": "publish", "channel": "through", "data": "after"})
                while True:
                    try:
                        push = await sub.next_push(limit=0.5)
                    except TimeoutError:
                        return False
                    if push["data"] == "after":
                        return True
                    got.append(push["data"])

            for _ in range(40):  # until the publisher's worker is connected again
                if await delivered_after_restart():
                    break
            else:
                raise AssertionError(f"nothing arrived after the restart; got {got}")
            assert got == sorted(got) and len(set(got)) == len(got)  # in order, once each
            await asyncio.to_thread(proc.wait_heartbeat)
            _, body = proc.health()
            lost = sum(w["bus_lost"] for w in body["per_worker"])
            assert len(got) + lost >= count, (len(got), lost)
            assert body["bus_forwarder"]["restarts"] == 1
            await sub.close()
            await pub.close()

        run(scenario(), 120)
