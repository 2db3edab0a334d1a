"""``shardws tune``: the kernel and process limits that bound a shardws host, read live,
next to the values ``sysctl/99-shardws.conf`` recommends, and the connection capacity
the host has as it stands; with ``--connections N``, what a host needs to hold N
(``needs``): open files per worker with room for a roll, ``fs.file-max``, memory, kernel
socket memory and the ephemeral ports of a proxy in front.

Read-only: it never changes a setting. The recommendations are parsed from the shipped
sysctl file itself, so the two cannot drift; ``RULES`` says for each key whether more,
less, exactly the value or one of a set meets it, and ``host_sysctl_text`` is that file
with every value the host already has beyond the recommendation kept (what
``shardws install-service`` writes), so applying it never lowers a setting.
"""

from __future__ import annotations

import enum
import math
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# sysctl/99-shardws.conf, shipped in the package through the shardws/sysctl.conf link.
SYSCTL_FILE = Path(__file__).parent.parent / "sysctl.conf"

# Bytes of server RSS per idle connection measured by benchmarks scenario 4 (5.6-5.8 KB)
# plus the kernel's share of a socket (about 3.8 KB): what one idle client costs.
BYTES_PER_CONNECTION = 10 * 1024
# Descriptors a worker needs besides its connections: what it has open when it starts
# accepting (its two bus links to the forwarder among them, whatever the worker count)
# and the handshake margin (worker.py's connection_limit reserve), rounded up.
FD_RESERVE = 400
# A small frame queued on a socket costs the kernel about a page of skb memory (truesize)
# until the client reads it: a publication to every connection queues one per socket.
KERNEL_BYTES_PER_QUEUED_FRAME = 4096
# Ephemeral ports a proxy needs per connection it holds towards one worker address,
# with room for the ones in TIME_WAIT after a roll.
PROXY_PORT_HEADROOM = 1.5


class Kind(enum.Enum):
    """How a live value is compared with the recommendation."""

    AT_LEAST = "at least"  # more is as good (capacity limits); element-wise for lists
    AT_MOST = "at most"  # less is as good (timeouts); element-wise for lists
    EXACTLY = "exactly"  # a switch: the recommended value and no other
    ONE_OF = "one of"  # an enumeration: any value of ``Rule.accepted``
    WIDE_RANGE = "as wide"  # "LOW HIGH": at least as many values, wherever they lie


@dataclass(frozen=True)
class Rule:
    """What a live value must be to meet a recommendation, and what to write instead of
    a value that meets it: the host's own value, so applying never lowers a setting."""

    kind: Kind
    accepted: tuple[str, ...] = ()  # ONE_OF: the acceptable values

    def ok(self, current: str, recommended: str) -> bool:
        """Whether ``current`` meets this rule for ``recommended``."""
        if self.kind is Kind.EXACTLY:
            return current.split() == recommended.split()
        if self.kind is Kind.ONE_OF:
            return " ".join(current.split()) in self.accepted
        now, wanted = _numbers(current), _numbers(recommended)
        if now is None or wanted is None or len(now) != len(wanted):
            return False
        if self.kind is Kind.WIDE_RANGE:
            return len(now) == 2 and now[1] - now[0] >= wanted[1] - wanted[0]
        if self.kind is Kind.AT_LEAST:
            return all(a >= b for a, b in zip(now, wanted, strict=True))
        return all(a <= b for a, b in zip(now, wanted, strict=True))

    def kept(self, current: str | None, recommended: str) -> str:
        """The value to set so that it meets the rule and lowers nothing the host has:
        ``current`` where it already meets the rule, else ``recommended``; for lists
        element by element (``tcp_rmem`` ``4096 131072 6291456`` and the recommended
        ``4096 16384 16777216`` give ``4096 131072 16777216``)."""
        if current is None:
            return recommended
        current = " ".join(current.split())
        if self.ok(current, recommended):
            return current
        now, wanted = _numbers(current), _numbers(recommended)
        if (
            self.kind in (Kind.AT_LEAST, Kind.AT_MOST)
            and now
            and wanted
            and len(now) == len(wanted)
        ):
            pick = max if self.kind is Kind.AT_LEAST else min
            return " ".join(str(pick(a, b)) for a, b in zip(now, wanted, strict=True))
        return recommended

    def describe(self) -> str:
        """The rule as ``shardws tune`` shows it."""
        if self.kind is Kind.ONE_OF:
            return "one of " + ", ".join(self.accepted)
        return self.kind.value


def _numbers(value: str) -> list[int] | None:
    try:
        return [int(part) for part in value.split()]
    except ValueError:
        return None


AT_LEAST = Rule(Kind.AT_LEAST)

