"""Configuration: a TOML file -> frozen, validated dataclasses.

Guarantees:

* This is the only module of shardws that reads TOML or the environment; every other
  module is handed a :class:`Config` (or one of its sections).
* A :class:`Config` from :func:`parse_config`, :func:`load_config` or
  :func:`default_config` is fully validated: every value has its declared type and lies
  within its declared range, and the cross-field rules hold, so nothing downstream
  re-checks. (Objects built directly in code, e.g. in tests, are trusted as given.)
* Units are uniform: durations are seconds (``float``; TOML may give an int), sizes are
  bytes (``int``).
* Every user error is reported with a one-line message naming the file, the key, the
  offending value and what would be valid, and every error of a file is reported at once:
  a :class:`ConfigError` holds them all (``errors``), one line each. Unknown sections and
  keys are errors, because a typo must not silently fall back to a default; a close valid
  name is suggested. Missing sections and keys take their defaults.
* :func:`dump_config` emits TOML that :func:`parse_config` turns back into an equal
  :class:`Config` (``source`` aside), except that secrets are written as ``"<redacted>"``.
  An option the file gave as a keyword (``workers = "auto"``) is written as that keyword,
  with what it stands for on this host in a comment (:attr:`Config.keywords`).
* Secrets (options declared ``secret=True``, and key material read from files) never
  appear in an error message, in :func:`dump_config` output or in ``repr()``.
* Files named by options (``[auth] secret_file``, ``public_key_file``, ``[tls] cert``,
  ``key``) are read and checked here, at load; an unreadable or invalid file is a
  :class:`ConfigError` naming the key and the file.

Adding a section: declare a frozen dataclass whose fields use :func:`option` (the type
comes from the annotation, constraints are keyword rules) and add it as a field of
:class:`Config`. Validation and :func:`dump_config` are driven by the fields; there is no
per-key code. Field types understood: ``bool``, ``int``, ``float``, ``str``,
``tuple[T, ...]`` (a TOML array; with ``T`` a section dataclass, an array of tables such
as ``[[pusher.apps]]``, whose entries are named ``apps[0]``, ``apps[1]``... in errors),
another section dataclass (a sub-table) and ``Mapping[str, T]`` (a table of named
entries, e.g. ``[namespaces.<name>]``; stored read-only). Rules that span fields go in a
``cross_check`` method yielding ``(key, reason)`` for each violation. A section whose
options name files to read defines ``load_files()``, returning the section with the file
contents stored in ``toml=False`` fields (or raising :class:`_FileError`); it runs
before ``cross_check``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import ipaddress
import math
import os
import re
import ssl
import tomllib
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any, TypeVar

__all__ = [
    "AUTO_CONNECTIONS",
    "MAX_MESSAGE_SIZE",
    "MAX_WINDOW_BITS",
    "MAX_WORKERS",
    "MIN_PUSHER_SECRET_BYTES",
    "MIN_SECRET_BYTES",
    "MIN_WINDOW_BITS",
    "PUSHER_WEBHOOK_EVENTS",
    "AdminConfig",
    "AuthConfig",
    "CompressionConfig",
    "Config",
    "ConfigError",
    "DiagnosticsConfig",
    "IngressConfig",
    "LimitsConfig",
    "LogConfig",
    "NamespaceConfig",
    "PusherAppConfig",
    "PusherConfig",
    "PusherWebhookConfig",
    "PusherWebhookFilterConfig",
    "RedisConfig",
    "ServerConfig",
    "TLSConfig",
    "auto_workers",
    "default_config",
    "dump_config",
    "from_table",
    "load_config",
    "option",
    "parse_config",
    "run_dir_parent",
]

T = TypeVar("T")

#: ``[limits] connections_per_worker = "auto"``: no number of its own, the open-files
#: limit decides (a number is >= 1).
AUTO_CONNECTIONS = 0

#: Upper bound of ``[server] workers``; ``"auto"`` is clamped to it too, so a dumped
#: config still validates on a machine with more CPUs than that.
MAX_WORKERS = 1024

#: Shortest accepted HS256 secret: RFC 7518 3.2 requires a key at least as long as the
#: hash output (256 bits), and shorter secrets can be brute-forced from one token.
MIN_SECRET_BYTES = 32

#: Ceiling of ``[server] max_message_size`` (64 MiB).
MAX_MESSAGE_SIZE = 64 * 1024 * 1024

#: RFC 7692 7.1.2: LZ77 window sizes a permessage-deflate peer may negotiate. zlib cannot
#: produce raw deflate with an 8-bit window (it silently uses 9), so 8 is never used.
MIN_WINDOW_BITS = 9
MAX_WINDOW_BITS = 15

#: How a secret value is shown in errors and in :func:`dump_config` output.
REDACTED = "<redacted>"


class ConfigError(Exception):
    """A user-caused configuration error: every error found in one file.

    Each error is one line naming the file and the key, e.g.
    ``shardws.toml: [server] port: expected an integer 0..65535, got 'abc'``; ``str(err)``
    is those lines, in file order, so a file with one error gives one line.
    Attributes, of the first error: ``source`` (the file, or ``"<default>"``), ``key``
    (dotted, e.g. ``"server.port"``; ``""`` when the error is about the whole file) and
    ``detail`` (the message without the file name); ``errors``: every error, the first
    included, each a :class:`ConfigError` of its own.
    """

    def __init__(
        self, source: str, key: str, detail: str, more: tuple[ConfigError, ...] = ()
    ) -> None:
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.key = key
        self.detail = detail
        self.errors: tuple[ConfigError, ...] = (self, *more)

    def __str__(self) -> str:
        return "\n".join(f"{error.source}: {error.detail}" for error in self.errors)


# --------------------------------------------------------------------------- declaring

_RULES = frozenset(
    {"ge", "gt", "le", "choices", "check", "expect", "keywords", "unit", "toml", "secret"}
)


def option(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    **rules: Any,
) -> Any:
    """Declare a config field: its default (or a zero-argument ``factory``) and its rules.

    Rules, all optional; for arrays and tables of scalars they apply to each element:

    * ``ge``, ``gt``, ``le`` -- numeric bounds (>=, >, <=);
    * ``choices`` -- the allowed values;
    * ``check``, ``expect`` -- a predicate the value must satisfy, and the phrase
      describing what it accepts (``expect`` also replaces the generated description);
    * ``keywords`` -- ``{"word": meaning}``: the TOML value may be that string instead, and
      the field stores ``meaning()`` when it is a function, resolved on this host (e.g.
      ``workers = "auto"``), else ``meaning`` itself (a value numbers cannot take);
    * ``unit`` -- ``"seconds"`` or ``"bytes"``, shown in error messages;
    * ``toml=False`` -- the field is not a TOML key (e.g. :attr:`Config.source`);
    * ``secret=True`` -- the value is never shown: errors say ``<redacted>`` instead of
      the value, :func:`dump_config` writes ``"<redacted>"`` and ``repr()`` omits it.
    """
    unknown = rules.keys() - _RULES
    if unknown:
        raise TypeError(f"unknown option rule(s): {sorted(unknown)}")
    shown = not rules.get("secret", False)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=rules, repr=shown)
    return dataclasses.field(default=default, metadata=rules, repr=shown)


def auto_workers() -> int:
    """The number of CPUs this process may run on (its affinity mask), 1..MAX_WORKERS.

    The affinity mask, not ``os.cpu_count()``, because containers and ``taskset`` restrict
    it: one worker per usable core is the whole point of ``workers = "auto"``.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_WORKERS))


