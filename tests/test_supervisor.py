"""Supervisor duties seen from outside: stuck workers replaced, systemd notifications."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from serverproc import ServerProcess, timeout


def test_worker_with_a_stuck_loop_is_killed_and_replaced(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, workers=2, server="heartbeat_timeout = 1").start()
    try:
        _, body = proc.health()
        stuck = body["per_worker"][1]["pid"]
        os.kill(stuck, signal.SIGSTOP)  # its event loop stops stamping the heartbeat
        body = proc.wait_healthy(20.0, exclude_pids={stuck})
        assert body["per_worker"][1]["restarts"] == 1
        assert body["per_worker"][0]["restarts"] == 0
        assert "heartbeat is" in proc.logs() and "killing it" in proc.logs()
    finally:
        proc.stop()


def test_sd_notify_ready_status_stopping(tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(0.2)
        proc = ServerProcess(tmp_path, workers=2).start(env={"NOTIFY_SOCKET": address})
        messages: list[str] = []

        def collect_until(predicate: str, limit: float) -> None:
            deadline = time.monotonic() + timeout(limit)
            while not any(m.startswith(predicate) for m in messages):
                assert time.monotonic() < deadline, f"no {predicate!r} in {messages}"
                try:
                    messages.append(listener.recv(4096).decode())
                except TimeoutError:
                    pass

        try:
            collect_until("READY=1", 10)
            collect_until("STATUS=2/2 workers ready", 10)
            proc.signal(signal.SIGTERM)
            collect_until("STOPPING=1", 10)
            assert proc.wait_exit(10) == 0
        finally:
            proc.stop()
