"""The supervisor: binds the sockets, forks and restarts the workers, the admin and the bridge.

It never does per-message work and never holds ZeroMQ state (a zmq Context must not
cross a fork), so nothing a client sends can wedge it.

Guarantees:

* One listening socket per worker, SO_REUSEPORT, created before forking and kept open
  here: a restarted worker inherits the same socket, so connections queued in the
  kernel while it was down are served by its replacement, not reset.
* A process that dies is restarted with exponential backoff (0.1 s doubling to 10 s,
  reset once it has stayed up 10 s). A process that dies during the *first* boot stops
  the whole service with a clear error and exit code 1 instead of a restart loop.
* A process that has shown no sign of life for ``heartbeat_timeout`` is killed and
  replaced: a stuck loop cannot hide. Signs of life are its heartbeat (stamped from its
  own event loop into shared memory) and, for a worker, its proof of progress (stamped
  by a thread while its work counters move, ``progress``): a worker whose loop runs late
  because it is busy (a saturated host) is never killed for it, only one that is stopped
  or does no work. If the supervisor's own loop stalled for over half of that (a paused
  VM, the whole service stopped), no heartbeat is judged for one more
  ``heartbeat_timeout``.
* With ``[cluster] peers`` set, a bridge process (``bridge.py``) links the host bus to
  the other hosts; it is supervised like the admin (restarted, replaced on reload).
* New connections go only to listeners whose worker is ready (``steering``): while a
  worker is down, replaced or retired, the kernel sends its share to the others; while
  one refuses new connections because its loop runs late (``pure.overload``), to the
  others that do not, if any.
* Signal handlers only queue the signal; the main loop acts on it. SIGTERM/SIGINT:
  every process drains (clients get close 1001) and the service exits 0 within
  ``drain_timeout``. SIGHUP: re-read the config; if valid, roll it out one process at a
  time: added workers first (new listeners join the port's group), then retired ones
  (steered away from, drained, their listeners closed once empty), then each remaining
  process replaced (each worker drains its clients with reconnect hints). No
  connection attempt is refused during a roll, also when the worker count shrinks. If
  the file is invalid, or changes an option bound at start (host, port, backlog,
  run_dir, max_workers, admin address) or asks for more than ``max_workers`` workers,
  the running config stays and the log says why; if a new process fails to boot, the
  roll is reversed to the old config.
* systemd: READY=1 once every process booted, STATUS= with live counts, WATCHDOG=1
  from this loop (so a stuck supervisor is caught), STOPPING=1 on shutdown.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

from setproctitle import setproctitle

from shardws.config import (
    Config,
    ConfigError,
    load_config,
    run_dir_parent,
    same_but_worker_count,
)
from shardws.log import setup_logging
from shardws.pure.liveness import Verdict, verdict
from shardws.server import steering, systemd
from shardws.server.progress import cpu_seconds, rss_bytes
from shardws.server.ringfile import rings_path
from shardws.shm.iplimits import IPTable
from shardws.shm.scoreboard import Column, ProcessState, Scoreboard
from shardws.shm.tables import SharedTables

log = logging.getLogger("shardws.supervisor")

BOOT_TIMEOUT = 30.0  # seconds for every process to report READY on first boot
BACKOFF_MIN = 0.1
BACKOFF_MAX = 10.0
STABLE_AFTER = 10.0  # seconds up after which a process's backoff resets
STATUS_INTERVAL = 5.0
#: Seconds between readings of each process's resident memory (``Column.RSS_BYTES``).
RSS_INTERVAL = 1.0
LATE_LOG_INTERVAL = 30.0  # seconds between "late but working" lines about one process
_WHY_ALIVE = {
    Verdict.WORKING: "its work counters move",
    Verdict.BUSY: "it uses CPU in one long call",
}
_WHY_STUCK = {
    Verdict.SPINNING: "its loop runs code that does no work",
    Verdict.STOPPED: "it used no CPU",
    Verdict.BURNING: "it burned CPU without a sign of life for too long",
}
_PR_SET_PDEATHSIG = 1


@dataclass
class _Step:
    """One move of a roll: ``add`` a worker slot, ``retire`` one, or ``replace`` the
    process of an existing slot with one running the roll's config."""

    action: str
    index: int


