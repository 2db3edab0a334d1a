"""A worker process: picows server on an inherited SO_REUSEPORT socket, hub, bus.

All client state of a connection lives in exactly one worker. The worker creates its
own event loop and zmq Context after fork (never the parent's), proves liveness by
stamping a heartbeat into its scoreboard row from its event loop (and, while its loop
runs late because it is busy, proof of progress from a thread: ``server.progress``), and
runs one periodic sweep for pings and idle timeouts instead of a task per connection.
While its loop runs more than ``[limits] overload_loop_lag`` late it refuses new
connections with 503 and ``Retry-After`` (``pure.overload``), to keep serving the ones
it holds.

Exit codes: 0 after a clean drain, ``EXIT_BOOT_FAILURE`` if it could not boot (the
supervisor then stops the service on first boot instead of looping).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import resource
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop
from picows import (
    WSCloseCode,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)
from setproctitle import setproctitle

from shardws import core
from shardws.bus.forwarder import endpoints
from shardws.bus.host import Bus
from shardws.config import AUTO_CONNECTIONS, Config, NamespaceConfig
from shardws.core import (
    TokenBucket,
    total_drops,
)
from shardws.log import RateLimitedLogger, setup_logging
from shardws.pure import control, msgpackwire, protocol
from shardws.pure import tap as tap_rules
from shardws.pure.auth import (
    ANONYMOUS,
    Authenticator,
    AuthFailure,
)
from shardws.pure.busframe import inbox_topic
from shardws.pure.deflate import Inflater, negotiate
from shardws.pure.frames import Messages
from shardws.pure.handshake import client_ip, origin_allowed, parse_networks, request_token
from shardws.pure.hub import Hub
from shardws.pure.overload import Overload
from shardws.pure.protocol import NOT_LIVE_MESSAGE, NOT_LIVE_REASON, CloseCode, ErrorCode
from shardws.pure.publication import Kind, Publication
from shardws.pure.publication import decode as decode_publication
from shardws.pure.publication import encode as publication_record
from shardws.pure.pusher.admission import PATH_PREFIX as PUSHER_PATH
from shardws.pure.pusher.admission import admit
from shardws.pure.pusher.channels import is_internal
from shardws.pure.session import (
    Close,
    Connected,
    Count,
    Publish,
    Read,
    Reply,
    Sessions,
    Subscribe,
    Unsubscribe,
)
from shardws.pure.sweep import RotatingSweep
from shardws.server.connection import CLOSE_GRACE, Connection, MsgpackConnection
from shardws.server.delivery import Delivery, WireFormat, delta_wire
from shardws.server.engine import Connection as Subscriber
from shardws.server.engine import WorkerEngine, both
from shardws.server.engines import worker_engine
from shardws.server.progress import ProgressWatch
from shardws.server.pusher import PusherConnection, PusherFront
from shardws.server.static import static_response
from shardws.server.tap import WorkerTaps
from shardws.shm.scoreboard import (
    HEARTBEAT_INTERVAL,
    Column,
    LatencyHistogram,
    ProcessState,
    store_redis,
)
from shardws.shm.tables import SharedTables
from shardws.shm.view import Members

EXIT_BOOT_FAILURE = 3
PEER_WAIT_TIMEOUT = 3.0  # seconds a booting worker waits for the bus forwarder
DRAIN_BATCHES = 20  # a drain closes connections in this many waves
#: A keepalive sweep pass is spread over this many steps, at least SWEEP_STEP_MIN s
#: apart: pings, and the pongs they bring, go out evenly instead of in waves.
SWEEP_STEPS = 16
SWEEP_STEP_MIN = 0.1
HANDSHAKE_GRACE = 0.3  # seconds a drain waits for handshakes already in flight
# Descriptors a worker keeps free beyond those open when it starts accepting: sockets in
# their handshake or being refused with 503, closing ones, a log file reopened.
FD_MARGIN = 64

log = logging.getLogger("shardws.worker")


def connection_limit(configured: int, open_files: int, in_use: int) -> int:
    """The connections a worker can hold: ``configured`` (``[limits]
    connections_per_worker``), or fewer if its open-files limit (RLIMIT_NOFILE's soft
    limit, ``open_files``) runs out first; ``configured`` ``AUTO_CONNECTIONS`` ("auto")
    leaves it to that limit alone (no limit at all when it is infinite). Reserved: the
    ``in_use`` descriptors it has open when it starts accepting (its bus links among
    them: two to the forwarder, however many workers a reload adds) and ``FD_MARGIN``.
    Past it the upgrade gets 503, instead of accept() failing with EMFILE and the client
    seeing a reset."""
    if open_files == resource.RLIM_INFINITY:
        return configured if configured != AUTO_CONNECTIONS else sys.maxsize
    allowed = max(0, open_files - in_use - FD_MARGIN)
    return allowed if configured == AUTO_CONNECTIONS else min(configured, allowed)


def open_fds() -> int:
    """Descriptors this process has open (0 where /proc is not mounted)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir opened
    except OSError:
        return 0