def run_dir_parent() -> str:
    """Where the private run directory goes when ``[server] run_dir`` is ``""``:
    ``$XDG_RUNTIME_DIR`` (per-user, mode 0700, tmpfs) if set to an absolute path, else
    ``/tmp``. Only this module reads the environment; the server creates the directory.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    # The XDG spec says a relative value must be ignored.
    return xdg if os.path.isabs(xdg) else "/tmp"


def _is_ws_path(value: str) -> bool:
    return value.startswith("/")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: the WebSocket listener, the worker processes, per-connection limits."""

    #: Address the WebSocket port binds. Default ``"127.0.0.1"``.
    host: str = option("127.0.0.1")
    #: TCP port of the WebSocket listener, 0..65535; 0 = any free port (useful for tests).
    #: Default 8765.
    port: int = option(8765, ge=0, le=65535)
    #: HTTP path of the WebSocket endpoint; must start with "/". Default ``"/ws"``.
    path: str = option("/ws", check=_is_ws_path, expect='a path starting with "/"')
    #: Worker processes, 1..1024; TOML also accepts ``"auto"`` = one per CPU in this
    #: process's affinity mask (stored resolved). Default ``"auto"``.
    workers: int = option(
        factory=auto_workers, ge=1, le=MAX_WORKERS, keywords={"auto": auto_workers}
    )
    #: Most workers a SIGHUP reload may scale ``workers`` up to, 1..1024; fixed at start
    #: (it sizes the shared-memory tables). The effective bound is never below
    #: ``workers``. Default 64.
    max_workers: int = option(64, ge=1, le=MAX_WORKERS)
    #: Largest accepted client message, bytes, 64..64 MiB; a bigger message (one frame,
    #: the sum of its fragments, or its permessage-deflate inflated size) closes the
    #: connection with 1009. The 64 MiB ceiling leaves room for the Autobahn suite's
    #: 16 MiB messages (section 9) on the diagnostics echo while still bounding what one
    #: connection can make a worker buffer. Default 65536.
    max_message_size: int = option(65536, ge=64, le=MAX_MESSAGE_SIZE, unit="bytes")
    #: Per-connection cap on queued outbound data, bytes, >= 1024; a consumer that falls
    #: further behind is a slow consumer. Default 1048576 (1 MiB).
    max_pending_bytes: int = option(1024 * 1024, ge=1024, unit="bytes")
    #: Seconds > 0 without an inbound frame after which the server sends a WebSocket
    #: ping. Default 25.
    ping_interval: float = option(25.0, gt=0, unit="seconds")
    #: Seconds without any inbound frame (pongs included) after which the connection is
    #: closed; must exceed ping_interval so a pinged client has time to answer. Default 60.
    idle_timeout: float = option(60.0, gt=0, unit="seconds")
    #: Seconds > 0 within which the HTTP upgrade must complete. Default 5.
    handshake_timeout: float = option(5.0, gt=0, unit="seconds")
    #: Seconds > 0 of graceful shutdown: on SIGTERM connections get close 1001 and the
    #: service exits within this. Default 10.
    drain_timeout: float = option(10.0, gt=0, unit="seconds")
    #: Seconds > 0 a process may go without a sign of life before the supervisor kills
    #: and replaces it: its event loop's heartbeat or, for a worker whose loop runs late
    #: because it is busy, its work counters moving (a busy worker is never killed for
    #: being late). Default 10.
    heartbeat_timeout: float = option(10.0, gt=0, unit="seconds")
    #: High-water mark of the host bus, in bus frames (each frame batches the
    #: publications of one event-loop iteration for one channel), >= 1: what may wait in
    #: the bus forwarder for one subscribing process (the hop from a publisher to the
    #: forwarder keeps at least 10000). Past it ZeroMQ drops; receivers count the loss
    #: (and repair it in channels with history). Default 100000.
    bus_hwm: int = option(100_000, ge=1)
    #: listen() backlog of each worker's socket, 1..65535. Default 4096.
    backlog: int = option(4096, ge=1, le=65535)
    #: Directory for the bus's ipc sockets; ``""`` = a private directory created at start
    #: under :func:`run_dir_parent`. Default ``""``.
    run_dir: str = option("")
    #: Whether plain HTTP GETs of ``/`` get the chat demo page (channel ``chat:<room>``:
    #: it needs a ``[namespaces.chat]`` with history, presence and join_leave; see
    #: docs/clients.md). ``/shardws.js`` (the browser client) is served either way.
    #: Default false.
    demo: bool = option(False)

    def cross_check(self) -> Iterator[tuple[str, str]]:
        """Rules spanning fields: ``(key, reason)`` per violation."""
        # The idle close must come after a ping has gone out, or pings never help.
        if self.idle_timeout <= self.ping_interval:
            limit = f"ping_interval ({_show(self.ping_interval)})"
            yield (
                "idle_timeout",
                f"expected a number of seconds > {limit}, got {_show(self.idle_timeout)}",
            )


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``[admin]``: the admin HTTP port (``GET /health`` and other operator endpoints)."""

    #: Address the admin port binds. Default ``"127.0.0.1"`` (keep it private).
    host: str = option("127.0.0.1")
    #: TCP port of the admin endpoint, 0..65535; 0 = any free port. Default 9765.
    port: int = option(9765, ge=0, le=65535)
    #: Key for the HTTP API (``POST /api/publish``), sent in an ``X-API-Key`` header;
    #: at least 16 characters. ``""`` (default) disables the API.
    api_key: str = option("", secret=True)
    #: Serve the operator console (``GET /console``: live graphs, channels, publish) on
    #: this port; signing in takes ``api_key``. Default false.
    console: bool = option(False)
    #: Seconds a console sign-in lasts (then the page asks for the key again). Default
    #: 28800 (8 hours).
    console_session_ttl: float = option(28800.0, gt=0, le=7 * 86400, unit="seconds")

    def cross_check(self) -> Iterator[tuple[str, str]]:
        if self.api_key and len(self.api_key) < 16:
            yield "api_key", "must be at least 16 characters (or empty to disable the API)"
        if self.console and not self.api_key:
            yield "console", "needs api_key: signing in to the console takes the API key"


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``: logging of all processes."""

    #: Minimum level logged: debug, info, warning or error. Default ``"info"``.
    level: str = option("info", choices=("debug", "info", "warning", "error"))
    #: ``"text"`` (human-readable lines) or ``"json"`` (one object per line). Default
    #: ``"text"``.
    format: str = option("text", choices=("text", "json"))


class _FileError(Exception):
    """Raised by a section's ``load_files``: option ``key`` names a bad file."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


def _read_file(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise _FileError(key, f"cannot read {path!r}: {err.strerror or err}") from None


def _read_text(key: str, path: str) -> str:
    raw = _read_file(key, path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        # The position only: the bytes themselves may be key material.
        raise _FileError(key, f"{path!r} is not UTF-8 text (byte {err.start})") from None


def _read_secret(path: str) -> str:
    """The secret in the file an option ``secret_file`` names."""
    text = _read_text("secret_file", path)
    # A trailing newline is an artifact of `echo` and editors, not part of a secret.
    return text.removesuffix("\n").removesuffix("\r")


def _check_public_key(key: str, path: str, pem: str, algorithm: str) -> None:
    """Raise unless ``pem`` is a public key usable with ``algorithm`` (RS256 or ES256)."""
    # Imported here: only configs using RS256/ES256 pay for loading cryptography.
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        public_key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):  # the library's message may quote the input: not shown
        raise _FileError(
            key,
            f"{path!r} is not a PEM public key (expected '-----BEGIN PUBLIC KEY-----'; "
            "never give the private key here)",
        ) from None
    if algorithm == "RS256":
        # 2048 bits: the minimum RFC 7518 3.3 allows for RS256.
        if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < 2048:
            raise _FileError(key, f"{path!r}: RS256 needs an RSA public key of >= 2048 bits")
    elif not (
        isinstance(public_key, ec.EllipticCurvePublicKey)
        and isinstance(public_key.curve, ec.SECP256R1)
    ):
        # RFC 7518 3.4: ES256 is ECDSA on P-256 only.
        raise _FileError(key, f"{path!r}: ES256 needs an EC public key on curve P-256")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: who may connect. Connection tokens are JWTs (claims ``sub``, ``exp``,
    optional ``info`` and ``channels``) verified with exactly one algorithm; see
    :mod:`shardws.pure.auth`.

    After loading, :meth:`verification_key` is the key to verify tokens with; the
    secret never appears in ``repr()``, errors or :func:`dump_config` output.
    """

    #: Whether connections without a token are allowed (as user ``""``). Default true.
    anonymous: bool = option(True)
    #: The only JWT algorithm accepted: ``"HS256"`` (shared secret), ``"RS256"`` or
    #: ``"ES256"`` (public key). Tokens with any other ``alg`` (``"none"`` included) are
    #: rejected. Default ``"HS256"``.
    algorithm: str = option("HS256", choices=("HS256", "RS256", "ES256"))
    #: HS256 shared secret, >= 32 bytes; required with HS256 when anonymous is false.
    #: Prefer ``secret_file``: a secret in the config file leaks with it. Default ``""``.
    secret: str = option("", secret=True)
    #: File holding the HS256 secret instead of ``secret`` (one trailing newline is
    #: removed); read at load. Default ``""``.
    secret_file: str = option("")
    #: PEM file of the public key for RS256 (RSA >= 2048 bits) or ES256 (EC P-256);
    #: required with those algorithms; read at load. Default ``""``.
    public_key_file: str = option("")
    #: Seconds of clock skew allowed when checking ``exp`` and ``nbf``, >= 0. Default 5.
    leeway: float = option(5.0, ge=0, unit="seconds")
    #: When non-empty, tokens must carry this ``aud``; when empty, tokens carrying an
    #: ``aud`` are rejected (RFC 7519 4.1.3). Default ``""``.
    audience: str = option("")
    #: When non-empty, tokens must carry this ``iss``. Default ``""``.
    issuer: str = option("")
    #: The content of ``secret_file``, read at load. Not a TOML key.
    secret_from_file: str = option("", toml=False, secret=True)
    #: The PEM text of ``public_key_file``, read and checked at load. Not a TOML key.
    public_key: str = option("", toml=False)

    def verification_key(self) -> str:
        """The key tokens are verified (and, for HS256, signed) with: the secret from
        ``secret`` or ``secret_file`` for HS256, the PEM public key otherwise. ``""`` when
        none is configured (then only anonymous connections are possible)."""
        if self.algorithm == "HS256":
            return self.secret or self.secret_from_file
        return self.public_key

    def load_files(self) -> AuthConfig:
        """Read ``secret_file`` and ``public_key_file`` into the non-TOML fields."""
        loaded = self
        if self.secret_file:
            loaded = dataclasses.replace(loaded, secret_from_file=_read_secret(self.secret_file))
        if self.public_key_file:
            pem = _read_text("public_key_file", self.public_key_file)
            if self.algorithm != "HS256":  # else cross_check reports the mix-up
                _check_public_key("public_key_file", self.public_key_file, pem, self.algorithm)
            loaded = dataclasses.replace(loaded, public_key=pem)
        return loaded

    def cross_check(self) -> Iterator[tuple[str, str]]:
        """Rules spanning fields: ``(key, reason)`` per violation. Never shows a secret."""
        if self.secret and self.secret_file:
            yield "secret_file", "set either secret or secret_file, not both"
        if self.algorithm == "HS256":
            if self.public_key_file:
                yield (
                    "public_key_file",
                    "is used only with algorithm 'RS256' or 'ES256', but algorithm is 'HS256'",
                )
            secret = self.verification_key()
            size = len(secret.encode())
            if secret and size < MIN_SECRET_BYTES:
                key = "secret" if self.secret else "secret_file"
                yield key, f"expected a secret of >= {MIN_SECRET_BYTES} bytes, got {size} bytes"
            if not secret and not self.anonymous:
                yield (
                    "secret",
                    "required (or secret_file) when algorithm is 'HS256' and anonymous is false",
                )
        else:
            if self.secret or self.secret_file:
                key = "secret" if self.secret else "secret_file"
                yield (
                    key,
                    f"is used only with algorithm 'HS256', but algorithm is {self.algorithm!r}",
                )
            if not self.public_key_file:
                yield "public_key_file", f"required with algorithm {self.algorithm!r}"


