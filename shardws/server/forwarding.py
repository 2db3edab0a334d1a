"""The forwarder process (``shardws: bus forwarder``): runs the host bus's forwarder
(``shardws.bus.forwarder``) and proves it alive.

Forked by the supervisor before the workers, into the scoreboard row
``board.forwarder_slot``, and supervised like the admin: restarted when it dies or its
heartbeat goes stale. Its heartbeat is stamped only while the forwarding thread runs.

What members see while it restarts (about the supervisor's restart backoff): their PUB
and SUB reconnect by themselves and the SUB sends all its subscriptions again, so no
subscription is lost. Publications made meanwhile wait in the publisher's pipe (up to
``bus_hwm``) and are delivered in order after the reconnect; those inside the old
process, or past the high-water mark, are lost: receivers count them from the sequence
gap the next publication on the topic reveals, and history channels repair them from
the owner (at once, or by the position check every 2 s). Subscribes whose barrier
falls in the gap are answered error 108 and retried by the clients.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from setproctitle import setproctitle

from shardws.bus.forwarder import Forwarder
from shardws.config import Config
from shardws.log import setup_logging
from shardws.shm.scoreboard import Column, ProcessState
from shardws.shm.tables import SharedTables

log = logging.getLogger("shardws.forwarder")

HEARTBEAT_INTERVAL = 0.5  # seconds


def run_forwarder(slot: int, config: Config, tables: SharedTables, run_dir: str) -> int:
    """Entry point in the forked child. Returns the process exit code."""
    setproctitle("shardws: bus forwarder")
    setup_logging(config.log.level, config.log.format, "forwarder")
    row = tables.board.row(slot)
    row[Column.PID] = os.getpid()
    row[Column.STATE] = ProcessState.BOOTING
    row[Column.HEARTBEAT_NS] = time.monotonic_ns()
    stop = threading.Event()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        signal.signal(signum, lambda *_: stop.set())
    forwarder = Forwarder(run_dir, config.server.bus_hwm)
    forwarder.start()
    row[Column.STATE] = ProcessState.READY
    log.info("bus forwarder ready: %s, %s -> %s", *forwarder.endpoints)
    while not stop.wait(HEARTBEAT_INTERVAL):
        if not forwarder.is_alive():  # the proxy failed: stop stamping, exit, restart
            log.error("the forwarding thread ended")
            return 1
        row[Column.HEARTBEAT_NS] = time.monotonic_ns()
    row[Column.STATE] = ProcessState.DEAD
    log.info("bus forwarder stopped")
    # The proxy thread holds the sockets; nothing to flush: exit without joining it.
    return 0
