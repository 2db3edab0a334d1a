"""steering.py: the classic BPF program, and real SO_REUSEPORT listeners steered by it."""

from __future__ import annotations

import socket
import time

import pytest

from shardws.server.steering import program, steer
from shardws.server.supervisor import listen_socket


def _accept_all(sock: socket.socket) -> int:
    count = 0
    for _ in range(10_000):
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            break
        conn.close()
        count += 1
    return count


def test_program_shape() -> None:
    assert len(program([3])) == 3  # load random, mod 1, return 3
    assert len(program([0, 2, 5])) == 2 + 2 * 2 + 1
    with pytest.raises(ValueError):
        program([])


def test_connections_go_only_to_allowed_listeners() -> None:
    listeners: list[socket.socket] = []
    port = 0
    try:
        for _ in range(3):
            listeners.append(listen_socket("127.0.0.1", port, 256, reuse_port=True))
            port = listeners[0].getsockname()[1]
        for allowed in ([0, 2], [1]):
            assert steer(listeners[0], allowed)
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
            time.sleep(0.1)
            counts = [_accept_all(listener) for listener in listeners]
            for client in clients:
                client.close()
            assert sum(counts) == 60
            assert all(counts[i] == 0 for i in range(3) if i not in allowed)
    finally:
        for listener in listeners:
            listener.close()
