"""The ``shardws`` command: config errors at start, check-config, first-boot failure."""

from __future__ import annotations

from pathlib import Path

from serverproc import run_cli

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
