"""The demo's closing report: the course's measurements (1a, 1b, 2, 3) from this run, the
digits accuracy, the demo's duration and where the dashboard is (pure: text from data)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from idunno.demo import figures as fig
from idunno.demo.figures import CoordinatorFigures, Kill, WorkerFigures

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Outcome:
    """Everything the report is computed from."""

    t0: float
    names: tuple[str, str]  # the first job (running alone first), the second
    jobs: Mapping[str, Record]
    rows: Mapping[str, Sequence[Record]]
    stats: Mapping[str, Record]
    samples: Sequence[fig.ShareSample]
    kills: Sequence[Kill]
    events: Sequence[Record]
    digits: tuple[int, int] | None  # (correct, answered)
    digits_model: str
    durations: Mapping[str, float]  # phase -> seconds, in order; "total" is the whole demo
    dashboard: str | None


@dataclass(frozen=True)
class Figures:
    worker: WorkerFigures | None
    coordinator: CoordinatorFigures | None
    failures: tuple[fig.Period, ...]


def compute(o: Outcome) -> Figures:
    """Failover figures, and the failure periods 1a leaves out."""
    times = {n: fig.accepted_times(o.rows.get(n, [])) for n in o.names}
    finished = [float(j["finished_at"]) for j in o.jobs.values() if j.get("finished_at")]
    end = min(finished, default=math.inf)
    worker = coordinator = None
    periods = []
    by_role = {k.role: k for k in o.kills}
    if "worker" in by_role:
        k = by_role["worker"]
        nxt = by_role["coordinator"].at if "coordinator" in by_role else end
        worker = fig.worker_figures(k, o.events, times, min(end, nxt))
        periods.append(fig.failure_period(k, worker.normal_s))
    if "coordinator" in by_role:
        k = by_role["coordinator"]
        coordinator = fig.coordinator_figures(k, o.events, o.rows, end)
        periods.append(fig.failure_period(k, coordinator.normal_s))
    return Figures(worker, coordinator, tuple(periods))


def lines(o: Outcome) -> list[str]:
    f = compute(o)
    return [
        "report (every figure measured in this run)",
        share_line(o, f.failures),
        first_result_line(o),
        worker_line(o, f.worker),
        coordinator_line(o, f.coordinator),
        digits_line(o),
        time_line(o.durations),
        "  dashboard: " + (o.dashboard or "not built yet (issue 5)"),
    ]


def share_line(o: Outcome, failures: Sequence[fig.Period]) -> str:
    first, second = o.names
    during = fig.both_running([o.jobs[n] for n in o.names if n in o.jobs])
    if during is None or len(o.jobs) < 2:
        return "  1a  shares: the two jobs never ran together"
    chosen, clean = fig.share_samples(o.samples, during, failures)
    share = fig.mean_share(chosen, first)
    costs = [o.stats.get(n, {}).get("mean_ms") for n in o.names]
    predicted = fig.predicted_share(costs[0], costs[1])
    which = "failure periods left out" if clean else "failures included: no clean sample"
    rest = None if predicted is None else 1 - predicted
    return (
        f"  1a  share of the workers while both jobs ran: {first} {_share(share)}, {second} "
        f"{_share(None if share is None else 1 - share)} (mean of {len(chosen)} C5 samples, "
        f"{which}); the measured costs (C2 mean {_ms(costs[0])} and {_ms(costs[1])} per "
        f"query) predict {_share(predicted)} / {_share(rest)}"
    )


def first_result_line(o: Outcome) -> str:
    first, second = o.names
    ms = fig.first_result_ms(o.jobs.get(second, {}))
    took = f"{ms:.0f} ms" if ms is not None else "never"
    rows = [r for r in o.rows.get(second, []) if r.get("accepted_at") is not None]
    origin = ""
    if rows:
        r = min(rows, key=lambda r: float(r["accepted_at"]))
        origin = (
            f"; it came from {r.get('worker')} at {float(r.get('processing_ms') or 0):.0f} ms/query"
        )
    return f"  1b  {second}'s first result: {took} after it was submitted ({first} running{origin})"


def worker_line(o: Outcome, w: WorkerFigures | None) -> str:
    k = next((k for k in o.kills if k.role == "worker"), None)
    if k is None or w is None:
        return "  2   worker SIGKILL: not done (a job finished first)"
    held = "it held no batch"
    if w.batches:
        held = f"its {w.batches} batches requeued after {_span(w.first_requeue_s, w.requeued_s)}"
    return (
        f"  2   worker {k.victim} SIGKILLed at +{k.at - o.t0:.1f}s: {held}; membership "
        f"confirmed the failure after {_s(w.confirmed_s)} ({_members(w.confirmers)} marked it "
        f"failed within {_s(w.all_confirmed_s)}); rates back within 20% after {_s(w.normal_s)}"
    )


def coordinator_line(o: Outcome, c: CoordinatorFigures | None) -> str:
    k = next((k for k in o.kills if k.role == "coordinator"), None)
    if k is None or c is None:
        return "  3   coordinator SIGKILL: not done (a job finished first)"
    if c.elected_s is None:
        return f"  3   coordinator {k.victim} SIGKILLed: no new coordinator elected in the run"
    took = f" in {c.took_ms:.0f} ms" if c.took_ms is not None else ""
    return (
        f"  3   coordinator {k.victim} SIGKILLed at +{k.at - o.t0:.1f}s: {c.coordinator} "
        f"elected after {_s(c.elected_s)} (epoch {c.epoch}, {c.takeover} takeover{took}); "
        f"first result accepted by epoch {c.epoch} after {_s(c.first_result_s)}; rates back "
        f"within 20% after {_s(c.normal_s)}"
    )


def digits_line(o: Outcome) -> str:
    if o.digits is None or o.digits[1] == 0:
        return f"  digits accuracy: not measured ({o.digits_model} job did not finish)"
    correct, answered = o.digits
    return (
        f"  digits accuracy: {correct / answered:.4f} top-1 ({correct}/{answered} correct, "
        f"{o.digits_model} on scikit-learn's digits)"
    )


def time_line(durations: Mapping[str, float]) -> str:
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in durations.items() if k != "total")
    return f"  demo time: {durations.get('total', 0.0):.0f} s ({parts})"


def _members(n: int) -> str:
    return f"{n} member{'s' * (n != 1)}"


def _span(first: float | None, last: float | None) -> str:
    if first is None or last is None or last - first < 0.05:
        return _s(first)
    return f"{_s(first)} (the last after {_s(last)})"


def _s(v: float | None) -> str:
    if v is None:
        return "(not seen)"
    return f"{v * 1000:.0f} ms" if abs(v) < 1 else f"{v:.2f} s"


def _ms(v: Any) -> str:
    return f"{float(v):.1f} ms" if v is not None else "?"


def _share(v: float | None) -> str:
    return f"{v:.3f}" if v is not None else "?"
