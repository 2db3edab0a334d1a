"""The Python Pusher clients from PyPI -- pysher and pusherclient -- driven from tests.

Both run their connection in a thread (``websocket-client``'s ``run_forever``): connection
events go to callbacks bound on the connection, channel events through the connection's
``event_handler`` to the channel's callbacks. :class:`Recorder` binds the first and wraps
the second (so an event is kept even if it arrives before a test could bind it), and
keeps what arrives for a test to wait for (bounded, ``toolkit.wait_until``). It sends
nothing itself: every message on the wire is the library's.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pusherclient
import pysher
from pusherjs import worker_of
from toolkit import timeout, wait_until

#: Connection events recorded (the library's own handlers run too).
CONNECTION = ("pusher:connection_established", "pusher:error", "pusher:pong")


class LocalPusherClient(pusherclient.Pusher):
    """pusherclient 0.3.0 pointed at 127.0.0.1: its host is a class attribute (there is
    no host parameter); everything else is the library's."""

    host = "127.0.0.1"


class Recorder:
    """A connected pysher or pusherclient client and what it received (:meth:`history`):
    ``(channel or "", event, data)`` in arrival order, ``data`` as the library handed it
    over."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._seen: list[tuple[str, str, Any]] = []
        self._lock = threading.Lock()
        for event in CONNECTION:
            client.connection.bind(event, self._recorder(event))
        dispatch = client.connection.event_handler

        def channel_event(event: str, data: Any, channel: str) -> None:
            self._record(channel, event, data)
            dispatch(event, data, channel)

        client.connection.event_handler = channel_event
        client.connect()

    def _record(self, channel: str, event: str, data: Any) -> None:
        with self._lock:
            self._seen.append((channel, event, data))

    def _recorder(self, event: str) -> Any:
        def record(data: Any, *_args: Any, **_kwargs: Any) -> None:
            self._record("", event, data)

        return record

    @property
    def socket_id(self) -> str:
        """The socket id of ``pusher:connection_established`` (waited for)."""
        return wait_until(
            lambda: self.client.connection.socket_id,
            message=lambda: f"not connected: {self.history()}",
        )

    @property
    def worker(self) -> int:
        return worker_of(self.socket_id)

    def expect(
        self, event: str, channel: str = "", limit: float = 10, after: int = 0
    ) -> tuple[int, Any]:
        """The first ``event`` on ``channel`` ("" for connection events) received at
        index ``after`` or later: (its index, its data). Fails after ``limit`` s."""

        def find() -> tuple[int, Any] | None:
            with self._lock:
                for index, (ch, ev, data) in enumerate(self._seen):
                    if index >= after and ch == channel and ev == event:
                        return index, data
            return None

        return wait_until(
            find, timeout=limit, message=lambda: f"no {event} on {channel!r}: {self.history()}"
        )

    def history(self) -> list[tuple[str, str, Any]]:
        """What was received so far, a copy."""
        with self._lock:
            return list(self._seen)

    def received(self, event: str, channel: str = "") -> list[Any]:
        """The data of every ``event`` on ``channel`` received so far."""
        with self._lock:
            return [data for ch, ev, data in self._seen if ch == channel and ev == event]

    def subscribe(self, channel: str) -> Any:
        """Subscribe with the library (pysher signs private and presence channels with
        the secret it was given), wait for ``subscription_succeeded``; returns the
        library's channel object (``trigger`` sends client events)."""
        self.socket_id  # noqa: B018 - the library signs with the socket id: wait for it
        handle = self.client.subscribe(channel)
        self.expect("pusher_internal:subscription_succeeded", channel)
        return handle

    def close(self) -> None:
        """The library's disconnect, bounded: pusherclient's joins its thread without a
        timeout, so it runs in a helper thread waited for at most 10 s."""
        helper = threading.Thread(target=self.client.disconnect, daemon=True)
        helper.start()
        helper.join(timeout(10))


def pysher_client(port: int, key: str = "app-key", **options: Any) -> Recorder:
    """A pysher client of ``key`` at its default protocol (6), on 127.0.0.1."""
    options.setdefault("log_level", logging.WARNING)
    return Recorder(pysher.Pusher(key, secure=False, custom_host="127.0.0.1", port=port, **options))


def pusherclient_client(port: int, key: str = "app-key", **options: Any) -> Recorder:
    """A pusherclient client at its protocol (6), on 127.0.0.1."""
    options.setdefault("log_level", logging.WARNING)
    return Recorder(LocalPusherClient(key, secure=False, port=port, **options))


def pusher_client_signed_subscribe(client: Recorder, channel: str, auth: dict[str, str]) -> Any:
    """Subscribe a pusherclient client to a private or presence ``channel`` with ``auth``
    (``auth`` and ``channel_data`` as the official SDK's ``authenticate`` returns them),
    sent on its connection; returns the library's channel object. pusherclient 0.3.0
    signs with ``hmac.new(secret, str)``, which raises TypeError on Python 3 before
    anything is sent, and its ``subscribe`` takes no signature from outside."""
    library = client.client
    handle = library.channels[channel] = pusherclient.Channel(channel, library.connection)
    library.connection.send_event("pusher:subscribe", {"channel": channel, **auth})
    return handle


@contextmanager
def pysher_on_workers(
    port: int, slots: tuple[int, ...], users: list[dict[str, Any]], **options: Any
) -> Iterator[list[Recorder]]:
    """One pysher client on each worker of ``slots`` (connecting until one lands there,
    at most 40 times each), the i-th with ``users[i]`` as its presence ``user_data``;
    ``options`` go to every client."""
    clients: list[Recorder] = []
    try:
        for slot, user in zip(slots, users, strict=True):
            for _ in range(40):
                candidate = pysher_client(port, user_data=user, **options)
                if candidate.worker == slot:
                    clients.append(candidate)
                    break
                candidate.close()
            else:
                raise AssertionError(f"no pysher client landed on worker {slot}")
        yield clients
    finally:
        for client in clients:
            client.close()


def event_data(data: Any) -> Any:
    """An event's data as the libraries hand it over -- Pusher's JSON-encoded string for
    server events (``pusher:`` ones included) -- decoded."""
    return json.loads(data) if isinstance(data, str) else data
