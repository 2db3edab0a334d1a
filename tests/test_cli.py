"""The ``shardws`` command: config errors at start, check-config, first-boot failure."""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
from pathlib import Path

import pytest
import zmq
from serverproc import ServerProcess, run_cli

from shardws import cli
from shardws.tools import loadgen

shardws = run_cli


def test_check_config_prints_effective_config(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text("[server]\nworkers = 3\n")
    result = shardws("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "workers = 3" in result.stdout and "OK" in result.stderr


def test_bad_config_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = "eighty"\n')
    for args in (("check-config", str(path)), ("serve", "-c", str(path))):
        result = shardws(*args)
        assert result.returncode == 2
        assert str(path) in result.stderr and "port" in result.stderr


def test_check_config_reports_every_error_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = "x"\nprot = 1\n[limits]\nconnections_per_worker = 0\n')
    for args in (("check-config", str(path)), ("serve", "-c", str(path))):
        result = shardws(*args)
        assert result.returncode == 2 and result.stdout == ""
        lines = result.stderr.splitlines()
        assert [re.findall(r"\[(\w+)\]", line)[0] for line in lines] == [
            "server",
            "server",
            "limits",
        ], result.stderr
        assert all(line.startswith(f"shardws: config error: {path}: ") for line in lines)
        assert "port: expected" in lines[0] and "did you mean 'port'" in lines[1]
        assert "connections_per_worker: expected 'auto' or an integer >= 1" in lines[2]


def test_check_config_keeps_auto_and_says_what_it_is_here(tmp_path: Path) -> None:
    path = tmp_path / "auto.toml"
    path.write_text('[server]\nworkers = "auto"\n[limits]\nconnections_per_worker = "auto"\n')
    result = shardws("check-config", str(path))
    assert result.returncode == 0, result.stderr
    cpus = len(os.sched_getaffinity(0))
    assert f'\nworkers = "auto"  # {cpus} on this host\n' in result.stdout
    assert '\nconnections_per_worker = "auto"\n' in result.stdout
    dumped = tmp_path / "dumped.toml"  # the dump is a config file that says the same
    dumped.write_text(result.stdout)
    again = shardws("check-config", str(dumped))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1:] == result.stdout.splitlines()[1:]


def test_unknown_key_suggests(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("[server]\nprot = 1\n")
    result = shardws("serve", "-c", str(path))
    assert result.returncode == 2 and "did you mean 'port'" in result.stderr


def test_worker_failing_first_boot_stops_the_service(tmp_path: Path) -> None:
    # An ipc socket path longer than the kernel's sun_path limit makes every worker's bus
    # fail to bind: the service must stop with a clear error, not restart in a loop.
    run_dir = tmp_path / ("d" * 120)
    path = tmp_path / "boot.toml"
    path.write_text(
        # port 0: the kernel picks (no race with other tests for a "free" port)
        f'[server]\nport = 0\nworkers = 2\nrun_dir = "{run_dir}"\n[admin]\nport = 0\n'
    )
    result = shardws("serve", "-c", str(path))
    assert result.returncode == 1
    assert "during the first boot; stopping the service" in result.stdout
    assert result.stdout.count("started worker 0") == 1  # no restart loop


# -- help texts --------------------------------------------------------------------------

# What argparse prints when a help text or a default adds nothing: reStructuredText
# markup, and the ArgumentDefaultsHelpFormatter's defaults of options without one.
MEANINGLESS = ("``", "(default: None)", "(default: [])", "(default: )", "(default: False)")


def help_problems(parser: argparse.ArgumentParser, name: str) -> list[str]:
    """What is missing or wrong in the help of ``parser`` and of every subcommand under
    it: a parser without a description, a subcommand or option (except -h) without help,
    markup or a meaningless default in the printed help, an option naming its default
    twice. ``bench`` parses its own options, so its parser is loadgen's."""
    problems = []
    if not parser.description:
        problems.append(f"{name}: no description")
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for command, subparser in action.choices.items():
                if not helps.get(command):
                    problems.append(f"{name} {command}: no help in the command list")
                if command == "bench":
                    subparser = loadgen._parser()
                problems += help_problems(subparser, f"{name} {command}")
            continue
        if not action.help or action.help == argparse.SUPPRESS:
            problems.append(f"{name} {label}: no help")
            continue
        if formatter._format_action(action).count("(default") > 1:
            problems.append(f"{name} {label}: names its default twice")
    printed = parser.format_help()
    problems += [f"{name} --help prints {bad!r}" for bad in MEANINGLESS if bad in printed]
    return problems


def test_every_command_and_option_has_plain_help() -> None:
    assert help_problems(cli._parser(), "shardws") == []


def test_help_problems_finds_what_is_missing() -> None:
    parser = argparse.ArgumentParser(prog="x")
    commands = parser.add_subparsers()
    sub = commands.add_parser("run", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub.add_argument("file")
    sub.add_argument("--url", help="where (default ws://h)")
    sub.add_argument("--pid", action="append", default=[], help="repeatable")
    sub.add_argument("--name", default="", help="the ``name``")
    assert sorted(help_problems(parser, "x")) == sorted(
        [
            "x: no description",
            "x run: no help in the command list",
            "x run: no description",
            "x run file: no help",
            "x run --url: names its default twice",
            "x run --help prints '``'",
            "x run --help prints '(default: None)'",
            "x run --help prints '(default: [])'",
            "x run --help prints '(default: )'",
        ]
    )


# -- keygen ------------------------------------------------------------------------------


def test_keygen_twice_names_the_file_and_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = str(tmp_path / "ingress")
    assert cli.main(["keygen", name]) == 0
    public = capsys.readouterr().out.strip()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert before.keys() == {"ingress.key", "ingress.key_secret"}
    assert cli.main(["keygen", name]) == 1
    err = capsys.readouterr().err
    assert f"{name}.key_secret already exists" in err and "--force" in err
    assert "Errno" not in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # untouched
    assert before["ingress.key"].strip().decode() == public


def test_keygen_prints_the_key_and_says_where_the_pair_went(tmp_path: Path) -> None:
    name = str(tmp_path / "bridge")
    result = shardws("keygen", name)
    assert result.returncode == 0, result.stderr
    public = (tmp_path / "bridge.key").read_text().strip()
    assert result.stdout == public + "\n"  # the key alone, for scripts
    assert f"wrote {name}.key (public) and {name}.key_secret (secret" in result.stderr


def test_keygen_force_replaces_the_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = str(tmp_path / "ingress")
    assert cli.main(["keygen", name]) == 0
    old = capsys.readouterr().out.strip()
    (tmp_path / "ingress.key").chmod(0o644)
    assert cli.main(["keygen", name, "--force"]) == 0
    new = capsys.readouterr().out.strip()
    assert new != old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ingress.key", "ingress.key_secret"]
    secret = (tmp_path / "ingress.key_secret").read_bytes().strip()
    assert (tmp_path / "ingress.key").read_text().strip() == new
    assert zmq.curve_public(secret).decode() == new  # the files are one pair
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


# -- publish -----------------------------------------------------------------------------


def test_publish_to_a_server_without_api_key_shows_the_two_lines(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, workers=1).start()
    try:
        result = shardws("publish", "news", '{"text":"hello"}', "-c", str(proc.config_path))
    finally:
        proc.stop()
    assert result.returncode == 1 and result.stdout == ""
    err = result.stderr
    assert "HTTP 403" in err and "has no [admin] api_key" in err, err
    lines = [line.strip() for line in err.splitlines()]
    assert lines[lines.index("[admin]") + 1].startswith('api_key = "'), err
    assert f"shardws serve -c {proc.config_path}" in err, err
    assert f"shardws publish -c {proc.config_path} CHANNEL DATA" in err, err


def test_publish_with_a_missing_or_wrong_key_says_which(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, workers=1, admin='api_key = "0123456789abcdef-key"').start()
    try:
        client = tmp_path / "client.toml"
        client.write_text(f"[admin]\nport = {proc.admin_port}\n")
        missing = shardws("publish", "news", "1", "-c", str(client))
        client.write_text(f'[admin]\nport = {proc.admin_port}\napi_key = "{"x" * 16}"\n')
        wrong = shardws("publish", "news", "1", "-c", str(client))
        right = shardws("publish", "news", "1", "-c", str(proc.config_path))
    finally:
        proc.stop()
    assert missing.returncode == 1 and "HTTP 401" in missing.stderr
    assert f"{client} has none: pass the server's config file with -c FILE" in missing.stderr
    assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr
    assert f"the [admin] api_key in {client} is not the server's" in wrong.stderr
    assert right.returncode == 0 and json.loads(right.stdout) == {"ok": True, "channels": 1}
