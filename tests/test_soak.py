"""The soak (``benchmarks/soak.py``) in CI: two hosts in network namespaces under mixed
load, history clients, backend publishers and slow consumers, while one fault of each
kind is injected (a worker, the admin and the bridge SIGKILLed, a SIGHUP roll, a change of
the worker count and back, a cut of the link between the hosts). About a minute of wall
time. Needs root (``ip netns``); skipped with the reason elsewhere,
failed under CI (``tests/external.py``).
"""

from __future__ import annotations

import pytest

from benchmarks.soak import KINDS, SoakSpec, run_soak, summary

pytestmark = pytest.mark.needs("netns")


def test_one_fault_of_each_kind_and_every_loss_explained() -> None:
    spec = SoakSpec(duration=25.0, seed=21, each_once=True, partition=(3.0, 3.0))
    report = run_soak(spec)
    text = summary(report)
    assert report["failures"] == [], text
    assert set(report["faults_by_kind"]) == set(KINDS), text
    # The scale fault is undone at the end: the worker count changed twice.
    assert report["faults_by_kind"]["scale"] == 2, text
    clients = report["clients"]
    assert clients["publications_acknowledged"] > 0, text
    assert clients["deliveries_to_recovering_clients"] > 0, text
    # Every loss has a cause: the slow consumer of the drop namespace lost something.
    causes = report["losses_by_cause"]
    assert causes.get("dropped/slow_consumer: slow consumer (drop namespace)", 0) > 0, text
    assert not [cause for cause in causes if "unexplained" in cause], text
    assert report["scrapes"] > 20, text
