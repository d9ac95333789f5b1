"""Pure helpers of bench/vs_ray.py (IDUNNO vs Ray Data vs bare ONNX Runtime): query rates over
time from completion timestamps, the fairness ratio of two jobs, recovery time after a kill and
lost/duplicated query counting. Plain data in, plain data out (no Ray, no cluster), so
tests/test_vs_ray_bench.py checks them on hand-made series.

Timestamps are seconds on one clock (time.time() of one machine), each the moment one query's
result was complete; "times" arguments are sorted unless said otherwise.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RECOVERY_FRACTION = 0.8  # "recovered": the rate is back to at least 80% of the pre-kill rate
RECOVERY_WINDOW_S = 2.0  # rates judged over 2 s windows (at ~40-80 q/s, 10-20 batches of 8)
RECOVERY_HOLD_S = 2.0  # ... and they must stay there this long (a lucky window is no recovery)
SCAN_STEP_S = 0.05


def count_in(times: Sequence[float], a: float, b: float) -> int:
    """Results in [a, b) (times sorted)."""
    return bisect.bisect_left(times, b) - bisect.bisect_left(times, a)


def rate(times: Sequence[float], a: float, b: float) -> float:
    """Queries/s over [a, b); 0 for an empty interval."""
    return count_in(times, a, b) / (b - a) if b > a else 0.0


def bin_rates(times: Sequence[float], start: float, end: float, width: float = 1.0) -> list[float]:
    """Queries/s in consecutive bins [start + k*width, start + (k+1)*width) covering [start,
    end) (the last bin may stick out past end): the per-second series the plots draw."""
    if end <= start:
        return []
    n = math.ceil((end - start) / width - 1e-9)
    return [count_in(times, start + k * width, start + (k + 1) * width) / width for k in range(n)]


def steady_rate(times: Sequence[float]) -> float | None:
    """The rate between the 10th and 90th percentile of the completion times: the job without
    its start-up (actors, first dispatch) and its tail (the last batches finishing one by
    one); None for fewer than 10 results. The same definition as bench/inference.py's."""
    if len(times) < 10:
        return None
    lo, hi = times[len(times) // 10], times[(9 * len(times)) // 10]
    return count_in(times, lo, hi) / (hi - lo) if hi > lo else None


# --- fairness ------------------------------------------------------------------------------


def both_running(times: Mapping[str, Sequence[float]]) -> tuple[float, float] | None:
    """The period every job runs: from the latest first result to the earliest last result;
    None if some job has no result or they never overlap (one ran after the other)."""
    if not times or any(not ts for ts in times.values()):
        return None
    start = max(ts[0] for ts in times.values())
    end = min(ts[-1] for ts in times.values())
    return (start, end) if end > start else None


def max_min(rates: Iterable[float]) -> float | None:
    """max/min of the rates; None (unbounded: a job got nothing) if the smallest is 0."""
    values = list(rates)
    if not values or min(values) <= 0:
        return None
    return max(values) / min(values)


@dataclass(frozen=True)
class Fairness:
    period: tuple[float, float] | None  # both_running()
    rates: dict[str, float]  # each job's rate over the whole period
    ratio: float | None  # max/min of those rates (the headline figure)
    windows: list[float | None]  # max/min in each sliding window inside the period
    starved_windows: int  # windows where some job had no result at all

    def summary(self) -> dict[str, Any]:
        got = [w for w in self.windows if w is not None]
        return {
            "period": list(self.period) if self.period else None,
            "period_s": self.period[1] - self.period[0] if self.period else 0.0,
            "rates": self.rates,
            "ratio": self.ratio,
            "windows": len(self.windows),
            "window_worst": max(got) if got else None,
            "window_mean": sum(got) / len(got) if got else None,
            "starved_windows": self.starved_windows,
        }


def fairness(
    times: Mapping[str, Sequence[float]], window: float = 5.0, step: float = 1.0
) -> Fairness:
    """The jobs' query rates while all of them run (both_running): over the whole period, and
    max/min over sliding `window`s every `step` (a period shorter than one window gives the
    whole period as its only window)."""
    period = both_running(times)
    if period is None:
        return Fairness(None, {}, None, [], 0)
    start, end = period
    rates = {job: rate(ts, start, end) for job, ts in times.items()}
    width = min(window, end - start)
    windows: list[float | None] = []
    k = 0
    while start + k * step + width <= end + 1e-9:
        a = start + k * step
        windows.append(max_min(rate(ts, a, a + width) for ts in times.values()))
        k += 1
    starved = sum(1 for w in windows if w is None)
    return Fairness(period, rates, max_min(rates.values()), windows, starved)


# --- a killed worker -----------------------------------------------------------------------


def recovery_s(
    times: Sequence[float],
    t_kill: float,
    before: float,
    end: float | None = None,
    fraction: float = RECOVERY_FRACTION,
    window: float = RECOVERY_WINDOW_S,
    hold: float = RECOVERY_HOLD_S,
    step: float = SCAN_STEP_S,
) -> float | None:
    """Seconds from t_kill to the earliest t >= t_kill such that the rate over [t', t' +
    window) is at least fraction x `before` (the pre-kill rate) for every t' in [t, t + hold]
    (`step` apart): the rate is back and stays back. Windows must end by `end` (default: the
    last result; the job's tail, where the last batches finish one by one, is no dip). None
    if that never happens; 0.0 if the rate never dropped."""
    if not times or before <= 0:
        return None
    last = times[-1] if end is None else end
    need = fraction * before
    ok_from: float | None = None  # start of the current run of windows at the rate
    k = 0
    while True:
        t = t_kill + k * step
        if t + window > last + 1e-9:
            return None
        if rate(times, t, t + window) >= need:
            if ok_from is None:
                ok_from = t
            if t - ok_from >= hold - 1e-9:
                return ok_from - t_kill
        else:
            ok_from = None
        k += 1


def dip(
    times: Sequence[float], t_kill: float, before: float, span: float = 10.0, width: float = 1.0
) -> float | None:
    """The lowest per-`width` rate in the `span` s after t_kill (bins stop at the last result),
    as a fraction of `before`: how deep the kill cut the throughput. None without a rate."""
    if not times or before <= 0:
        return None
    full = int((min(t_kill + span, times[-1]) - t_kill) // width)  # whole bins only
    bins = bin_rates(times, t_kill, t_kill + full * width, width)
    return min(bins) / before if bins else None


def deficit_s(
    times: Sequence[float], t_kill: float, before: float, span: float = 5.0
) -> float | None:
    """What the kill cost, in seconds of pre-kill throughput: (before x T - results in
    [t_kill, t_kill + T)) / before, T = `span` cut at the last result. Unlike recovery_s it
    needs no threshold, so one noisy window moves it little. 0: nothing lost (negative:
    faster than before); None without a rate."""
    if not times or before <= 0:
        return None
    end = min(t_kill + span, times[-1])
    if end <= t_kill:
        return None
    return ((end - t_kill) * before - count_in(times, t_kill, end)) / before


def longest_gap(times: Sequence[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] without a result (times sorted): a stall."""
    inside = [start, *(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(inside))


def lost_and_duplicated(expected: Iterable[str], received: Iterable[str]) -> dict[str, Any]:
    """Compare the query ids a job was given with the ids of the results that came out:
    lost = expected ids with no result, duplicated = results beyond the first for one id,
    unexpected = results for ids never given. Exactly once: lost == duplicated == unexpected
    == 0."""
    want = Counter(expected)
    got = Counter(received)
    lost = sorted(q for q in want if q not in got)
    twice = sorted(q for q, n in got.items() if n > 1 and q in want)
    unexpected = sorted(q for q in got if q not in want)
    return {
        "expected": sum(want.values()),
        "results": sum(got.values()),
        "lost": len(lost),
        "duplicated": sum(got[q] - 1 for q in twice),
        "unexpected": sum(got[q] for q in unexpected),
        "lost_first": lost[:10],
        "duplicated_first": twice[:10],
        "exactly_once": not lost and not twice and not unexpected,
    }