@dataclass
class _Roll:
    """A reload in progress: one step at a time, towards ``target``."""

    target: Config
    previous: Config  # what a failed roll goes back to
    steps: list[_Step]
    rollback: bool = False
    current: Slot | None = None
    action: str = ""
    # "steering" (new connections moved away, the old process still serves what is
    # queued) -> "stopping" (old process draining) -> "booting" (new process starting)
    phase: str = ""
    since: float = 0.0


STEER_SETTLE = 0.25  # seconds for a listener's queue to empty once steered away from
# A process replaced by a reload drains for up to drain_timeout by its own clock; on a
# saturated host its loop runs late, and killing it then would drop the clients it has
# not sent away yet (250,000 connections on 2 cores: most of them). It gets this much
# more; a process that is stuck rather than slow is killed by the heartbeat check.
ROLL_DRAIN_OVERRUN = 30.0

# Options bound into sockets and the bus layout at start: a reload cannot change them.
_FIXED_OPTIONS = (
    ("[server] max_workers", lambda c: c.server.max_workers),
    ("[server] host", lambda c: c.server.host),
    ("[server] port", lambda c: c.server.port),
    ("[server] backlog", lambda c: c.server.backlog),
    ("[server] run_dir", lambda c: c.server.run_dir),
    ("[admin] host", lambda c: c.admin.host),
    ("[admin] port", lambda c: c.admin.port),
    ("[cluster] peers (set or empty)", lambda c: c.cluster.enabled),
    ("[cluster] host_id", lambda c: c.cluster.host_id),
    ("[cluster] listen", lambda c: c.cluster.listen),
    # Every process of a host, and every host, must join through the same engine.
    ("[cluster] engine", lambda c: c.cluster.engine),
)


