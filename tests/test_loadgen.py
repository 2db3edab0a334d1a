"""The load generator against a real ``shardws serve`` (1 worker), every scenario at tiny
scale: the report has its structure, and nothing is lost on a healthy server."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serverproc import ServerProcess

from shardws import cli
from shardws.tools.loadgen import (
    IP_BIND_ADDRESS_NO_PORT,
    SCENARIOS,
    LoadSpec,
    _bottleneck,
    _cpu_figures,
    _process_tree,
    _source_socket,
    connect_ramp,
    format_report,
    run,
    scenario_settings,
)

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
    # The drain ends as soon as every delivery arrived; its silence bound only has to
    # outlast a loop stalled by a shared machine (a p99 of 1.1 s was seen under load).
    report = run(spec(server, scenario="fanout", duration=2, source_ips=2, drain=10.0))
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


def test_fanout_through_the_http_apis_native_and_pusher(tmp_path: Path) -> None:
    """``--http-publish``: the same paced fan-out published through ``POST /api/publish``
    to native subscribers, then through Pusher's signed ``POST /apps/{id}/events`` to
    ``/app/{key}`` subscribers (``--protocol pusher``): nothing lost either way."""
    app = ("1", "bench-key", "bench-secret-0123456789")
    extra = SERVER["extra"] + '[[pusher.apps]]\nid = "{}"\nkey = "{}"\nsecret = "{}"\n'.format(*app)
    api_key = "bench-api-key-0123456789"
    with ServerProcess(
        tmp_path, workers=1, extra=extra, admin=f'api_key = "{api_key}"'
    ).start() as proc:
        common: dict[str, Any] = {
            "scenario": "fanout",
            "rate": 200,
            "messages": 100,
            "duration": 5,
            "http_publish": proc.admin_url,
        }
        native = run(spec(proc, **common, api_key=api_key))
        pusher_url = f"ws://127.0.0.1:{proc.ws_port}/app/bench-key?protocol=7"
        pusher = run(
            spec(proc, **common, url=[pusher_url], protocol="pusher", pusher_app=":".join(app))
        )
    for report in (native, pusher):
        check_common(report, "fanout", 21)  # the HTTP publisher counts as a connection
        assert report["publish_errors"] == 0 and report["acked"] == report["published"] == 100
        assert report["received"] == report["expected"] == 100 * 20 and report["lost"] == 0
        assert report["latency_ms"]["samples"] > 0


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


def test_idle_paced_connects_open_on_their_schedule(server: ServerProcess) -> None:
    """``--connect-rate``: the processes take turns, so the last of 20 connections at
    40/s cannot start before 19/40 s into the phase; every one is still subscribed."""
    report = run(spec(server, scenario="idle", duration=0.5, channels=20, connect_rate=40))
    check_common(report, "idle", 20)
    assert report["spec"]["connect_rate"] == 40
    assert report["cpu"]["connect"]["wall_s"] >= 19 / 40


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
    credentials = {"api_key", "pusher_app"}  # never printed
    assert shown == options - credentials


def test_idle_at_scale_options_broadcast_probe_and_roll(tmp_path: Path) -> None:
    # The C250K scenario in miniature: a shared channel timed to every connection, probes
    # on a single-subscriber channel, then a SIGHUP roll every client comes back from.
    proc = ServerProcess(tmp_path, workers=2).start()
    try:
        assert proc.proc is not None
        report = run(
            LoadSpec(
                scenario="idle",
                url=[proc.url],
                connections=30,
                processes=2,
                source_ips=3,
                shared_channel="all",
                broadcasts=2,
                probe_rate=50,
                reconnect=True,
                roll_pid=proc.proc.pid,
                duration=1,
                drain=1.0,
                server_pid=[proc.proc.pid],
                progress=False,
            )
        )
    finally:
        proc.stop()
    assert report["ok"], format_report(report)
    assert report["connections"]["connected"] == 31  # and the publisher
    assert report["connections"]["subscribed"] == 31
    idle = report["idle"]
    assert [b["delivered"] for b in idle["broadcasts"]] == [30, 30]
    assert all(b["expected"] == 30 and b["time_to_all_ms"] >= 0 for b in idle["broadcasts"])
    assert idle["probe_latency_ms"]["samples"] >= 50
    roll = idle["roll"]
    # The two workers: a roll that changes nothing else keeps the admin (issue 38).
    assert roll["server_processes_before"] == roll["server_processes_replaced"] == 2
    assert roll["seconds"] > 0 and roll["refused"] == 0 and roll["gave_up"] == 0
    assert roll["clients_sent_away"] >= 30 and roll["reconnected"] == roll["clients_sent_away"]
    assert roll["live_after"] == 30 and idle["live_at_end"] == 30
    assert report["connections"]["unexpected_disconnects"] == 0
    ramp = report["connections"]["ramp"]
    assert len(ramp["tenths_per_s"]) == 10 and sum(ramp["tenths_per_s"]) > 0
    for phase in ("connect", "measured"):
        cpu = report["cpu"][phase]
        assert cpu["server_cpu_s"] >= 0 and cpu["client_cpu_s"] > 0


def test_idle_without_reconnect_counts_a_roll_as_disconnects(tmp_path: Path) -> None:
    # Without --reconnect the clients a drain sends away are lost: counted, never hidden.
    proc = ServerProcess(tmp_path, workers=1).start()
    try:
        assert proc.proc is not None
        spec = LoadSpec(
            scenario="idle",
            url=[proc.url],
            connections=10,
            processes=1,
            duration=9,  # the drain spreads its closes over drain_timeout / 2 = 2.5 s
            progress=False,
        )
        threading.Timer(1.5, proc.proc.send_signal, (signal.SIGHUP,)).start()
        report = run(spec)
    finally:
        proc.stop()
    assert report["connections"]["unexpected_disconnects"] == 10
    assert report["idle"]["live_at_end"] == 0


def test_source_socket_leaves_the_port_to_connect() -> None:
    sock = _source_socket("127.0.0.2")(None)
    try:
        assert sock.getsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT) == 1
        assert sock.getsockname() == ("127.0.0.2", 0)  # bound, no port chosen yet
        assert not sock.getblocking()
    finally:
        sock.close()


def test_connect_ramp_tenths() -> None:
    # 1000 handshakes over the first second, 100 over the last of ten.
    times = np.concatenate([np.linspace(100.0, 100.999, 1000), np.linspace(109.0, 110.0, 100)])
    ramp = connect_ramp(times, 100.0)
    assert ramp["first_tenth_per_s"] == 1000 and ramp["last_tenth_per_s"] == 100
    assert ramp["tenths_per_s"][1:9] == [0] * 8
    assert connect_ramp(np.zeros(0), 5.0)["first_tenth_per_s"] is None


def test_cpu_percent_of_an_empty_window_is_no_figure() -> None:
    # The run that printed cpu_percent 7000000000.0: 0.07 CPU-s over a window that never
    # began (max(1e-9, negative)).
    assert _cpu_figures(0.07, 0.0, -3.0)["server_percent"] is None
    figures = _cpu_figures(1.5, 3.0, 2.0)
    assert figures["server_percent"] == 75.0 and figures["client_percent"] == 150.0


def test_bottleneck_line_names_the_generator() -> None:
    busy = _cpu_figures(10.0, 30.0, 20.0)
    assert "load generator" in (_bottleneck("connect", busy, 20.0, 16, True) or "")
    server_bound = _cpu_figures(30.0, 10.0, 20.0)
    assert _bottleneck("connect", server_bound, 20.0, 16, True) is None
    flat_out = _cpu_figures(0.0, 2 * 19.0 * (os.cpu_count() or 1), 20.0)
    assert "flat out" in (_bottleneck("connect", flat_out, 20.0, 64, False) or "")
    assert _bottleneck("connect", busy, 0.5, 16, True) is None  # too short to judge


def test_connect_timeout_grows_with_the_count() -> None:
    small, large = LoadSpec(connections=1000), LoadSpec(connections=250_000)
    assert large.connect_seconds() >= 1000 > small.connect_seconds() >= 30
    assert large.effective_timeout() > large.connect_seconds() + large.duration
    assert LoadSpec(connections=250_000, connect_timeout=90).connect_seconds() == 90
    # A paced ramp slower than the floor takes connections / rate by design.
    assert LoadSpec(connections=1000, connect_rate=10).connect_seconds() >= 100


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scenario": "fanout", "shared_channel": "all"}, "idle only"),
        ({"scenario": "idle", "broadcasts": 1}, "--broadcasts needs --shared-channel"),
        ({"scenario": "idle", "roll_pid": 1}, "--roll-pid needs --reconnect"),
        ({"scenario": "idle", "probe_rate": -1}, "must be >= 0"),
    ],
)
def test_validate_idle_options(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoadSpec(**fields).validate()


def test_reconnecting_clients_come_back_from_a_dead_worker_counted(tmp_path: Path) -> None:
    # A worker killed outright sends no reconnect hint: its clients come back at once
    # with --reconnect, and every one of them is counted as an unexpected disconnect.
    proc = ServerProcess(tmp_path, workers=2).start()
    try:
        assert proc.proc is not None
        workers = [
            pid
            for pid in _process_tree([proc.proc.pid])
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"shardws: worker")
        ]
        assert len(workers) == 2
        threading.Timer(2.0, os.kill, (workers[0], signal.SIGKILL)).start()
        report = run(spec_for(proc, connections=20, processes=2, duration=8, reconnect=True))
    finally:
        proc.stop()
    dropped = report["connections"]["unexpected_disconnects"]
    assert 0 < dropped < 20  # the kernel spread them over both workers
    assert report["idle"]["live_at_end"] == 20, format_report(report)


def test_subscribes_not_confirmed_live_are_retried_and_counted(tmp_path: Path) -> None:
    # A stopped bus forwarder cannot confirm a subscription live: the server answers
    # error 108 and undoes it. The generator sends such a subscribe again after a
    # back-off (as shardws's clients do) and counts it, instead of leaving the client
    # unsubscribed and the run waiting for it.
    proc = ServerProcess(tmp_path, workers=2).start()
    try:
        forwarder = proc.wait_healthy()["bus_forwarder"]["pid"]
        os.kill(forwarder, signal.SIGSTOP)
        resume = threading.Timer(4.0, os.kill, (forwarder, signal.SIGCONT))
        resume.start()
        try:
            report = run(spec_for(proc, connections=10, processes=1, duration=1))
        finally:
            resume.join()
    finally:
        proc.stop()
    assert report["ok"], format_report(report)
    conns = report["connections"]
    assert conns["subscribed"] == conns["connected"] == 10
    assert conns["subscribe_retries"] >= 10  # every client's first subscribe was refused


def spec_for(proc: ServerProcess, **fields: Any) -> LoadSpec:
    assert proc.proc is not None
    base: dict[str, Any] = {
        "scenario": "idle",
        "url": [proc.url],
        "server_pid": [proc.proc.pid],
        "progress": False,
    }
    return LoadSpec(**{**base, **fields})


def test_connection_lost_in_the_handshake_is_a_counted_failure() -> None:
    # picows returns normally, with no listener, when the server closes before its
    # upgrade response: each such client must count as failed (after its retries), never
    # vanish from the totals.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def close_every_connection() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.recv(4096)  # the upgrade request, then hang up without answering
            conn.close()

    thread = threading.Thread(target=close_every_connection, daemon=True)
    thread.start()
    try:
        report = run(
            LoadSpec(
                scenario="idle",
                url=[f"ws://127.0.0.1:{port}/ws"],
                connections=3,
                processes=1,
                duration=0.5,
                timeout=30,
                progress=False,
            )
        )
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    conns = report["connections"]
    assert conns["connected"] == 0 and conns["failed"] == 3
    assert conns["connect_retries"] == 3 * 2  # CONNECT_ATTEMPTS = 3
    assert conns["per_process"] == [[3, 0, 3]]
    assert "only 0 of 3 connections opened" in report["problems"]
