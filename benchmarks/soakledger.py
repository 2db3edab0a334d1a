"""The soak's accounting: counters summed across process restarts, and every counted loss
attributed to a cause. No I/O: ``benchmarks/soak.py`` feeds it scrapes and faults.

A server counter lives in one process (a worker's row of the scoreboard, the admin's row):
when that process is killed and replaced, the series starts again at 0. ``CounterLedger``
keeps one total per (host, series) that only grows: it adds each scrape's increase, and a
value below the previous one is a reset, whose new value is all increase. What a process
counted after its last scrape and before it died is not seen: with one scrape a second,
that is at most one second of its counts (the report says how many resets there were).

``attribute`` explains each loss increase seen at a scrape: a ``slow_consumer`` drop is
the slow consumer of the ``drop`` namespace (the only namespace whose policy is ``drop``,
so no other subscriber can be dropped); any other loss belongs to a fault the chaos loop
injected if the scrape interval in which it was counted overlaps the fault's window (from
its start to ``window`` seconds after it ended); a loss with no such fault is
``unexplained``, and the soak fails on it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

#: ``name{label="value",...} number`` of the Prometheus text format (no timestamps).
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

#: The counters (Prometheus sample names) that count a publication not delivered.
LOSS_SERIES = {
    "websocket_dropped_messages_total": "dropped",  # labels: worker, reason
    "shardws_history_unrecoverable_total": "history_unrecoverable",
}
#: Counters reported as they are: events that are not losses by themselves.
EVENT_SERIES = {
    "shardws_publications_total": "publications",
    "shardws_backend_publications_total": "backend_publications",
    "shardws_ingress_messages_total": "ingress_messages",
    "websocket_messages_total": "messages",  # direction in/out
    "shardws_slow_consumer_disconnects_total": "slow_consumer_disconnects",
    "shardws_history_repairs_total": "history_repairs",
    "shardws_bus_sync_timeouts_total": "bus_sync_timeouts",
    "shardws_cluster_barrier_timeouts_total": "barrier_timeouts",
}
SLOW_CONSUMER = "slow consumer (drop namespace)"
UNEXPLAINED = "unexplained"


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a Prometheus text exposition: {(name, sorted labels): value}."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        pairs = tuple(sorted(_LABEL.findall(labels or "")))
        samples[(name, pairs)] = number
    return samples


@dataclass(frozen=True)
class Increase:
    """A counter grew by ``amount`` between two scrapes of ``host`` (``since``, ``at``]."""

    host: str
    series: str  # e.g. "dropped/bus_lost", "history_unrecoverable"
    since: float
    at: float
    amount: float


@dataclass
class CounterLedger:
    """Totals of counters across scrapes and process restarts (see the module docstring)."""

    totals: dict[tuple[str, str], float] = field(default_factory=dict)
    increases: list[Increase] = field(default_factory=list)
    resets: int = 0
    scrapes: int = 0
    _last: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    _last_at: dict[str, float] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)  # hosts scraped at least once

    def observe(self, host: str, at: float, text: str, pids: dict[str, int]) -> None:
        """Take one scrape of ``host``'s /metrics made at ``at`` (seconds of the run).
        ``pids`` maps a worker label to its pid at about that time (from /health): a new
        pid is a new process, whose counts are all new even if they exceed the old ones."""
        since = self._last_at.get(host, at)
        self._last_at[host] = at
        self.scrapes += 1
        for (name, labels), value in parse_metrics(text).items():
            kind = LOSS_SERIES.get(name) or EVENT_SERIES.get(name)
            if kind is None:
                continue
            label = dict(labels)
            worker = label.get("worker", "admin")
            series = kind + "".join(
                f"/{label[key]}" for key in ("reason", "direction") if key in label
            )
            key = (host, f"{series}@{worker}:{pids.get(worker, 0)}", labels)
            previous = self._last.get(key)
            self._last[key] = value
            if previous is None:
                # A series first seen after the start is a new process: all of it is new.
                # At the very first scrape of a host it is the baseline.
                grown = value if host in self._seen else 0.0
            elif value < previous:
                self.resets += 1
                grown = value
            else:
                grown = value - previous
            if grown <= 0:
                continue
            total_key = (host, series)
            self.totals[total_key] = self.totals.get(total_key, 0.0) + grown
            if name in LOSS_SERIES:
                self.increases.append(Increase(host, series, since, at, grown))
        self._seen.add(host)

    def total(self, series: str, host: str | None = None) -> float:
        """The total of ``series`` on ``host`` (None: every host)."""
        return sum(v for (h, s), v in self.totals.items() if s == series and host in (None, h))


@dataclass(frozen=True)
class Fault:
    """One fault the chaos loop injected: ``kind`` on ``host`` from ``start`` to ``end``
    (seconds of the run; ``end`` is when the host was healthy again, or the link healed)."""

    kind: str
    host: str
    start: float
    end: float
    detail: str = ""

    def label(self) -> str:
        return f"{self.kind}@{self.host}"


def attribute(
    increases: Iterable[Increase], faults: list[Fault], window: float
) -> dict[str, float]:
    """Every loss increase by cause: ``SLOW_CONSUMER`` for drops of slow consumers, else
    the kind of the latest fault whose window (``start`` .. ``end + window``) overlaps the
    scrape interval the loss was counted in, else ``UNEXPLAINED``."""
    causes: dict[str, float] = {}
    for inc in increases:
        if inc.series == "dropped/slow_consumer":
            cause = SLOW_CONSUMER
        else:
            matching = [f for f in faults if f.start <= inc.at and inc.since <= f.end + window]
            cause = max(matching, key=lambda f: f.start).kind if matching else UNEXPLAINED
        key = f"{inc.series}: {cause}"
        causes[key] = causes.get(key, 0.0) + inc.amount
    return causes


#: A receiver's log line for a bus gap (``shardws.bus.host.Bus._check_sequence``).
_BUS_GAP = re.compile(
    r"^(\S+ \S+) WARNING (\S+) shardws\.bus: bus: (\d+) message\(s\) lost from member"
    r" (\d+) on b'(.)"
)
_TOPIC_KINDS = {"c": "channel", "i": "inbox", "u": "user"}


def bus_losses_by_origin(
    logs: dict[str, str],
    started_at: float,
    explain: Callable[[float], str | None],
    origin_of: Callable[[int], str],
) -> dict[str, int]:
    """Where the bus losses come from, from the receivers' log lines (each gap a receiver
    counts is logged with its origin member and topic): per fault (``explain`` of the
    line's time in seconds of the run, ``started_at`` being the run's start as wall
    time), receiver (host/process), origin (``origin_of(member)``, e.g. ``b/worker 0``)
    and topic kind, the messages lost."""
    out: Counter[str] = Counter()
    for host, text in logs.items():
        for line in text.splitlines():
            match = _BUS_GAP.match(line)
            if match is None:
                continue
            wall = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            cause = explain(wall - started_at) or UNEXPLAINED
            origin = origin_of(int(match[4]))
            where = "same host" if origin.startswith(f"{host}/") else "cross host"
            kind = _TOPIC_KINDS.get(match[5], match[5])
            out[f"{cause}: {host}/{match[2]} <- {origin} ({kind}, {where})"] += int(match[3])
    return dict(sorted(out.items()))