# The forms shardws.handshake.origin_allowed matches: "scheme://host[:port]" exactly, or
# "scheme://*.domain[:port]" for subdomains. Lowercase, because browsers send it so.
_ORIGIN_RE = re.compile(
    r"[a-z][a-z0-9+.-]*://"
    r"(?:(?:\*\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?"
)


def _is_origin_pattern(value: str) -> bool:
    return _ORIGIN_RE.fullmatch(value) is not None


def _is_ip_network(value: str) -> bool:
    try:
        # strict: "10.0.0.1/8" (host bits set) is rejected as the likely typo it is.
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: what one client may do. Every limit has a documented reply or close
    code and is counted."""

    #: Refill rate of each connection's command token bucket, commands per second, > 0.
    #: Default 1000: far above what a browser sends, low enough to stop a flood. A
    #: backend publishing flat out over WebSocket (or a load test) needs more.
    commands_per_second: float = option(1000.0, gt=0)
    #: Size of that bucket: commands a connection may send at once after being quiet,
    #: >= 1. Default 2000.
    command_burst: int = option(2000, ge=1)
    #: Consecutive over-limit commands after which the connection is closed with 4008,
    #: >= 1. Default 50.
    abuse_close_after: int = option(50, ge=1)
    #: Most channels one connection may be subscribed to, >= 1. Default 256.
    subscriptions_per_connection: int = option(256, ge=1)
    #: Most connections one worker holds; more are refused at the handshake (503), >= 1,
    #: or ``"auto"`` (stored as 0): as many as the worker's open-files limit leaves room
    #: for. A worker takes fewer than a number if its open-files limit leaves less room
    #: (worker 0 warns). Default ``"auto"``.
    connections_per_worker: int = option(
        AUTO_CONNECTIONS, ge=1, keywords={"auto": AUTO_CONNECTIONS}
    )
    #: Seconds a worker's event loop may run late before the worker refuses new
    #: connections (HTTP 503 with ``Retry-After``) to keep serving those it holds; it
    #: takes them again once its loop is under half of it. 0 = never refuse for lag.
    #: Default 1.0. See docs/operations.md ("A saturated host").
    overload_loop_lag: float = option(1.0, ge=0)
    #: The ``Retry-After`` (seconds) of a 503 for a full or overloaded worker: how long
    #: shardws's clients wait, with jitter up to as long again, before they retry, >= 1.
    #: Default 5.
    overload_retry_after: int = option(5, ge=1)
    #: Most connections from one client IP across all workers of this host; 0 =
    #: unlimited. Default 0.
    connections_per_ip: int = option(0, ge=0)
    #: New connections per second allowed from one client IP; 0 = unlimited. Default 0.
    new_connections_per_ip_per_second: float = option(0.0, ge=0)
    #: Origins whose browsers may connect (cross-site WebSocket hijacking defence):
    #: ``"https://example.com"`` (scheme, host and optional port, lowercase, matched
    #: exactly) or ``"https://*.example.com"`` (its subdomains, not itself, with that
    #: scheme). Empty = any Origin; when non-empty, requests without an ``Origin``
    #: header are refused too. Default [].
    allowed_origins: tuple[str, ...] = option(
        (),
        check=_is_origin_pattern,
        expect='a lowercase origin like "https://example.com" or "https://*.example.com"',
    )
    #: IP addresses or CIDR networks (e.g. ``"10.0.0.0/8"``) of proxies whose
    #: ``X-Forwarded-For`` gives the client IP; from anyone else it is ignored. Default [].
    trusted_proxies: tuple[str, ...] = option(
        (), check=_is_ip_network, expect='an IP address or CIDR network like "10.0.0.0/8"'
    )


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """``[tls]``: serve ``wss://`` directly. Both files or neither; checked at load (the
    key must match the certificate; encrypted keys are not supported)."""

    #: PEM certificate chain file (the server certificate first). Default ``""`` (no TLS).
    cert: str = option("")
    #: PEM private key file of that certificate, unencrypted. Default ``""`` (no TLS).
    key: str = option("")

    def load_files(self) -> TLSConfig:
        """Check that both files are readable and form a usable certificate and key."""
        if not (self.cert and self.key):
            return self  # cross_check reports a half-configured section
        _read_file("cert", self.cert)
        _read_file("key", self.key)

        def no_password() -> bytes:
            raise _FileError("key", f"{self.key!r} is encrypted; give an unencrypted key")

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key, password=no_password)
        except ssl.SSLError as err:
            # OpenSSL's reason names what is wrong (e.g. KEY_VALUES_MISMATCH), not the key.
            raise _FileError(
                "key",
                f"{self.cert!r} and {self.key!r} are not a PEM certificate and its key"
                f" ({err.reason or err})",
            ) from None
        return self

    def cross_check(self) -> Iterator[tuple[str, str]]:
        """Rules spanning fields: ``(key, reason)`` per violation."""
        if self.cert and not self.key:
            yield "key", "required when cert is set (set both or neither)"
        if self.key and not self.cert:
            yield "cert", "required when key is set (set both or neither)"


# ZeroMQ's Z85 alphabet (RFC 32/Z85): a Curve key is 32 bytes, 40 characters.
_Z85_KEY_RE = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_INGRESS_ENDPOINT_RE = re.compile(
    r"tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):(?P<port>[0-9]{1,5})"
)


def _is_z85_key(value: str) -> bool:
    return _Z85_KEY_RE.fullmatch(value) is not None


def _is_ingress_endpoint(value: str) -> bool:
    if value == "":
        return True
    if value.startswith("ipc://"):
        return value.startswith("ipc:///") and len(value) > len("ipc:///")
    match = _INGRESS_ENDPOINT_RE.fullmatch(value)
    return match is not None and 1 <= int(match["port"]) <= 65535


def _is_loopback_endpoint(value: str) -> bool:
    """True for ``tcp://`` endpoints only other processes of this host can reach."""
    match = _INGRESS_ENDPOINT_RE.fullmatch(value)
    if match is None:
        return False
    host = match["host"].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an interface name or "*": every address of the host
        return False


_Keyed = typing.TypeVar("_Keyed", "IngressConfig", "ClusterConfig")


def _with_curve_secret(section: _Keyed) -> _Keyed:
    """``section`` with its ``curve_secret_key_file`` read into ``curve_secret_key``
    (the file must hold a Curve secret key: Z85, 40 characters)."""
    path = section.curve_secret_key_file
    if not path:
        return section
    key = _read_text("curve_secret_key_file", path).strip()
    if not _is_z85_key(key):
        raise _FileError(
            "curve_secret_key_file",
            f"{path!r} does not hold a Curve secret key"
            " (40 Z85 characters, as written by shardws keygen)",
        )
    return dataclasses.replace(section, curve_secret_key=key)


