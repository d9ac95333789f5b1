"""The demo's measurements, computed from this run's data alone (pure: no I/O, no clock).

Inputs are the nodes' JSON log records (`idunno.node.logs`), the jobs' results (C4 rows with
`accepted_at` and `epoch`), job objects and C5 share samples; times are unix seconds.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BALANCE = 0.8  # "rates within 20% of each other": min >= BALANCE x max
WINDOW_S = 1.0  # the rate windows of "back to normal"
SCAN_STEP_S = 0.05
SHARE_WINDOW_S = 10.0  # C5 shares cover the workers' busy time of the last 10 s
REQUEUE_EVENTS = ("batch_requeued", "worker_failed")

Record = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Period:
    start: float
    end: float

    def holds(self, t: float) -> bool:
        return self.start <= t <= self.end


@dataclass(frozen=True, slots=True)
class ShareSample:
    """One `GET /v1/assignment` answer: each job's share (by job name) at unix time t."""

    t: float
    shares: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Kill:
    """A SIGKILL the demo sent: the victim's role then, and the reign it knew before."""

    role: str  # "worker" or "coordinator"
    victim: str
    pid: int
    at: float
    epoch: int
    coordinator: str


# --- rates ----------------------------------------------------------------------------------------


def accepted_times(rows: Iterable[Record]) -> list[float]:
    """The sorted `accepted_at` of a job's results."""
    return sorted(float(r["accepted_at"]) for r in rows if r.get("accepted_at") is not None)


def count_in(times: Sequence[float], a: float, b: float) -> int:
    """Results accepted in [a, b) (times sorted)."""
    return bisect.bisect_left(times, b) - bisect.bisect_left(times, a)


def balanced(counts: Sequence[int], ratio: float = BALANCE) -> bool:
    return bool(counts) and min(counts) > 0 and min(counts) >= ratio * max(counts)


def back_to_normal(
    times: Mapping[str, Sequence[float]],
    start: float,
    end: float,
    window: float = WINDOW_S,
    step: float = SCAN_STEP_S,
) -> float | None:
    """The earliest t >= start (in `step`s) where every job had results accepted in
    [t, t + window) and their counts are within 20% of each other; None if there is none
    with t + window <= end."""
    steps = math.floor((end - window - start) / step + 1e-9) + 1
    for k in range(max(0, steps)):
        t = start + k * step
        if balanced([count_in(ts, t, t + window) for ts in times.values()]):
            return t
    return None


# --- 1a shares ------------------------------------------------------------------------------------


def both_running(jobs: Sequence[Record]) -> Period | None:
    """When every job had answered and none had finished yet (None: they never overlapped)."""
    firsts = [j.get("first_result_at") for j in jobs]
    if not jobs or any(f is None for f in firsts):
        return None
    start = max(float(f) for f in firsts if f is not None)
    ends = [float(j["finished_at"]) for j in jobs if j.get("finished_at") is not None]
    end = min(ends) if ends else math.inf
    return Period(start, end) if end > start else None


def share_samples(
    samples: Sequence[ShareSample], during: Period, exclude: Sequence[Period]
) -> tuple[list[ShareSample], bool]:
    """The samples to average and whether the failure periods could be left out.

    A C5 share covers the last 10 s, so a sample counts once both jobs had run for 10 s;
    samples inside a failure period are left out. If that leaves none, the samples of the
    whole overlap are used (the second value says so)."""
    steady = [s for s in samples if during.start + SHARE_WINDOW_S <= s.t <= during.end]
    clean = [s for s in steady if not any(p.holds(s.t) for p in exclude)]
    if clean:
        return clean, True
    overlap = [s for s in samples if during.holds(s.t)]
    return (steady or overlap), False


def mean_share(samples: Sequence[ShareSample], job: str) -> float | None:
    values = [float(s.shares[job]) for s in samples if job in s.shares]
    return statistics.fmean(values) if values else None


def predicted_share(cost: float | None, other: float | None) -> float | None:
    """Equal query rates give a job cost / (cost + other) of the workers' time."""
    if cost is None or other is None or cost + other <= 0:
        return None
    return cost / (cost + other)


def median_cost_ms(train: Mapping[str, Any], model: str) -> float | None:
    """Median over workers of the cost per query `POST /v1/train` measured for `model`."""
    for m in train.get("models", []):
        if m.get("model") == model:
            costs = [
                float(w["cost_per_query_ms"])
                for w in m.get("workers", {}).values()
                if w.get("cost_per_query_ms") is not None
            ]
            return statistics.median(costs) if costs else None
    return None


# --- 1b -------------------------------------------------------------------------------------------


def first_result_ms(job: Record) -> float | None:
    first, submitted = job.get("first_result_at"), job.get("submitted_at")
    if first is None or submitted is None:
        return None
    return (float(first) - float(submitted)) * 1000


# --- 2: a worker SIGKILLed ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerFigures:
    first_requeue_s: float | None  # the kill -> the coordinator's first requeue of its batches
    requeued_s: float | None  # ... -> the last one (every batch it held back in the queue)
    batches: int  # batches of the victim requeued
    confirmed_s: float | None  # the kill -> the first member marking it failed
    all_confirmed_s: float | None  # ... -> the last of `confirmers` doing so
    confirmers: int
    normal_s: float | None  # the kill -> rates back within 20% of each other


