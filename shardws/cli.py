"""The ``shardws`` command: ``serve``, ``check-config`` and ``bench`` (the load generator).

Exit codes: 0 success, 1 runtime failure (e.g. a worker failed its first boot),
2 bad usage or bad configuration (the message names the file and the key).
"""

from __future__ import annotations

import argparse
import sys

from shardws import __version__
from shardws.config import ConfigError, dump_config, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardws", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"shardws {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server in the foreground")
    serve.add_argument(
        "-c", "--config", metavar="FILE", help="TOML config file (default: built-in defaults)"
    )
    check = commands.add_parser(
        "check-config", help="validate a config file and print the effective configuration"
    )
    check.add_argument("file", metavar="FILE")
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
        from shardws import loadgen

        return loadgen.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        config = load_config(getattr(args, "config", None) or getattr(args, "file", None))
    except ConfigError as exc:
        print(f"shardws: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        sys.stdout.write(dump_config(config))
        print(f"# {config.source}: OK", file=sys.stderr)
        return 0
    from shardws.supervisor import serve

    return serve(config)
