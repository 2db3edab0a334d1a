"""shardws tune: recommendations come from the shipped sysctl file; the report runs."""

from __future__ import annotations

from pathlib import Path

from serverproc import run_cli

from shardws.tools.tune import (
    BYTES_PER_CONNECTION,
    FD_RESERVE,
    RULES,
    SYSCTL_FILE,
    Kind,
    Rule,
    Setting,
    capacity,
    host_sysctl_text,
    needs,
    recommended,
    report,
    roll_peak_per_worker,
)

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


def test_every_key_of_the_sysctl_file_has_a_rule() -> None:
    assert set(RULES) == set(recommended())


def test_at_least_compares_element_wise_and_never_lowers() -> None:
    rmem = "4096 16384 16777216"
    assert Setting("net.ipv4.tcp_rmem", "4096 131072 33554432", rmem).ok  # all larger
    assert Setting("net.ipv4.tcp_rmem", rmem, rmem).ok
    assert not Setting("net.ipv4.tcp_rmem", "4096 131072 6291456", rmem).ok  # max too low
    assert not Setting("net.ipv4.tcp_rmem", "4096 16384", rmem).ok  # not the same shape
    rule = RULES["net.ipv4.tcp_rmem"]
    assert rule.kept("4096 131072 33554432", rmem) == "4096 131072 33554432"
    assert rule.kept("4096 131072 6291456", rmem) == "4096 131072 16777216"
    assert rule.kept("1024 8192 1048576", rmem) == rmem
    assert rule.kept(None, rmem) == rmem
    assert RULES["net.core.somaxconn"].kept("4096", "65535") == "65535"
    assert RULES["net.core.somaxconn"].kept("131072", "65535") == "131072"


def test_at_most_accepts_shorter() -> None:
    assert Setting("net.ipv4.tcp_fin_timeout", "10", "15").ok
    assert Setting("net.ipv4.tcp_fin_timeout", "15", "15").ok
    assert RULES["net.ipv4.tcp_fin_timeout"].kept("10", "15") == "10"
    assert RULES["net.ipv4.tcp_fin_timeout"].kept("60", "15") == "15"
    assert Rule(Kind.AT_MOST).ok("1 2", "1 3") and not Rule(Kind.AT_MOST).ok("1 4", "1 3")


def test_exactly_and_one_of() -> None:
    assert Setting("net.ipv4.tcp_migrate_req", "1", "1").ok
    assert not Setting("net.ipv4.tcp_migrate_req", "2", "1").ok  # more is not better
    assert RULES["net.ipv4.tcp_migrate_req"].kept("0", "1") == "1"
    # tcp_tw_reuse is an enumeration: 2 (loopback only, the kernel default) is not "more".
    assert Setting("net.ipv4.tcp_tw_reuse", "2", "1").ok
    assert Setting("net.ipv4.tcp_tw_reuse", "1", "1").ok
    assert not Setting("net.ipv4.tcp_tw_reuse", "0", "1").ok
    assert not Setting("net.ipv4.tcp_tw_reuse", "3", "1").ok
    assert RULES["net.ipv4.tcp_tw_reuse"].kept("2", "1") == "2"
    assert RULES["net.ipv4.tcp_tw_reuse"].kept("0", "1") == "1"
    assert RULES["net.ipv4.tcp_tw_reuse"].describe() == "one of 1, 2"


def test_port_range_must_be_at_least_as_wide() -> None:
    rule = RULES["net.ipv4.ip_local_port_range"]
    assert rule.ok("1024 65535", "1024 65535")
    assert rule.ok("1000 65535", "1024 65535")  # wider
    assert rule.ok("1000 65511", "1024 65535")  # as wide, shifted
    assert not rule.ok("1025 65535", "1024 65535")
    assert not rule.ok("32768 60999", "1024 65535")
    assert not rule.ok("1024", "1024 65535")
    assert rule.kept("1000 65535", "1024 65535") == "1000 65535"
    assert rule.kept("32768 60999", "1024 65535") == "1024 65535"


