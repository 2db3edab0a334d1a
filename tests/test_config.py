"""shardws.config: defaults, every kind of user error, dump round-trip, example file drift."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.tlscert import self_signed
from shardws import config as cfgmod
from shardws.config import (
    AUTO_CONNECTIONS,
    AdminConfig,
    Config,
    ConfigError,
    LogConfig,
    ServerConfig,
    default_config,
    dump_config,
    from_table,
    load_config,
    option,
    parse_config,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "shardws.example.toml"
DEFAULT_TOML = REPO / "shardws" / "default.toml"


def error(text: str, source: str = "shardws.toml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    err = info.value
    # One line per error (a file may have several: err is the first, err.errors all).
    assert len(str(err).splitlines()) == len(err.errors)
    assert str(err).startswith(f"{source}: ")
    return err


# ------------------------------------------------------------------ defaults


def test_default_config_equals_empty_file_and_dataclass_defaults() -> None:
    default = default_config()
    assert default.source == "<default>"
    assert default == dataclasses.replace(parse_config("", "empty.toml"), source="<default>")
    assert default == Config()
    assert default.server == ServerConfig()
    assert default.server.port == 8765
    assert default.server.max_pending_bytes == 1048576
    assert default.admin == AdminConfig(host="127.0.0.1", port=9765)
    assert default.log == LogConfig(level="info", format="text")


def test_default_toml_sets_every_option_to_the_dataclass_default() -> None:
    raw = tomllib.loads(DEFAULT_TOML.read_text(encoding="utf-8"))
    assert raw["server"]["workers"] == "auto"
    assert _keys(raw) == _keys_of(Config)
    assert parse_config(DEFAULT_TOML.read_text(encoding="utf-8"), "x") == Config(source="x")


def test_missing_keys_take_defaults() -> None:
    cfg = parse_config("[server]\nport = 9000\n", "f.toml")
    assert cfg.source == "f.toml"
    assert cfg.server == dataclasses.replace(ServerConfig(), port=9000)
    assert cfg.admin == AdminConfig()
    assert cfg.log == LogConfig()


def test_workers_auto_is_the_affinity_count() -> None:
    cfg = parse_config('[server]\nworkers = "auto"\n', "f.toml")
    assert cfg.server.workers == len(os.sched_getaffinity(0))
    assert default_config().server.workers == len(os.sched_getaffinity(0))


def test_workers_auto_follows_affinity_and_is_clamped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5})
    assert parse_config('[server]\nworkers = "auto"\n', "f").server.workers == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4096)))
    assert parse_config('[server]\nworkers = "auto"\n', "f").server.workers == 1024


def test_explicit_values() -> None:
    cfg = parse_config(
        "[server]\nworkers = 3\nping_interval = 5\nidle_timeout = 7.5\nport = 0\n"
        '[log]\nformat = "json"\nlevel = "debug"\n',
        "f",
    )
    assert cfg.server.workers == 3
    assert cfg.server.port == 0
    # An int is accepted for a duration and stored as float.
    assert cfg.server.ping_interval == 5.0 and type(cfg.server.ping_interval) is float
    assert cfg.server.idle_timeout == 7.5
    assert cfg.log == LogConfig(level="debug", format="json")


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        default_config().server.port = 1  # type: ignore[misc]


# ------------------------------------------------------------------ errors


def test_syntax_error_names_file_and_position() -> None:
    err = error("[server]\nport = = 3\n", "bad.toml")
    assert err.source == "bad.toml"
    assert err.key == ""
    assert "invalid TOML" in str(err)
    assert "line 2" in str(err)


def test_unknown_section_suggests_closest() -> None:
    err = error("[srever]\nport = 1\n")
    assert str(err) == "shardws.toml: unknown section [srever]; did you mean 'server'?"
    assert err.key == "srever"


def test_unknown_section_without_close_match() -> None:
    err = error("[zzzzzz]\n")
    assert str(err) == "shardws.toml: unknown section [zzzzzz]"


def test_unknown_key_suggests_closest() -> None:
    err = error("[server]\nprot = 1\n")
    assert str(err) == "shardws.toml: unknown key [server] prot; did you mean 'port'?"
    assert err.key == "server.prot"


def test_source_is_not_a_toml_key() -> None:
    err = error('source = "x"\n')
    assert "unknown section [source]" in str(err)


def test_section_must_be_a_table() -> None:
    err = error("server = 5\n")
    assert str(err) == "shardws.toml: [server]: expected a table, got 5"


@pytest.mark.parametrize(
    ("toml", "got"),
    [
        ('port = "abc"', "'abc'"),  # string for int
        ("port = true", "true"),  # bool is not an int
        ("port = 8765.0", "8765.0"),  # float for int
        ("port = 70000", "70000"),  # out of range
        ("port = -1", "-1"),
    ],
)
def test_port_errors(toml: str, got: str) -> None:
    err = error(f"[server]\n{toml}\n")
    assert str(err) == f"shardws.toml: [server] port: expected an integer 0..65535, got {got}"
    assert err.key == "server.port"
    assert err.detail == str(err).removeprefix("shardws.toml: ")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("workers", "0", "'auto' or an integer 1..1024"),
        ("workers", "1025", "'auto' or an integer 1..1024"),
        ("workers", '"many"', "'auto' or an integer 1..1024"),
        ("max_message_size", "63", "an integer 64..67108864 (bytes)"),
        ("max_message_size", "67108865", "an integer 64..67108864 (bytes)"),
        ("max_pending_bytes", "1023", "an integer >= 1024 (bytes)"),
        ("ping_interval", "0", "a number > 0 (seconds)"),
        ("ping_interval", "true", "a number > 0 (seconds)"),
        ("ping_interval", '"25s"', "a number > 0 (seconds)"),
        ("handshake_timeout", "-1.5", "a number > 0 (seconds)"),
        ("drain_timeout", "0.0", "a number > 0 (seconds)"),
        ("heartbeat_timeout", "0", "a number > 0 (seconds)"),
        ("backlog", "0", "an integer 1..65535"),
        ("host", "1", "a string"),
        ("run_dir", "false", "a string"),
        ("path", '"ws"', 'a path starting with "/"'),
    ],
)
def test_server_value_errors(key: str, value: str, expected: str) -> None:
    err = error(f"[server]\n{key} = {value}\n")
    assert err.key == f"server.{key}"
    assert str(err).startswith(f"shardws.toml: [server] {key}: expected {expected}, got ")


def test_non_finite_duration_is_rejected() -> None:
    err = error("[server]\nping_interval = inf\n")
    assert str(err) == "shardws.toml: [server] ping_interval: expected a finite number, got inf"


def test_idle_timeout_must_exceed_ping_interval() -> None:
    for text in ("idle_timeout = 25", "idle_timeout = 10", "ping_interval = 60"):
        err = error(f"[server]\n{text}\n")
        assert err.key == "server.idle_timeout"
        assert "[server] idle_timeout: expected a number of seconds > ping_interval" in str(err)
    assert str(error("[server]\nidle_timeout = 20\n")) == (
        "shardws.toml: [server] idle_timeout: expected a number of seconds > ping_interval (25.0),"
        " got 20.0"
    )


def test_bad_log_values() -> None:
    err = error('[log]\nformat = "xml"\n')
    assert str(err) == "shardws.toml: [log] format: expected one of 'text', 'json', got 'xml'"
    err = error('[log]\nlevel = "WARN"\n')
    assert err.key == "log.level"
    assert "expected one of 'debug', 'info', 'warning', 'error', got 'WARN'" in str(err)


def test_admin_port_range() -> None:
    err = error("[admin]\nport = 65536\n", "/etc/shardws/shardws.toml")
    assert str(err) == (
        "/etc/shardws/shardws.toml: [admin] port: expected an integer 0..65535, got 65536"
    )
    assert err.source == "/etc/shardws/shardws.toml"


# ------------------------------------------------------------------ loading files


def test_load_config_none_is_default() -> None:
    assert load_config(None) == default_config()


def test_load_config_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[server]\nport = 1234\n", encoding="utf-8")
    cfg = load_config(str(path))
    assert cfg.server.port == 1234
    assert cfg.source == str(path)
    path.write_text("[server]\nport = 'x'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"s\.toml: \[server\] port: "):
        load_config(str(path))


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read config file: No such file or directory"
    assert info.value.source == path


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nhost = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(path))


# ------------------------------------------------------------------ dump


def test_dump_round_trips() -> None:
    for cfg in (
        default_config(),
        parse_config(
            '[server]\nhost = "::"\nport = 0\nworkers = 7\nping_interval = 0.25\n'
            'idle_timeout = 1e-0\nrun_dir = "/run/sh\\"ard\\tws\\u007f"\n'
            '[log]\nformat = "json"\n',
            "custom.toml",
        ),
    ):
        text = dump_config(cfg)
        assert parse_config(text, cfg.source) == cfg


def test_dump_says_both_the_keyword_and_what_it_is_on_this_host() -> None:
    """``workers = "auto"`` (given, or the default) is written as the file says it, with
    the resolved count in a comment; a number stays a number."""
    cpus = len(os.sched_getaffinity(0))
    for text in ('[server]\nworkers = "auto"\n', "", "[log]\n"):
        dumped = dump_config(parse_config(text, "a.toml"))
        assert f'\nworkers = "auto"  # {cpus} on this host\n' in dumped
        again = parse_config(dumped, "a.toml")
        assert again.server.workers == cpus and again.keywords["server.workers"] == "auto"
    dumped = dump_config(parse_config("[server]\nworkers = 7\n", "n.toml"))
    assert "\nworkers = 7\n" in dumped and '"auto"' not in dumped.split("[limits]")[0]


def test_connections_per_worker_is_auto_by_default_or_a_number() -> None:
    assert Config().limits.connections_per_worker == AUTO_CONNECTIONS
    assert default_config().limits.connections_per_worker == AUTO_CONNECTIONS
    auto = parse_config('[limits]\nconnections_per_worker = "auto"\n', "a.toml")
    assert auto.limits.connections_per_worker == AUTO_CONNECTIONS
    assert '\nconnections_per_worker = "auto"\n' in dump_config(auto)
    assert '\nconnections_per_worker = "auto"\n' in dump_config(Config())
    number = parse_config("[limits]\nconnections_per_worker = 500\n", "n.toml")
    assert number.limits.connections_per_worker == 500
    assert "\nconnections_per_worker = 500\n" in dump_config(number)
    err = error("[limits]\nconnections_per_worker = 0\n")
    assert err.detail == (
        "[limits] connections_per_worker: expected 'auto' or an integer >= 1, got 0"
    )


def test_every_error_of_a_file_is_reported_at_once() -> None:
    text = (
        '[server]\nport = "x"\nprot = 1\nidle_timeout = 1\n'
        '[limits]\nconnections_per_worker = "many"\n'
        "[namespaces.a]\nhistory_size = -1\n[namespaces.b]\nhistory_size = -2\n"
        "[nope]\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "many.toml")
    err = info.value
    assert [e.key for e in err.errors] == [
        "server.port",
        "server.prot",
        "limits.connections_per_worker",
        "namespaces.a.history_size",
        "namespaces.b.history_size",
        "nope",
    ]
    assert (err.key, err.detail) == (err.errors[0].key, err.errors[0].detail)
    lines = str(err).splitlines()
    assert lines == [f"many.toml: {e.detail}" for e in err.errors]
    assert "did you mean 'port'" in lines[1]
    # [server] has a bad value: its cross-field rule (idle_timeout > ping_interval) is
    # not judged on the default standing in for it; a section without one is.
    assert not any("idle_timeout" in line for line in lines)
    assert error("[server]\nidle_timeout = 1\n").key == "server.idle_timeout"


def test_dump_lists_every_section_and_key() -> None:
    raw = tomllib.loads(dump_config(default_config()))
    assert _keys(raw) == _keys_of(Config)
    assert raw["server"]["workers"] == "auto"


# ------------------------------------------------------------------ example file


def test_example_parses_to_the_defaults() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    cfg = parse_config(text, str(EXAMPLE))
    assert cfg == Config(source=str(EXAMPLE))
    assert tomllib.loads(text)["server"]["workers"] == "auto"


def test_example_documents_every_option() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert _keys(tomllib.loads(text)) == _keys_of(Config)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):  # a key or a section: a comment precedes it
            assert lines[i - 1].startswith("#"), f"undocumented line {i + 1}: {line!r}"


# ------------------------------------------------------------------ extending


@dataclass(frozen=True, slots=True)
class _Namespace:
    max_rate: float = option(10.0, gt=0, unit="seconds")
    origins: tuple[str, ...] = option(("a",), check=lambda s: s != "", expect="a non-empty string")
    persist: bool = option(False)


@dataclass(frozen=True, slots=True)
class _Extended:
    namespaces: Mapping[str, _Namespace] = option(factory=dict)
    lo: int = option(0)
    hi: int = option(1)

    def cross_check(self) -> Iterator[tuple[str, str]]:
        if self.hi <= self.lo:
            yield "hi", "must be greater than lo"


def test_declarative_extension_types() -> None:
    ext = from_table(
        _Extended,
        tomllib.loads(
            '[namespaces.chat]\nmax_rate = 2\norigins = ["x", "y"]\npersist = true\n'
            '[namespaces."a.b"]\n'
        ),
        "e.toml",
    )
    assert ext.namespaces["chat"] == _Namespace(2.0, ("x", "y"), True)
    assert ext.namespaces["a.b"] == _Namespace()
    with pytest.raises(TypeError):
        ext.namespaces["new"] = _Namespace()  # type: ignore[index]
    # The dumper handles nested tables, quoted keys and arrays, and round-trips.
    out: list[str] = []
    cfgmod._dump_table(ext, (), out)
    assert from_table(_Extended, tomllib.loads("\n".join(out)), "e") == ext


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[namespaces.chat]\nmax_rat = 1\n",
            "unknown key [namespaces.chat] max_rat; did you mean 'max_rate'?",
        ),
        (
            '[namespaces.chat]\norigins = [""]\n',
            "[namespaces.chat] origins: expected a non-empty string, got ''",
        ),
        (
            '[namespaces.chat]\norigins = "x"\n',
            "[namespaces.chat] origins: expected an array, got 'x'",
        ),
        (
            "[namespaces.chat]\npersist = 1\n",
            "[namespaces.chat] persist: expected a boolean, got 1",
        ),
        ("namespaces = 3\n", "[namespaces]: expected a table, got 3"),
        ("hi = 0\n", "[hi]: must be greater than lo"),
    ],
)
def test_declarative_extension_errors(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_table(_Extended, tomllib.loads(toml), "e.toml")
    assert str(info.value) == f"e.toml: {message}"


def test_option_rejects_unknown_rules() -> None:
    with pytest.raises(TypeError, match="unknown option rule"):
        option(1, minimum=0)


# ------------------------------------------------------------------ helpers


def _keys(raw: dict[str, Any]) -> set[str]:
    """Dotted names of every key in a TOML document (tables of tables flattened)."""
    keys = set()
    for section, table in raw.items():
        for key, value in table.items():
            if isinstance(value, dict):  # [namespaces.<name>]
                keys |= {f"{section}.{key}.{inner}" for inner in value}
            else:
                keys.add(f"{section}.{key}")
    return keys


def _toml_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("toml", True)]


def _keys_of(cls: type) -> set[str]:
    """Dotted names of every option of the config dataclass; a ``Mapping`` section is
    expected to hold its ``default`` entry."""
    hints = typing.get_type_hints(cls)
    keys = set()
    for section in dataclasses.fields(cls):
        if not section.metadata.get("toml", True):
            continue
        tp = hints[section.name]
        if typing.get_origin(tp) is not None:  # Mapping[str, Entry]
            entry = typing.get_args(tp)[1]
            keys |= {f"{section.name}.default.{f.name}" for f in _toml_fields(entry)}
        else:
            keys |= {f"{section.name}.{key}" for key in _keys_of_table(tp)}
    return keys


def _keys_of_table(cls: type) -> set[str]:
    """Dotted names of a section's options, its sub-tables' included."""
    hints = typing.get_type_hints(cls)
    keys = set()
    for field in _toml_fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            keys |= {f"{field.name}.{key}" for key in _keys_of_table(hints[field.name])}
        else:
            keys.add(field.name)
    return keys


def test_run_dir_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert cfgmod.run_dir_parent() == "/run/user/1000"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/dir")  # the XDG spec says: ignore it
    assert cfgmod.run_dir_parent() == "/tmp"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert cfgmod.run_dir_parent() == "/tmp"


# ------------------------------------------------------------------ [auth] [limits] [tls]

SECRET = "config-secret-0123456789-abcdefghijk"  # >= 32 bytes


def _public_pem(private: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    data: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data.decode()


def _private_pem(private: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    data: bytes = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data.decode()


def test_security_defaults() -> None:
    cfg = default_config()
    assert cfg.auth == cfgmod.AuthConfig()
    assert cfg.auth.anonymous and cfg.auth.algorithm == "HS256" and cfg.auth.leeway == 5.0
    assert cfg.auth.verification_key() == ""
    assert cfg.limits == cfgmod.LimitsConfig()
    assert cfg.limits.commands_per_second == 1000.0 and cfg.limits.command_burst == 2000
    assert cfg.tls == cfgmod.TLSConfig(cert="", key="")
    assert cfg.namespaces["default"] == cfgmod.NamespaceConfig(
        slow_consumer="disconnect", publish=True, subscribe_token=False, max_subscribers=0
    )


def test_inline_secret_is_never_shown() -> None:
    cfg = parse_config(f'[auth]\nanonymous = false\nsecret = "{SECRET}"\n', "s.toml")
    assert cfg.auth.verification_key() == SECRET
    text = dump_config(cfg)
    assert SECRET not in text and 'secret = "<redacted>"' in text
    assert SECRET not in repr(cfg) and SECRET not in str(cfg)
    # Unset secrets are dumped as unset, so the dump shows whether one is configured.
    assert 'secret = ""' in dump_config(default_config())


@pytest.mark.parametrize(
    ("toml", "key", "detail"),
    [
        (
            '[auth]\nsecret = "short-secret"\n',
            "auth.secret",
            "[auth] secret: expected a secret of >= 32 bytes, got 12 bytes",
        ),
        (
            "[auth]\nanonymous = false\n",
            "auth.secret",
            "[auth] secret: required (or secret_file) when algorithm is 'HS256' and"
            " anonymous is false",
        ),
        (
            "[auth]\nsecret = 123456789\n",
            "auth.secret",
            "[auth] secret: expected a string, got <redacted>",
        ),
        ('[auth]\nalgorithm = "none"\n', "auth.algorithm", "[auth] algorithm: expected one of"),
        (
            '[auth]\nalgorithm = "RS256"\n',
            "auth.public_key_file",
            "required with algorithm 'RS256'",
        ),
        (
            f'[auth]\nalgorithm = "ES256"\nsecret = "{SECRET}"\n',
            "auth.secret",
            "[auth] secret: is used only with algorithm 'HS256', but algorithm is 'ES256'",
        ),
        ("[auth]\nleeway = -1\n", "auth.leeway", "expected a number >= 0 (seconds)"),
    ],
)
def test_auth_errors(toml: str, key: str, detail: str) -> None:
    err = error(toml)
    assert err.key == key
    assert detail in err.detail
    assert "short-secret" not in str(err) and SECRET not in str(err) and "123456789" not in str(err)


def test_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    text = f'[auth]\nanonymous = false\nsecret_file = "{path}"\n'
    cfg = parse_config(text, "f.toml")
    assert cfg.auth.verification_key() == SECRET  # the trailing newline is not part of it
    assert cfg.auth.secret == ""
    dumped = dump_config(cfg)
    assert SECRET not in dumped and str(path) in dumped and SECRET not in repr(cfg)
    assert parse_config(dumped, "f.toml") == cfg  # round-trips: the file is read again

    path.write_text("too-short\n")
    err = error(text)
    assert err.key == "auth.secret_file"
    assert err.detail == "[auth] secret_file: expected a secret of >= 32 bytes, got 9 bytes"

    both = f'[auth]\nsecret = "{SECRET}"\nsecret_file = "{path}"\n'
    assert error(both).detail == "[auth] secret_file: set either secret or secret_file, not both"

    missing = tmp_path / "nope"
    err = error(f'[auth]\nsecret_file = "{missing}"\n')
    assert err.key == "auth.secret_file"
    assert (
        err.detail == f"[auth] secret_file: cannot read {str(missing)!r}: No such file or directory"
    )

    path.write_bytes(b"\xff" * 40)
    err = error(text)
    assert "is not UTF-8 text" in err.detail and "\\xff" not in str(err)


def test_public_key_file(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    for algorithm, private in (("RS256", rsa_key), ("ES256", ec_key)):
        path = tmp_path / f"{algorithm}.pem"
        path.write_text(_public_pem(private))
        cfg = parse_config(
            f'[auth]\nalgorithm = "{algorithm}"\npublic_key_file = "{path}"\n', "k.toml"
        )
        assert cfg.auth.verification_key() == _public_pem(private)
        assert parse_config(dump_config(cfg), "k.toml") == cfg

    def key_error(algorithm: str, pem: str) -> ConfigError:
        path = tmp_path / "key.pem"
        path.write_text(pem)
        err = error(f'[auth]\nalgorithm = "{algorithm}"\npublic_key_file = "{path}"\n')
        assert err.key == "auth.public_key_file" and str(path) in str(err)
        return err

    assert "RSA public key of >= 2048 bits" in key_error("RS256", _public_pem(ec_key)).detail
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert "RSA public key of >= 2048 bits" in key_error("RS256", _public_pem(small)).detail
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert "EC public key on curve P-256" in key_error("ES256", _public_pem(p384)).detail
    private_pem = _private_pem(ec_key)
    err = key_error("ES256", private_pem)
    assert "is not a PEM public key" in err.detail
    assert private_pem.splitlines()[1] not in str(err)  # key material never echoed

    path = tmp_path / "k.pem"
    path.write_text(_public_pem(ec_key))
    err = error(f'[auth]\npublic_key_file = "{path}"\n')  # algorithm HS256
    assert err.detail == (
        "[auth] public_key_file: is used only with algorithm 'RS256' or 'ES256',"
        " but algorithm is 'HS256'"
    )
    err = error(f'[auth]\nalgorithm = "RS256"\npublic_key_file = "{tmp_path / "nope.pem"}"\n')
    assert err.key == "auth.public_key_file" and "nope.pem" in err.detail
    assert "No such file or directory" in err.detail


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    return self_signed(tmp_path, name)


def test_tls(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path, "a")
    cfg = parse_config(f'[tls]\ncert = "{cert}"\nkey = "{key}"\n', "t.toml")
    assert cfg.tls == cfgmod.TLSConfig(cert=str(cert), key=str(key))
    assert parse_config(dump_config(cfg), "t.toml") == cfg

    err = error(f'[tls]\ncert = "{cert}"\n')
    assert (err.key, err.detail) == (
        "tls.key",
        "[tls] key: required when cert is set (set both or neither)",
    )
    err = error(f'[tls]\nkey = "{key}"\n')
    assert err.key == "tls.cert" and "required when key is set" in err.detail

    missing = tmp_path / "missing.crt"
    err = error(f'[tls]\ncert = "{missing}"\nkey = "{key}"\n')
    assert err.key == "tls.cert" and str(missing) in err.detail
    assert "No such file or directory" in err.detail

    _, other_key = _certificate(tmp_path, "b")
    err = error(f'[tls]\ncert = "{cert}"\nkey = "{other_key}"\n')  # key of another cert
    assert err.key == "tls.key" and "not a PEM certificate and its key" in err.detail
    assert other_key.read_text().splitlines()[1] not in str(err)


def test_limits() -> None:
    cfg = parse_config(
        "[limits]\ncommands_per_second = 5\ncommand_burst = 10\nconnections_per_ip = 3\n"
        'allowed_origins = ["https://example.com", "http://localhost:8080", "https://*.example.org"]\n'
        'trusted_proxies = ["10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8"]\n',
        "l.toml",
    )
    assert cfg.limits.commands_per_second == 5.0
    assert cfg.limits.allowed_origins == (
        "https://example.com",
        "http://localhost:8080",
        "https://*.example.org",
    )
    assert cfg.limits.trusted_proxies == ("10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8")
    assert parse_config(dump_config(cfg), "l.toml") == cfg


@pytest.mark.parametrize(
    ("toml", "key", "expected"),
    [
        ('trusted_proxies = ["10.0.0.0/33"]', "trusted_proxies", "an IP address or CIDR"),
        ('trusted_proxies = ["10.0.0.1/8"]', "trusted_proxies", "an IP address or CIDR"),
        ('trusted_proxies = ["proxy.local"]', "trusted_proxies", "an IP address or CIDR"),
        ('trusted_proxies = "10.0.0.0/8"', "trusted_proxies", "an array"),
        ('allowed_origins = ["example.com"]', "allowed_origins", "a lowercase origin"),
        ('allowed_origins = ["https://example.com/"]', "allowed_origins", "a lowercase origin"),
        ('allowed_origins = ["https://Example.com"]', "allowed_origins", "a lowercase origin"),
        ('allowed_origins = ["*"]', "allowed_origins", "a lowercase origin"),
        ('allowed_origins = ["*.example.com"]', "allowed_origins", "a lowercase origin"),
        ('allowed_origins = ["https://a.*.example.com"]', "allowed_origins", "a lowercase origin"),
        ("commands_per_second = 0", "commands_per_second", "a number > 0"),
        ("command_burst = 0", "command_burst", "an integer >= 1"),
        ("abuse_close_after = 0", "abuse_close_after", "an integer >= 1"),
        ("connections_per_ip = -1", "connections_per_ip", "an integer >= 0"),
        (
            "new_connections_per_ip_per_second = -1",
            "new_connections_per_ip_per_second",
            "a number >= 0",
        ),
    ],
)
def test_limits_errors(toml: str, key: str, expected: str) -> None:
    err = error(f"[limits]\n{toml}\n")
    assert err.key == f"limits.{key}"
    assert f"[limits] {key}: expected {expected}" in err.detail


def test_namespace_options() -> None:
    cfg = parse_config(
        "[namespaces.chat]\npublish = false\nsubscribe_token = true\nmax_subscribers = 10\n",
        "n.toml",
    )
    assert cfg.namespaces["chat"] == cfgmod.NamespaceConfig(
        publish=False, subscribe_token=True, max_subscribers=10
    )
    err = error("[namespaces.chat]\nmax_subscribers = -1\n")
    assert err.key == "namespaces.chat.max_subscribers"


# ------------------------------------------------------------------ ingress

_CLIENT_KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"


def test_ingress(tmp_path: Path) -> None:
    assert default_config().ingress.bind == ""
    for bind in ("tcp://127.0.0.1:9766", "tcp://[::1]:9766", "tcp://localhost:1", "ipc:///x/y"):
        assert parse_config(f'[ingress]\nbind = "{bind}"', "f").ingress.bind == bind
    public = parse_config('[ingress]\nbind = "tcp://0.0.0.0:9766"\nallow_plaintext = true', "f")
    assert public.ingress.allow_plaintext
    secret = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"
    key_file = tmp_path / "server.key_secret"
    key_file.write_text(secret + "\n")
    curve = parse_config(
        f'[ingress]\nbind = "tcp://*:9766"\ncurve_secret_key_file = "{key_file}"\n'
        f'curve_authorized_keys = ["{_CLIENT_KEY}"]',
        "f",
    )
    assert curve.ingress.curve_secret_key == secret
    assert secret not in repr(curve) and secret not in dump_config(curve)


@pytest.mark.parametrize(
    ("toml", "key", "detail"),
    [
        ('bind = "tcp://127.0.0.1"', "ingress.bind", '"tcp://HOST:PORT"'),
        ('bind = "tcp://127.0.0.1:0"', "ingress.bind", '"tcp://HOST:PORT"'),
        ('bind = "ipc://relative.sock"', "ingress.bind", "ipc:///absolute"),
        ('bind = "udp://127.0.0.1:1"', "ingress.bind", '"tcp://HOST:PORT"'),
        ('bind = "tcp://0.0.0.0:9766"', "ingress.bind", "reachable from other hosts"),
        ('bind = "tcp://eth0:9766"', "ingress.bind", "allow_plaintext = true"),
        ('bind = "tcp://*:9766"', "ingress.bind", "curve_secret_key_file"),
        ('curve_authorized_keys = ["short"]', "ingress.curve_authorized_keys", "40 Z85"),
        (
            f'curve_authorized_keys = ["{_CLIENT_KEY}"]',
            "ingress.curve_secret_key_file",
            "required when curve_authorized_keys",
        ),
        ("hwm = 0", "ingress.hwm", ">= 1"),
    ],
)
def test_ingress_errors(toml: str, key: str, detail: str) -> None:
    err = error(f"[ingress]\n{toml}")
    assert err.key == key and detail in err.detail, err.detail


def test_ingress_key_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key_secret"
    bad.write_text("not a key\n")
    err = error(
        f'[ingress]\ncurve_secret_key_file = "{bad}"\ncurve_authorized_keys = ["{_CLIENT_KEY}"]'
    )
    assert err.key == "ingress.curve_secret_key_file" and "40 Z85" in err.detail
    err = error(f'[ingress]\ncurve_secret_key_file = "{tmp_path / "none"}"')
    assert err.key == "ingress.curve_secret_key_file" and "cannot read" in err.detail
    good = tmp_path / "good.key_secret"
    good.write_text(_CLIENT_KEY)
    err = error(f'[ingress]\ncurve_secret_key_file = "{good}"')
    assert err.key == "ingress.curve_authorized_keys" and "required" in err.detail


def test_drop_policy_is_refused_with_history() -> None:
    """A dropped message in a history namespace would be a silent gap in its offsets."""
    with pytest.raises(ConfigError) as info:
        parse_config('[namespaces.chat]\nhistory_size = 10\nslow_consumer = "drop"\n', "x.toml")
    assert "[namespaces.chat] slow_consumer" in str(info.value)
    assert "history_size" in str(info.value)
    ok = parse_config("[namespaces.chat]\nhistory_size = 10\n", "x.toml")
    assert ok.namespaces["chat"].history_size == 10


def test_allowed_delta_types_are_checked() -> None:
    """Deltas are off by default; only "fossil" may be allowed (pure.delta)."""
    assert parse_config("", "x.toml").namespaces["default"].allowed_delta_types == ()
    ok = parse_config('[namespaces.chat]\nallowed_delta_types = ["fossil"]\n', "x.toml")
    assert ok.namespaces["chat"].allowed_delta_types == ("fossil",)
    with pytest.raises(ConfigError) as info:
        parse_config('[namespaces.chat]\nallowed_delta_types = ["xdelta"]\n', "x.toml")
    assert "[namespaces.chat] allowed_delta_types" in str(info.value)
    assert "'fossil'" in str(info.value) and "'xdelta'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        ("[compression]\nmax_window_bits = 8\n", "compression.max_window_bits", "9..15"),
        ("[compression]\nmax_window_bits = 16\n", "compression.max_window_bits", "9..15"),
        ("[compression]\nlevel = 0\n", "compression.level", "1..9"),
        ("[compression]\nthreshold = -1\n", "compression.threshold", ">= 0"),
        ('[diagnostics]\necho_path = "echo"\n', "diagnostics.echo_path", 'starting with "/"'),
        ('[diagnostics]\necho_path = "/ws"\n', "diagnostics.echo_path", "must differ"),
    ],
)
def test_compression_and_diagnostics_errors(text: str, key: str, detail: str) -> None:
    err = error(text)
    assert err.key == key
    assert detail in err.detail


def test_compression_and_diagnostics_values() -> None:
    cfg = parse_config(
        "[compression]\nenabled = true\nthreshold = 0\nlevel = 1\nmax_window_bits = 9\n"
        '[diagnostics]\necho_path = "/autobahn"\n',
        "f.toml",
    )
    assert (cfg.compression.enabled, cfg.compression.threshold) == (True, 0)
    assert (cfg.compression.level, cfg.compression.max_window_bits) == (1, 9)
    assert cfg.diagnostics.echo_path == "/autobahn"
    assert default_config().diagnostics.echo_path == ""
    assert default_config().compression.enabled is False


# ------------------------------------------------------------------ cluster

_PEERED = '[cluster]\nlisten = "tcp://0.0.0.0:9767"\npeers = ["shardws-peers:9767"]\n'


def test_cluster(tmp_path: Path) -> None:
    assert not default_config().cluster.enabled
    plain = parse_config(_PEERED + "allow_plaintext = true", "f").cluster
    assert plain.enabled and plain.peers == ("shardws-peers:9767",)
    secret = "Mh%)Mj/gLp6@MLBBBHxLq6#^nWjS]wVx<:8]7FUF"
    key_file = tmp_path / "cluster.key_secret"
    key_file.write_text(secret + "\n")
    curve = parse_config(_PEERED + f'curve_secret_key_file = "{key_file}"', "f")
    assert curve.cluster.curve_secret_key == secret
    assert secret not in repr(curve) and secret not in dump_config(curve)


@pytest.mark.parametrize(
    ("toml", "key", "detail"),
    [
        ('[cluster]\npeers = ["a:1"]\nallow_plaintext = true', "cluster.listen", "required"),
        (_PEERED, "cluster.curve_secret_key_file", "allow_plaintext = true"),
        ('[cluster]\npeers = ["no-port"]', "cluster.peers", '"HOST:PORT"'),
        ('[cluster]\npeers = ["a:70000"]', "cluster.peers", '"HOST:PORT"'),
        ('[cluster]\nlisten = "0.0.0.0:9767"', "cluster.listen", '"tcp://HOST:PORT"'),
        ('[cluster]\nhost_id = "a b"', "cluster.host_id", "letters, digits"),
        ("[cluster]\npeer_timeout = 0.5\nheartbeat_interval = 1", "cluster.peer_timeout", "exceed"),
        ("[cluster]\nresolve_interval = 0", "cluster.resolve_interval", "> 0"),
        ('[cluster]\nengine = "kafka"', "cluster.engine", "one of 'mesh', 'redis'"),
    ],
)
def test_cluster_errors(toml: str, key: str, detail: str) -> None:
    err = error(toml)
    assert err.key == key and detail in err.detail, err.detail


_HUB = '[cluster]\nengine = "redis"\nhost_id = "a"\n'


def test_redis_hub(tmp_path: Path) -> None:
    password = "hub-password-0123"
    password_file = tmp_path / "redis.password"
    password_file.write_text(password + "\n")
    cfg = parse_config(
        _HUB + f'[cluster.redis]\naddress = "redis.internal:6380"\nprefix = "svc:"\n'
        f'password_file = "{password_file}"\nusername = "shardws"\n',
        "f",
    )
    redis = cfg.cluster.redis
    assert cfg.cluster.enabled and not cfg.cluster.peers
    assert (redis.address, redis.prefix, redis.username) == (
        "redis.internal:6380",
        "svc:",
        "shardws",
    )
    assert redis.secret() == password
    assert password not in repr(cfg) and password not in dump_config(cfg)
    assert parse_config(dump_config(cfg).replace("<redacted>", ""), "f").cluster.redis.address
    inline = parse_config(_HUB + f'[cluster.redis]\npassword = "{password}"\n', "f")
    assert inline.cluster.redis.secret() == password and password not in dump_config(inline)
    sharded = parse_config(_HUB + '[cluster.redis]\ncluster_nodes = ["r1:7000", "r2:7000"]\n', "f")
    assert sharded.cluster.redis.cluster_nodes == ("r1:7000", "r2:7000")
    assert parse_config(dump_config(sharded), "f").cluster.redis == sharded.cluster.redis
    # History channels are served on the hub (Redis decides them: server.redishistory).
    history = parse_config(_HUB + "[namespaces.hist]\nhistory_size = 10\n", "f")
    assert history.namespaces["hist"].history_size == 10


def test_pusher_apps_are_served_on_the_hub() -> None:
    """Pusher rosters, occupancy and cache channels are decided in Redis on the hub
    (``server.redispusher``): check-config accepts Pusher apps there."""
    app = '[[pusher.apps]]\nid = "1"\nkey = "k"\nsecret = "pusher-secret-0123456789"\n'
    cfg = parse_config(_HUB + app, "f")
    assert cfg.cluster.engine == "redis" and cfg.pusher.apps[0].id == "1"


@pytest.mark.parametrize(
    ("toml", "key", "detail"),
    [
        (_HUB + '[cluster.redis]\nadress = "a:1"', "cluster.redis.adress", "address"),
        (_HUB + '[cluster.redis]\naddress = "nowhere"', "cluster.redis.address", '"HOST:PORT"'),
        (_HUB + '[cluster.redis]\nprefix = "a b"', "cluster.redis.prefix", "letters"),
        (_HUB + "[cluster.redis]\ntimeout = 0", "cluster.redis.timeout", "> 0"),
        (_HUB + "[cluster.redis]\npresence_ttl = 0.5", "cluster.redis.presence_ttl", "1..3600"),
        (_HUB + "[cluster.redis]\npresence_ttl = 7200", "cluster.redis.presence_ttl", "1..3600"),
        (
            _HUB + '[cluster.redis]\nsentinels = ["s:26379"]',
            "cluster.redis.master_name",
            "required",
        ),
        (
            _HUB + '[cluster.redis]\npassword = "p"\npassword_file = "/nonexistent"',
            "cluster.redis.password_file",
            "",
        ),
        (
            _HUB + '[cluster.redis]\ncluster_nodes = ["r1:7000"]\nsentinels = ["s:26379"]\n'
            'master_name = "m"',
            "cluster.redis.cluster_nodes",
            "not both",
        ),
        (
            _HUB + '[cluster.redis]\ncluster_nodes = ["r1:7000"]\nprefix = "{svc}:"',
            "cluster.redis.prefix",
            "hash tag",
        ),
        (_HUB + '[cluster.redis]\ncluster_nodes = ["r1"]', "cluster.redis.cluster_nodes", "HOST"),
        (_HUB + 'peers = ["b:9767"]', "cluster.peers", "the mesh's"),
        ('[cluster.redis]\naddress = "r:6379"', "cluster.redis", 'engine = "redis"'),
    ],
)
def test_redis_hub_errors(toml: str, key: str, detail: str) -> None:
    err = error(toml)
    assert err.key == key and detail in err.detail, err.detail


# ------------------------------------------------------------------ pusher

PUSHER_SECRET = "pusher-secret-0123456789"  # >= 16 bytes
_APP = '[[pusher.apps]]\nid = "{id}"\nkey = "{key}"\nsecret = "' + PUSHER_SECRET + '"\n'


def _apps(*pairs: tuple[str, str], extra: str = "") -> str:
    return "".join(_APP.format(id=i, key=k) for i, k in pairs) + extra


def test_pusher_apps(tmp_path: Path) -> None:
    assert default_config().pusher.apps == ()
    secret_file = tmp_path / "app2.secret"
    secret_file.write_text("file-secret-0123456789\n")
    cfg = parse_config(
        _apps(("1", "key-one"), extra="client_events = true\nmax_event_data_bytes = 20480\n")
        + f'[[pusher.apps]]\nid = "2"\nkey = "key-two"\nsecret_file = "{secret_file}"\n'
        "enabled = false\nactivity_timeout = 30\n",
        "p.toml",
    )
    one, two = cfg.pusher.apps
    assert (one.id, one.key, one.signing_secret()) == ("1", "key-one", PUSHER_SECRET)
    assert one.client_events and one.max_event_data_bytes == 20480 and one.enabled
    assert (one.max_channels_per_trigger, one.max_events_per_batch) == (100, 10)
    assert (one.max_presence_members, one.max_presence_info_bytes) == (100, 1024)
    assert (one.max_client_events_per_second, one.max_channel_name_length) == (10, 200)
    assert (one.activity_timeout, one.auth_timestamp_window, one.cache_ttl) == (120, 600.0, 1800.0)
    assert two.signing_secret() == "file-secret-0123456789" and not two.enabled
    assert two.activity_timeout == 30 and not two.client_events
    assert cfg.pusher.app_by_key("key-two") is two and cfg.pusher.app_by_id("1") is one
    assert cfg.pusher.app_by_key("1") is None and cfg.pusher.app_by_id("key-one") is None
    # Secrets stay out of repr and dumps; the dump writes [[pusher.apps]] tables and,
    # for a secret from a file, parses back to the same config.
    text = dump_config(cfg)
    for secret in (PUSHER_SECRET, "file-secret-0123456789"):
        assert secret not in text and secret not in repr(cfg)
    assert text.count("[[pusher.apps]]") == 2
    from_file = dataclasses.replace(cfg, pusher=cfgmod.PusherConfig(apps=(two,)))
    assert parse_config(dump_config(from_file), cfg.source) == from_file


@pytest.mark.parametrize(
    ("toml", "key", "detail"),
    [
        (_apps(("1", "a"), ("1", "b")), "pusher.apps[1].id", "duplicate id '1' (also apps[0].id)"),
        (_apps(("1", "a"), ("2", "b"), ("3", "a")), "pusher.apps[2].key", "duplicate key 'a'"),
        ('[[pusher.apps]]\nid = "1"\nkey = "k"\n', "pusher.apps[0].secret", "required"),
        ('[[pusher.apps]]\nkey = "k"\nsecret = "' + PUSHER_SECRET + '"', "pusher.apps[0].id", ""),
        ('[[pusher.apps]]\nid = "1"\nsecret = "' + PUSHER_SECRET + '"', "pusher.apps[0].key", ""),
        ('[[pusher.apps]]\nid="1"\nkey="k"\nsecret="short"', "pusher.apps[0].secret", "16 bytes"),
        (_apps(("1", "a"), ("2", "b/c")), "pusher.apps[1].key", "A-Z a-z 0-9 _ . -"),
        (_apps(("1", "a"), extra="secret_file = '/x'\n"), "pusher.apps[0].secret_file", ""),
        (_apps(("1", "a"), extra="max_channel_name_length = 201\n"), "", "1..200"),
        (_apps(("1", "a"), extra="max_event_data_bytes = 0\n"), "", "1..1048576"),
        (_apps(("1", "a"), extra="client_event = true\n"), "", "did you mean 'client_events'"),
        ("[pusher]\napps = [1]\n", "pusher.apps[0]", "expected a table"),
        ('[pusher]\napps = "1"\n', "pusher.apps", "expected an array"),
    ],
)
def test_pusher_errors(toml: str, key: str, detail: str) -> None:
    err = error(toml)
    assert not key or err.key == key, err.key
    assert detail in err.detail, err.detail
    assert PUSHER_SECRET not in str(err)


def test_pusher_secret_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    err = error(f'[[pusher.apps]]\nid = "1"\nkey = "k"\nsecret_file = "{missing}"\n')
    assert err.key == "pusher.apps[0].secret_file" and "cannot read" in err.detail
    short = tmp_path / "short"
    short.write_text("tiny\n")
    err = error(f'[[pusher.apps]]\nid = "1"\nkey = "k"\nsecret_file = "{short}"\n')
    assert err.key == "pusher.apps[0].secret_file" and "got 4 bytes" in err.detail


def test_example_documents_every_pusher_app_option() -> None:
    """The example's commented-out ``[[pusher.apps]]`` entry names every option of an
    app, each after its comment, and parses once uncommented."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = lines.index("# [[pusher.apps]]")
    block = []
    for line in lines[start:]:
        if not line:
            break
        block.append(line.removeprefix("#").removeprefix(" "))
    table = tomllib.loads("\n".join(block))["pusher"]["apps"][0]
    assert set(table) == {f.name for f in _toml_fields(cfgmod.PusherAppConfig)}
    for i, line in enumerate(block[1:], 1):
        if not line.startswith("#"):
            assert block[i - 1].startswith("#"), f"undocumented: {line!r}"
    # As written (defaults, a secret file) plus a secret instead of the file, it is valid
    # and equals the defaults.
    text = "\n".join(line for line in block if not line.startswith("secret"))
    app = parse_config(text + f'\nsecret = "{PUSHER_SECRET}"\n', "x").pusher.apps[0]
    assert app == cfgmod.PusherAppConfig(id="1", key="app-key", secret=PUSHER_SECRET)