@dataclass(frozen=True, slots=True)
class IngressConfig:
    """``[ingress]``: backends publish over ZeroMQ (PUSH) to a PULL socket of the admin
    process, without HTTP; see docs/api.md for the wire format and ``shardws.Publisher``.

    Publishers on other hosts must be authenticated: a ``tcp://`` bind that is not a
    loopback address needs CurveZMQ keys (``curve_secret_key_file`` and
    ``curve_authorized_keys``) unless ``allow_plaintext`` says otherwise. The secret key
    never appears in ``repr()``, errors or :func:`dump_config` output.
    """

    #: ZeroMQ endpoint the ingress binds: ``"tcp://HOST:PORT"`` (e.g.
    #: ``"tcp://127.0.0.1:9766"``) or ``"ipc:///absolute/path.sock"``; ``""`` = no
    #: ingress. Default ``""``.
    bind: str = option(
        "",
        check=_is_ingress_endpoint,
        expect='"" (off), "tcp://HOST:PORT" or "ipc:///absolute/path"',
    )
    #: ZeroMQ endpoint of the acknowledged form (a ROUTER socket: every message gets an
    #: answer once stored, like the HTTP API's; ``shardws.Publisher(...,
    #: acknowledged=True)``), same forms and Curve keys as ``bind``; ``""`` = off.
    #: Default ``""``.
    acked_bind: str = option(
        "",
        check=_is_ingress_endpoint,
        expect='"" (off), "tcp://HOST:PORT" or "ipc:///absolute/path"',
    )
    #: File holding the ingress's CurveZMQ secret key (40 Z85 characters, as written by
    #: ``shardws keygen``); read at load. Set it and publishers must use Curve with this
    #: key's public half as their server key. Default ``""`` (no Curve).
    curve_secret_key_file: str = option("")
    #: Curve public keys (40 Z85 characters each) of the publishers allowed to connect;
    #: required with ``curve_secret_key_file``. Default [].
    curve_authorized_keys: tuple[str, ...] = option(
        (), check=_is_z85_key, expect="a Curve public key of 40 Z85 characters (shardws keygen)"
    )
    #: Accept unauthenticated, unencrypted publishers on a non-loopback ``tcp://`` bind
    #: (anyone who can reach the port can publish). Default false.
    allow_plaintext: bool = option(False)
    #: Messages queued in the ingress before ZeroMQ stops reading from publishers (their
    #: PUSH sockets then queue, up to their own high-water mark), >= 1. Default 100000.
    hwm: int = option(100_000, ge=1)
    #: The content of ``curve_secret_key_file``, read at load. Not a TOML key.
    curve_secret_key: str = option("", toml=False, secret=True)

    def load_files(self) -> IngressConfig:
        """Read ``curve_secret_key_file`` into ``curve_secret_key``."""
        return _with_curve_secret(self)

    def cross_check(self) -> Iterator[tuple[str, str]]:
        """Rules spanning fields: ``(key, reason)`` per violation. Never shows a secret."""
        if self.curve_authorized_keys and not self.curve_secret_key_file:
            yield "curve_secret_key_file", "required when curve_authorized_keys is set"
        if self.curve_secret_key_file and not self.curve_authorized_keys:
            yield (
                "curve_authorized_keys",
                "required when curve_secret_key_file is set: the public keys of the"
                " publishers allowed to connect",
            )
        for key, endpoint in (("bind", self.bind), ("acked_bind", self.acked_bind)):
            if (
                endpoint.startswith("tcp://")
                and not self.curve_secret_key_file
                and not self.allow_plaintext
                and not _is_loopback_endpoint(endpoint)
            ):
                yield (
                    key,
                    f"{endpoint!r} is reachable from other hosts: set curve_secret_key_file"
                    " and curve_authorized_keys (shardws keygen), or allow_plaintext = true"
                    " to let anyone who can reach it publish",
                )
        if self.acked_bind and self.acked_bind == self.bind:
            yield "acked_bind", f"{self.acked_bind!r} is bind's endpoint too: give it its own"


_HOST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_PEER_RE = re.compile(r"(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\[\]\s]+):(?P<port>[0-9]{1,5})")


def _is_host_id(value: str) -> bool:
    return value == "" or _HOST_ID_RE.fullmatch(value) is not None


def _is_peer(value: str) -> bool:
    match = _PEER_RE.fullmatch(value)
    return match is not None and 1 <= int(match["port"]) <= 65535


def _is_cluster_listen(value: str) -> bool:
    return value == "" or (value.startswith("tcp://") and _is_peer(value.removeprefix("tcp://")))


#: The engines that can join the hosts (``[cluster] engine``; docs/architecture.md, "The
#: engine"), the default first.
ENGINES = ("mesh", "redis")

_REDIS_PREFIX_RE = re.compile(r"[A-Za-z0-9._:{}-]{0,64}")