#: The rule of every key of the shipped sysctl file (a test checks that both have the
#: same keys). The file's values are floors, ceilings or switches, never targets to
#: bring a better value down to.
RULES: dict[str, Rule] = {
    "net.core.somaxconn": AT_LEAST,
    "net.ipv4.tcp_max_syn_backlog": AT_LEAST,
    "fs.file-max": AT_LEAST,
    "fs.nr_open": AT_LEAST,
    "net.ipv4.ip_local_port_range": Rule(Kind.WIDE_RANGE),
    # min, default, max: each at least the recommendation (larger buffers cost memory
    # only while data is queued in them).
    "net.ipv4.tcp_rmem": AT_LEAST,
    "net.ipv4.tcp_wmem": AT_LEAST,
    "net.core.netdev_max_backlog": AT_LEAST,
    # 1: every outgoing connection; 2: loopback only (the kernel's default). A
    # shardws host's own outgoing connections are its few long-lived bridge links, so 2
    # serves it; 1 matters where a load generator connects to another host.
    "net.ipv4.tcp_tw_reuse": Rule(Kind.ONE_OF, ("1", "2")),
    "net.ipv4.tcp_fin_timeout": Rule(Kind.AT_MOST),
    "net.ipv4.tcp_migrate_req": Rule(Kind.EXACTLY),
}


@dataclass(frozen=True)
class Setting:
    key: str
    current: str | None  # None: not readable here (not Linux, or not in this kernel)
    recommended: str

    @property
    def rule(self) -> Rule:
        return RULES[self.key]

    @property
    def ok(self) -> bool:
        """The live value meets the key's rule (a larger capacity limit, a shorter
        timeout, an accepted enumeration value)."""
        return self.current is not None and self.rule.ok(self.current, self.recommended)


def recommended(path: Path = SYSCTL_FILE) -> dict[str, str]:
    """``key = value`` lines of the shipped sysctl file (comments skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = " ".join(value.split())
    return values


def read_sysctl(key: str) -> str | None:
    try:
        return " ".join(Path("/proc/sys", *key.split(".")).read_text().split())
    except OSError:
        return None


def settings(path: Path = SYSCTL_FILE) -> list[Setting]:
    return [Setting(key, read_sysctl(key), value) for key, value in recommended(path).items()]


def capacity(workers: int) -> dict[str, int]:
    """Connections the host can hold now, and what limits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_worker_fds = hard if hard != resource.RLIM_INFINITY else 1 << 20
    by_fds = max(0, per_worker_fds - 64) * workers  # the supervisor raises soft to hard
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    by_memory = int(memory * 0.8) // BYTES_PER_CONNECTION
    file_max = read_sysctl("fs.file-max")
    by_file_max = int(file_max) if file_max and file_max.isdigit() else by_fds
    return {
        "open_files_soft": int(soft),
        "open_files_hard": int(per_worker_fds),
        "by_open_files": by_fds,
        "by_memory": by_memory,
        "by_file_max": by_file_max,
        "connections": min(by_fds, by_memory, by_file_max),
    }


def roll_peak_per_worker(workers: int, connections: int) -> int:
    """Most connections one worker holds at any moment of a SIGHUP roll: workers are
    replaced one at a time, each drained worker's clients reconnect evenly to the others,
    and the replaced one starts empty. The workers replaced last gather what every
    earlier drain moved: just before its own drain the last one holds about 2.7 shares
    (2.63 at 16 workers, 2.68 at 32, tending to e), measured in a 250,000-connection roll
    as 503s once a worker reached its cap at 2.5 shares."""
    if workers <= 1:
        return connections  # nowhere else to go: its clients wait for the new process
    load = [connections / workers] * workers
    peak = max(load)
    for k in range(workers):
        moved, load[k] = load[k], 0.0
        for j in range(workers):
            if j != k:
                load[j] += moved / (workers - 1)
        peak = max(peak, max(load))
    return math.ceil(peak)


def needs(connections: int, workers: int) -> dict[str, int]:
    """What a host needs to hold ``connections`` idle clients with ``workers`` workers
    (one per core): open files per worker (LimitNOFILE) with room for a roll, the kernel's
    file limits, memory, socket memory for one publication to all, and the ephemeral
    ports of a proxy that holds one upstream connection per client."""
    peak = roll_peak_per_worker(workers, connections)
    open_files = peak + FD_RESERVE
    port_range = (read_sysctl("net.ipv4.ip_local_port_range") or "32768 60999").split()
    ports = int(port_range[1]) - int(port_range[0]) + 1 if len(port_range) == 2 else 28232
    proxy_ports = math.ceil(connections * PROXY_PORT_HEADROOM)
    return {
        "connections": connections,
        "workers": workers,
        "per_worker": math.ceil(connections / workers),
        "per_worker_in_roll": peak,
        "limit_nofile": open_files,
        "fs_nr_open": open_files,
        "fs_file_max": connections * 2 + 65536,  # a proxy on the same host doubles it
        "memory_bytes": connections * BYTES_PER_CONNECTION,
        "tcp_mem_pages": math.ceil(
            connections * KERNEL_BYTES_PER_QUEUED_FRAME / os.sysconf("SC_PAGE_SIZE")
        ),
        "proxy_ports_per_worker_address": proxy_ports,
        "proxy_port_range_now": ports,
        "proxy_source_addresses": math.ceil(proxy_ports / ports),
    }