def test_unreadable_or_malformed_values_fail() -> None:
    assert not Setting("net.core.somaxconn", None, "65535").ok
    assert not Setting("net.core.somaxconn", "lots", "65535").ok
    assert not Setting("net.ipv4.tcp_fin_timeout", "", "15").ok


def test_host_sysctl_text_keeps_larger_values_and_is_stable(tmp_path: Path) -> None:
    live = {
        "net.core.somaxconn": "4096",  # below: raised
        "net.ipv4.tcp_rmem": "4096\t131072\t33554432",  # beyond: kept
        "net.ipv4.tcp_wmem": "4096 16384 4194304",  # max below: raised, the rest kept
        "net.ipv4.tcp_tw_reuse": "2",
        "net.ipv4.tcp_fin_timeout": "60",
        "fs.nr_open": "8388608",
    }
    text = host_sysctl_text(live.get)
    target = tmp_path / "99-shardws.conf"
    target.write_text(text)
    written = recommended(target)
    assert set(written) == set(recommended())
    assert written["net.core.somaxconn"] == "65535"
    assert written["net.ipv4.tcp_rmem"] == "4096 131072 33554432"
    assert written["net.ipv4.tcp_wmem"] == "4096 16384 16777216"
    assert written["net.ipv4.tcp_tw_reuse"] == "2"
    assert written["net.ipv4.tcp_fin_timeout"] == "15"
    assert written["fs.nr_open"] == "8388608"
    assert "this host's 4096 131072 33554432 kept (shipped: 4096 16384 16777216)" in text
    # Nothing written is lower than the host had, and every value meets its rule.
    for key, value in written.items():
        assert RULES[key].ok(value, recommended()[key]), key
        if key in live and RULES[key].ok(live[key], recommended()[key]):
            assert value == " ".join(live[key].split()), key
    # Applied, then built again: the same file (install-service is idempotent).
    assert host_sysctl_text(written.get) == text
    # A host with no readable values (or under --root) gets the shipped values.
    assert recommended(_written(tmp_path, host_sysctl_text(lambda key: None))) == recommended()


def _written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "written.conf"
    path.write_text(text)
    return path


def test_report_shows_each_rule_and_says_never_lower() -> None:
    text = report(1)
    assert "one of 1, 2" in text and "at most" in text and "as wide" in text
    assert "never lower it" in text


def test_roll_peak_per_worker() -> None:
    # Replaced one at a time into the others: the last replaced gathers what every
    # earlier drain moved, about e shares just before its own drain.
    assert roll_peak_per_worker(1, 1000) == 1000
    assert roll_peak_per_worker(2, 1000) == 1000  # worker 1 holds all while 0 restarts
    assert roll_peak_per_worker(3, 900) == 675  # 300 + 150, then 450 + 225
    peak = roll_peak_per_worker(32, 250_000)
    assert 2.6 * 250_000 / 32 < peak < 2.72 * 250_000 / 32


def test_needs_for_a_connection_count() -> None:
    n = needs(250_000, 16)
    assert n["per_worker"] == 15_625
    assert n["limit_nofile"] == roll_peak_per_worker(16, 250_000) + FD_RESERVE
    assert n["memory_bytes"] == 250_000 * BYTES_PER_CONNECTION
    assert n["proxy_ports_per_worker_address"] == 375_000
    assert n["proxy_source_addresses"] * n["proxy_port_range_now"] >= 375_000
    assert needs(500_000, 16)["limit_nofile"] > n["limit_nofile"]
    text = report(16, connections=250_000)
    assert "for 250,000 connections with 16 worker(s)" in text and "LimitNOFILE" in text
    result = run_cli("tune", "--connections", "100000")
    assert result.returncode == 0 and "for 100,000 connections" in result.stdout