def _is_redis_prefix(value: str) -> bool:
    return _REDIS_PREFIX_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """``[cluster.redis]``: the Redis every host joins through with ``[cluster] engine =
    "redis"`` (docs/cluster.md, "Choosing how hosts join"). Each host's hub process holds
    the connections. The password never appears in ``repr()``, errors or
    :func:`dump_config` output."""

    #: The Redis server, ``"HOST:PORT"``. Ignored when ``sentinels`` is set. Default
    #: ``"127.0.0.1:6379"``.
    address: str = option("127.0.0.1:6379", check=_is_peer, expect='"HOST:PORT"')
    #: Sentinels of a monitored master, ``"HOST:PORT"`` each: the hub asks them for the
    #: master's address (again after a failover) instead of using ``address``. Default [].
    sentinels: tuple[str, ...] = option((), check=_is_peer, expect='"HOST:PORT"')
    #: The master's name at the sentinels; required with ``sentinels``. Default ``""``.
    master_name: str = option("")
    #: Seed nodes of a Redis Cluster, ``"HOST:PORT"`` each (any few of its nodes): the hub
    #: asks them for the slot map and holds one subscription and one publishing
    #: connection per master it needs, with sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``,
    #: Redis 7+), instead of using ``address``; not with ``sentinels`` (a cluster fails
    #: over by itself). Default [] (one Redis).
    cluster_nodes: tuple[str, ...] = option((), check=_is_peer, expect='"HOST:PORT"')
    #: ACL user (Redis 6+); ``""`` = the default user. Default ``""``.
    username: str = option("")
    #: Password (``AUTH``). Prefer ``password_file``: a secret in the config file leaks
    #: with it. Default ``""`` (none).
    password: str = option("", secret=True)
    #: File holding the password, read at load (a trailing newline is not part of it).
    #: Default ``""``.
    password_file: str = option("")
    #: Connect with TLS (``rediss://``), verifying the server's certificate. Default false.
    tls: bool = option(False)
    #: PEM file of the CA that signed the server's certificate; ``""`` = the system's CAs.
    #: Default ``""``.
    tls_ca_file: str = option("")
    #: Prefix of every channel and key shardws uses, so several services can share one
    #: Redis: letters, digits and ``._:{}-``, at most 64. Default ``"shardws:"``.
    prefix: str = option(
        "shardws:", check=_is_redis_prefix, expect="letters, digits, '._:{}-' (at most 64)"
    )
    #: Seconds to wait for a connection (and for each command's answer) before counting
    #: Redis as down, > 0. Default 2.
    timeout: float = option(2.0, gt=0, unit="seconds")
    #: Longest wait between two reconnection attempts (the wait doubles from 0.1 s up to
    #: it), > 0. Default 2.
    reconnect_max: float = option(2.0, gt=0, unit="seconds")
    #: Seconds a native presence member stays listed after the last refresh by the
    #: worker holding its connection, between 1 and 3600: the bound within which a
    #: SIGKILLed worker's or a lost host's members disappear (docs/guarantees.md,
    #: "Presence"). Each worker refreshes what it holds every third of it, one script
    #: per channel. Pusher presence members and occupancy expire the same way (plus a
    #: 1 s sweep: docs/pusher.md, "Per engine"). Default 30.
    presence_ttl: float = option(30.0, ge=1, le=3600, unit="seconds")
    #: The content of ``password_file``, read at load. Not a TOML key.
    password_from_file: str = option("", toml=False, secret=True)

    def secret(self) -> str:
        """The password, from ``password`` or ``password_file`` (``""``: none)."""
        return self.password or self.password_from_file

    def load_files(self) -> RedisConfig:
        """Read ``password_file`` into ``password_from_file``; check ``tls_ca_file``."""
        loaded = self
        if self.password_file:
            text = _read_text("password_file", self.password_file)
            password = text.removesuffix("\n").removesuffix("\r")
            loaded = dataclasses.replace(loaded, password_from_file=password)
        if self.tls_ca_file:
            _read_file("tls_ca_file", self.tls_ca_file)
        return loaded

    def cross_check(self) -> Iterator[tuple[str, str]]:
        """Rules spanning fields: ``(key, reason)`` per violation. Never shows a secret."""
        if self.password and self.password_file:
            yield "password_file", "set either password or password_file, not both"
        if self.sentinels and not self.master_name:
            yield "master_name", "required when sentinels is set: the master's name there"
        if self.cluster_nodes and self.sentinels:
            yield (
                "cluster_nodes",
                "set either sentinels (one Redis and its replicas) or cluster_nodes (a Redis"
                " Cluster), not both",
            )
        if self.cluster_nodes and ("{" in self.prefix or "}" in self.prefix):
            yield (
                "prefix",
                "no '{' or '}' with cluster_nodes: the hub puts each channel's name in a hash"
                f" tag after the prefix, got {self.prefix!r}",
            )
        if self.tls_ca_file and not self.tls:
            yield "tls_ca_file", "set tls = true too (the CA file verifies a TLS server)"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """``[cluster]``: hosts that serve one service together (see docs/cluster.md).

    With ``peers`` set, the supervisor runs a bridge process that forwards the host bus
    to the peers' bridges over TCP (ZeroMQ subscription forwarding: a message crosses
    the network only to hosts with a subscriber) and exchanges heartbeats, from which
    every host computes the same membership view. The link is encrypted and
    authenticated with CurveZMQ: every host holds the same cluster key file
    (``shardws keygen``); plain TCP only with ``allow_plaintext = true``. The secret key
    never appears in ``repr()``, errors or :func:`dump_config` output.
    """

    #: What joins the hosts and decides each channel's order (docs/architecture.md, "The
    #: engine"): ``"mesh"``, each host's bridge linked to every other (no broker; the
    #: settings below), or ``"redis"``, each host's hub process through one Redis
    #: (``[cluster.redis]``; ``listen``, ``peers`` and the Curve key are the mesh's).
    #: Default ``"mesh"``.
    engine: str = option("mesh", choices=ENGINES)
    #: This host's name in the cluster, unique among the hosts: letters, digits, ``.``,
    #: ``_`` and ``-``, at most 63 characters. ``""`` = the system host name. Default ``""``.
    host_id: str = option(
        "", check=_is_host_id, expect="letters, digits, '.', '_', '-' (at most 63)"
    )
    #: ZeroMQ endpoint the bridge binds for its peers, ``"tcp://HOST:PORT"`` (e.g.
    #: ``"tcp://0.0.0.0:9767"``); required with ``peers``. Default ``""``.
    listen: str = option("", check=_is_cluster_listen, expect='"tcp://HOST:PORT"')
    #: The hosts' bridge addresses, ``"HOST:PORT"`` with HOST a DNS name or an IP; a name
    #: may resolve to many addresses (a Kubernetes headless Service), and is resolved
    #: again every ``resolve_interval``. This host's own address may be listed (it is
    #: recognised and skipped). ``[]`` = a single host, no bridge. Default [].
    peers: tuple[str, ...] = option((), check=_is_peer, expect='"HOST:PORT"')
    #: Seconds between DNS resolutions of ``peers``, > 0. Default 10.
    resolve_interval: float = option(10.0, gt=0, unit="seconds")
    #: Seconds between the bridge's heartbeats to its peers, > 0. Default 0.5.
    heartbeat_interval: float = option(0.5, gt=0, unit="seconds")
    #: Seconds without a heartbeat after which a peer counts as down (its workers leave
    #: the membership view), > heartbeat_interval. Default 3.
    peer_timeout: float = option(3.0, gt=0, unit="seconds")
    #: File holding the cluster's CurveZMQ secret key (``shardws keygen NAME`` writes
    #: ``NAME.key_secret``); the same file on every host: a bridge without it cannot
    #: connect, read or inject. Default ``""`` (requires ``allow_plaintext``).
    curve_secret_key_file: str = option("")
    #: Link the bridges over plain TCP (anyone who can reach ``listen`` can read and
    #: inject traffic). Default false.
    allow_plaintext: bool = option(False)
    #: Messages each bridge socket queues per peer before ZeroMQ drops (counted by the
    #: receivers as lost); on the Redis hub, bus frames waiting to be published before the
    #: next is dropped (counted), >= 1. Default 100000.
    hwm: int = option(100_000, ge=1)
    #: The Redis of ``engine = "redis"``.
    redis: RedisConfig = dataclasses.field(default_factory=RedisConfig)
    #: The content of ``curve_secret_key_file``, read at load. Not a TOML key.
    curve_secret_key: str = option("", toml=False, secret=True)

    @property
    def enabled(self) -> bool:
        """True when this host is part of a cluster (a bridge, or the hub, runs)."""
        return bool(self.peers) or self.engine == "redis"

    def load_files(self) -> ClusterConfig:
        """Read ``curve_secret_key_file`` into ``curve_secret_key``."""
        return _with_curve_secret(self)

    def cross_check(self) -> Iterator[tuple[str, str]]:
        """Rules spanning fields: ``(key, reason)`` per violation. Never shows a secret."""
        if self.engine == "redis":
            if importlib.util.find_spec("redis") is None:  # found, not imported: the hub's
                yield "engine", "\"redis\" needs the redis package: pip install 'shardws[redis]'"
            for key in ("peers", "listen", "curve_secret_key_file"):
                if getattr(self, key):
                    yield (
                        key,
                        'the mesh\'s: the hosts join through [cluster.redis] with engine "redis"',
                    )
            return
        if self.redis != RedisConfig():
            yield "redis", 'read only with engine = "redis"'
        if self.peers and not self.listen:
            yield "listen", 'required when peers is set, e.g. "tcp://0.0.0.0:9767"'
        if self.peers and not self.curve_secret_key_file and not self.allow_plaintext:
            yield (
                "curve_secret_key_file",
                "required when peers is set: the cluster key file (shardws keygen), the same"
                " on every host; or allow_plaintext = true to link the hosts over plain TCP",
            )
        if self.peer_timeout <= self.heartbeat_interval:
            yield (
                "peer_timeout",
                f"must exceed heartbeat_interval ({self.heartbeat_interval} s),"
                f" got {self.peer_timeout}",
            )


@dataclass(frozen=True, slots=True)
class NamespaceConfig:
    """``[namespaces.<name>]``: options of the channels ``<name>:...``; channels without a
    colon belong to ``[namespaces.default]``. Until per-namespace rules arrive (auth
    issue), a channel whose namespace is not configured uses the default namespace's
    options.

    Always on, not an option: a channel whose part after the namespace contains ``#`` is
    user-only -- ``chat:#alice`` may be subscribed only by user ``alice``,
    ``chat:room#alice,bob`` only by ``alice`` or ``bob``
    (see :func:`shardws.pure.auth.may_subscribe`).
    """

    #: What happens to a subscriber whose pending output would exceed
    #: ``[server] max_pending_bytes``: ``"disconnect"`` closes it with code 4501 (slow
    #: consumer; the client reconnects and may recover), ``"drop"`` skips the messages it
    #: cannot take and counts them. Default ``"disconnect"``.
    slow_consumer: str = option("disconnect", choices=("disconnect", "drop"))
    #: Whether clients may publish into this namespace's channels (backends always may).
    #: Default true.
    publish: bool = option(True)
    #: Whether subscribing needs a channel token: a JWT, signed like connection tokens,
    #: with ``sub`` = the connection's user and ``channel`` = the channel. Default false.
    subscribe_token: bool = option(False)
    #: Most subscribers of one channel **on one worker** (each worker counts its own
    #: connections, so the cluster-wide bound is this times the number of workers);
    #: 0 = unlimited. Default 0.
    max_subscribers: int = option(0, ge=0)
    #: Publications each channel keeps for recovery and the ``history`` op; 0 = no
    #: history (at-most-once, no owner hop). With history, every channel has one owner
    #: worker that orders its publications (offsets, epoch). Default 0.
    history_size: int = option(0, ge=0, le=1_000_000)
    #: Seconds a publication stays in the history; 0 = until pushed out by
    #: ``history_size``. Default 300.
    history_ttl: float = option(300.0, ge=0, unit="seconds")
    #: Whether the ``presence`` and ``presence_stats`` ops answer for this namespace's
    #: channels. Default false.
    presence: bool = option(False)
    #: Whether subscribers get ``join``/``leave`` pushes when a connection subscribes to
    #: or leaves a channel. Default false.
    join_leave: bool = option(False)
    #: Delta types a subscriber may ask for with ``"delta"`` in its subscribe: ``"fossil"``
    #: (each publication sent as a fossil delta against the previous one the subscriber
    #: received, computed once per publication per worker; docs/protocol.md, "Delta
    #: subscriptions"). Default [] (a subscribe asking for a delta is refused).
    allowed_delta_types: tuple[str, ...] = option((), choices=("fossil",))

    def cross_check(self) -> Iterator[tuple[str, str]]:
        # A dropped message in a history channel would be a silent gap in its offsets.
        if self.history_size and self.slow_consumer == "drop":
            yield (
                "slow_consumer",
                'expected "disconnect" when history_size > 0 (a dropped message would be '
                'a silent gap; a disconnected subscriber recovers), got "drop"',
            )


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    """``[compression]``: permessage-deflate (RFC 7692), negotiated per connection.

    Server messages are always sent with ``server_no_context_takeover``: each is compressed
    on its own, so one compressed frame per publication (per distinct negotiated window
    size) serves every compressing subscriber. Client messages are inflated with their
    size capped at ``[server] max_message_size`` (close 1009 past it).
    """

    #: Whether the server accepts a client's permessage-deflate offer. Default false.
    enabled: bool = option(False)
    #: Messages shorter than this many bytes are sent uncompressed (compressing them
    #: costs more CPU than the bytes it saves), >= 0. Default 256.
    threshold: int = option(256, ge=0, unit="bytes")
    #: zlib compression level, 1 (fastest) .. 9 (smallest). Default 6.
    level: int = option(6, ge=1, le=9)
    #: Largest LZ77 window, as a power of two, 9..15, either side may use: the server
    #: compresses with at most this window, and asks the client to do the same when its
    #: offer allows (``client_max_window_bits``), which bounds the inflate memory each
    #: connection can hold (2**bits bytes plus ~7 KB while a client uses context
    #: takeover). Default 15.
    max_window_bits: int = option(15, ge=MIN_WINDOW_BITS, le=MAX_WINDOW_BITS)


