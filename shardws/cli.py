"""The ``shardws`` command: ``serve``, ``check-config``, ``token``, ``publish``, ``keygen``,
``tune``, ``install-service``, ``bench`` (load generator).

Exit codes: 0 success, 1 runtime failure (e.g. a worker failed its first boot),
2 bad usage or bad configuration (the message names the file and the key).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shardws import __version__
from shardws.config import Config, ConfigError, dump_config, load_config

if TYPE_CHECKING:
    from shardws.client.publisher import PublisherError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardws",
        description="Run and operate shardws, a WebSocket pub/sub server.",
        epilog="Run shardws COMMAND --help for a command's options. Exit status: 0 success,"
        " 1 runtime failure, 2 bad usage or bad configuration.",
    )
    parser.add_argument("--version", action="version", version=f"shardws {__version__}")
    commands = parser.add_subparsers(
        title="commands", dest="command", required=True, metavar="COMMAND"
    )
    serve = commands.add_parser(
        "serve",
        help="run the server in the foreground",
        description="Run the server in the foreground: a supervisor and its workers, until"
        " SIGTERM or SIGINT (SIGHUP reloads the config file).",
    )
    serve.add_argument(
        "-c", "--config", metavar="FILE", help="TOML config file (default: built-in defaults)"
    )
    check = commands.add_parser(
        "check-config",
        help="validate a config file and print the effective configuration",
        description="Validate a config file and print the effective configuration (every"
        " option, defaults filled in, as TOML; an option given as a keyword keeps it, with"
        ' its value on this host in a comment: workers = "auto"  # 2 on this host). Every'
        " error of the file is printed, each naming the file and the key; exit status 2.",
    )
    check.add_argument("file", metavar="FILE", help="the TOML config file to check")
    token = commands.add_parser(
        "token",
        help="print a token signed with the configured HS256 secret",
        description="Print a JWT signed with [auth] secret (or secret_file) of the config."
        " With --channel it is a channel token for that channel.",
    )
    token.add_argument("--sub", required=True, help="user id (the sub claim)")
    token.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)"
    )
    token.add_argument("--info", metavar="JSON", help="info claim: a JSON object")
    token.add_argument("--channel", metavar="C", help="make a channel token for channel C")
    token.add_argument(
        "--channels",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help='channels the token may subscribe to ("*" matches any characters)',
    )
    token.add_argument(
        "-c", "--config", metavar="FILE", help="TOML config file (default: built-in defaults)"
    )
    publish = commands.add_parser(
        "publish",
        help="publish to a channel, or to a user's connections, through the admin HTTP API",
        description="POST /api/publish: shardws publish CHANNEL DATA, or shardws publish"
        " --user USER DATA (to every connection of USER). The server's HTTP API needs an"
        " [admin] api_key; pass the server's config file with -c to send the same key.",
    )
    publish.add_argument("channel", nargs="?", help="the channel (omit with --user)")
    publish.add_argument("data", help="the publication: a JSON value")
    publish.add_argument("--user", help="publish to every connection of this user instead")
    publish.add_argument(
        "-c", "--config", metavar="FILE", help="config with [admin] host, port and api_key"
    )
    keygen = commands.add_parser(
        "keygen",
        help="write a CurveZMQ key pair: NAME.key (public) and NAME.key_secret",
        description="Write a new CurveZMQ key pair as Z85 text: NAME.key (the public key,"
        " also printed) and NAME.key_secret, both mode 0600; existing files are only"
        " replaced with --force. For [ingress] curve_secret_key_file / curve_authorized_keys"
        " and shardws.Publisher.",
    )
    keygen.add_argument("name", metavar="NAME", help="path prefix of the two files")
    keygen.add_argument(
        "--force",
        action="store_true",
        help="replace NAME.key and NAME.key_secret if they exist (the old pair is gone:"
        " whoever was configured with its public key needs the new one)",
    )
    tune = commands.add_parser(
        "tune",
        help="kernel and fd limits: current vs recommended, and host capacity",
        description="Print each kernel setting and file-descriptor limit next to the value"
        " sysctl/99-shardws.conf recommends, and about how many idle connections this host"
        " can hold.",
    )
    tune.add_argument("-c", "--config", metavar="FILE", help="config (for the worker count)")
    tune.add_argument(
        "--connections",
        type=int,
        default=0,
        metavar="N",
        help="also say what the host needs to hold N connections (files, memory, ports)",
    )
    install = commands.add_parser(
        "install-service",
        help="install the systemd unit, /etc/shardws/shardws.toml and the sysctl file",
        description="Install systemd/shardws.service (ExecStart = this installation's"
        " shardws), the example config (never overwriting an existing one) and"
        " sysctl/99-shardws.conf. Prints each action; running it again changes nothing.",
    )
    install.add_argument(
        "--root",
        "--prefix",
        metavar="DIR",
        type=Path,
        help="install under DIR instead of / (no root needed; nothing is enabled)",
    )
    install.add_argument(
        "--dry-run", action="store_true", help="print what it would do, write nothing"
    )
    install.add_argument(
        "--no-sysctl", action="store_true", help="do not install /etc/sysctl.d/99-shardws.conf"
    )
    install.add_argument(
        "--enable",
        action="store_true",
        help="then run systemctl daemon-reload and enable --now shardws (only when"
        " systemd is PID 1; otherwise says it was skipped)",
    )
    # The load generator parses its own options (``shardws bench --help``), so that they
    # live next to LoadSpec and ``serve`` does not import it.
    commands.add_parser(
        "bench",
        help="load generator: fanout / mixed / idle / roundtrip against a ws:// URL",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from shardws.tools import loadgen

        return loadgen.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "keygen":
        return _keygen(args.name, force=args.force)
    if args.command == "install-service":
        from shardws.tools import install

        return install.run(
            args.root, dry_run=args.dry_run, sysctl=not args.no_sysctl, enable_service=args.enable
        )
    try:
        config = load_config(getattr(args, "config", None) or getattr(args, "file", None))
    except ConfigError as exc:
        for error in exc.errors:  # every error of the file, one line each
            print(f"shardws: config error: {error.source}: {error.detail}", file=sys.stderr)
        return 2
    if args.command == "token":
        return _token(args, config)
    if args.command == "tune":
        from shardws.tools.tune import report

        print(report(config.server.workers, connections=max(0, args.connections)))
        return 0
    if args.command == "publish":
        return _publish(args, config)
    if args.command == "check-config":
        sys.stdout.write(dump_config(config))
        print(f"# {config.source}: OK", file=sys.stderr)
        return 0
    from shardws.server.supervisor import serve

    return serve(config)


def _token(args: argparse.Namespace, config: Config) -> int:
    """``shardws token``: print a token, or explain on stderr and return 2."""
    from shardws.pure import auth
    from shardws.pure.protocol import channel_error

    def fail(message: str) -> int:
        print(f"shardws token: {message}", file=sys.stderr)
        return 2

    if config.auth.algorithm != "HS256":
        return fail(
            f"{config.source}: [auth] algorithm is {config.auth.algorithm!r}: this server only"
            " holds the public key; sign tokens with the private key elsewhere"
        )
    secret = config.auth.verification_key()
    if not secret:
        return fail(f"{config.source}: [auth] secret (or secret_file) is not set")
    info = None
    if args.info is not None:
        try:
            info = json.loads(args.info)
        except ValueError as err:
            return fail(f"--info: not valid JSON: {err}")
        if not isinstance(info, dict):
            return fail("--info: expected a JSON object")
    if args.channel is not None:
        reason = channel_error(args.channel)
        if reason:
            return fail(f"--channel {args.channel!r}: {reason}")
    try:
        text = auth.make_token(
            secret, args.sub, args.ttl, info=info, channels=args.channels, channel=args.channel
        )
    except ValueError as err:  # empty sub, ttl <= 0, bad pattern: the message says which
        return fail(str(err))
    print(text)
    return 0


def _publish(args: argparse.Namespace, config: Config) -> int:
    """``shardws publish [CHANNEL] DATA [--user USER]``: one POST to the admin API;
    prints the reply."""
    from shardws.client.publisher import Publisher, PublisherError

    if (args.channel is None) == (args.user is None):
        print("shardws publish: give either CHANNEL or --user USER", file=sys.stderr)
        return 2
    try:
        data = json.loads(args.data)
    except ValueError as exc:
        print(f"shardws publish: DATA is not JSON: {exc}", file=sys.stderr)
        return 2
    admin = config.admin
    try:
        with Publisher(f"http://{admin.host}:{admin.port}", api_key=admin.api_key) as pub:
            if args.user is not None:
                reply = pub.publish_user(args.user, data)
            else:
                reply = pub.publish(args.channel, data)
    except PublisherError as exc:
        print(f"shardws publish: {_publish_advice(exc, config)}", file=sys.stderr)
        return 1
    print(json.dumps(reply))
    return 0


def _publish_advice(exc: PublisherError, config: Config) -> str:
    """The publish error, with what to change when the API key is the problem."""
    file = "shardws.toml" if config.source == "<default>" else config.source
    if exc.status == 403 and "api_key" in str(exc):
        return (
            "HTTP 403: the server's HTTP API is disabled because it has no [admin] api_key."
            f" Put these two lines in its config file ({file}):\n\n"
            "    [admin]\n"
            '    api_key = "<a secret of 16 or more characters>"\n\n'
            f"then start the server with: shardws serve -c {file}\n"
            f"and publish with:           shardws publish -c {file} CHANNEL DATA"
        )
    if exc.status == 401 and not config.admin.api_key:
        given = "no -c FILE was given" if config.source == "<default>" else f"{file} has none"
        return (
            f"{exc}: shardws publish sends the [admin] api_key of its config, and {given}:"
            " pass the server's config file with -c FILE"
        )
    if exc.status == 401:
        return f"{exc}: the [admin] api_key in {config.source} is not the server's"
    return str(exc)


def _keygen(name: str, force: bool = False) -> int:
    """``shardws keygen NAME [--force]``: a new Curve key pair in NAME.key and
    NAME.key_secret. Without ``force`` an existing file stops it (exit 1, nothing
    written); with ``force`` both files are replaced, each by an atomic rename."""
    import os

    import zmq

    public, secret = zmq.curve_keypair()
    pair = ((f"{name}.key_secret", secret), (f"{name}.key", public))
    written: list[str] = []
    try:
        for path, key in pair:
            # O_EXCL: never overwrite a key someone may already rely on, unless asked to;
            # then the new pair is written next to the old one and renamed over it.
            target = f"{path}.new" if force else path
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            written.append(target)
            with os.fdopen(fd, "wb") as f:
                f.write(key + b"\n")
        if force:
            for path, _key in pair:
                os.replace(f"{path}.new", path)
    except OSError as exc:
        for path in written:  # no half-written pair
            if os.path.exists(path):
                os.unlink(path)
        if isinstance(exc, FileExistsError) and not force:
            message = (
                f"{exc.filename} already exists: pass --force to replace the pair"
                f" ({name}.key and {name}.key_secret), or choose another NAME"
            )
        elif isinstance(exc, FileExistsError):
            message = f"{exc.filename} exists (left by an interrupted keygen?): remove it"
        else:
            message = f"{exc.filename}: {exc.strerror}"
        print(f"shardws keygen: {message}", file=sys.stderr)
        return 1
    print(public.decode())
    # stdout stays the key alone (scripts read it); where the pair went is for the user.
    print(
        f"shardws keygen: wrote {name}.key (public) and {name}.key_secret (secret, keep it"
        " private), both mode 0600",
        file=sys.stderr,
    )
    return 0
