"""The load generator against a real ``shardws serve`` (1 worker), every scenario at tiny
scale: the report has its structure, and nothing is lost on a healthy server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from serverproc import ServerProcess

from shardws import cli
from shardws.tools.loadgen import LoadSpec, format_report, run

# Publishers run flat out: lift the per-connection command limit (a real backend
# publishing over WebSocket would do the same).
SERVER = {
    "workers": 1,
    "extra": "[limits]\ncommands_per_second = 1e9\ncommand_burst = 1000000000\n",
}


def spec(server: ServerProcess, **fields: Any) -> LoadSpec:
    assert server.proc is not None
    base: dict[str, Any] = {
        "url": [server.url],
        "connections": 20,
        "processes": 2,
        "server_pid": [server.proc.pid],
        "progress": False,
        "drain": 1.0,
        "timeout": 30,
    }
    return LoadSpec(**{**base, **fields})


def check_common(report: dict[str, Any], scenario: str, connections: int) -> None:
    assert report["scenario"] == scenario
    assert report["problems"] == [] and report["ok"] is True, format_report(report)
    conns = report["connections"]
    assert conns["connected"] == conns["requested"] == connections
    assert conns["failed"] == 0 and conns["unexpected_disconnects"] == 0
    assert conns["connect_rate_per_s"] > 0
    server = report["server"]
    assert len(server["pids"]) >= 2  # supervisor and its worker(s): the tree was walked
    assert server["rss_mb_end"] > 0 and server["cpu_s"] >= 0


def test_fanout_flat_out_loses_nothing(server: ServerProcess) -> None:
    report = run(spec(server, scenario="fanout", duration=2, source_ips=2))
    check_common(report, "fanout", 21)
    assert report["connections"]["subscribed"] == 20
    assert report["published"] > 0 and report["acked"] == report["published"]
    assert report["expected"] == report["published"] * 20 == report["received"]
    assert report["lost"] == 0 and report["deliveries_per_s"] > 0
    latency = report["latency_ms"]
    assert latency["samples"] > 0 and 0 <= latency["p50"] <= latency["p99"] <= latency["max"]
    assert report["server"]["deliveries_per_cpu_s"] > 0


def test_fanout_paced_sends_the_offered_count(server: ServerProcess) -> None:
    report = run(spec(server, scenario="fanout", rate=200, messages=150, duration=5))
    check_common(report, "fanout", 21)
    assert report["published"] == 150
    assert report["received"] == report["expected"] == 150 * 20
    # Open loop at 200/s: 150 messages take ~0.75 s, not "as fast as possible".
    assert report["window_s"] >= 0.6


def test_roundtrip(server: ServerProcess) -> None:
    report = run(spec(server, scenario="roundtrip", duration=1))
    check_common(report, "roundtrip", 1)
    assert report["roundtrips"] > 10 and report["lost"] == 0
    assert report["latency_ms"]["samples"] == report["roundtrips"]


def test_idle_reports_rss_per_connection(server: ServerProcess) -> None:
    report = run(spec(server, scenario="idle", duration=1, channels=3))
    check_common(report, "idle", 20)
    assert report["idle"]["live_at_end"] == 20
    assert report["idle"]["rss_kb_per_connection"] is not None


def test_mixed_steps_with_slow_clients_and_churn(server: ServerProcess) -> None:
    report = run(
        spec(
            server,
            scenario="mixed",
            connections=40,
            steps=[200, 400],
            step_duration=1,
            slow_fraction=0.1,
            churn=4,
            churn_grace=0.3,
        )
    )
    check_common(report, "mixed", 41)
    assert report["slow_clients"] == 4 and report["churned"] >= 2
    assert len(report["steps"]) == 2
    for step in report["steps"]:
        assert step["expected_healthy"] > 0
        assert step["lost_healthy"] == 0
        assert step["received_healthy"] == step["expected_healthy"]
        assert step["published"] > 0 and step["server_rss_mb"] > 0


def test_cli_bench_json_and_bad_usage(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bench", "--size", "5", "--url", server.url]) == 2
    assert "--size" in capsys.readouterr().err
    argv = ["bench", "--scenario", "roundtrip", "--duration", "0.5", "--url", server.url]
    assert cli.main([*argv, "--json", "--no-progress", "--timeout", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["roundtrips"] > 0
    assert "roundtrips_per_s: " in format_report(report)