def _is_echo_path(value: str) -> bool:
    return value == "" or value.startswith("/")


@dataclass(frozen=True, slots=True)
class DiagnosticsConfig:
    """``[diagnostics]``: endpoints for testing the server, off by default."""

    #: HTTP path of an echo endpoint for WebSocket conformance suites (Autobahn): every
    #: message is sent back as received, with the same frame handling, size limits and
    #: close logic as ``[server] path``, but no commands, no token and no ``connected``
    #: push. ``""`` (default) turns it off; never expose it publicly.
    echo_path: str = option("", check=_is_echo_path, expect='"" or a path starting with "/"')
    #: HTTP path that hangs the worker receiving the request: its event loop spins in a
    #: busy loop that does no work for ``?seconds=N`` (default 30, at most 300), so a
    #: test can prove that the supervisor replaces a stuck worker however busy its CPU
    #: looks. ``""`` (default) turns it off; never expose it publicly.
    stall_path: str = option("", check=_is_echo_path, expect='"" or a path starting with "/"')


#: Pusher app ids and keys: they appear in URL paths (``/app/{key}``,
#: ``/apps/{id}/events``) and metric labels, so they need no escaping anywhere.
_PUSHER_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

#: Shortest accepted Pusher app secret: Pusher's own secrets are 20 characters; shorter
#: ones make the HMAC-SHA256 signatures of the HTTP API and channel auth guessable.
MIN_PUSHER_SECRET_BYTES = 16


def _is_pusher_name(value: str) -> bool:
    return _PUSHER_NAME_RE.fullmatch(value) is not None


#: The webhook events Pusher sends (its Channels docs, "Webhooks"), in the order its
#: dashboard lists them: what ``event_types`` may name.
PUSHER_WEBHOOK_EVENTS = (
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
)


def _is_webhook_url(value: str) -> bool:
    return re.fullmatch(r"https?://[^\s/?#]+[^\s]*", value) is not None


@dataclass(frozen=True, slots=True)
class PusherWebhookFilterConfig:
    """``filter`` of a webhook: only events on channels whose (Pusher) name starts and
    ends with these (Soketi's names). Default: every channel."""

    #: Only channels whose name starts with this. Default ``""`` (any).
    channel_name_starts_with: str = option("")
    #: Only channels whose name ends with this. Default ``""`` (any).
    channel_name_ends_with: str = option("")


@dataclass(frozen=True, slots=True)
class PusherWebhookConfig:
    """``[[pusher.apps.webhooks]]``: one endpoint of an app's webhooks (docs/pusher.md,
    "Webhooks"): where they are POSTed, which events, on which channels."""

    #: Where batches are POSTed: an ``http://`` or ``https://`` URL. Required.
    url: str = option("", check=_is_webhook_url, expect="an http:// or https:// URL")
    #: The events this endpoint gets, a non-empty list of ``channel_occupied``,
    #: ``channel_vacated``, ``member_added``, ``member_removed``, ``client_event``,
    #: ``cache_miss``. Required (as in Pusher's dashboard and Soketi).
    event_types: tuple[str, ...] = option((), choices=PUSHER_WEBHOOK_EVENTS)
    #: Only events on some channels (``channel_name_starts_with``,
    #: ``channel_name_ends_with``). Default: every channel.
    filter: PusherWebhookFilterConfig = dataclasses.field(default_factory=PusherWebhookFilterConfig)

    def cross_check(self) -> Iterator[tuple[str, str]]:
        """``url`` and ``event_types`` are required; an event type is named once."""
        if not self.url:
            yield "url", "required: where the webhooks are POSTed"
        if not self.event_types:
            yield "event_types", f"required: one or more of {', '.join(PUSHER_WEBHOOK_EVENTS)}"
        elif len(set(self.event_types)) != len(self.event_types):
            yield "event_types", "an event type is named twice"


@dataclass(frozen=True, slots=True)
class PusherAppConfig:
    """``[[pusher.apps]]``: one Pusher Channels app (see docs/pusher.md).

    Each app is its own channel space: its channels, users and counts are separate from
    every other app's and from native channels. The secret never appears in ``repr()``,
    errors or :func:`dump_config` output.
    """

    #: The app id of the server SDKs (``/apps/{id}/...`` of the HTTP API): 1-64 of
    #: ``A-Z a-z 0-9 _ . -`` (the official Python SDK accepts digits only). Required.
    id: str = option("", check=_is_pusher_name, expect="1-64 of A-Z a-z 0-9 _ . -")
    #: The app key clients connect with (``/app/{key}``) and the HTTP API's
    #: ``auth_key``: 1-64 of ``A-Z a-z 0-9 _ . -``. Required.
    key: str = option("", check=_is_pusher_name, expect="1-64 of A-Z a-z 0-9 _ . -")
    #: The app secret that signs channel auth and HTTP API requests, >= 16 bytes. Prefer
    #: ``secret_file``: a secret in the config file leaks with it. Default ``""``.
    secret: str = option("", secret=True)
    #: File holding the secret instead of ``secret`` (one trailing newline is removed);
    #: read at load. Default ``""``.
    secret_file: str = option("")
    #: Whether the app accepts connections and HTTP API requests; a disabled app's
    #: clients are refused with Pusher error 4003. Default true.
    enabled: bool = option(True)
    #: Whether clients may send client events (``client-*``) on private and presence
    #: channels. Default false (as on Pusher, where it is a per-app switch).
    client_events: bool = option(False)
    #: Largest event ``data``, bytes of UTF-8, 1..1048576; the HTTP API answers 413 past
    #: it, a client event gets error 4301. Default 10240 (Pusher's 10 KB).
    max_event_data_bytes: int = option(10240, ge=1, le=1024 * 1024, unit="bytes")
    #: Most channels one ``POST /apps/{id}/events`` may name, 1..1000. Default 100.
    max_channels_per_trigger: int = option(100, ge=1, le=1000)
    #: Most events one ``POST /apps/{id}/batch_events`` may carry, 1..1000. Default 10.
    max_events_per_batch: int = option(10, ge=1, le=1000)
    #: Most distinct users of one presence channel, cluster-wide, >= 1. Default 100.
    max_presence_members: int = option(100, ge=1)
    #: Largest ``user_info`` of a presence member, bytes of its JSON, >= 1. Default
    #: 1024 (Pusher's 1 KB).
    max_presence_info_bytes: int = option(1024, ge=1, unit="bytes")
    #: Client events one connection may send per second (a token bucket with this
    #: burst), >= 1; over it the event is refused with error 4301. Default 10.
    max_client_events_per_second: int = option(10, ge=1)
    #: Longest channel name, 1..200 characters. Default 200 (the official server SDKs'
    #: bound; Pusher's hosted service documents 164).
    max_channel_name_length: int = option(200, ge=1, le=200)
    #: Longest event name, 1..200 characters. Default 200.
    max_event_name_length: int = option(200, ge=1, le=200)
    #: Seconds of silence after which pusher-js sends ``pusher:ping`` (sent to clients in
    #: ``pusher:connection_established``), 1..3600. Default 120.
    activity_timeout: int = option(120, ge=1, le=3600, unit="seconds")
    #: Seconds an HTTP API request's ``auth_timestamp`` may differ from the server's
    #: clock, > 0. Default 600 (Pusher's).
    auth_timestamp_window: float = option(600.0, gt=0, unit="seconds")
    #: Seconds a cache channel keeps its last event, > 0. Default 1800.
    cache_ttl: float = option(1800.0, gt=0, unit="seconds")
    #: Where this app's webhooks go, each a ``[[pusher.apps.webhooks]]`` table (``url``,
    #: ``event_types``, ``filter``). Default [] (none: no webhook event is even made).
    webhooks: tuple[PusherWebhookConfig, ...] = option(())
    #: The content of ``secret_file``, read at load. Not a TOML key.
    secret_from_file: str = option("", toml=False, secret=True)

    def signing_secret(self) -> str:
        """The secret, from ``secret`` or ``secret_file``."""
        return self.secret or self.secret_from_file

    def wants_webhook(self, event_type: str) -> bool:
        """Whether some webhook of the app takes ``event_type`` (on some channel): the
        sources make no event that no endpoint wants."""
        return any(event_type in hook.event_types for hook in self.webhooks)

    def load_files(self) -> PusherAppConfig:
        """Read ``secret_file`` into ``secret_from_file``."""
        if not self.secret_file:
            return self
        return dataclasses.replace(self, secret_from_file=_read_secret(self.secret_file))

    def cross_check(self) -> Iterator[tuple[str, str]]:
        """Rules spanning fields: ``(key, reason)`` per violation. Never shows a secret."""
        if not self.id:
            yield "id", "required: the app id of the server SDKs"
        if not self.key:
            yield "key", "required: the app key clients connect with"
        if self.secret and self.secret_file:
            yield "secret_file", "set either secret or secret_file, not both"
        secret = self.signing_secret()
        if not secret:
            yield "secret", "required (or secret_file)"
        elif len(secret.encode()) < MIN_PUSHER_SECRET_BYTES:
            key = "secret" if self.secret else "secret_file"
            size = len(secret.encode())
            yield key, f"expected a secret of >= {MIN_PUSHER_SECRET_BYTES} bytes, got {size} bytes"


