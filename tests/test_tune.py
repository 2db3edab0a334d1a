"""shardws tune: recommendations come from the shipped sysctl file; the report runs."""

from __future__ import annotations

from pathlib import Path

from serverproc import run_cli

from shardws.tools.tune import SYSCTL_FILE, Setting, capacity, recommended, report

REPO_SYSCTL = Path(__file__).resolve().parent.parent / "sysctl" / "99-shardws.conf"


def test_recommendations_are_the_shipped_sysctl_file() -> None:
    assert SYSCTL_FILE.read_text() == REPO_SYSCTL.read_text()
    values = recommended()
    assert values["net.core.somaxconn"] == "65535"
    assert values["net.ipv4.tcp_rmem"] == "4096 16384 16777216"
    assert values["net.ipv4.tcp_migrate_req"] == "1"


def test_setting_comparison() -> None:
    assert Setting("net.core.somaxconn", "70000", "65535").ok  # more is fine
    assert not Setting("net.core.somaxconn", "4096", "65535").ok
    assert not Setting("net.ipv4.tcp_fin_timeout", "60", "15").ok  # must be equal
    assert Setting("net.ipv4.ip_local_port_range", "1024  65535", "1024 65535").ok
    assert not Setting("net.ipv4.ip_local_port_range", "32768 60999", "1024 65535").ok
    assert not Setting("net.ipv4.tcp_migrate_req", None, "1").ok


def test_capacity_and_report() -> None:
    cap = capacity(2)
    assert cap["connections"] == min(cap["by_open_files"], cap["by_memory"], cap["by_file_max"])
    assert cap["connections"] > 0
    text = report(2)
    assert "net.core.somaxconn" in text and "capacity with 2 worker(s)" in text
    result = run_cli("tune")

    assert result.returncode == 0 and "recommended" in result.stdout
