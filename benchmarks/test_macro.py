"""The macro scenarios of ``benchmarks/macro.py`` under pytest-benchmark.

    pytest benchmarks/test_macro.py --benchmark-enable            # full size
    SHARDWS_BENCH_QUICK=1 pytest benchmarks/test_macro.py --benchmark-enable

Each test starts one server, runs one scenario once (a load run is minutes, not
microseconds, so one round), and stores the scenario's headline figures in the
benchmark's ``extra_info``, together with their ratio to the raw picows server measured
in the same session (the baseline runs first and is cached per scenario). No timing is
asserted: only that the run completed without losses where the scenario requires it.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from benchmarks.macro import BASELINE, SCENARIO_CONFIG, SCENARIOS, headline, serve

QUICK = os.environ.get("SHARDWS_BENCH_QUICK") == "1"
_baselines: dict[int, dict[str, Any]] = {}

CASES = [
    (number, name)
    for number, (_runner, names, _workers) in sorted(SCENARIOS.items())
    # the baseline first, so every other server of the scenario has its ratio
    for name in sorted(names, key=lambda n: n != BASELINE)
]


def _measure(number: int, name: str) -> dict[str, Any]:
    runner, _names, workers = SCENARIOS[number]
    config = SCENARIO_CONFIG.get(number, {})
    with serve(name, workers if name == "shardws" else 1, **config) as server:
        return runner(server, QUICK)


def _baseline(number: int) -> dict[str, Any] | None:
    if BASELINE not in SCENARIOS[number][1]:
        return None
    if number not in _baselines:
        _baselines[number] = headline(number, _measure(number, BASELINE))
    return _baselines[number]


@pytest.mark.parametrize(("number", "name"), CASES, ids=[f"s{n}-{s}" for n, s in CASES])
def test_scenario(benchmark: Any, number: int, name: str) -> None:
    reports: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: reports.append(_measure(number, name)), rounds=1, iterations=1)
    report = reports[0]
    figures = headline(number, report)
    if name == BASELINE:
        _baselines[number] = figures
    base = _baseline(number)
    benchmark.extra_info.update(figures)
    if base:
        numeric = (int, float)
        benchmark.extra_info["ratio_to_raw_picows"] = {
            key: round(value / base[key], 3)
            for key, value in figures.items()
            if isinstance(value, numeric) and isinstance(base.get(key), numeric) and base[key]
        }
    if number in (1, 2, 5, 6):
        assert report["ok"], report.get("problems")