@dataclass(frozen=True, slots=True)
class PusherConfig:
    """``[pusher]``: the Pusher Channels protocol beside the native one (docs/pusher.md).

    App ids and keys are unique; with no apps (the default) nothing speaks Pusher.
    """

    #: The apps, each a ``[[pusher.apps]]`` table. Default [] (none).
    apps: tuple[PusherAppConfig, ...] = option(())
    #: Seconds after an event during which its webhook may still be sent, 1..290: older
    #: events are dropped unsent and counted. The server SDKs' validators refuse a
    #: webhook whose ``time_ms`` is more than 300 s old; 290 keeps 10 s for the request's
    #: flight and the clocks' difference. Default 290.
    webhook_max_age: float = option(290.0, ge=1, le=290, unit="seconds")
    #: Most events in one webhook request, 1..1000. Default 50.
    webhook_batch_size: int = option(50, ge=1, le=1000)
    #: Most events waiting per endpoint (a slow or dead receiver costs this much memory
    #: at most; past it the oldest are dropped and counted), >= 1. Default 10000.
    webhook_queue_size: int = option(10000, ge=1)
    #: Seconds one webhook request may take before it counts as failed and is retried,
    #: > 0. Default 10.
    webhook_timeout: float = option(10.0, gt=0, unit="seconds")

    def app_by_key(self, key: str) -> PusherAppConfig | None:
        """The app whose key is ``key``, or None. (A linear scan: a service has a
        handful of apps, and this runs once per connection.)"""
        return next((app for app in self.apps if app.key == key), None)

    def app_by_id(self, app_id: str) -> PusherAppConfig | None:
        """The app whose id is ``app_id``, or None."""
        return next((app for app in self.apps if app.id == app_id), None)

    def cross_check(self) -> Iterator[tuple[str, str]]:
        """Ids and keys are unique: ``(key, reason)`` naming the later duplicate."""
        for field in ("id", "key"):
            first: dict[str, int] = {}
            for index, app in enumerate(self.apps):
                value = getattr(app, field)
                if value in first:
                    yield (
                        f"apps[{index}].{field}",
                        f"duplicate {field} {value!r} (also apps[{first[value]}].{field})",
                    )
                first.setdefault(value, index)


def _default_namespaces() -> Mapping[str, NamespaceConfig]:
    return MappingProxyType({"default": NamespaceConfig()})


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; each field but ``source`` is a TOML section."""

    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    admin: AdminConfig = dataclasses.field(default_factory=AdminConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    auth: AuthConfig = dataclasses.field(default_factory=AuthConfig)
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    tls: TLSConfig = dataclasses.field(default_factory=TLSConfig)
    ingress: IngressConfig = dataclasses.field(default_factory=IngressConfig)
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    compression: CompressionConfig = dataclasses.field(default_factory=CompressionConfig)
    diagnostics: DiagnosticsConfig = dataclasses.field(default_factory=DiagnosticsConfig)
    pusher: PusherConfig = dataclasses.field(default_factory=PusherConfig)
    namespaces: Mapping[str, NamespaceConfig] = option(factory=_default_namespaces)
    #: The file the config came from, or ``"<default>"``. Not a TOML key.
    source: str = option("<default>", toml=False)
    #: The options the file gave as a keyword, or left out where their default is one
    #: (``workers = "auto"``), by dotted key: ``{"server.workers": "auto"}``. What
    #: :func:`dump_config` writes back. Not a TOML key, and not compared: the values are
    #: the configuration.
    keywords: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}), compare=False, metadata={"toml": False}
    )

    def cross_check(self) -> Iterator[tuple[str, str]]:
        """Rules spanning sections: ``(key, reason)`` per violation."""
        echo = self.diagnostics.echo_path
        if echo and echo == self.server.path:
            yield "diagnostics.echo_path", f"must differ from [server] path ({echo!r})"
        stall = self.diagnostics.stall_path
        if stall and stall in (self.server.path, echo):
            yield (
                "diagnostics.stall_path",
                (f"must differ from [server] path and echo_path ({stall!r})"),
            )


def same_but_worker_count(running: Config, target: Config) -> bool:
    """Whether ``target`` differs from ``running`` at most in ``[server] workers``."""
    moved = dataclasses.replace(target.server, workers=running.server.workers)
    return dataclasses.replace(target, server=moved, source=running.source) == running


# --------------------------------------------------------------------------- loading


def default_config() -> Config:
    """The embedded defaults, parsed from ``shardws/default.toml``; source ``"<default>"``.

    Not cached: ``workers = "auto"`` is resolved at each call.
    """
    text = resources.files("shardws").joinpath("default.toml").read_text(encoding="utf-8")
    return parse_config(text, "<default>")


def parse_config(text: str, source: str) -> Config:
    """Parse and validate TOML ``text``; ``source`` names it in errors and in the result.
    Raises :class:`ConfigError` with every error found."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:  # str(err) carries line and column
        raise ConfigError(source, "", f"invalid TOML: {err}") from None
    reader = _Reader(source)
    cfg = reader.read(Config, data)
    keywords = MappingProxyType(dict(reader.keywords))
    return dataclasses.replace(cfg, source=source, keywords=keywords)


def load_config(path: str | None) -> Config:
    """Read and validate the config file at ``path``; ``None`` -> :func:`default_config`."""
    if path is None:
        return default_config()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ConfigError(path, "", f"cannot read config file: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")  # TOML is UTF-8 by definition
    except UnicodeDecodeError as err:
        raise ConfigError(path, "", f"invalid TOML: not UTF-8 at byte {err.start}") from None
    return parse_config(text, path)


def from_table(cls: type[T], table: Mapping[str, Any], source: str) -> T:
    """Build and validate section dataclass ``cls`` from a parsed TOML table; raises
    :class:`ConfigError` with every error found."""
    return _Reader(source).read(cls, table)


class _Invalid(Exception):
    """A bad value at ``path``; :class:`_Reader` adds the file name."""

    def __init__(self, path: tuple[str, ...], detail: str) -> None:
        super().__init__(detail)
        self.path = path
        self.detail = detail


def _where(path: tuple[str, ...]) -> str:
    """``("server", "port")`` -> ``[server] port``; ``("server",)`` -> ``[server]``."""
    if len(path) == 1:
        return f"[{path[0]}]"
    return f"[{'.'.join(path[:-1])}] {path[-1]}"


def _bad(path: tuple[str, ...], reason: str) -> _Invalid:
    return _Invalid(path, f"{_where(path)}: {reason}")


