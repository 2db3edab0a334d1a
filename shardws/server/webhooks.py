"""The admin's webhook sender: takes the webhook events of this host's workers (inbox op
``pusher.webhook``), batches them per endpoint, signs and POSTs them, retries with
backoff. The decisions are ``pure.pusher.webhooks``'; this module only moves bytes and
keeps time.

Each endpoint of each app (``[[pusher.apps.webhooks]]``) has its own outbox and one task
that sends one request at a time, so a slow or dead receiver holds up only its own
events, never a worker (the workers only publish a bus message) and never another
endpoint.

Guarantees:

* Every request carries ``X-Pusher-Key`` (the app key) and ``X-Pusher-Signature`` (hex
  HMAC-SHA256 of the exact body with the app secret); its ``time_ms`` is when its oldest
  event happened, so the SDKs' validators (300 s) accept every request sent.
* A request that fails (a connection error, a timeout, a status other than 2xx) is
  retried after ``retry_delay`` (1 s doubling to 60 s), with its events in the same order
  and before anything newer. Events older than ``[pusher] webhook_max_age`` are dropped
  unsent (counted ``expired``), and so are the oldest past ``webhook_queue_size`` per
  endpoint (counted ``queue_full``).
* At least once while this process lives: an event is dropped only when counted, but a
  request whose answer was lost (a timeout after the receiver took it) is sent again, so
  receivers must tolerate duplicates. What is queued is lost with the process (a crash,
  a reload replacing it), uncounted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from shardws.config import PusherAppConfig, PusherConfig, PusherWebhookConfig
from shardws.pure.pusher import webhooks
from shardws.pure.pusher.webhooks import Outbox, WebhookEvent

log = logging.getLogger("shardws.webhooks")

#: The counters of each app (``/metrics``: ``shardws_pusher_webhook_*``).
STATS = ("sent", "failed_requests", "expired", "queue_full")


@dataclass
class _Endpoint:
    app: PusherAppConfig
    hook: PusherWebhookConfig
    outbox: Outbox
    stats: list[int]  # the app's STATS, shared by its endpoints
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class WebhookSender:
    """The webhooks of every app of ``config`` (see the module doc). ``start`` before
    ``put``; ``close`` stops every endpoint's task."""

    def __init__(self, config: PusherConfig) -> None:
        self._config = config
        self.stats: dict[str, list[int]] = {app.id: [0] * len(STATS) for app in config.apps}
        self._endpoints: dict[str, list[_Endpoint]] = {}
        for app in config.apps:
            self._endpoints[app.id] = [
                _Endpoint(
                    app,
                    hook,
                    Outbox(
                        config.webhook_batch_size, config.webhook_queue_size, config.webhook_max_age
                    ),
                    self.stats[app.id],
                )
                for hook in app.webhooks
            ]
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.unknown = 0  # events of apps not configured here (a reload removed the app)

    def start(self) -> None:
        endpoints = [e for per_app in self._endpoints.values() for e in per_app]
        if not endpoints:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.webhook_timeout)
        )
        self._tasks = [asyncio.ensure_future(self._send_loop(e)) for e in endpoints]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def queued(self) -> dict[str, int]:
        """Events waiting, per app (every endpoint's outbox)."""
        return {
            app: sum(len(e.outbox) for e in per_app) for app, per_app in self._endpoints.items()
        }

    def counters(self) -> dict[str, dict[str, int]]:
        """``{app id: {counter: n}}`` (:data:`STATS` and ``queued``), for ``/metrics``."""
        for per_app in self._endpoints.values():
            for endpoint in per_app:  # the outboxes count their own drops
                self._sync_drops(endpoint)
        queued = self.queued()
        return {
            app: {**dict(zip(STATS, stats, strict=True)), "queued": queued.get(app, 0)}
            for app, stats in self.stats.items()
        }

    def _sync_drops(self, endpoint: _Endpoint) -> None:
        box, stats = endpoint.outbox, endpoint.stats
        stats[2] += box.dropped_old
        stats[3] += box.dropped_full
        box.dropped_old = box.dropped_full = 0

    def put(self, fields: Mapping[str, Any]) -> None:
        """A ``pusher.webhook`` inbox message: queue its event for every endpoint of its
        app that wants it. A malformed message is logged and skipped."""
        try:
            app_id, at_ms, event = webhooks.decode_message(fields)
        except ValueError as exc:  # a bug in the sender: say so, keep serving
            log.warning("bad webhook message: %s", exc)
            return
        endpoints = self._endpoints.get(app_id)
        if endpoints is None:
            self.unknown += 1
            return
        for endpoint in endpoints:
            if webhooks.wanted(endpoint.hook, event):
                endpoint.outbox.put(event, at_ms / 1000)
                endpoint.wake.set()

    async def _send_loop(self, endpoint: _Endpoint) -> None:
        outbox = endpoint.outbox
        while True:
            await endpoint.wake.wait()
            endpoint.wake.clear()
            while True:
                batch = outbox.take(time.time())
                self._sync_drops(endpoint)
                if not batch:
                    break
                await self._deliver(endpoint, batch)

    async def _deliver(self, endpoint: _Endpoint, batch: list[tuple[float, WebhookEvent]]) -> None:
        """POST ``batch`` until the receiver takes it or its events grow too old."""
        app, stats = endpoint.app, endpoint.stats
        max_age = self._config.webhook_max_age
        attempt = 0
        while batch:
            body = webhooks.encode_batch(
                [event for _at, event in batch], webhooks.batch_time_ms(batch)
            )
            headers = {
                "Content-Type": "application/json",
                "X-Pusher-Key": app.key,
                "X-Pusher-Signature": webhooks.signature(app.signing_secret(), body),
            }
            if await self._post(endpoint.hook.url, body, headers):
                stats[0] += len(batch)
                return
            stats[1] += 1
            attempt += 1
            delay = webhooks.retry_delay(attempt)
            # Those too old by the next attempt are dropped now: a validator would refuse
            # the request, and the newer ones of the batch still have their chance.
            due = time.time() + delay
            fresh = [(at, event) for at, event in batch if due - at <= max_age]
            stats[2] += len(batch) - len(fresh)
            batch = fresh
            if batch:
                await asyncio.sleep(delay)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> bool:
        assert self._session is not None
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return True
                log.info("webhook to %s: HTTP %d, retrying", url, response.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("webhook to %s failed (%s), retrying", url, exc.__class__.__name__)
        return False
