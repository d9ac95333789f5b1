"""The short chaos suite: a few seeded nemesis schedules against a 7-node cluster on network
namespaces while clients put, get and delete files and two digits jobs run; the checker must find
no anomaly (`bench/chaos.py --runs 100` is the long version).

A failing schedule names its seed and the command that replays it; its history and verdict are
kept under pytest's tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from idunno.testing.chaos.history import ELECTIONS, NEMESIS, RESULTS, read_history
from idunno.testing.chaos.runner import RunConfig, run_chaos
from idunno.testing.netns import NetnsUnavailable, check_available

pytestmark = [pytest.mark.process, pytest.mark.slow]

# Chosen for coverage in little time (schedules are pure functions of the seed): the
# coordinator, its standby and a third node killed at once, then a bridge partition. The other
# fault kinds are covered by tests/test_netns*.py here and by `bench/chaos.py --runs 100`.
SCHEDULES = [1]
DURATION = 16.0
DIGITS_TIMES = 4  # jobs long enough to span the faults, short enough for make test


@pytest.fixture(autouse=True)
def _namespaces() -> None:
    try:
        check_available()
    except NetnsUnavailable as exc:
        pytest.skip(exc.reason)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", SCHEDULES)
def test_a_seeded_schedule_leaves_no_anomaly(seed: int, tmp_path: Path) -> None:
    config = RunConfig(
        seed, tmp_path / f"seed-{seed}", duration=DURATION, digits_times=DIGITS_TIMES
    )
    result = run_chaos(config)
    anomalies = "\n".join(f"  {a.kind}: {a.detail}" for a in result.verdict.anomalies)
    assert result.verdict.ok, (
        f"seed {seed} ({result.schedule.describe()}) found anomalies; replay with "
        f"`python bench/chaos.py --seed {seed} --duration {DURATION:g}`; history in "
        f"{config.directory}:\n{anomalies}"
    )
    assert not result.notes, result.notes  # everything healed and finished in time
    # The run did what it says: faults were injected, clients worked, jobs were checked.
    records = read_history(config.directory / "history.jsonl")
    stats = result.verdict.stats
    assert sum(result.schedule.counts().values()) >= 2
    injected = [r for r in records if r.process == NEMESIS and r.f != "schedule"]
    assert len(injected) == 2 * len(result.schedule.faults)
    assert stats["ops"]["put"].get("ok", 0) > 10 and stats["ops"]["get"].get("ok", 0) > 10
    assert stats["queries_checked"] == sum(
        len(r.value["results"]) for r in records if r.f == RESULTS
    )
    assert stats["queries_checked"] == len(config.jobs) * 1797 * config.digits_times
    elected = [e for r in records if r.f == ELECTIONS for e in r.value["events"]]
    assert elected, "no coordinator election was recorded"
    verdict = json.loads((config.directory / "verdict.json").read_text())
    assert verdict["ok"] is True