def _show(value: Any) -> str:
    """A parsed TOML value as the user wrote it, more or less."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return repr(value)
    return str(value)  # numbers as written (8765.0 stays a float), dates


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Annotations are strings (``from __future__ import annotations``); resolve them once.
    return typing.get_type_hints(cls)


class _Reader:
    """One validation of a parsed TOML table against a section dataclass. It goes on past
    a bad value (the option keeps its default meanwhile), so that :meth:`read` reports
    every error of the file at once; a section with a bad value is not cross-checked
    (its defaults would be judged instead of what the file says). It also notes which
    options were given as a keyword (``keywords``, dotted key -> word)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[_Invalid] = []
        self.keywords: dict[str, str] = {}

    def read(self, cls: type[T], table: Mapping[str, Any]) -> T:
        """The validated ``cls``; :class:`ConfigError` with every error if any."""
        try:
            obj = self._build(cls, table, ())
        except _Invalid as err:
            self.errors.append(err)
        if self.errors:
            first, *more = (
                ConfigError(self.source, ".".join(err.path), err.detail) for err in self.errors
            )
            raise ConfigError(first.source, first.key, first.detail, tuple(more))
        return typing.cast(T, obj)

    def _build(self, cls: type, value: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(value, dict):
            raise _bad(path, f"expected a table, got {_show(value)}")
        known = {f.name: f for f in fields(cls) if f.metadata.get("toml", True)}
        hints = _hints(cls)
        errors_before = len(self.errors)
        given = {}
        for key, item in value.items():  # file order, so errors come in that order
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                kind = "key" if path else "section"
                self.errors.append(
                    _Invalid((*path, key), f"unknown {kind} {_where((*path, key))}{hint}")
                )
                continue
            try:
                given[key] = self._convert(item, hints[key], known[key].metadata, (*path, key))
            except _Invalid as err:
                self.errors.append(err)
        self._note_default_keywords(cls, value, path)
        obj = cls(**given)
        if len(self.errors) > errors_before:
            return obj  # not checked further: defaults stand in for the bad values
        load_files = getattr(obj, "load_files", None)
        if load_files is not None:
            try:
                obj = load_files()
            except _FileError as err:
                raise _bad((*path, err.key), err.reason) from None
        for key, reason in getattr(obj, "cross_check", lambda: ())():
            self.errors.append(_bad((*path, key), reason))
        return obj

    def _note_default_keywords(
        self, cls: type, given: Mapping[str, Any], path: tuple[str, ...]
    ) -> None:
        """The options of ``cls`` left out of ``given`` (whole sections included) whose
        default is a keyword's resolver (``workers``: "auto") count as given so."""
        hints = _hints(cls)
        for option_field in fields(cls):
            name = option_field.name
            if name in given or not option_field.metadata.get("toml", True):
                continue
            if isinstance(hints[name], type) and is_dataclass(hints[name]):
                self._note_default_keywords(hints[name], {}, (*path, name))
            for word, meaning in option_field.metadata.get("keywords", {}).items():
                if callable(meaning) and option_field.default_factory is meaning:
                    self.keywords[".".join((*path, name))] = word

    def _convert(self, value: Any, tp: Any, rules: Mapping[str, Any], path: tuple[str, ...]) -> Any:
        if isinstance(tp, type) and is_dataclass(tp):
            return self._build(tp, value, path)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Mapping:
            if not isinstance(value, dict):
                raise _bad(path, f"expected a table, got {_show(value)}")
            entries = ((k, v, (*path, k)) for k, v in value.items())
            return MappingProxyType(
                self._each(entries, lambda v, at: self._convert(v, args[1], rules, at))
            )
        if origin is tuple:
            if not isinstance(value, list):
                raise _bad(path, f"expected an array, got {_show(value)}")
            if isinstance(args[0], type) and is_dataclass(args[0]):
                # An array of tables: each entry is named by its index, so an error says
                # which one ("pusher.apps[1].key").
                entries = ((i, v, (*path[:-1], f"{path[-1]}[{i}]")) for i, v in enumerate(value))
                return tuple(
                    self._each(entries, lambda v, at: self._build(args[0], v, at)).values()
                )
            entries = ((i, v, path) for i, v in enumerate(value))
            return tuple(
                self._each(
                    entries, lambda v, at: self._scalar_or_keyword(v, args[0], rules, at)
                ).values()
            )
        return self._scalar_or_keyword(value, tp, rules, path)

    def _each(
        self,
        entries: Iterable[tuple[Any, Any, tuple[str, ...]]],
        convert: Callable[[Any, tuple[str, ...]], Any],
    ) -> dict[Any, Any]:
        """``convert(value, path)`` of each ``(key, value, path)`` entry, by key; a bad
        entry is noted and left out, and the others are still checked."""
        converted = {}
        for key, value, path in entries:
            try:
                converted[key] = convert(value, path)
            except _Invalid as err:
                self.errors.append(err)
        return converted

    def _scalar_or_keyword(
        self, value: Any, tp: type, rules: Mapping[str, Any], path: tuple[str, ...]
    ) -> Any:
        keywords = rules.get("keywords", {})
        if isinstance(value, str) and value in keywords:
            self.keywords[".".join(path)] = value
            meaning = keywords[value]
            return meaning() if callable(meaning) else meaning
        return _scalar(value, tp, rules, path)


_KINDS: dict[type, str] = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _scalar(value: Any, tp: type, rules: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """``value`` checked against type ``tp`` and ``rules`` (keywords aside: the reader
    resolves them)."""
    if tp not in _KINDS:
        raise TypeError(f"config field {'.'.join(path)}: unsupported type {tp!r}")
    # bool is an int subclass in Python, but `port = true` is a mistake, never a number.
    if isinstance(value, bool) != (tp is bool):
        ok = False
    elif tp is float and isinstance(value, int):
        value, ok = float(value), True
    else:
        ok = isinstance(value, tp)
    if ok and tp is float and not math.isfinite(value):
        raise _bad(path, f"expected a finite number, got {_show(value)}")
    ok = ok and (
        ("ge" not in rules or value >= rules["ge"])
        and ("gt" not in rules or value > rules["gt"])
        and ("le" not in rules or value <= rules["le"])
        and ("choices" not in rules or value in rules["choices"])
        and ("check" not in rules or rules["check"](value))
    )
    if not ok:
        got = REDACTED if rules.get("secret") else _show(value)
        raise _bad(path, f"expected {_expect(tp, rules)}, got {got}")
    return value


def _expect(tp: type, rules: Mapping[str, Any]) -> str:
    """What a field accepts, e.g. ``an integer 64..16777216 (bytes)``."""
    if "expect" in rules:
        text = rules["expect"]
    elif "choices" in rules:
        text = "one of " + ", ".join(_show(c) for c in rules["choices"])
    else:
        text = _KINDS[tp]
        ge, gt, le = rules.get("ge"), rules.get("gt"), rules.get("le")
        if ge is not None and le is not None:
            text += f" {ge}..{le}"
        elif ge is not None or gt is not None:
            text += f" >= {ge}" if ge is not None else f" > {gt}"
            text += f", <= {le}" if le is not None else ""
        elif le is not None:
            text += f" <= {le}"
        if "unit" in rules:
            text += f" ({rules['unit']})"
    words = [_show(w) for w in rules.get("keywords", ())]
    return " or ".join([*words, text])


# --------------------------------------------------------------------------- dumping


def dump_config(cfg: Config) -> str:
    """The effective config as TOML; parses back to an equal Config unless it holds an
    inline secret, which is written as ``"<redacted>"`` (never the value). Secrets from
    files stay out of it: the file name is written. An option given as a keyword is
    written as the keyword, and a keyword resolved on this host is followed by what it
    resolved to: ``workers = "auto"  # 2 on this host``."""
    lines = [f"# shardws effective configuration, from {_toml_str(cfg.source)}"]
    _dump_table(cfg, (), lines, cfg.keywords)
    return "\n".join(lines) + "\n"


def _items(obj: Any) -> list[tuple[str, Any]]:
    if is_dataclass(obj):
        return [
            (f.name, _redacted(getattr(obj, f.name), f.metadata))
            for f in fields(obj)
            if f.metadata.get("toml", True)
        ]
    return list(obj.items())


def _keyword_line(obj: Any, key: str, value: Any, given: str | None) -> str | None:
    """``key = "word"`` (and a comment) when option ``key`` of section ``obj`` holds a
    keyword: the one the file gave (``given``), or a keyword that stands for a value no
    number can take (``connections_per_worker = "auto"``, stored as 0)."""
    if not is_dataclass(obj):
        return None
    meanings = {f.name: f.metadata.get("keywords", {}) for f in fields(obj)}.get(key, {})
    if given is not None and callable(meanings.get(given)):
        return f"{_toml_key(key)} = {_toml_str(given)}  # {_toml_value(value)} on this host"
    for word, meaning in meanings.items():
        if not callable(meaning) and meaning == value:
            return f"{_toml_key(key)} = {_toml_str(word)}"
    return None


def _redacted(value: Any, rules: Mapping[str, Any]) -> Any:
    # An unset secret is shown as unset ("") so the dump still tells whether one is set.
    return REDACTED if rules.get("secret") and value else value


def _is_table(value: Any) -> bool:
    return is_dataclass(value) or isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    """A non-empty array of section entries (``[[pusher.apps]]``); an empty one is
    written as ``[]``."""
    return isinstance(value, tuple) and bool(value) and all(is_dataclass(v) for v in value)


def _dump_table(
    obj: Any,
    path: tuple[str, ...],
    out: list[str],
    keywords: Mapping[str, str] = MappingProxyType({}),
    entry: tuple[str, ...] = (),
) -> None:
    """Write table ``obj`` at ``path``; ``entry``: it is an entry of an array of tables,
    named so (``("pusher", "apps[1]")``) in ``keywords`` as in errors."""
    items = _items(obj)
    named = ".".join(entry or path)
    plain = [(k, v) for k, v in items if not _is_table(v) and not _is_table_array(v)]
    dotted = ".".join(_toml_key(k) for k in path)
    # A section's header is written even when empty so the dump lists every section;
    # an empty Mapping has nothing to say and is omitted.
    if entry:
        out += ["", f"[[{dotted}]]"]
    elif path and (plain or is_dataclass(obj)):
        out += ["", f"[{dotted}]"]
    for key, value in plain:
        given = keywords.get(f"{named}.{key}" if named else key)
        line = _keyword_line(obj, key, value, given)
        out.append(line or f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in items:
        if _is_table(value):
            _dump_table(value, (*path, key), out, keywords)
        elif _is_table_array(value):
            for index, item in enumerate(value):
                _dump_table(item, (*path, key), out, keywords, (*path, f"{key}[{index}]"))


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def _toml_str(text: str) -> str:
    # TOML basic strings forbid raw control characters (tab aside) and DEL; \uXXXX is valid.
    def escape(m: re.Match[str]) -> str:
        return "\\" + m[0] if m[0] in '"\\' else f"\\u{ord(m[0]):04x}"

    return '"' + re.sub(r'["\\\x00-\x1f\x7f]', escape, text) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # repr of a finite float is valid TOML, e.g. 25.0 or 1e-05
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if _is_table(value):
        pairs = (f"{_toml_key(k)} = {_toml_value(v)}" for k, v in _items(value))
        return "{ " + ", ".join(pairs) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
