"""The load generator against a real ``shardws serve`` (1 worker), every scenario at tiny
scale: the report has its structure, and nothing is lost on a healthy server."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from serverproc import ServerProcess

from shardws import cli
from shardws.tools.loadgen import SCENARIOS, LoadSpec, format_report, run, scenario_settings

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


def spec_section(text: str) -> dict[str, str]:
    """The ``spec:`` block of a text report: setting -> value as printed."""
    lines = text.splitlines()
    settings = {}
    for line in lines[lines.index("spec:") + 1 :]:
        if not line.startswith("  "):
            break
        key, _, value = line.strip().partition(": ")
        settings[key] = value
    return settings


def test_cli_bench_text_report_shows_only_the_scenarios_settings(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--scenario", "fanout", "-n", "5", "--rate", "100", "--messages", "20"]
    argv += ["--url", server.url, "--no-progress", "--timeout", "20"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    settings = spec_section(out)
    assert settings["rate"] == "100.0" and settings["messages"] == "20", out
    assert settings["connections"] == "5" and settings["channel"] == "bench", out
    assert settings["url"] == str([server.url]), out
    for other in ("steps", "step_duration", "churn", "churn_grace", "slow_fraction"):
        assert other not in settings, out  # mixed only
    assert "channels" not in settings, out  # idle only
    assert "window" not in settings, out  # flat out only
    assert "cafile" not in settings and "insecure" not in settings, out  # wss:// only
    assert "scenario" not in settings and out.startswith("scenario: fanout\n"), out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_settings(scenario: str) -> None:
    fields = dataclasses.asdict(LoadSpec(scenario=scenario))
    shown = scenario_settings(fields)
    assert {"url", "timeout", "server_pid", "connect_concurrency"} <= shown.keys()
    assert ("churn" in shown) == ("steps" in shown) == (scenario == "mixed")
    assert ("channels" in shown) == (scenario == "idle")
    assert ("window" in shown) == (scenario == "fanout")  # the default rate 0: flat out
    assert ("connections" in shown) == (scenario != "roundtrip")
    assert ("duration" in shown) == (scenario != "mixed")
    assert "cafile" not in shown and "insecure" not in shown
    assert list(shown) == [key for key in fields if key in shown]  # the order of LoadSpec
    paced_tls = scenario_settings({**fields, "rate": 10.0, "url": ["wss://h:1/ws"]})
    assert "window" not in paced_tls and {"cafile", "insecure"} <= paced_tls.keys()


def test_scenario_settings_cover_every_option() -> None:
    # A LoadSpec field no scenario claims would be missing from every text report.
    shown: set[str] = set()
    for scenario in SCENARIOS:
        fields = dataclasses.asdict(LoadSpec(scenario=scenario, url=["wss://h:1/ws"]))
        shown |= scenario_settings(fields).keys()
    options = {f.name for f in dataclasses.fields(LoadSpec)} - {"scenario", "json", "progress"}
    assert shown == options
