"""``shardws tune``: the kernel and process limits that bound a shardws host, read live,
next to the values ``sysctl/99-shardws.conf`` recommends, and the connection capacity
the host has as it stands.

Read-only: it never changes a setting (apply the sysctl file as root to do that). The
recommendations are parsed from the shipped sysctl file itself, so the two cannot drift.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

# sysctl/99-shardws.conf, shipped in the package through the shardws/sysctl.conf link.
SYSCTL_FILE = Path(__file__).parent.parent / "sysctl.conf"

# Bytes of server RSS per idle connection measured by benchmarks scenario 4 (5.6-5.8 KB)
# plus the kernel's share of a socket (about 3.8 KB): what one idle client costs.
BYTES_PER_CONNECTION = 10 * 1024


# Limits where more than recommended is as good; every other setting should be equal.
AT_LEAST = frozenset(
    {
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "fs.file-max",
        "fs.nr_open",
        "net.core.netdev_max_backlog",
    }
)


@dataclass(frozen=True)
class Setting:
    key: str
    current: str | None  # None: not readable here (not Linux, or not in this kernel)
    recommended: str

    @property
    def ok(self) -> bool:
        """Equal to the recommendation, or above it for the capacity limits."""
        if self.current is None:
            return False
        if self.key in AT_LEAST:
            try:
                return int(self.current) >= int(self.recommended)
            except ValueError:
                return False
        return self.current.split() == self.recommended.split()


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


def report(workers: int, path: Path = SYSCTL_FILE) -> str:
    """The table ``shardws tune`` prints."""
    rows = settings(path)
    width = max(len(s.key) for s in rows)
    lines = [f"{'setting'.ljust(width)}  {'current':>24}  {'recommended':>24}  ok"]
    for s in rows:
        current = "(not available)" if s.current is None else s.current
        mark = "yes" if s.ok else "NO"
        lines.append(f"{s.key.ljust(width)}  {current:>24}  {s.recommended:>24}  {mark}")
    cap = capacity(workers)
    lines += [
        "",
        f"open files per process: soft {cap['open_files_soft']}, hard {cap['open_files_hard']}"
        " (the supervisor raises soft to hard; systemd: LimitNOFILE)",
        f"capacity with {workers} worker(s): about {cap['connections']:,} idle connections"
        f" (open files allow {cap['by_open_files']:,}, memory {cap['by_memory']:,}"
        f" at {BYTES_PER_CONNECTION // 1024} KiB each, fs.file-max {cap['by_file_max']:,})",
    ]
    return "\n".join(lines)
