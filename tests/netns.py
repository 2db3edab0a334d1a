"""A multi-host network on one machine, built from Linux network namespaces, for cluster tests.

``Network(["a", "b", "c"])`` is a context manager that makes one namespace per host and a
"switch" namespace holding a Linux bridge; each host is wired to the bridge by a veth pair and
gets ``10.77.0.(10+i)/24`` on its ``eth0``. A test then starts one full server per host with
:meth:`Network.popen`, talks to them from inside any host with :meth:`Network.connect`,
:meth:`Network.http_get`, :meth:`Network.http_post` or :meth:`Network.ws_connect`, and cuts a
host off the switch with :meth:`Network.link_down` (a partition) and back with
:meth:`Network.link_up`::

    @pytest.mark.needs("netns")  # skipped, or failed under CI, if netns_unavailable()
    def test_...():
        with Network(["a", "b"]) as net:
            server = net.popen("a", [sys.executable, "-m", "shardws", "serve", ...])
            status, body = net.http_get("b", net.address("a"), 9000, "/ready")

Needs root and iproute2's ``ip``; :func:`netns_unavailable` says why not when they are missing.
Every namespace is named ``sws<pid>n<counter>...``, so ``ip netns list | grep ^sws`` shows any
that a killed test run left behind (``ip netns del NAME`` removes one).

A namespace outlives ``ip netns del`` while a process or a socket still lives in it: leaving the
``with`` block kills what :meth:`Network.popen` started and is still running; close the sockets
you made with :meth:`Network.connect` yourself. Subprocess timeouts scale with
``SHARDWS_TEST_TIMEOUT_SCALE`` like the rest of the test helpers.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import http.client
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from toolkit import timeout as scaled
from toolkit import wait_until

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

__all__ = ["NetnsError", "Network", "netns_unavailable"]

T = TypeVar("T")

NETNS_DIR = "/var/run/netns"  # where `ip netns add` bind-mounts each namespace
CLONE_NEWNET = 0x40000000  # <sched.h>; os.CLONE_NEWNET only exists from Python 3.12
SUBNET = "10.77.0"
HOST_NAME = re.compile(r"[a-z0-9]{1,12}\Z")  # keeps the switch-side "v-<host>" <= 15 chars
IP_TIMEOUT = 10.0  # seconds for one `ip` command, before scaling

_counter = itertools.count()


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message holds the command and its stderr."""


def _ip_binary() -> str | None:
    return shutil.which("ip") or next(
        (path for path in ("/usr/sbin/ip", "/sbin/ip") if os.access(path, os.X_OK)), None
    )


def _ip(*args: str) -> str:
    """Run ``ip ARGS`` (bounded), returning stdout; raise :class:`NetnsError` if it fails."""
    ip = _ip_binary()
    if ip is None:
        raise NetnsError("no `ip` binary (install iproute2)")
    try:
        done = subprocess.run(
            [ip, *args], capture_output=True, text=True, timeout=scaled(IP_TIMEOUT)
        )
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"`ip {' '.join(args)}` took over {exc.timeout:.0f} s") from exc
    if done.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