def failed_marks(events: Iterable[Record], member: str, since: float) -> dict[str, float]:
    """node -> when it first marked `member` failed (at or after `since`)."""
    out: dict[str, float] = {}
    for e in events:
        if e.get("event") != "member_changed" or e.get("member") != member:
            continue
        ts = float(e["ts"])
        if e.get("new") == "failed" and ts >= since and e.get("node") not in out:
            out[str(e.get("node"))] = ts
    return out


def marked_failed(events: Iterable[Record]) -> list[str]:
    """Members some node marked failed, in the order it first happened."""
    out: list[str] = []
    for e in events:
        member = e.get("member")
        if e.get("event") == "member_changed" and e.get("new") == "failed" and member not in out:
            out.append(str(member))
    return out


def requeues(events: Iterable[Record], worker: str, since: float) -> list[Record]:
    """The coordinators' records of putting `worker`'s batches back in the queue."""
    return [
        e
        for e in events
        if e.get("event") in REQUEUE_EVENTS
        and e.get("worker") == worker
        and float(e["ts"]) >= since
    ]


def requeued_batches(marks: Iterable[Record]) -> set[int]:
    out: set[int] = set()
    for e in marks:
        if e.get("batch") is not None:
            out.add(int(e["batch"]))
        out.update(int(b) for b in e.get("requeued") or [])
    return out


def worker_figures(
    kill: Kill, events: Sequence[Record], times: Mapping[str, Sequence[float]], end: float
) -> WorkerFigures:
    """Figures of a worker's SIGKILL; `end` bounds the recovery scan (the next fault or the
    first job finishing)."""
    marks = requeues(events, kill.victim, kill.at)
    first = min((float(e["ts"]) for e in marks), default=None)
    confirmed = failed_marks(events, kill.victim, kill.at)
    # Recovery is judged once the coordinator reacted (from the kill if the worker held no
    # batch, so there was nothing to requeue).
    normal = back_to_normal(times, first if first is not None else kill.at, end)
    return WorkerFigures(
        first_requeue_s=_since(first, kill.at),
        requeued_s=_since(max((float(e["ts"]) for e in marks), default=None), kill.at),
        batches=len(requeued_batches(marks)),
        confirmed_s=_since(min(confirmed.values(), default=None), kill.at),
        all_confirmed_s=_since(max(confirmed.values(), default=None), kill.at),
        confirmers=len(confirmed),
        normal_s=_since(normal, kill.at),
    )


# --- 3: the coordinator SIGKILLed -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoordinatorFigures:
    elected_s: float | None  # the kill -> `coordinator_elected` of a newer reign
    coordinator: str | None  # the new coordinator
    epoch: int | None
    takeover: str | None  # hot or cold
    took_ms: float | None  # the takeover itself, as the new coordinator timed it
    first_result_s: float | None  # the kill -> first result accepted by the new epoch
    normal_s: float | None


def election_after(events: Iterable[Record], kill: Kill) -> Record | None:
    """The first `coordinator_elected` of a reign newer than the one the victim led."""
    newer = [
        e
        for e in events
        if e.get("event") == "coordinator_elected"
        and float(e["ts"]) >= kill.at
        and (int(e.get("epoch", 0)), str(e.get("node"))) != (kill.epoch, kill.coordinator)
        and int(e.get("epoch", 0)) >= kill.epoch
    ]
    return min(newer, key=lambda e: float(e["ts"])) if newer else None


def first_result_of_epoch(
    rows: Mapping[str, Sequence[Record]], epoch: int, since: float
) -> float | None:
    times = [
        float(r["accepted_at"])
        for rs in rows.values()
        for r in rs
        if r.get("epoch") == epoch and float(r["accepted_at"]) >= since
    ]
    return min(times, default=None)


def coordinator_figures(
    kill: Kill, events: Sequence[Record], rows: Mapping[str, Sequence[Record]], end: float
) -> CoordinatorFigures:
    elected = election_after(events, kill)
    if elected is None:
        return CoordinatorFigures(None, None, None, None, None, None, None)
    epoch = int(elected["epoch"])
    first = first_result_of_epoch(rows, epoch, kill.at)
    times = {job: accepted_times(rs) for job, rs in rows.items()}
    normal = back_to_normal(times, first, end) if first is not None else None
    took = elected.get("took_ms")
    return CoordinatorFigures(
        elected_s=_since(float(elected["ts"]), kill.at),
        coordinator=str(elected.get("node")),
        epoch=epoch,
        takeover=str(elected.get("takeover")) if elected.get("takeover") else None,
        took_ms=float(took) if took is not None else None,
        first_result_s=_since(first, kill.at),
        normal_s=_since(normal, kill.at),
    )


def failure_period(kill: Kill, normal_s: float | None, fallback_s: float = 5.0) -> Period:
    """From the kill until the rates were back to normal (or `fallback_s` if never seen)."""
    return Period(kill.at, kill.at + (normal_s if normal_s is not None else fallback_s))


# --- digits ---------------------------------------------------------------------------------------


def top1_accuracy(rows: Iterable[Record], labels: Sequence[int]) -> tuple[int, int]:
    """(correct, answered): a result is correct when its top class is the true digit of its
    query id (the row number); an error or an unknown query id counts as wrong."""
    correct = answered = 0
    for r in rows:
        answered += 1
        classes = r.get("class_ids") or []
        query = str(r.get("query", ""))
        if r.get("error") is None and classes and query.isdigit() and int(query) < len(labels):
            correct += int(int(classes[0]) == int(labels[int(query)]))
    return correct, answered


def _since(t: float | None, t0: float) -> float | None:
    return None if t is None else t - t0
