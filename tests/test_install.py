"""``shardws install-service``: the files it installs, what it never overwrites, dry runs,
enabling only where systemd runs, and the installed unit through ``systemd-analyze``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from serverproc import run_cli
from toolkit import timeout

from shardws.tools import install
from shardws.tools.install import CONFIG_TARGET, SYSCTL_TARGET, UNIT_TARGET, under

REPO = Path(__file__).resolve().parent.parent
SHIPPED_UNIT = REPO / "systemd" / "shardws.service"
SHIPPED_CONFIG = REPO / "shardws.example.toml"
SHIPPED_SYSCTL = REPO / "sysctl" / "99-shardws.conf"


def exec_lines(unit: str) -> dict[str, str]:
    return {
        line.partition("=")[0]: line.partition("=")[2]
        for line in unit.splitlines()
        if line.startswith(("ExecStart=", "ExecStartPre="))
    }


def install_under(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("install-service", "--root", str(root), *args)


def test_package_data_links_are_the_shipped_files() -> None:
    assert install.UNIT_FILE.read_bytes() == SHIPPED_UNIT.read_bytes()
    assert install.EXAMPLE_CONFIG.read_bytes() == SHIPPED_CONFIG.read_bytes()


def test_installs_unit_config_and_sysctl_under_root(tmp_path: Path) -> None:
    result = install_under(tmp_path)
    assert result.returncode == 0, result.stderr
    unit = under(tmp_path, UNIT_TARGET)
    assert under(tmp_path, CONFIG_TARGET).read_bytes() == SHIPPED_CONFIG.read_bytes()
    assert under(tmp_path, SYSCTL_TARGET).read_bytes() == SHIPPED_SYSCTL.read_bytes()
    for path in (unit, under(tmp_path, CONFIG_TARGET), under(tmp_path, SYSCTL_TARGET)):
        assert path.stat().st_mode & 0o777 == 0o644, path
        assert f"create {path}" in result.stdout
    # The unit is the shipped one but for the program of the two Exec lines, which is
    # this installation's shardws: absolute and executable.
    installed, shipped = unit.read_text(), SHIPPED_UNIT.read_text()
    assert len(installed.splitlines()) == len(shipped.splitlines())
    for mine, theirs in zip(installed.splitlines(), shipped.splitlines(), strict=True):
        if not mine.startswith("ExecStart"):
            assert mine == theirs
    execs = exec_lines(installed)
    assert execs["ExecStart"].endswith(" serve -c /etc/shardws/shardws.toml")
    assert execs["ExecStartPre"].endswith(" check-config /etc/shardws/shardws.toml")
    program = execs["ExecStart"].split()[0]
    assert program == execs["ExecStartPre"].split()[0]
    assert os.path.isabs(program) and os.access(program, os.X_OK), program
    assert f"ExecStart runs {program}" in result.stdout


def test_never_overwrites_a_config_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    config = under(tmp_path, CONFIG_TARGET)
    config.parent.mkdir(parents=True)
    config.write_text("[server]\nport = 9000\n")
    first = install_under(tmp_path)
    assert first.returncode == 0, first.stderr
    assert config.read_text() == "[server]\nport = 9000\n"
    assert f"kept {config}: it exists and is never overwritten" in first.stdout
    files = [under(tmp_path, UNIT_TARGET), config, under(tmp_path, SYSCTL_TARGET)]
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in files}
    second = install_under(tmp_path)
    assert second.returncode == 0, second.stderr
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in files} == before
    assert f"unchanged {files[0]}" in second.stdout
    assert f"unchanged {files[2]}" in second.stdout
    assert "create" not in second.stdout and "update" not in second.stdout
    # No temporary files left beside the installed ones.
    assert sorted(p.name for p in files[0].parent.iterdir()) == ["shardws.service"]


def test_a_changed_unit_is_updated(tmp_path: Path) -> None:
    assert install_under(tmp_path).returncode == 0
    unit = under(tmp_path, UNIT_TARGET)
    good = unit.read_text()
    unit.write_text(good.replace("RestartSec=2", "RestartSec=99"))
    result = install_under(tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"update {unit}" in result.stdout
    assert unit.read_text() == good


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    result = install_under(tmp_path, "--dry-run", "--enable")
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
    for target in (UNIT_TARGET, CONFIG_TARGET, SYSCTL_TARGET):
        assert f"would create {under(tmp_path, target)}" in result.stdout
    assert "skipped enabling" in result.stdout


def test_no_sysctl(tmp_path: Path) -> None:
    result = install_under(tmp_path, "--no-sysctl")
    assert result.returncode == 0, result.stderr
    assert under(tmp_path, UNIT_TARGET).exists() and under(tmp_path, CONFIG_TARGET).exists()
    assert not under(tmp_path, SYSCTL_TARGET).exists()
    assert "99-shardws.conf" not in result.stdout


def test_not_root_without_root_dir_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(install.os, "geteuid", lambda: 1000)
    assert install.run(None) == 2
    assert "needs root" in capsys.readouterr().err
    # A dry run only reads, so it needs no root.
    assert install.run(None, dry_run=True, command=["/usr/bin/shardws"]) == 0


def test_enable_only_on_this_system_with_systemd_as_init(tmp_path: Path) -> None:
    [line] = install.enable(tmp_path, dry_run=False, booted=lambda: True)
    assert line.startswith("skipped enabling: the files went under")
    [line] = install.enable(Path("/"), dry_run=False, booted=lambda: False)
    assert line.startswith("skipped enabling: systemd is not PID 1")
    assert install.enable(Path("/"), dry_run=True, booted=lambda: True) == [
        "would run systemctl daemon-reload",
        "would run systemctl enable --now shardws",
    ]


def test_unit_text_keeps_prefixes_and_quotes_the_program() -> None:
    template = (
        "[Service]\n"
        "ExecStartPre=-/usr/local/bin/shardws check-config /etc/shardws/shardws.toml\n"
        "ExecStart=/usr/local/bin/shardws serve\n"
        "ExecReload=/bin/kill -HUP $MAINPID\n"
    )
    text = install.unit_text(["/opt/my env/bin/python", "-m", "shardws"], template)
    assert text == (
        "[Service]\n"
        'ExecStartPre=-"/opt/my env/bin/python" -m shardws check-config'
        " /etc/shardws/shardws.toml\n"
        'ExecStart="/opt/my env/bin/python" -m shardws serve\n'
        "ExecReload=/bin/kill -HUP $MAINPID\n"
    )
    assert install.systemd_quote("/opt/100%/$HOME") == "/opt/100%%/$$HOME"
    with pytest.raises(install.InstallError, match="no ExecStart= line runs shardws"):
        install.unit_text(["/usr/bin/shardws"], "[Service]\nExecStart=/usr/bin/other\n")


def analyze(unit: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about ``unit``: the exit status when it
    failed and every line naming the unit (parse errors it only warns about, such as
    an unknown key, exit 0, so the lines count as well)."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=timeout(60),
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_LOG_COLOR": "0"},
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if unit.name in line or "bad unit file" in line
    ]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}")
    return problems


@pytest.mark.needs("systemd-analyze")
def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # Verified as installed: ExecStart then names a program that exists (verify
    # refuses a unit whose program is missing, e.g. the shipped /usr/local/bin one).
    assert install_under(tmp_path, "--no-sysctl").returncode == 0
    unit = under(tmp_path, UNIT_TARGET)
    assert analyze(unit) == []
    # The check sees a real error: a misspelt key, which verify only warns about.
    broken = tmp_path / "broken" / "shardws.service"
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("KillMode=mixed", "KillMod=mixed"))
    assert any("Unknown key 'KillMod'" in line for line in analyze(broken))


def test_sysctl_file_for_this_system_never_lowers_a_live_value() -> None:
    live = {"net.ipv4.tcp_rmem": "4096 131072 33554432", "net.ipv4.tcp_tw_reuse": "2"}
    placement = install.placements(["/opt/shardws/bin/shardws"], read=live.get)[-1]
    assert placement.target == SYSCTL_TARGET
    text = placement.content.decode()
    assert "\nnet.ipv4.tcp_rmem = 4096 131072 33554432\n" in text
    assert "\nnet.ipv4.tcp_tw_reuse = 2\n" in text
    assert "\nnet.core.somaxconn = 65535\n" in text  # unknown here: the recommendation
    # Without live values (another root) the shipped file, byte for byte.
    shipped = install.placements(["/opt/shardws/bin/shardws"])[-1]
    assert shipped.content == SHIPPED_SYSCTL.read_bytes()


def test_install_into_this_system_reads_its_live_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    placed: list[install.Placement] = []

    def place(placement: install.Placement, root: Path, dry_run: bool) -> str:
        placed.append(placement)
        return f"would place {placement.target}"

    monkeypatch.setattr(install, "place", place)
    monkeypatch.setattr(install, "read_sysctl", {"net.core.somaxconn": "131072"}.get)
    assert install.run(None, dry_run=True, command=["/opt/shardws/bin/shardws"]) == 0
    assert "\nnet.core.somaxconn = 131072\n" in placed[-1].content.decode()
    placed.clear()
    assert install.run(Path("/tmp/x"), dry_run=True, command=["/opt/shardws/bin/shardws"]) == 0
    assert placed[-1].content == SHIPPED_SYSCTL.read_bytes()
