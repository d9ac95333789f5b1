"""The pure parts of bench/vs_ray.py (bench/_vs.py): rates from completion times, the two jobs'
fairness ratio, recovery time after a kill and lost/duplicated counting. No Ray, no cluster."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load() -> ModuleType:
    # bench/ is not a package: load the module from its file, as the benchmark's own
    # `import _vs` (bench/ on sys.path) would.
    spec = importlib.util.spec_from_file_location("_vs", BENCH / "_vs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_vs", module)
    spec.loader.exec_module(module)
    return module


vs = _load()


def steady(rate: float, start: float, end: float) -> list[float]:
    """Completion times of a job answering `rate` queries/s, evenly, over [start, end)."""
    n = round((end - start) * rate)
    return [start + (k + 0.5) / rate for k in range(n)]


# --- rates ---------------------------------------------------------------------------------


def test_bin_rates_counts_each_second() -> None:
    times = [0.1, 0.2, 0.9, 1.5, 3.0, 3.99]
    assert vs.bin_rates(times, 0.0, 4.0) == [3.0, 1.0, 0.0, 2.0]
    assert vs.bin_rates(times, 0.0, 4.0, width=2.0) == [2.0, 1.0]
    assert vs.bin_rates(times, 5.0, 5.0) == []


def test_steady_rate_ignores_start_up_and_tail() -> None:
    # A slow start (2 queries in 5 s), 100 q/s for 10 s, then a slow tail.
    times = sorted([0.0, 5.0, *steady(100.0, 5.0, 15.0), 20.0, 25.0])
    assert vs.steady_rate(times) == pytest.approx(100.0, rel=0.02)
    assert vs.steady_rate([1.0, 2.0]) is None


# --- fairness ------------------------------------------------------------------------------


def test_equal_rates_are_fair() -> None:
    times = {"a": steady(30.0, 0.0, 20.0), "b": steady(30.0, 0.5, 20.0)}
    f = vs.fairness(times, window=5.0)
    assert f.period is not None
    assert f.period[0] == pytest.approx(times["b"][0])
    assert f.ratio == pytest.approx(1.0, abs=0.01)
    assert f.windows and all(w == pytest.approx(1.0, abs=0.05) for w in f.windows)
    assert f.starved_windows == 0


def test_unequal_rates_give_their_ratio() -> None:
    f = vs.fairness({"a": steady(60.0, 0.0, 20.0), "b": steady(20.0, 0.0, 30.0)})
    assert f.ratio == pytest.approx(3.0, rel=0.02)
    summary = f.summary()
    assert summary["window_worst"] == pytest.approx(3.0, rel=0.05)
    assert summary["period_s"] == pytest.approx(20.0, abs=0.1)


def test_a_job_that_waits_for_the_other_has_no_overlap() -> None:
    # Ray's default with two pipelines: the second runs only after the first finished.
    f = vs.fairness({"a": steady(50.0, 0.0, 10.0), "b": steady(50.0, 12.0, 20.0)})
    assert f.period is None
    assert f.ratio is None
    assert f.summary()["period_s"] == 0.0


def test_a_starved_window_is_counted_not_divided_by_zero() -> None:
    # b pauses for 6 s in the middle: a 5 s window sees it at 0.
    b = steady(20.0, 0.0, 7.0) + steady(20.0, 13.0, 20.0)
    f = vs.fairness({"a": steady(20.0, 0.0, 20.0), "b": b}, window=5.0)
    assert f.starved_windows >= 1
    assert None in f.windows
    assert f.ratio is not None and f.ratio > 1.2


def test_max_min() -> None:
    assert vs.max_min([2.0, 4.0]) == 2.0
    assert vs.max_min([0.0, 4.0]) is None
    assert vs.max_min([]) is None


# --- recovery after a kill -----------------------------------------------------------------


def test_recovery_after_a_dip() -> None:
    # 80 q/s, the kill at 10 s halves the rate until 13 s, then 80 q/s again.
    times = steady(80.0, 0.0, 10.0) + steady(40.0, 10.0, 13.0) + steady(80.0, 13.0, 30.0)
    before = vs.rate(times, 7.0, 10.0)
    rec = vs.recovery_s(times, 10.0, before)
    # A 2 s window needs 80% of 2 s x 80 q/s = 128 queries: with x s of it past 13 s it holds
    # 80x + 40(2 - x) = 40x + 80, so x >= 1.2 and t >= 12.2 s; the rate then holds.
    assert rec == pytest.approx(2.2, abs=0.06)
    assert vs.dip(times, 10.0, before) == pytest.approx(0.5, abs=0.02)


def test_no_dip_recovers_at_once() -> None:
    times = steady(50.0, 0.0, 30.0)
    assert vs.recovery_s(times, 10.0, 50.0) == 0.0
    assert vs.dip(times, 10.0, 50.0) == pytest.approx(1.0, abs=0.03)


def test_a_lucky_window_is_not_a_recovery() -> None:
    # Full rate for 1 s right after the kill (batches already running elsewhere finish), then
    # 1/4 of it for 5 s: the rate must hold, so recovery comes only after the long dip.
    times = (
        steady(80.0, 0.0, 10.0)
        + steady(80.0, 10.0, 11.0)
        + steady(20.0, 11.0, 16.0)
        + steady(80.0, 16.0, 30.0)
    )
    rec = vs.recovery_s(times, 10.0, 80.0)
    assert rec is not None and rec > 5.0


def test_never_recovered_before_the_end() -> None:
    times = steady(80.0, 0.0, 10.0) + steady(20.0, 10.0, 20.0)
    assert vs.recovery_s(times, 10.0, 80.0) is None
    assert vs.recovery_s([], 10.0, 80.0) is None
    assert vs.recovery_s(times, 10.0, 0.0) is None


def test_deficit_counts_the_work_the_kill_cost() -> None:
    # 80 q/s, then 40 q/s for 2 s after the kill: 80 queries short = 1 s of full throughput.
    times = steady(80.0, 0.0, 10.0) + steady(40.0, 10.0, 12.0) + steady(80.0, 12.0, 30.0)
    assert vs.deficit_s(times, 10.0, 80.0) == pytest.approx(1.0, abs=0.02)
    assert vs.deficit_s(steady(80.0, 0.0, 30.0), 10.0, 80.0) == pytest.approx(0.0, abs=0.02)
    assert vs.deficit_s(times, 10.0, 0.0) is None
    assert vs.deficit_s(times, 40.0, 80.0) is None  # after the last result


def test_longest_gap() -> None:
    times = [0.5, 1.0, 4.0, 4.5, 9.0]
    assert vs.longest_gap(times, 0.0, 5.0) == 3.0
    assert vs.longest_gap(times, 4.6, 8.0) == pytest.approx(3.4)  # no result inside at all
    assert vs.longest_gap([], 0.0, 2.0) == 2.0


# --- lost and duplicated -------------------------------------------------------------------


def test_exactly_once() -> None:
    ids = [f"q{i}" for i in range(10)]
    out = vs.lost_and_duplicated(ids, reversed(ids))
    assert out["exactly_once"]
    assert (out["lost"], out["duplicated"], out["unexpected"]) == (0, 0, 0)


def test_lost_duplicated_and_unexpected() -> None:
    ids = [f"q{i}" for i in range(10)]
    got = [*ids[2:], "q5", "q5", "q7", "zz"]
    out = vs.lost_and_duplicated(ids, got)
    assert out["lost"] == 2
    assert out["lost_first"] == ["q0", "q1"]
    assert out["duplicated"] == 3  # q5 twice more, q7 once more
    assert out["duplicated_first"] == ["q5", "q7"]
    assert out["unexpected"] == 1
    assert out["results"] == len(got)
    assert not out["exactly_once"]