def needs_report(connections: int, workers: int) -> str:
    """The ``--connections`` section of ``shardws tune``."""
    n = needs(connections, workers)
    cap = capacity(workers)
    tcp_mem = (read_sysctl("net.ipv4.tcp_mem") or "").split()
    lines = [
        f"for {connections:,} connections with {workers} worker(s)"
        f" ({n['per_worker']:,} each, up to {n['per_worker_in_roll']:,} during a roll):",
        f"  open files per process (LimitNOFILE, ulimit -Hn): at least {n['limit_nofile']:,}"
        f" (now {cap['open_files_hard']:,})",
        f"  fs.nr_open: at least {n['fs_nr_open']:,}; fs.file-max: at least"
        f" {n['fs_file_max']:,} (now {cap['by_file_max']:,})",
        f"  memory: about {n['memory_bytes'] / 2**30:.1f} GiB"
        f" ({BYTES_PER_CONNECTION // 1024} KiB per connection, server and kernel)",
        f"  kernel socket memory (net.ipv4.tcp_mem, pages): a publication to all queues"
        f" about {n['tcp_mem_pages']:,} pages until read; the third value should be well"
        f" above (now {tcp_mem[2] if len(tcp_mem) == 3 else 'unknown'})",
        f"  a proxy in front: {n['proxy_ports_per_worker_address']:,} ephemeral ports per"
        f" shardws address it connects to; its ip_local_port_range has"
        f" {n['proxy_port_range_now']:,} here, so {n['proxy_source_addresses']} source"
        " address(es), or a wider range, or more shardws addresses",
    ]
    if n["limit_nofile"] > cap["open_files_hard"]:
        lines.append(
            "  the open-files limit is too low: raise LimitNOFILE. More workers than cores"
            " only work around a limit that cannot be raised; on a real host keep one"
            " worker per core"
        )
    return "\n".join(lines)


def host_sysctl_text(
    read: Callable[[str], str | None] = read_sysctl, path: Path = SYSCTL_FILE
) -> str:
    """The shipped sysctl file for this host: each value replaced by ``Rule.kept`` of
    the live one, so applying it raises what is below a recommendation and lowers
    nothing (a host with ``tcp_rmem`` ``4096 131072 33554432`` keeps it). A kept value
    gets a comment naming the shipped one. Applying it and building it again gives the
    same text."""
    lines = []
    for line in path.read_text().splitlines():
        key, equals, value = line.partition("=")
        key = key.strip()
        if equals and not key.startswith("#") and key in RULES:
            shipped = " ".join(value.split())
            kept = RULES[key].kept(read(key), shipped)
            if kept != shipped:
                lines.append(f"# {key}: this host's {kept} kept (shipped: {shipped})")
                line = f"{key} = {kept}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def report(workers: int, path: Path = SYSCTL_FILE, connections: int = 0) -> str:
    """The table ``shardws tune`` prints; with ``connections``, what holding that many
    needs."""
    rows = settings(path)
    width = max(len(s.key) for s in rows)
    rule_width = max(len(s.rule.describe()) for s in rows)
    lines = [
        f"{'setting'.ljust(width)}  {'current':>24}  {'recommended':>24}"
        f"  {'rule'.ljust(rule_width)}  ok"
    ]
    for s in rows:
        current = "(not available)" if s.current is None else s.current
        mark = "yes" if s.ok else "NO"
        lines.append(
            f"{s.key.ljust(width)}  {current:>24}  {s.recommended:>24}"
            f"  {s.rule.describe().ljust(rule_width)}  {mark}"
        )
    cap = capacity(workers)
    lines += [
        "",
        "yes: the live value meets the rule; one beyond the recommendation is as good: never"
        " lower it.",
        "`shardws install-service` writes /etc/sysctl.d/99-shardws.conf with such values"
        " kept; copying sysctl/99-shardws.conf as it is would lower them.",
        f"open files per process: soft {cap['open_files_soft']}, hard {cap['open_files_hard']}"
        " (the supervisor raises soft to hard; systemd: LimitNOFILE)",
        f"capacity with {workers} worker(s): about {cap['connections']:,} idle connections"
        f" (open files allow {cap['by_open_files']:,}, memory {cap['by_memory']:,}"
        f" at {BYTES_PER_CONNECTION // 1024} KiB each, fs.file-max {cap['by_file_max']:,})",
    ]
    if connections:
        lines += ["", needs_report(connections, workers)]
    return "\n".join(lines)