@functools.cache
def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they work (cached).

    The check is real: it creates a throwaway namespace with a bridge and a veth pair in it,
    then deletes it. Tests mark themselves ``pytest.mark.needs("netns")``: skipped with
    the returned reason, or failed with it under CI (``tests/external.py``).
    """
    if os.geteuid() != 0:
        return "network namespaces need root"
    if _ip_binary() is None:
        return "no `ip` binary (install iproute2)"
    if _libc_setns() is None:
        return "libc has no setns()"
    probe = f"sws{os.getpid()}probe"
    try:
        _ip("netns", "add", probe)
    except NetnsError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _ip("-n", probe, "link", "add", "br0", "type", "bridge")
        _ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    except NetnsError as exc:
        return f"cannot create a bridge or veth pair in a namespace: {exc}"
    finally:
        try:
            _ip("netns", "del", probe)
        except NetnsError:
            pass
    return None


@functools.cache
def _libc_setns() -> Callable[[int, int], int] | None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    setns = getattr(libc, "setns", None)
    if setns is None:
        return None
    setns.argtypes = [ctypes.c_int, ctypes.c_int]
    setns.restype = ctypes.c_int
    return setns


def _call_in_namespace(namespace: str, function: Callable[[], T]) -> T:
    """Run ``function()`` in a fresh thread that first joins ``namespace``; return its result.

    ``setns`` moves only the calling thread, and a fresh thread (never a pooled one, such as
    asyncio's executor) dies with it, so the caller's threads stay where they are. A socket
    belongs to the namespace it was created in for its whole life, wherever it is used later.
    The thread's exception is raised here.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            setns = _libc_setns()
            if setns is None:
                raise OSError("libc has no setns()")
            path = os.path.join(NETNS_DIR, namespace)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns: {os.strerror(errno)}", path)
            finally:
                os.close(fd)
            outcome.append(function())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


class _NamespaceHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket is opened from inside one host's namespace."""

    def __init__(self, network: Network, host: str, address: str, port: int, timeout: float):
        super().__init__(address, port, timeout=timeout)
        self._network = network
        self._from_host = host

    def connect(self) -> None:
        self.sock = self._network.connect(self._from_host, self.host, self.port, self.timeout)


class Network:
    """Hosts on one switched /24, each in its own network namespace (a context manager).

    ``Network(["a", "b", "c"])``: host names are 1-12 lowercase letters or digits, unique.
    Entering builds everything and waits until every link forwards; if that fails halfway,
    what was built is removed before the error propagates. Leaving kills the processes that
    :meth:`popen` started and that still run, then deletes every namespace (their veths go
    with them).
    """

    def __init__(self, hosts: list[str]) -> None:
        if not hosts:
            raise ValueError("a Network needs at least one host")
        for host in hosts:
            if not HOST_NAME.match(host):
                raise ValueError(f"host name {host!r}: use 1-12 lowercase letters or digits")
        if len(set(hosts)) != len(hosts):
            raise ValueError(f"host names must be unique, got {hosts!r}")
        if len(hosts) > 244:
            raise ValueError(f"at most 244 hosts fit {SUBNET}.10-254, got {len(hosts)}")
        self.hosts = list(hosts)
        prefix = f"sws{os.getpid()}n{next(_counter)}"
        self.switch = prefix  # the switch namespace, holding bridge "br0"
        self._namespaces = {host: f"{prefix}-{host}" for host in hosts}
        self._addresses = {host: f"{SUBNET}.{10 + i}" for i, host in enumerate(hosts)}
        self._created: list[str] = []
        self._etc_dirs: list[str] = []  # /etc/netns/NS directories made by set_hosts
        self._processes: list[subprocess.Popen[Any]] = []

    # --- lifetime ---------------------------------------------------------------------------

    def __enter__(self) -> Network:
        try:
            self._build()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._teardown()

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add_namespace(self.switch)
        # No STP: a port forwards as soon as it is up, instead of after the forward delay.
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge", "stp_state", "0")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for host in self.hosts:
            ns, port = self._namespaces[host], self._port(host)
            self._add_namespace(ns)
            # Both ends are born in their namespaces: no name ever exists in the root namespace,
            # so concurrent Networks (and the machine's own interfaces) cannot collide.
            veth = ["eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch]
            _ip("link", "add", *veth)
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{self._addresses[host]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        for host in self.hosts:
            self._wait_forwarding(host)

    def _teardown(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.kill()
                try:
                    process.wait(scaled(5))
                except subprocess.TimeoutExpired:
                    pass
        self._processes.clear()
        errors = []
        for name in reversed(self._created):
            try:
                _ip("netns", "del", name)
            except NetnsError as exc:
                errors.append(str(exc))
        self._created.clear()
        for directory in self._etc_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self._etc_dirs.clear()
        if errors:
            raise NetnsError("; ".join(errors))

    # --- addressing -------------------------------------------------------------------------

    def set_hosts(self, host: str, names: dict[str, list[str]]) -> None:
        """Make ``host`` resolve each name in ``names`` to its addresses (its own
        ``/etc/hosts``: ``ip netns exec`` bind-mounts ``/etc/netns/NS/hosts`` over it).
        Call before starting a process for it to apply; later calls rewrite the same file
        in place, so running processes see the change at their next lookup."""
        directory = os.path.join("/etc/netns", self.ns(host))
        os.makedirs(directory, exist_ok=True)
        if directory not in self._etc_dirs:
            self._etc_dirs.append(directory)
        lines = ["127.0.0.1 localhost"]
        lines += [f"{address} {name}" for name, addresses in names.items() for address in addresses]
        path = os.path.join(directory, "hosts")
        # In place (r+, truncate), not a new file: the bind mount holds the old inode.
        with open(path, "r+" if os.path.exists(path) else "w") as file:
            file.write("\n".join(lines) + "\n")
            file.truncate()

    def address(self, host: str) -> str:
        """The IPv4 address of ``host`` on the switch (``10.77.0.10`` for the first host)."""
        return self._addresses[self._known(host)]

    def ns(self, host: str) -> str:
        """The name of ``host``'s network namespace (for ``ip -n NAME ...``)."""
        return self._namespaces[self._known(host)]

    def _known(self, host: str) -> str:
        if host not in self._namespaces:
            raise KeyError(f"no host {host!r} in this Network; hosts are {self.hosts!r}")
        return host

    @staticmethod
    def _port(host: str) -> str:
        return f"v-{host}"  # the switch-side end of host's veth pair

    # --- partitions -------------------------------------------------------------------------

    def link_down(self, host: str) -> None:
        """Unplug ``host`` from the switch: from now on no packet passes either way.

        The switch-side end goes down; the host keeps its address and routes, so sockets on
        both sides see silence (connect timeouts, TCP retransmissions; "no route to host" only
        once ARP gives up, after seconds), and established TCP connections survive if the link
        comes back before they time out.
        """
        _ip("-n", self.switch, "link", "set", self._port(self._known(host)), "down")

    def link_up(self, host: str) -> None:
        """Plug ``host`` back in, and return once packets pass again.

        The kernel applies a carrier change asynchronously (its link watcher may lag), and
        until then the host's ``eth0`` drops what it sends; this waits for that (milliseconds).
        It also forgets the ARP entries between ``host`` and the others: one left half-resolved
        during the partition would hold packets until its next ARP retry, up to a second later.
        TCP connections that survived resume at their next retransmission, which backoff may
        delay by seconds after a long partition.
        """
        _ip("-n", self.switch, "link", "set", self._port(self._known(host)), "up")
        self._wait_forwarding(host)
        _ip("-n", self.ns(host), "neigh", "flush", "dev", "eth0")
        for other in self.hosts:
            if other != host:
                _ip("-n", self.ns(other), "neigh", "flush", "to", self.address(host))

    def _wait_forwarding(self, host: str, within: float = 10.0) -> None:
        """Wait until both ends of ``host``'s veth are operationally up and the port forwards."""
        states: tuple[str, str, str | None] = ("", "", None)

        def forwarding() -> bool:
            nonlocal states
            (inner,) = json.loads(_ip("-j", "-n", self.ns(host), "link", "show", "dev", "eth0"))
            (outer,) = json.loads(
                _ip("-j", "-d", "-n", self.switch, "link", "show", "dev", self._port(host))
            )
            port_state = outer.get("linkinfo", {}).get("info_slave_data", {}).get("state")
            states = (inner["operstate"], outer["operstate"], port_state)
            return states == ("UP", "UP", "forwarding")

        try:
            wait_until(forwarding, within, 0.01)
        except AssertionError:
            raise NetnsError(
                f"link of host {host!r} not up after {scaled(within):.0f} s: eth0 "
                f"{states[0]}, switch port {states[1]} {states[2]}"
            ) from None

    # --- traffic ----------------------------------------------------------------------------

    def sent_bytes(self) -> dict[str, int]:
        """Bytes each host has sent onto the switch so far (its port's receive counter,
        read in the switch namespace in one ``ip`` call). Every byte between hosts is
        counted once, by its sender; traffic a host makes to itself stays on its loopback."""
        links = json.loads(_ip("-j", "-s", "-n", self.switch, "link", "show"))
        received = {link["ifname"]: int(link["stats64"]["rx"]["bytes"]) for link in links}
        return {host: received[self._port(host)] for host in self.hosts}

    # --- running things inside a host -------------------------------------------------------

    def popen(self, host: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``'s namespace (``ip netns exec``); kwargs go to Popen.

        ``ip netns exec`` execs the command in place, so the returned Popen's pid is the
        command's own and signals reach it directly. Stop it before leaving the ``with`` block;
        one still running then is killed.
        """
        ip = _ip_binary()
        if ip is None:
            raise NetnsError("no `ip` binary (install iproute2)")
        process = subprocess.Popen([ip, "netns", "exec", self.ns(host), *argv], **kwargs)
        self._processes.append(process)
        return process

    def call_in(self, host: str, function: Callable[[], T]) -> T:
        """Run ``function()`` in a fresh thread inside ``host``'s namespace; return its result.

        Sockets that ``function`` creates (a connection, a listener) belong to that namespace
        for their whole life. Its exception is raised here.
        """
        return _call_in_namespace(self.ns(host), function)

    def connect(
        self, host: str, address: str, port: int, timeout: float | None = 5.0
    ) -> socket.socket:
        """A TCP socket connected from inside ``host`` to ``address:port`` (``OSError`` if not).

        ``timeout`` bounds the connect and stays set on the socket (None: blocking). Close the
        socket when done: it keeps the namespace alive.
        """
        return self.call_in(host, lambda: socket.create_connection((address, port), timeout))

    def http_get(
        self,
        host: str,
        address: str,
        port: int,
        path: str,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """``GET path`` from inside ``host`` to ``address:port``: (status, body), any status."""
        return self._http(host, address, port, "GET", path, None, headers or {}, timeout)

    def http_post(
        self,
        host: str,
        address: str,
        port: int,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> tuple[int, bytes]:
        """``POST body`` to ``path`` from inside ``host`` to ``address:port``: (status, body)."""
        return self._http(host, address, port, "POST", path, body, headers or {}, timeout)

    def _http(
        self,
        host: str,
        address: str,
        port: int,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
    ) -> tuple[int, bytes]:
        connection = _NamespaceHTTPConnection(self, host, address, port, timeout)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    async def ws_connect(
        self,
        host: str,
        address: str,
        port: int,
        path: str = "/ws",
        timeout: float = 5.0,
        **kwargs: Any,
    ) -> ClientConnection:
        """A websockets client connection opened from inside ``host`` to ``ws://address:port``.

        The TCP connection is made by :meth:`connect` in a worker thread, then handed to
        ``websockets.asyncio.client.connect(uri, sock=sock)``: given ``sock``, websockets
        skips DNS and proxies and uses the socket as it is (asyncio makes it non-blocking).
        That is the ``websockets.asyncio`` API of websockets >= 13 (checked with 17.4).
        ``kwargs`` go to that ``connect`` (``additional_headers``, ``open_timeout``, ...).
        Close the connection when done (``await ws.close()``).
        """
        from websockets.asyncio.client import connect

        sock = await asyncio.to_thread(self.connect, host, address, port, timeout)
        try:
            sock.setblocking(False)
            return await connect(f"ws://{address}:{port}{path}", sock=sock, **kwargs)
        except BaseException:
            sock.close()
            raise
