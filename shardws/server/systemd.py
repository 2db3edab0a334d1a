"""sd_notify(3) over the datagram socket systemd names in ``$NOTIFY_SOCKET``, and
sd_booted(3).

Stdlib only. Every notify call is a no-op when the service does not run under systemd
(``NOTIFY_SOCKET`` unset), so callers never need to check.
"""

from __future__ import annotations

import os
import socket


def booted() -> bool:
    """True if systemd is this system's init (PID 1), so ``systemctl`` can manage units.

    The test sd_booted(3) uses: systemd creates ``/run/systemd/system/`` early at boot,
    and nothing else does; containers without systemd as init do not have it.
    """
    return os.path.isdir("/run/systemd/system")


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings systemd expects (half of WatchdogSec), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, ``"STATUS=..."``); True if a socket took it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True