@dataclass
class Slot:
    """One supervised process position (a worker number, the admin or the bridge)."""

    index: int
    kind: str  # "worker" | "admin" | "bridge" | "forwarder"
    sock: socket.socket | None  # the listener it inherits (the bridge binds its own)
    pid: int = 0
    started: float = 0.0
    restart_at: float | None = None
    backoff: float = BACKOFF_MIN
    config: Config | None = None  # what its process runs with
    replacing: bool = False  # being replaced or retired by a reload: its exit is expected
    killed: bool = False  # SIGKILL sent for being stuck (a process in D state dies late)
    cpu_mark: tuple[float, float] | None = None  # (when, its CPU seconds) once going stale

    @property
    def name(self) -> str:
        return f"worker {self.index}" if self.kind == "worker" else self.kind


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def listen_socket(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    """A non-blocking listening TCP socket (SO_REUSEPORT when ``reuse_port``)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Supervisor:
    """Runs the service in the foreground until SIGTERM/SIGINT or a fatal boot error."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.slots: list[Slot] = []
        self.exit_code = 0
        self._signals: collections.deque[int] = collections.deque()
        self._booting = True
        self._boot_started = 0.0
        self._stopping = False
        self._last_status = 0.0
        self._last_watchdog = 0.0
        self._last_rss = 0.0
        self._run_dir = ""
        self._own_run_dir = False
        self._board: Scoreboard | None = None
        self._iptable: IPTable | None = None
        self._tables: SharedTables | None = None
        self._wake_r = self._wake_w = -1
        self._roll: _Roll | None = None
        self._reload_pending = False  # a SIGHUP came during a boot or reload
        self._pid = os.getpid()
        self._capacity = max(config.server.workers, config.server.max_workers)
        self._group: list[Slot] = []  # worker slots in SO_REUSEPORT group order
        self._steered: list[int] | None = None
        self._last_check = time.monotonic()  # of the heartbeats: our own loop's progress
        self._checks_from = 0.0  # no heartbeat is judged before this (monotonic)
        self._late_logged: dict[int, float] = {}  # slot index -> when we last said it

    # -- setup ----------------------------------------------------------------------------

    def _bind(self) -> None:
        server, admin = self.config.server, self.config.admin
        self.ws_port = server.port
        for index in range(server.workers):
            self._add_worker_slot(index, self.config)
        admin_sock = listen_socket(admin.host, admin.port, 128, reuse_port=False)
        self.slots.append(Slot(self._capacity, "admin", admin_sock, config=self.config))
        self.admin_port = admin_sock.getsockname()[1]
        if self.config.cluster.enabled:
            self.slots.append(Slot(self._capacity + 1, "bridge", None, config=self.config))
        # The bus forwarder: forked first (``run``), so members find it as they boot.
        self.slots.append(Slot(self._capacity + 2, "forwarder", None, config=self.config))

    def _add_worker_slot(self, index: int, config: Config) -> Slot:
        """Bind worker ``index``'s listener (it joins the port's SO_REUSEPORT group last)."""
        server = config.server
        sock = listen_socket(server.host, self.ws_port, server.backlog, reuse_port=True)
        self.ws_port = sock.getsockname()[1]  # port 0: every worker shares the first's port
        slot = Slot(index, "worker", sock, config=config)
        self.slots.insert(index, slot)  # slots stay in index order, the admin last
        self._group.append(slot)
        if self._board is not None:
            self._board.table[index, Column.CONFIGURED] = 1
        self._update_steering()  # keep new connections off it until its worker is ready
        return slot

    def _remove_worker_slot(self, slot: Slot) -> None:
        """Close a retired worker's listener and forget the slot."""
        position = self._group.index(slot)
        # The kernel fills a leaving socket's position with the group's last socket.
        last = self._group.pop()
        if last is not slot:
            self._group[position] = last
        if slot.sock is not None:
            slot.sock.close()
        self.slots.remove(slot)
        self._steered = None
        if self._board is not None:
            self._board.retire_row(slot.index)
        if self._iptable is not None:
            self._iptable.reset_worker(slot.index)

    def _update_steering(self) -> None:
        """Send new connections only to listeners whose worker is ready and not being
        stopped by a reload; with none such, to all (they queue until one is)."""
        board = self._board
        if board is None or not self._group:
            return
        roll = self._roll
        leaving = roll.current if roll is not None and roll.phase != "booting" else None
        allowed = [
            position
            for position, slot in enumerate(self._group)
            if slot.pid
            and slot is not leaving
            and board.table[slot.index, Column.STATE] == ProcessState.READY
        ] or list(range(len(self._group)))
        # Away from workers refusing new connections for lag, while some others take them.
        lag_limit = self.config.limits.overload_loop_lag
        accepting = [p for p in allowed if not board.overloaded(self._group[p].index, lag_limit)]
        allowed = accepting or allowed
        if allowed != self._steered:
            log.debug("steering new connections to listener positions %s", allowed)
            self._steered = allowed
            first = self._group[0].sock
            if first is not None and not steering.steer(first, allowed):
                log.warning("cannot steer SO_REUSEPORT connections on this kernel")

    def _make_run_dir(self) -> None:
        configured = self.config.server.run_dir
        if configured:
            os.makedirs(configured, mode=0o700, exist_ok=True)
            self._run_dir = configured
        else:
            self._run_dir = tempfile.mkdtemp(prefix="shardws-", dir=run_dir_parent())
            self._own_run_dir = True

    _SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w)
        # SIGUSR1: a worker became ready (only wakes the loop, so the steering includes
        # it at once rather than at the next tick).
        for signum in self._SIGNALS:
            signal.signal(signum, self._queue_signal)

    def _queue_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    # -- main loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Start everything and supervise; returns the process exit code."""
        setproctitle("shardws: supervisor")
        nofile = raise_nofile_limit()
        self._tables = SharedTables.create(self._capacity)
        self._board = self._tables.board
        self._iptable = self._tables.ips
        self._bind()
        for slot in self.slots:
            if slot.kind in ("admin", "bridge"):  # their bus member slots
                self._board.table[slot.index, Column.CONFIGURED] = 1
        self._make_run_dir()
        self._install_signals()
        server = self.config.server
        log.info(
            "shardws starting: ws://%s:%d%s with %d worker(s), admin http://%s:%d, "
            "config %s, open files limit %d",
            server.host, self.ws_port, server.path, server.workers,
            self.config.admin.host, self.admin_port, self.config.source, nofile,
        )  # fmt: skip
        self._boot_started = time.monotonic()
        for slot in sorted(self.slots, key=lambda s: s.kind != "forwarder"):
            self._spawn(slot)
        try:
            while not self._stopping:
                self._wait(0.2)
                self._dispatch_signals()
                if self._stopping:
                    break
                self._reap()
                self._check_boot()
                self._check_heartbeats()
                self._restart_due()
                self._step_roll()
                if self._reload_pending and self._roll is None and not self._booting:
                    self._reload_pending = False
                    self._start_reload()
                self._update_steering()
                self._report()
                self._read_rss()
        finally:
            self._shutdown()
        return self.exit_code

    def _wait(self, timeout: float) -> None:
        try:
            select.select([self._wake_r], [], [], timeout)
        except InterruptedError:
            pass
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _dispatch_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("%s received: draining", signal.Signals(signum).name)
                self._stopping = True
            elif signum == signal.SIGHUP:
                self._start_reload()
            # SIGCHLD and SIGUSR1 only wake the loop; _reap and the steering do the work.

    def _reap(self, quietly: bool = False) -> None:
        """Collect every exited child; unless ``quietly`` (shutdown), handle its death."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            if quietly:
                slot.pid = 0
                if self._board is not None:  # tells the draining admin this one is gone
                    self._board.reset_row(slot.index)
            else:
                self._died(slot, os.waitstatus_to_exitcode(status))

    def _died(self, slot: Slot, code: int) -> None:
        board = self._board
        assert board is not None
        pid, slot.pid = slot.pid, 0
        if slot.replacing and self._roll is not None and self._roll.phase == "stopping":
            board.reset_row(slot.index)
            if slot.kind == "worker" and self._iptable is not None:
                self._iptable.reset_worker(slot.index)
            log.info("%s (pid %d) stopped for the reload (exit %d)", slot.name, pid, code)
            return
        had_booted = board.table[slot.index, Column.STATE] in (
            ProcessState.READY,
            ProcessState.DRAINING,
        )
        board.reset_row(slot.index)
        if slot.kind == "worker" and self._iptable is not None:
            self._iptable.reset_worker(slot.index)  # its connections are gone with it
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if self._booting and not had_booted:
            log.error(
                "%s %s during the first boot; stopping the service "
                "(see the lines above for its error)",
                slot.name,
                how,
            )
            self.exit_code = 1
            self._stopping = True
            return
        lived = time.monotonic() - slot.started
        slot.backoff = BACKOFF_MIN if lived >= STABLE_AFTER else min(slot.backoff * 2, BACKOFF_MAX)
        slot.restart_at = time.monotonic() + slot.backoff
        board.table[slot.index, Column.RESTARTS] += 1
        log.error(
            "%s (pid %d) %s after %.1fs; restarting in %.1fs",
            slot.name,
            pid,
            how,
            lived,
            slot.backoff,
        )

    # -- reload (SIGHUP) ----------------------------------------------------------------

    def _start_reload(self) -> None:
        """Re-read the config; if valid, roll it out one process at a time. During a
        boot or reload, a SIGHUP reloads again once that is over (once, however many came
        meanwhile): the config may have changed after the running reload read it."""
        if self._roll is not None or self._booting:
            if not self._reload_pending:
                log.info("SIGHUP during a boot or reload: reloading again once it is over")
            self._reload_pending = True
            return
        try:
            new = load_config(None if self.config.source == "<default>" else self.config.source)
        except ConfigError as exc:
            # One log line: the file's errors joined (str(exc) has a line for each).
            reasons = "; ".join(str(exc).splitlines())
            log.error("reload refused, keeping the running configuration: %s", reasons)
            return
        changed = [name for name, get in _FIXED_OPTIONS if get(new) != get(self.config)]
        if changed:
            log.error(
                "reload refused, keeping the running configuration: %s cannot change "
                "without a restart",
                ", ".join(changed),
            )
            return
        if new.server.workers > self._capacity:
            log.error(
                "reload refused, keeping the running configuration: [server] workers = %d "
                "is more than the %d worker slots sized at start ([server] max_workers); "
                "raise max_workers and restart",
                new.server.workers,
                self._capacity,
            )
            return
        self._warn_forwarder_keeps(new)
        systemd.notify("RELOADING=1")
        steps = self._plan(new)
        log.info(
            "reload: %d step(s), %d -> %d worker(s)",
            len(steps),
            len(self._group),
            new.server.workers,
        )
        self._roll = _Roll(new, self.config, steps)

    def _warn_forwarder_keeps(self, new: Config) -> None:
        """The bus forwarder is not replaced by a reload (members would lose what is
        inside it, and their barriers would fail meanwhile): a new ``bus_hwm`` reaches
        the workers, the admin and the bridge, and the forwarder once the service
        restarts. Say so rather than apply it silently in part."""
        for slot in self.slots:
            running = (slot.config or self.config).server.bus_hwm
            if slot.kind == "forwarder" and running != new.server.bus_hwm:
                log.warning(
                    "reload: [server] bus_hwm = %d reaches the workers; the bus forwarder"
                    " keeps %d until the service restarts",
                    new.server.bus_hwm,
                    running,
                )

    def _plan(self, target: Config) -> list[_Step]:
        """The steps from the running processes to ``target``: add missing worker slots,
        retire surplus ones (from the last, so the kernel keeps the group's order), then
        replace every remaining worker, and the admin and the bridge if ``target``
        changes more than the worker count for them.

        Replacing the admin or the bridge loses what is inside it (the bridge: the
        cross-host frames in flight, counted as bus losses by their receivers; the
        admin: its ingress queue, the answers it owes), so a reload that leaves their
        configuration as it is keeps them running; no process reads ``[server] workers``
        but the supervisor."""
        count = len(self._group)
        wanted = target.server.workers
        steps = [_Step("add", index) for index in range(count, wanted)]
        steps += [_Step("retire", index) for index in range(count - 1, wanted - 1, -1)]
        kept = []
        for slot in self.slots:
            if slot.kind == "forwarder" or slot.config is target:
                continue  # the forwarder holds no configuration a reload may change
            if slot.kind == "worker":
                if slot.index < wanted:
                    steps.append(_Step("replace", slot.index))
            elif same_but_worker_count(slot.config or self.config, target):
                slot.config = target
                kept.append(slot.name)
            else:
                steps.append(_Step("replace", slot.index))
        if kept:
            names = " and the ".join(kept)
            log.info("reload: keeping the %s running (their configuration is unchanged)", names)
        return steps

    def _slot(self, index: int) -> Slot | None:
        return next((s for s in self.slots if s.index == index), None)

    def _step_roll(self) -> None:
        roll = self._roll
        board = self._board
        if roll is None or board is None:
            return
        now = time.monotonic()
        slot = roll.current
        if slot is None:
            self._next_step(roll, now)
            return
        if roll.phase == "steering":
            if now - roll.since >= STEER_SETTLE:
                roll.phase, roll.since = "stopping", now
                if slot.pid:
                    # A worker drains its clients; the admin (SIGUSR2) just hands over.
                    os.kill(slot.pid, signal.SIGTERM if slot.kind == "worker" else signal.SIGUSR2)
            return
        if roll.phase == "stopping":
            if slot.pid == 0:
                if roll.action == "retire":
                    self._remove_worker_slot(slot)
                    log.info("reload: retired worker %d", slot.index)
                    roll.current = None
                    return
                slot.config = roll.target
                slot.restart_at = None
                self._spawn(slot)
                roll.phase, roll.since = "booting", now
            elif now - roll.since > self.config.server.drain_timeout + ROLL_DRAIN_OVERRUN:
                log.warning(
                    "reload: %s (pid %d) still draining %.1fs after SIGTERM: killing it "
                    "(its remaining clients get no reconnect hint)",
                    slot.name,
                    slot.pid,
                    now - roll.since,
                )
                os.kill(slot.pid, signal.SIGKILL)
            return
        if slot.pid and board.table[slot.index, Column.STATE] == ProcessState.READY:
            slot.replacing = False
            roll.current = None
            return
        if slot.pid == 0 or now - roll.since > BOOT_TIMEOUT:
            self._roll_back(roll, slot)

    def _next_step(self, roll: _Roll, now: float) -> None:
        if not roll.steps:
            self.config = roll.target
            self._roll = None
            self._last_status = 0.0
            log.info("reload %s", "rolled back" if roll.rollback else "complete")
            systemd.notify("READY=1")
            return
        step = roll.steps.pop(0)
        roll.action, roll.since = step.action, now
        if step.action == "add":
            # Rings this slot saved when it was retired were taken over since; they
            # must not come back as history of the new process.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(rings_path(self._run_dir, step.index))
            slot = roll.current = self._add_worker_slot(step.index, roll.target)
            slot.replacing = True
            self._spawn(slot)
            roll.phase = "booting"
            return
        existing = self._slot(step.index)
        assert existing is not None
        roll.current = existing
        existing.replacing = True
        roll.phase = "steering"  # _update_steering keeps new connections off it now

    def _roll_back(self, roll: _Roll, failed: Slot) -> None:
        """The roll's config did not boot: go back step by step to the previous one (if
        going back fails too, the slot keeps restarting on the previous config with
        backoff and the roll ends)."""
        log.error("reload: %s did not boot with the new configuration; rolling back", failed.name)
        if failed.pid:
            os.kill(failed.pid, signal.SIGKILL)
            os.waitpid(failed.pid, 0)
            failed.pid = 0
        self._roll = None
        failed.replacing = False
        if roll.action == "add":
            self._remove_worker_slot(failed)
        else:
            failed.config = roll.previous
            failed.restart_at = time.monotonic() + (failed.backoff if roll.rollback else 0)
        if roll.rollback:
            log.error("reload: rolling back failed too; restarting with backoff")
            return
        self._roll = _Roll(roll.previous, roll.previous, self._plan(roll.previous), rollback=True)

    def _check_boot(self) -> None:
        if not self._booting:
            return
        board = self._board
        assert board is not None
        ready = [s for s in self.slots if board.table[s.index, Column.STATE] == ProcessState.READY]
        if len(ready) == len(self.slots):
            self._booting = False
            log.info("all %d process(es) ready", len(self.slots))
            systemd.notify("READY=1")
            self._last_status = 0.0  # report the ready counts now, not at the next tick
        elif time.monotonic() - self._boot_started > BOOT_TIMEOUT:
            log.error("not every process became ready within %.0fs; stopping", BOOT_TIMEOUT)
            self.exit_code = 1
            self._stopping = True

    def _check_heartbeats(self) -> None:
        board = self._board
        assert board is not None
        timeout = self.config.server.heartbeat_timeout
        now = time.monotonic()
        stalled, self._last_check = now - self._last_check, now
        if stalled > timeout / 2:
            # This loop did not run either (the host or VM paused, the whole service
            # stopped): every heartbeat is old for the same reason. Give the processes a
            # full timeout to stamp again instead of killing them all.
            log.warning(
                "supervisor loop stalled %.1fs: heartbeats judged again in %.0fs", stalled, timeout
            )
            self._checks_from = now + timeout
        if now < self._checks_from:
            return
        for slot in self.slots:
            if not slot.pid or slot.killed or now - slot.started < timeout:
                continue
            self._judge(slot, now, timeout)

    def _judge(self, slot: Slot, now: float, timeout: float) -> None:
        """Kill ``slot``'s process if it is stuck (``pure.liveness``); say so, at most
        every LATE_LOG_INTERVAL, if it is late but working."""
        board = self._board
        assert board is not None
        index = slot.index
        age = board.heartbeat_age(index)
        if board.liveness_age(index) <= timeout / 2:
            slot.cpu_mark = None
            return
        # Its stamps are going stale: measure the CPU it uses from here on, over at
        # least half a timeout by the time it is judged, a window that then rolls.
        cpu = cpu_seconds(slot.pid)
        if slot.cpu_mark is None or now - slot.cpu_mark[0] > timeout:
            slot.cpu_mark = (now, cpu or 0.0)
        since, before = slot.cpu_mark
        used = None if cpu is None or now - since < timeout / 2 else cpu - before
        found = verdict(age, board.progress_age(index), board.look_age(index), used, timeout)
        if found is Verdict.ALIVE:
            return
        if not found.stuck:
            # Late because busy, not stuck: killing it would drop its connections
            # onto the others, already as late (a saturated host destroying itself).
            if now - self._late_logged.get(index, 0.0) >= LATE_LOG_INTERVAL:
                self._late_logged[index] = now
                log.warning(
                    "%s (pid %d) event loop is %.1fs late but still working (%s): not"
                    " killed; the host is short of CPU",
                    slot.name, slot.pid, age, _WHY_ALIVE[found],
                )  # fmt: skip
            return
        log.error(
            "%s (pid %d) heartbeat is %.1fs old and it made no progress (%s): killing it",
            slot.name, slot.pid, age, _WHY_STUCK[found],
        )  # fmt: skip
        slot.killed = True
        try:
            os.kill(slot.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.pid == 0 and slot.restart_at is not None and now >= slot.restart_at:
                slot.restart_at = None
                self._spawn(slot)

    def _read_rss(self) -> None:
        """Write each running process's resident memory into its row, once a second:
        one read of ``/proc/PID/statm`` each, nothing in the processes themselves."""
        now = time.monotonic()
        if now - self._last_rss < RSS_INTERVAL:
            return
        self._last_rss = now
        board = self._board
        assert board is not None
        for slot in self.slots:
            rss = rss_bytes(slot.pid) if slot.pid else None
            if rss is not None:
                board.table[slot.index, Column.RSS_BYTES] = rss

    def _report(self) -> None:
        now = time.monotonic()
        interval = systemd.watchdog_interval()
        if interval is not None and now - self._last_watchdog >= interval:
            self._last_watchdog = now
            systemd.notify("WATCHDOG=1")
        if now - self._last_status < STATUS_INTERVAL:
            return
        self._last_status = now
        board = self._board
        assert board is not None
        workers = [s for s in self.slots if s.kind == "worker"]
        ready = sum(board.table[s.index, Column.STATE] == ProcessState.READY for s in workers)
        connections = int(board.table[: len(workers), Column.CONNECTIONS].sum())
        systemd.notify(f"STATUS={ready}/{len(workers)} workers ready, {connections} connections")

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        board = self._board
        assert board is not None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            slot.pid = pid
            slot.started = time.monotonic()
            slot.killed = False
            slot.cpu_mark = None
            board.table[slot.index, Column.STARTED_NS] = time.monotonic_ns()
            log.info("started %s (pid %d)", slot.name, pid)
            return
        code = 1
        try:
            self._child_init(slot)
            code = self._child_main(slot)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _child_init(self, slot: Slot) -> None:
        # If the supervisor dies (even by SIGKILL) its children must not linger holding
        # the port: ask the kernel to send us SIGTERM then (prctl PR_SET_PDEATHSIG).
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != self._pid:  # the supervisor died before prctl took effect
            os._exit(1)
        signal.set_wakeup_fd(-1)
        for signum in self._SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        os.close(self._wake_r)
        os.close(self._wake_w)
        for other in self.slots:
            if other is not slot and other.sock is not None:
                other.sock.close()

    def _child_main(self, slot: Slot) -> int:
        tables = self._tables
        assert tables is not None
        if slot.kind == "worker":
            from shardws.server.worker import run_worker

            assert slot.sock is not None
            return run_worker(
                slot.index, slot.config or self.config, tables, slot.sock, self._run_dir
            )
        if slot.kind == "forwarder":
            from shardws.server.forwarding import run_forwarder

            return run_forwarder(slot.index, slot.config or self.config, tables, self._run_dir)
        if slot.kind == "bridge":  # the bridge, or the hub: the engine's cross-host process
            from shardws.server.engines import run_cross_host

            return run_cross_host(slot.index, slot.config or self.config, tables, self._run_dir)
        from shardws.server.admin import run_admin

        assert slot.sock is not None
        return run_admin(slot.index, slot.config or self.config, tables, slot.sock, self._run_dir)

    def _wait_for_exit(self, slots: list[Slot], deadline: float) -> None:
        while any(s.pid for s in slots) and time.monotonic() < deadline:
            self._wait(0.05)
            self._signals.clear()
            self._reap(quietly=True)

    def _shutdown(self) -> None:
        systemd.notify("STOPPING=1")
        deadline = time.monotonic() + self.config.server.drain_timeout
        # The bus forwarder stops last: draining members still publish through it.
        forwarder = [s for s in self.slots if s.kind == "forwarder"]
        members = [s for s in self.slots if s.kind != "forwarder"]
        for slot in members:
            if slot.pid:
                try:
                    os.kill(slot.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            # The workers stop accepting at once; without our copy of the listener the
            # port closes, so a new client is refused now (and tries another host)
            # instead of waiting in a queue nobody reads until the reset at exit.
            if slot.kind == "worker" and slot.sock is not None:
                slot.sock.close()
        self._wait_for_exit(members, deadline)
        for slot in forwarder:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)
        self._wait_for_exit(forwarder, deadline)
        for slot in self.slots:
            if slot.pid:
                log.error(
                    "%s (pid %d) did not stop within drain_timeout: killing it", slot.name, slot.pid
                )
                try:
                    os.kill(slot.pid, signal.SIGKILL)
                    os.waitpid(slot.pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
                slot.pid = 0
        for slot in self.slots:
            if slot.sock is not None:
                slot.sock.close()
        if self._tables is not None:
            self._tables.close()
        if self._own_run_dir:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        log.info("stopped")


def serve(config: Config) -> int:
    """``shardws serve``: run the supervisor in the foreground; returns the exit code."""
    setup_logging(config.log.level, config.log.format, "supervisor")
    return Supervisor(config).run()