class Worker:
    """Policy and wiring of one worker process."""

    def __init__(
        self,
        slot: int,
        config: Config,
        tables: SharedTables,
        run_dir: str,
    ) -> None:
        board = tables.board
        self.slot = slot
        self.members = Members(board, tables.view, config, slot)
        self.member = self.members.me  # this worker's bus member id (cluster-wide)
        self.auth = Authenticator(config.auth)
        self.iptable = tables.ips
        self._trusted = parse_networks(config.limits.trusted_proxies)
        self._ip_rates: dict[str, TokenBucket] = {}
        self.config = config
        self.board = board
        self.row = board.row(slot)
        self.stats = [0] * len(Column)  # local counters, copied to shared memory per tick
        self.overload = Overload(config.limits.overload_loop_lag)
        self._tick_due = 0.0  # monotonic time the next heartbeat tick is due (0: none yet)
        self._ticks = 0
        self.pongs = 0  # PONG frames received (only proof of progress counts them)
        self._sweep_pass: RotatingSweep[Connection] = RotatingSweep(self._sweep_steps())
        self._next_ring_sweep = 0.0
        self._retry_after = {"Retry-After": str(config.limits.overload_retry_after)}
        self._progress = ProgressWatch(self.row, self._work_done, HEARTBEAT_INTERVAL)
        self.latency = LatencyHistogram()
        self.connections: set[Connection] = set()
        # connections_per_worker, or less if the open-files limit is lower (set at boot,
        # by _limit_connections; until then as if the limit were infinite).
        self.max_connections = connection_limit(
            config.limits.connections_per_worker, resource.RLIM_INFINITY, 0
        )
        self._fds_before_serving: int | None = None  # descriptors open before accepting
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count(1)
        self.run_dir = run_dir
        self._peer_log = RateLimitedLogger("shardws.peer")
        self._picows_log = RateLimitedLogger("shardws.picows", level=logging.DEBUG)
        self._stop = asyncio.Event()
        self.delivery = Delivery(config, self.stats, self._peer_log)
        self._server: asyncio.Server | None = None
        self.bus: Bus | None = None
        self.hub = Hub(self._first_subscriber, self._last_subscriber, _wire_of)
        self.sessions = Sessions(config, self.auth, self.hub.subscriber_count)
        max_size = config.server.max_message_size
        self.native_messages = Messages(max_size, check_utf8=False)
        self.echo_messages = Messages(max_size, check_utf8=True)
        # Plain subscribes refused with 108, and user topics closed with 4506: their
        # bus barrier did not complete.
        self.not_live = 0
        # The event tap: the admins' taps open here (empty: the fronts' hooks do nothing).
        self.taps = WorkerTaps(self.member, slot, self._to_member)
        self.pusher = PusherFront(self)
        # The cluster (docs/architecture.md, "The engine"): what crosses hosts, and the
        # deciders of channels, this worker among them.
        self.engine: WorkerEngine = worker_engine(
            config, self, self._answer_local, self.pusher.webhook, self.pusher.occupied_for
        )
        # user -> that user's connections here, subscribed to the user's topic.
        self.users = Hub(self.engine.subscribe_user, self.engine.unsubscribe_user)

    # -- lifecycle ----------------------------------------------------------------------

    def ready_peers(self) -> set[int]:
        """Bus members of this host (workers, admin, bridge) other than this worker that
        are READY with a fresh heartbeat (from shared memory)."""
        return self.members.ready_local()

    async def bus_sync(self, limit: float) -> None:
        """Barrier rounds until one completes (the forwarder may still be starting), for
        at most ``limit`` seconds."""
        assert self.bus is not None
        deadline = asyncio.get_running_loop().time() + limit
        while not await self.bus.sync():
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("the bus forwarder did not answer within %.1fs", limit)
                return

    async def boot(self, listen_sock: socket.socket) -> None:
        """Start the bus, wait for peers' subscriptions, then start accepting."""
        server = self.config.server
        run_dir = self.run_dir
        self.bus = Bus(
            self.member,
            endpoints(run_dir),
            self._on_bus_channel,
            self.members.relays,
            on_user=self._on_bus_user,
            on_inbox=self.engine.on_inbox,
            inbox_live=self.members.inbox_live,
            hwm=server.bus_hwm,
        )
        self.bus.start()
        self.engine.load()
        self._tick()
        self._progress.start()
        # Our inbox subscription is live at the forwarder and our publications pass it,
        # so requests for the channels this worker owns reach it once it is READY.
        await self.bus_sync(PEER_WAIT_TIMEOUT)
        # Counted once the listener is closed again (a drain): see _accepted_not_upgraded.
        self._fds_before_serving = open_fds()
        self._server = await ws_create_server(
            self._new_connection,
            sock=listen_sock,
            # uvloop calls listen() again on this socket (default backlog 100): keep ours.
            backlog=server.backlog,
            websocket_handshake_timeout=server.handshake_timeout,
            logger_name=self._picows_log,  # type: ignore[arg-type]
            enable_auto_ping=False,  # one sweep per worker instead of a task per connection
            # Pings are answered in Connection.on_ws_frame: picows's auto-pong would answer
            # before the server could check the frame's reserved bits (RFC 6455 5.2).
            enable_auto_pong=False,
            max_frame_size=server.max_message_size,
            read_buffer_init_size=2048,
            use_aiofastnet=False,  # measured: +5.3 KB per connection and slower accepts
            ssl=self._tls_context(),
        )
        self._limit_connections()
        loop = asyncio.get_running_loop()
        loop.call_later(self._sweep_interval(), self._sweep)
        log.info("worker %d ready (pid %d, %s core)", self.slot, os.getpid(), core.IMPLEMENTATION)
        if core.IMPLEMENTATION != "cython":
            log.warning("running on the pure-Python reference core: build the extension")

    def _limit_connections(self) -> None:
        """Lower ``max_connections`` to what the open-files limit allows (the supervisor
        has raised the soft limit to the hard one), and say so once, from worker 0:
        every worker has the same limit and nearly the same descriptors open."""
        configured = self.config.limits.connections_per_worker
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_connections = connection_limit(configured, soft, open_fds())
        # Only a number the operator wrote is worth a warning: "auto" (the default)
        # means "what the limit allows", which is what the worker took.
        if configured != AUTO_CONNECTIONS and self.max_connections < configured and self.slot == 0:
            log.warning(
                "[limits] connections_per_worker = %d is more than the open-files limit"
                " allows: each worker takes at most %d connections (RLIMIT_NOFILE %d, less"
                " %d for its own files, bus links and handshakes) and refuses more with"
                " 503; raise the limit (systemd: LimitNOFILE=, shell: ulimit -n)",
                configured, self.max_connections, soft, soft - self.max_connections,
            )  # fmt: skip

    def _tls_context(self) -> ssl.SSLContext | None:
        """``wss://`` directly when [tls] is set (TLS 1.2+; files were checked at load)."""
        tls = self.config.tls
        if not tls.cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.cert, tls.key)
        return context

    def _sweep_interval(self) -> float:
        return min(max(self.config.server.ping_interval / 4, 0.05), 5.0)

    async def serve_until_stopped(self) -> None:
        await self._stop.wait()
        await self._drain()

    def request_stop(self) -> None:
        self._stop.set()

    async def _drain(self) -> None:
        """Stop accepting, then close every connection with a ``reconnect`` push (with a
        jittered delay hint) and 1001, in batches spread over the first half of
        ``drain_timeout`` so clients do not reconnect all at once; wait for them
        (bounded by drain_timeout), then close the bus."""
        self.row[Column.STATE] = ProcessState.DRAINING
        drain_timeout = self.config.server.drain_timeout
        deadline = time.monotonic() + max(drain_timeout - 0.5, 0.1)
        if self._server is not None:
            self._server.close()
        connections = list(self.connections)
        random.shuffle(connections)
        log.info("draining %d connection(s)", len(connections))
        spread = min(drain_timeout / 2, max(drain_timeout - 1.0, 0.0))
        batches = max(1, min(len(connections), DRAIN_BATCHES))
        size = max(1, -(-len(connections) // batches))
        started = time.monotonic()
        for batch, start in enumerate(range(0, len(connections), size)):
            # Each batch has its time in the spread: a loop running late (a saturated
            # host) catches up instead of stretching the spread past the deadline.
            due = started + batch * spread / batches
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            for conn in connections[start : start + size]:
                self._send_away(conn, spread + 1.0)
        # Sockets accepted before the listener closed finish their handshake once their
        # client sends its upgrade request (seconds late from a client whose loop runs
        # late); wait for them, so they get a reconnect hint instead of a reset at exit.
        grace_end = min(time.monotonic() + HANDSHAKE_GRACE, deadline)
        while (
            self.connections or self._accepted_not_upgraded() or time.monotonic() < grace_end
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.disconnect(graceful=False)
        await asyncio.sleep(0)
        self.engine.save()  # this slot's next process continues what it decided
        if self.bus is not None:
            self.bus.close()
        self._tick()

    def _accepted_not_upgraded(self) -> bool:
        """With the listener closed, whether this worker holds sockets beyond its
        connections and what it had open before it started accepting: handshakes in
        flight, refused upgrades being closed. picows tells nothing before the upgrade
        request, the descriptor table does; a descriptor opened for anything else only
        makes a drain wait to its deadline."""
        if self._fds_before_serving is None:
            return False  # never accepted anything
        return open_fds() > self._fds_before_serving + len(self.connections)

    def _overdue(self, now: float) -> float:
        """Seconds the next heartbeat tick is past due at ``now`` (negative while it is
        not due; 0 while none is scheduled, as in a drain): how late the loop runs while
        one iteration lasts."""
        due = self._tick_due
        return now - due if due else 0.0

    def _work_done(self) -> tuple[int, ...]:
        """What ``ProgressWatch`` compares: counters that move whenever the loop works
        (read from its thread; each read is atomic under the GIL)."""
        stats = self.stats
        bus = self.bus
        return (
            self._ticks,
            stats[Column.ACCEPTED],
            stats[Column.CLOSED],
            stats[Column.REFUSED],
            stats[Column.MESSAGES_IN],
            stats[Column.MESSAGES_OUT],
            self.pongs,
            bus.reads if bus is not None else 0,
        )

    def _tick(self) -> None:
        """Heartbeat: stamp liveness, measure how late the loop runs (admission), copy
        local counters into shared memory."""
        row = self.row
        stats = self.stats
        now = time.monotonic()
        if self._tick_due:
            self.overload.observe(max(0.0, now - self._tick_due))
        self._ticks += 1
        row[Column.LOOP_LAG_US] = int(self.overload.lag * 1e6)
        row[Column.OVERLOADED] = self.overload.refusing
        stats[Column.CONNECTIONS] = len(self.connections)
        stats[Column.DROPS] = total_drops()
        if self.bus is not None:
            stats[Column.BUS_LOST] = self.bus.lost
            stats[Column.BUS_READS] = self.bus.reads
            stats[Column.SYNC_TIMEOUTS] = self.bus.sync_timeouts
        repairs, unrecoverable, not_live = self.engine.counters()
        stats[Column.HISTORY_REPAIRS] = repairs
        stats[Column.NOT_LIVE] = self.not_live + not_live
        stats[Column.HISTORY_UNRECOVERABLE] = unrecoverable
        for column in (
            Column.CONNECTIONS,
            Column.ACCEPTED,
            Column.CLOSED,
            Column.MESSAGES_IN,
            Column.MESSAGES_OUT,
            Column.BYTES_IN,
            Column.BYTES_OUT,
            Column.DROPS,
            Column.SLOW_CONSUMERS,
            Column.BUS_LOST,
            Column.PROTOCOL_ERRORS,
            Column.PUBLISHES,
            Column.SYNC_TIMEOUTS,
            Column.NOT_LIVE,
            Column.BUS_READS,
            Column.HISTORY_REPAIRS,
            Column.HISTORY_UNRECOVERABLE,
            Column.AUTH_FAILURES,
            Column.RATE_LIMITED,
            Column.REFUSED,
            Column.OVERLOAD_REFUSED,
        ):
            row[column] = stats[column]
        self.latency.store(row)
        store_redis(row, self.engine.redis_counters())
        row[Column.HEARTBEAT_NS] = time.monotonic_ns()
        self.engine.on_heartbeat(time.monotonic(), self.pusher.check_owners)
        if not self._stop.is_set():
            self._tick_due = time.monotonic() + HEARTBEAT_INTERVAL
            asyncio.get_running_loop().call_later(HEARTBEAT_INTERVAL, self._tick)
        else:  # draining: no tick is due, so none can be overdue (while the drain's
            self._tick_due = 0.0  # closes move the counters, progress proves it alive)

    def _sweep(self) -> None:
        """One step of the keepalive sweep: ping connections quiet for ping_interval,
        close those quiet for idle_timeout. A pass looks at every connection once per
        ``_sweep_interval`` (as one sweep did before), a slice per step, so that the
        connections of a reconnect storm, which go quiet together, are pinged (and
        answer) spread over the pass, not in one wave; each pass also forgets the owned
        history rings idle for twice their TTL."""
        connections, new_pass = self._sweep_pass.take(lambda: self.connections)
        now = time.monotonic()
        if new_pass and now >= self._next_ring_sweep:  # (a pass of no connections is short)
            self._next_ring_sweep = now + self._sweep_interval()
            dropped = self.engine.sweep()
            if dropped:
                log.debug("forgot %d idle history ring(s)", dropped)
        self._keepalive(connections)
        if not self._stop.is_set():
            step = self._sweep_interval() / self._sweep_steps()
            asyncio.get_running_loop().call_later(step, self._sweep)

    def _sweep_steps(self) -> int:
        """Steps per sweep pass: SWEEP_STEPS, fewer when the pass is so short (tiny
        ping intervals) that steps would come faster than SWEEP_STEP_MIN apart."""
        return max(1, min(SWEEP_STEPS, int(self._sweep_interval() / SWEEP_STEP_MIN)))

    def _keepalive(self, connections: list[Connection]) -> None:
        server = self.config.server
        now = time.monotonic()
        wall = time.time()  # token expiry is wall-clock (JWT exp)
        leeway = self.config.auth.leeway
        # A loop running late has not read its sockets for about as long: a pong waiting
        # in the kernel is not a dead peer. Quiet is counted in the time it listened
        # (timers run before the reads of an iteration, so this step may come first).
        deaf = max(self.overload.lag, self._overdue(now), 0.0)
        idle_timeout = server.idle_timeout + deaf
        for conn in connections:
            idle = now - conn.last_seen
            if conn.closing or conn.transport is None:
                continue
            if type(conn) is PusherConnection:
                self.pusher.check_activity(conn, idle)
                continue
            identity = conn.identity
            if identity is None:  # its own timer closes it at handshake_timeout
                continue
            if identity.expires_at is not None and wall > identity.expires_at + leeway:
                conn.close(CloseCode.TOKEN_EXPIRED, "token expired")
            elif idle >= idle_timeout:
                conn.close(CloseCode.IDLE_TIMEOUT, "idle timeout")
            elif idle >= server.ping_interval and not conn.ping_sent:
                conn.ping_sent = True
                conn.transport.send_ping()

    # -- connections --------------------------------------------------------------------

    def _new_connection(
        self, request: WSUpgradeRequest
    ) -> Connection | WSUpgradeResponseWithListener | None:
        """The upgrade decision: static files (``shardws.server.static``) or 404 on other paths,
        403 Origin not allowed, 503 worker full,
        401 bad token (way 1: token in the query or an Authorization header)."""
        raw_path = request.path.split(b"?", 1)[0]
        path = raw_path.decode("latin-1")
        echo = path == self.config.diagnostics.echo_path and path != ""
        pusher = self.config.pusher.apps and path.startswith(PUSHER_PATH)
        if path != self.config.server.path and not echo and not pusher:
            if path == self.config.diagnostics.stall_path and path:
                _stall(request.path)
                return None
            # /shardws.js and the demo, or None: picows answers 404.
            server = self.config.server
            return static_response(raw_path, server.demo, server.path)
        limits = self.config.limits
        if not origin_allowed(request.headers.get("origin"), limits.allowed_origins):
            return self._refuse(403, "origin not allowed", Column.REFUSED)
        if len(self.connections) >= self.max_connections:
            return self._refuse(503, "server full, try again later", Column.REFUSED)
        if self.overload.refuses(self._overdue(time.monotonic())):
            # Before any work for the connection: a refusal must cost far less than
            # what it protects (the held connections' pings and deliveries).
            self.stats[Column.OVERLOAD_REFUSED] += 1
            return self._refuse(503, "server overloaded, try again later", Column.REFUSED)
        if echo:
            return self._accept(Connection(self, ANONYMOUS, echo=True), request)
        if pusher:
            # Refused or not, a Pusher client is upgraded: Pusher answers with a
            # pusher:error and a close code, which pusher-js acts on (admission.py).
            admission = admit(request.path.decode("latin-1"), self.config.pusher)
            return self._accept(
                PusherConnection(self, self.pusher.message_received, admission), request
            )
        token = request_token(request.path, request.headers)
        native = (
            MsgpackConnection
            if msgpackwire.chosen(request.headers.getall("sec-websocket-protocol", []))
            else Connection
        )
        if token is None:
            identity = ANONYMOUS if self.config.auth.anonymous else None
            return self._accept(native(self, identity), request)
        try:
            return self._accept(native(self, self.auth.connection(token)), request)
        except AuthFailure as exc:
            return self._refuse(401, exc.reason, Column.AUTH_FAILURES)

    def _accept(
        self, conn: Connection, request: WSUpgradeRequest
    ) -> Connection | WSUpgradeResponseWithListener:
        """The 101 answer for ``conn``, with permessage-deflate when configured and the
        client offered it acceptably (RFC 7692 5), and the subprotocol it chose (RFC 6455
        4.2.2: MessagePack)."""
        headers = {"Sec-WebSocket-Protocol": msgpackwire.SUBPROTOCOL} if conn.msgpack else {}
        compression = self.config.compression
        agreement = (
            negotiate(request.headers.getall("sec-websocket-extensions", []), compression)
            if compression.enabled
            else None
        )
        if agreement is not None:
            conn.deflate_bits = agreement.server_window_bits
            conn.inflater = Inflater(agreement, self.config.server.max_message_size)
            headers["Sec-WebSocket-Extensions"] = agreement.response
        if not headers:
            return conn
        response = WSUpgradeResponse.create_101_response(headers)
        return WSUpgradeResponseWithListener(response, conn)

    def _refuse(self, status: int, reason: str, column: Column) -> WSUpgradeResponseWithListener:
        """An HTTP error instead of the upgrade; a 503 says when to retry (RFC 9110
        10.2.3), which shardws's clients follow with jitter."""
        self.stats[column] += 1
        self._peer_log.info("upgrade refused: %d %s", status, reason)
        response = WSUpgradeResponse.create_error_response(
            status, reason.encode() + b"\n", self._retry_after if status == 503 else None
        )
        return WSUpgradeResponseWithListener(response, None)

    def admit(self, conn: Connection, transport: WSTransport) -> None:
        """Per-IP limits, checked once the peer address is known (picows hands the
        upgrade decision only the request): over a limit the connection is closed with
        4029 right after the upgrade."""
        peer = transport.underlying_transport.get_extra_info("peername")
        request = transport.request
        # Every header line counts (RFC 9110 5.3: repeated fields are one list): a proxy
        # may append its own line after one the client forged.
        forwarded = (
            ", ".join(request.headers.getall("x-forwarded-for", ()))
            if request is not None
            else None
        )
        ip = client_ip(peer[0] if peer else "", forwarded, self._trusted)
        limits = self.config.limits
        refused = ""
        if limits.new_connections_per_ip_per_second > 0:
            bucket = self._ip_rates.get(ip)
            now = time.monotonic()
            if bucket is None:
                if len(self._ip_rates) >= 65536:  # bounded: forget the oldest addresses
                    for old in list(self._ip_rates)[:4096]:
                        del self._ip_rates[old]
                rate = limits.new_connections_per_ip_per_second
                bucket = self._ip_rates[ip] = TokenBucket(rate, max(1.0, rate), now)
            if not bucket.take(now):
                refused = "too many new connections from your address"
        if (
            not refused
            and limits.connections_per_ip > 0
            and self.iptable is not None
            and self.iptable.count(ip) >= limits.connections_per_ip
        ):
            refused = "too many connections from your address"
        if refused:
            self.stats[Column.REFUSED] += 1
            conn.closing = True  # never registered: nothing to count down
            transport.send_close(WSCloseCode(CloseCode.TOO_MANY_CONNECTIONS), refused.encode())
            asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.disconnect, False)
            return
        if self.iptable is not None:
            self.iptable.add(self.slot, ip, 1)
            conn.ip = ip

    def connection_opened(self, conn: Connection) -> None:
        if conn.closing:  # refused by admit()
            return
        conn.client_id = f"{self._id_prefix}.{next(self._ids):x}"
        self.connections.add(conn)
        self.stats[Column.ACCEPTED] += 1
        if conn.deflate_bits:
            self.delivery.deflating += 1
        if type(conn) is PusherConnection:
            self.pusher.opened(conn)
        elif conn.identity is None:  # way 2: a connect message must come first
            # A timer per waiting connection rather than a check in the sweep: the sweep
            # runs every ping_interval / 4 (up to 5 s), so it would close up to that late.
            # Only way-2 connections get one, for the few milliseconds to their connect
            # (an uvloop TimerHandle; cancelled at connect or close); token and anonymous
            # connections, the bulk, pay nothing.
            conn.connect_timer = asyncio.get_running_loop().call_later(
                self.config.server.handshake_timeout, self._connect_timed_out, conn
            )
        if not conn.echo and type(conn) is not PusherConnection:
            self._join_user(conn, protocol.encode_connected(conn.client_id, self.slot))
        if self.taps.open:
            self.taps.connected(conn)
        if self._stop.is_set():  # accepted before the drain began: send it elsewhere
            self._send_away(conn, 1.0)

    @staticmethod
    def _connect_timed_out(conn: Connection) -> None:
        conn.connect_timer = None
        if conn.identity is None:
            conn.close(CloseCode.CONNECT_TIMEOUT, "no connect message in time")

    def _send_away(self, conn: Connection, max_delay: float) -> None:
        if type(conn) is not PusherConnection:  # Pusher has no delay hint: 4200 only
            conn.send(protocol.encode_reconnect(random.uniform(0.0, max_delay)))
        conn.close(CloseCode.GOING_AWAY, "server shutting down")

    def connection_closed(self, conn: Connection) -> None:
        if conn.connect_timer is not None:
            conn.connect_timer.cancel()
            conn.connect_timer = None
        if conn in self.connections:
            if self.taps.open:
                self.taps.disconnected(conn)
            self.connections.discard(conn)
            self.stats[Column.CLOSED] += 1
            if type(conn) is PusherConnection:
                self.pusher.closed(conn)
            if conn.deflate_bits:
                self.delivery.deflating -= 1
        if conn.ip and self.iptable is not None:
            self.iptable.add(self.slot, conn.ip, -1)
            conn.ip = ""
        self.leave_all(conn)

    def leave_all(self, conn: Connection) -> None:
        if type(conn) is PusherConnection:
            self.pusher.leave_all(conn)
            return
        for channel in conn.channels:
            self.hub.remove(channel, conn)
            self.left(channel, conn)
        conn.channels.clear()
        self._leave_user(conn)

    def protocol_error(self, conn: Connection, what: str) -> None:
        self.stats[Column.PROTOCOL_ERRORS] += 1
        self._peer_log.info("client %s: %s", conn.client_id, what)

    # -- commands -----------------------------------------------------------------------

    def message_received(self, conn: Connection, binary: bool, payload: bytes) -> None:
        """A complete message of a native connection: the session decides (``pure.session``),
        the worker carries out the one outcome."""
        stats = self.stats
        stats[Column.MESSAGES_IN] += 1
        stats[Column.BYTES_IN] += len(payload)
        # last_seen was stamped by on_ws_frame just now: the session's clock.
        outcome = self.sessions.command(conn, payload, binary, conn.last_seen)
        _CARRY_OUT[type(outcome)](self, conn, outcome)

    def _reply(self, conn: Connection, reply: Reply) -> None:
        self.account(conn, reply.count, reply.log)
        conn.send(reply.payload)

    def _close(self, conn: Connection, close: Close) -> None:
        self.account(conn, close.count, close.log)
        conn.close(close.code, close.reason, stop_reading=close.stop_reading)

    def account(self, conn: Connection, count: Count | None, line: str | None) -> None:
        """Count ``count`` (a session outcome's) and log ``line`` about ``conn``."""
        if count is not None:
            self.stats[_COUNTED[count]] += 1
        if line is not None:
            self._peer_log.info("client %s: %s", conn.client_id, line)

    def _connected(self, conn: Connection, connected: Connected) -> None:
        if conn.connect_timer is not None:
            conn.connect_timer.cancel()
            conn.connect_timer = None
        self._join_user(conn, connected.reply)

    def _subscribe(self, conn: Connection, subscribe: Subscribe) -> None:
        command_id, channel, options = subscribe.command_id, subscribe.channel, subscribe.options
        conn.delta_sent.pop(channel, None)
        if subscribe.delta:  # its wire form on the channel (_wire_of); no base yet
            conn.delta_channels.add(channel)
            self.delivery.deltas.unsync(channel, conn.sink)
        else:
            conn.delta_channels.discard(channel)
        if self.taps.open:
            self.taps.subscribed(channel, conn)
        if options.join_leave:
            self.engine.announce(channel, Kind.JOIN, conn)
        listed = self.engine.present(channel, conn, here=True) if options.presence else None
        if options.history_size:
            self.engine.subscribe_sequenced(conn, command_id, channel, subscribe.since, listed)
            return
        live = self.hub.add(channel, conn, conn.sink)
        if listed is not None:  # ok means listed too (presence kept outside the workers)
            live = both(live, listed)
        if live.done():
            self._answer_subscribe(conn, command_id, channel, live)
        else:
            live.add_done_callback(
                lambda done: self._answer_subscribe(conn, command_id, channel, done)
            )

    def _answer_subscribe(
        self, conn: Connection, command_id: int | None, channel: str, live: asyncio.Future[bool]
    ) -> None:
        """Reply to a plain subscribe once its bus barrier finished: ok only if the
        subscription is live on the bus (at the forwarder, and at the peer hosts through
        the bridge in a cluster). A barrier that could not complete (the forwarder
        restarting, a relay stuck) undoes the subscription and answers error 108, which
        clients retry: an ok never means less than live."""
        if live.result() and self.engine.crossing():
            conn.send(protocol.encode_ok(command_id))
            return
        if conn.closing or channel not in conn.channels:
            return  # gone or unsubscribed meanwhile: nothing to answer
        self._refuse_not_live(conn, command_id, channel)

    def _refuse_not_live(self, conn: Connection, command_id: int | None, channel: str) -> None:
        """Undo ``conn``'s subscription to ``channel`` and answer error 108 (retry): its
        bus barrier did not complete, so the subscription may not be live everywhere."""
        self.not_live += 1
        conn.channels.discard(channel)
        self.hub.remove(channel, conn)
        self.left(channel, conn)
        conn.send(protocol.encode_error(command_id, ErrorCode.NOT_AVAILABLE, NOT_LIVE_MESSAGE))

    def _unsubscribe(self, conn: Connection, unsubscribe: Unsubscribe) -> None:
        self.hub.remove(unsubscribe.channel, conn)
        if self.taps.open:
            self.taps.subscribed(unsubscribe.channel, conn, subscribed=False)
        self.left(unsubscribe.channel, conn)
        conn.send(unsubscribe.reply)

    def _publish(self, conn: Connection, publish: Publish) -> None:
        if publish.options.history_size:
            if self.taps.open:  # (a plain channel's is seen by publish_publication)
                publication = Publication(publish.data, origin=conn.client_id)
                self.taps.published(publish.channel, publication)
            self.engine.publish_sequenced(
                conn, publish.command_id, publish.channel, publish.data, publish.idem
            )
            return
        self.publish(publish.channel, publish.data, conn.client_id)
        conn.send(protocol.encode_ok(publish.command_id))

    def _read(self, conn: Connection, read: Read) -> None:
        if read.op == "history":
            self.engine.history(conn, read.command_id, read.channel, read.args)
        else:
            stats = read.op == "presence_stats"
            self.engine.presence(conn, read.command_id, read.channel, stats=stats)

    def echo_received(self, conn: Connection, binary: bool, payload: bytes) -> None:
        """A complete message on the diagnostics echo: sent back as received. Its text
        was checked by ``pure.frames`` (invalid UTF-8 closes with 1007); there is no
        command parsing and no rate limit."""
        stats = self.stats
        stats[Column.MESSAGES_IN] += 1
        stats[Column.BYTES_IN] += len(payload)
        stats[Column.MESSAGES_OUT] += 1
        conn.send_message(payload, binary)

    def left(self, channel: str, conn: Subscriber) -> None:
        """``conn`` left ``channel`` (unsubscribed, disconnected, refused): its leave is
        announced and it leaves the channel's presence where the namespace says so."""
        options = self.config.namespaces.get(protocol.namespace_of(channel))
        if options is None:
            return
        if options.join_leave:
            self.engine.announce(channel, Kind.LEAVE, conn)
        if options.presence:
            self.engine.present(channel, conn, here=False)

    def stats_publication(self) -> None:
        self.stats[Column.PUBLISHES] += 1

    def publish(self, channel: str, data: bytes, origin: str = "") -> None:
        """Deliver ``data`` (valid JSON) from connection ``origin`` ("" for none) to the
        channel's subscribers on every worker: written to local subscribers now (encoded
        once per wire format, framed once), sent on the bus as one publication record."""
        self.publish_publication(channel, Publication(data, Kind.PUB, "", origin, "", None))

    def publish_publication(self, channel: str, publication: Publication) -> None:
        """Deliver ``publication`` to ``channel``'s subscribers on every worker (see
        ``publish``)."""
        self.stats[Column.PUBLISHES] += 1
        if self.taps.open:
            self.taps.published(channel, publication, "client" if publication.origin else "owner")
        groups = self.hub.groups(channel)
        if groups:
            start = time.monotonic_ns()
            self.delivery.publish(channel, publication, groups, self.delivery.drop_for(channel))
            self.latency.observe((time.monotonic_ns() - start) / 1e9)
        # Always encoded: no member sees which channels the others want.
        self.engine.publish(channel, publication_record(publication))

    def options_for(self, channel: str) -> NamespaceConfig:
        """``channel``'s namespace options, cached (``Delivery.options_for``)."""
        return self.delivery.options_for(channel)

    # -- bus ----------------------------------------------------------------------------

    def _first_subscriber(self, channel: str) -> asyncio.Future[bool]:
        if is_internal(channel):  # a Pusher channel's owner may want to know (webhooks)
            self.pusher.hub_changed(channel, occupied=True)
        return self.engine.subscribe(channel)

    def _last_subscriber(self, channel: str) -> None:
        self.engine.forget(channel)  # positions restart with the next subscriber
        self.delivery.deltas.forget(channel)
        if is_internal(channel):
            self.pusher.hub_changed(channel, occupied=False)
        self.engine.unsubscribe(channel)

    def _on_bus_channel(self, topic: bytes, payloads: list[bytes], stamp_ns: int) -> None:
        channel = topic[1:-1].decode()
        try:
            publications = [decode_publication(payload) for payload in payloads]
        except ValueError as exc:  # a bug in the sender: say so, keep serving
            log.warning("bus: bad publication record on %r: %s", channel, exc)
            return
        if self.engine.is_sequenced(channel):
            self.engine.deliver_sequenced(channel, publications)  # in order, gaps repaired
        else:
            groups = self.hub.groups(channel)
            if not groups:
                return
            delivery = self.delivery
            drop = delivery.drop_for(channel)
            for publication in publications:
                delivery.publish(channel, publication, groups, drop)
        # One observation per publication: every payload of a batch entered the server
        # within the batch's loop iteration, so they share its stamp. Wall clock (the
        # stamp may come from another host); a clock step could make it negative.
        self.latency.observe(max(time.time_ns() - stamp_ns, 0) / 1e9, len(payloads))

    # -- users and inbox (the admin API) --------------------------------------------------

    def _join_user(self, conn: Connection, greeting: bytes) -> None:
        """Register an authenticated ``conn`` for its user's messages and send
        ``greeting`` (the ``connected`` push, or the ``connect`` reply) once the user's
        bus topic is live (``greet_when_live``)."""
        user = conn.identity.user if conn.identity is not None else ""
        if not user:  # anonymous: nothing can target it
            conn.send(greeting)
            return
        if self._stop.is_set():  # draining: greeted, then sent away at once
            self.users.add(user, conn, conn.sink)
            conn.send(greeting)
            return
        self.greet_when_live(conn, user, greeting)

    def greet_when_live(self, conn: Connection, user: str, greeting: bytes) -> None:
        """Add ``conn`` to ``user``'s connections (``users``: its bus topic) and send
        ``greeting`` once that topic is live: from then on user-targeted publications and
        disconnects sent from any member of the host reach this connection. A barrier
        that could not complete closes it with 4506 instead (reconnect after backing
        off), counted in ``not_live``: a greeting, like a subscribe reply, means live."""
        live = self.users.add(user, conn, conn.sink)
        if live.done():
            self._greet(conn, user, greeting, live)
        else:
            live.add_done_callback(lambda done: self._greet(conn, user, greeting, done))

    def _greet(
        self, conn: Connection, user: str, greeting: bytes, live: asyncio.Future[bool]
    ) -> None:
        if conn.closing:  # closed meanwhile: it left the users already
            return
        if live.result() and self.engine.crossing():
            conn.send(greeting)
            return
        self.not_live += 1
        self.users.remove(user, conn)  # so the next connection starts a new barrier
        conn.close(CloseCode.NOT_LIVE, NOT_LIVE_REASON)

    def _leave_user(self, conn: Connection) -> None:
        if conn.identity is not None and conn.identity.user:
            self.users.remove(conn.identity.user, conn)

    def _on_bus_user(self, topic: bytes, payloads: list[bytes]) -> None:
        user = topic[1:-1].decode()
        for payload in payloads:
            try:
                message = control.decode_user_message(payload)
            except ValueError as exc:  # a bug in the sender: say so, keep serving
                log.warning("bus: bad message for a user topic: %s", exc)
                continue
            sinks = self.users.sinks(user)
            if not sinks:
                return
            if isinstance(message, control.Disconnect):
                for sink in list(sinks):  # close() leaves the hub: iterate over a copy
                    sink.owner.close(message.code, message.reason)
            else:
                # A user's messages follow the rule named USER_PUSHES (delivery.py).
                self.delivery.push_user(message, sinks)

    def _answer_local(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        """This worker's answer to another member's question about itself (the admin's
        ``GET /api/channels``, its Pusher metrics); owner operations are the engine's."""
        if op == "pusher_stats":
            return {"apps": self.pusher.stats_answer()}
        if op in tap_rules.OPS:
            return self.taps.answer(op, request)
        if op != "channels":
            return {"error": f"unknown op {op!r}"}
        try:
            prefix, limit = control.channels_arguments(request)
        except ValueError as exc:
            return {"error": str(exc)}
        counts = self.hub.channel_counts(prefix)
        if not is_internal(prefix):  # a native listing: no Pusher channel
            counts = {n: c for n, c in counts.items() if not is_internal(n)}
        return control.channels_answer(counts, limit)

    def _to_member(self, member: int, payload: bytes) -> None:
        if self.bus is not None:
            self.bus.publish(inbox_topic(member), payload)

    def to_admin(self, payload: bytes) -> None:
        """Send ``payload`` to this host's admin's inbox (Pusher webhook events)."""
        if self.bus is not None:
            self.bus.publish(inbox_topic(self.members.id(self.board.admin_slot)), payload)


STALL_DEFAULT = 30.0  # seconds [diagnostics] stall_path hangs a worker for
STALL_MAX = 300.0


def _stall(target: bytes) -> None:
    """Spin doing no work for the ``seconds`` of the query (``[diagnostics] stall_path``):
    a worker stuck as a bug would leave it, for the supervisor's liveness test."""
    seconds = STALL_DEFAULT
    for pair in target.partition(b"?")[2].split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == b"seconds":
            try:
                seconds = min(max(float(value), 0.0), STALL_MAX)
            except ValueError:
                pass
    log.warning("[diagnostics] stall_path: this worker's loop spins for %.0fs", seconds)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _wire_of(conn: Connection, channel: str) -> WireFormat:
    return delta_wire(conn.wire) if channel in conn.delta_channels else conn.wire


#: How the worker carries out each outcome of a session (``pure.session``).
_CARRY_OUT: dict[type, Callable[[Worker, Connection, Any], None]] = {
    Reply: Worker._reply,
    Close: Worker._close,
    Connected: Worker._connected,
    Subscribe: Worker._subscribe,
    Unsubscribe: Worker._unsubscribe,
    Publish: Worker._publish,
    Read: Worker._read,
}

#: The scoreboard column of each count a session outcome names.
_COUNTED = {
    Count.PROTOCOL_ERRORS: Column.PROTOCOL_ERRORS,
    Count.AUTH_FAILURES: Column.AUTH_FAILURES,
    Count.RATE_LIMITED: Column.RATE_LIMITED,
}


def run_worker(
    slot: int,
    config: Config,
    tables: SharedTables,
    listen_sock: socket.socket,
    run_dir: str,
) -> int:
    """Entry point in the forked child. Returns the process exit code."""
    supervisor = os.getppid()
    setproctitle(f"shardws: worker {slot}")
    setup_logging(config.log.level, config.log.format, f"worker-{slot}")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload is the supervisor's business
    row = tables.board.row(slot)
    row[Column.PID] = os.getpid()
    row[Column.STATE] = ProcessState.BOOTING
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(slot, config, tables, run_dir)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.request_stop)
    try:
        loop.run_until_complete(worker.boot(listen_sock))
    except Exception:
        log.exception("worker %d failed to boot", slot)
        return EXIT_BOOT_FAILURE
    row[Column.STATE] = ProcessState.READY
    if os.getppid() == supervisor:  # (not to whoever adopted us if it died meanwhile)
        os.kill(supervisor, signal.SIGUSR1)  # it steers new connections here now
    try:
        loop.run_until_complete(worker.serve_until_stopped())
    finally:
        loop.close()
    log.info("worker %d stopped", slot)
    return 0
