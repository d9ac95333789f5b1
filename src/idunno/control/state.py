"""The coordinator's control state as a pure, replayable state machine.

Everything the coordinator decides is applied here as an *op* (a plain dict), and the same ops are
sent to the hot standby, whose `ControlState` therefore stays identical (the scheduler's
decisions travel as facts: a "dispatch" op records the batch the coordinator chose, it is not
re-decided). No I/O and no clock: every op carries its own time.

Ops:
    {"op": "submit", "spec": JobSpec.to_json(), "t": now}
    {"op": "dispatch", "batch": id, "job": id, "worker": name, "queries": [index...], "t": now}
    {"op": "complete", "batch": id, "job": id, "results": [result...], "t": now}
    {"op": "requeue", "batch": id}
    {"op": "batch_size", "job": id, "n": n}
    {"op": "cancel", "job": id, "t": now}
    {"op": "flushed", "job": id, "queries": [index...]}
    {"op": "drop", "job": id}           a submission that failed before it was acknowledged

A result is a dict: {q, id, class_ids, scores, output, error, worker, processing_ms, epoch,
batch, t}; exactly one per query is kept (the first accepted), see `Scheduler.complete`.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from idunno.control.scheduler import Batch, JobStatus, Scheduler, SchedulerError

RATE_WINDOW_S = 10.0


@dataclass(frozen=True)
class JobSpec:
    """What a job is, fixed at submission (batch size and status change later, as ops)."""

    id: str
    name: str
    model: str
    model_version: int
    preprocess: str
    dataset: str
    item_ids: tuple[str, ...]
    shards: tuple[dict[str, Any], ...]  # {name, version, sha256, count, first}
    batch_size: int
    weight: float
    submitted_at: float
    labels: tuple[str, ...] | None = None

    @property
    def total(self) -> int:
        return len(self.item_ids)

    def model_ref(self) -> dict[str, Any]:
        return {"name": self.model, "version": self.model_version, "preprocess": self.preprocess}

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["item_ids"] = list(self.item_ids)
        out["shards"] = [dict(s) for s in self.shards]
        out["labels"] = list(self.labels) if self.labels is not None else None
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> JobSpec:
        labels = obj.get("labels")
        return cls(
            id=str(obj["id"]),
            name=str(obj["name"]),
            model=str(obj["model"]),
            model_version=int(obj["model_version"]),
            preprocess=str(obj["preprocess"]),
            dataset=str(obj["dataset"]),
            item_ids=tuple(str(i) for i in obj["item_ids"]),
            shards=tuple(dict(s) for s in obj["shards"]),
            batch_size=int(obj["batch_size"]),
            weight=float(obj["weight"]),
            submitted_at=float(obj["submitted_at"]),
            labels=tuple(str(x) for x in labels) if labels is not None else None,
        )


@dataclass
class JobBook:
    """Per-job results and the measurements C1, C2 and C5 report."""

    spec: JobSpec
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    unflushed: list[int] = field(default_factory=list)
    errors: int = 0
    # (time accepted, queries) for the rate over the last window; (time, job busy seconds) for
    # the share of worker time.
    accepted: deque[tuple[float, int]] = field(default_factory=deque)
    busy: deque[tuple[float, float]] = field(default_factory=deque)
    first_result_at: float | None = None


class ControlState:
    def __init__(self, prefetch: int = 2) -> None:
        self.scheduler = Scheduler(prefetch)
        self.books: dict[str, JobBook] = {}
        self.applied = 0  # ops applied: the standby's position in the coordinator's log

    # --- applying ops -----------------------------------------------------------------------

    def apply(self, op: Mapping[str, Any]) -> list[int]:
        """Apply one op; returns the query indices accepted by a "complete" op (else [])."""
        kind = op["op"]
        accepted: list[int] = []
        if kind == "submit":
            self._submit(JobSpec.from_json(op["spec"]), float(op["t"]))
        elif kind == "dispatch":
            self.scheduler.record(
                Batch(
                    int(op["batch"]),
                    str(op["job"]),
                    self.books[op["job"]].spec.model,
                    str(op["worker"]),
                    tuple(int(q) for q in op["queries"]),
                    float(op["t"]),
                )
            )
        elif kind == "complete":
            accepted = self._complete(op)
        elif kind == "requeue":
            self.scheduler.requeue(int(op["batch"]))
        elif kind == "batch_size":
            self.scheduler.set_batch_size(str(op["job"]), int(op["n"]))
        elif kind == "cancel":
            self.scheduler.cancel(str(op["job"]), float(op["t"]))
        elif kind == "drop":  # a submission whose spec never became durable (not acknowledged)
            self.scheduler.drop(str(op["job"]))
            self.books.pop(str(op["job"]), None)
        elif kind == "flushed":
            done = set(int(q) for q in op["queries"])
            book = self.books[op["job"]]
            book.unflushed = [q for q in book.unflushed if q not in done]
        else:
            raise ValueError(f"unknown control op {kind!r}")
        self.applied += 1
        return accepted

    def dispatched(self, batches: Iterable[Batch], now: float) -> list[dict[str, Any]]:
        """Ops for batches the scheduler handed out here (`fill`, `first_batch` already applied
        them): they count as applied and go to the standby, which records them."""
        ops = [
            {
                "op": "dispatch",
                "batch": b.id,
                "job": b.job,
                "worker": b.worker,
                "queries": list(b.queries),
                "t": now,
            }
            for b in batches
        ]
        self.applied += len(ops)
        return ops

    def _submit(self, spec: JobSpec, now: float) -> None:
        if any(b.spec.name == spec.name for b in self.books.values()):
            raise SchedulerError(f"a job named {spec.name!r} exists: choose another --name")
        self.scheduler.submit(
            spec.id, spec.model, range(spec.total), spec.batch_size, now, spec.weight
        )
        self.books[spec.id] = JobBook(spec)

    def _complete(self, op: Mapping[str, Any]) -> list[int]:
        job_id = str(op["job"])
        now = float(op["t"])
        results = {int(r["q"]): r for r in op["results"]}
        if int(op["batch"]) in self.scheduler.batches:
            accepted = self.scheduler.complete(int(op["batch"]), results, now)
        else:  # requeued meanwhile (worker presumed dead): keep answers nobody gave yet
            accepted = self.scheduler.accept_late(job_id, results, now)
        book = self.books.get(job_id)
        if book is None or not accepted:
            return accepted
        for q in accepted:
            book.results[q] = results[q]
            book.errors += results[q].get("error") is not None
        book.unflushed.extend(accepted)
        book.accepted.append((now, len(accepted)))
        busy = sum(float(r.get("processing_ms", 0.0)) for r in results.values()) / 1000
        book.busy.append((now, busy))
        if book.first_result_at is None:
            book.first_result_at = now
        return accepted

    def restore(self, spec: JobSpec, results: Iterable[dict[str, Any]], status: str) -> None:
        """Rebuild a job from durable state: its spec and the results already flushed."""
        self._submit(spec, spec.submitted_at)
        book = self.books[spec.id]
        done = []
        for r in results:
            q = int(r["q"])
            if 0 <= q < spec.total and q not in book.results:
                book.results[q] = r
                book.errors += r.get("error") is not None
                done.append(q)
        self.scheduler.restore_done(spec.id, done)
        if status == JobStatus.CANCELLED and self.scheduler.jobs[spec.id].status != JobStatus.DONE:
            self.scheduler.cancel(spec.id, spec.submitted_at)

    # --- reading ----------------------------------------------------------------------------

    def resolve(self, key: str) -> str:
        """A job's id from its id or its name; SchedulerError if there is none."""
        if key in self.books:
            return key
        for job_id, book in self.books.items():
            if book.spec.name == key:
                return job_id
        raise SchedulerError(f"no job {key!r}: `idunno job list` shows the jobs")

    def job_view(self, job_id: str, now: float) -> dict[str, Any]:
        book = self.books[job_id]
        job = self.scheduler.jobs[job_id]
        spec = book.spec
        return {
            "id": spec.id,
            "name": spec.name,
            "model": spec.model,
            "dataset": spec.dataset,
            "batch_size": job.batch_size,
            "weight": spec.weight,
            # "done" once every result is also durable in the store: a coordinator failing
            # right after must not show a finished job running again.
            "status": (
                JobStatus.RUNNING.value
                if job.status == JobStatus.DONE and book.unflushed
                else job.status.value
            ),
            "total": spec.total,
            "done": len(book.results),
            "errors": book.errors,
            "submitted_at": spec.submitted_at,
            "first_result_at": book.first_result_at,
            "finished_at": job.finished_at,
            "rate": self.rate(job_id, now),
            "workers": sorted({b.worker for b in self.scheduler.held_by_job(job_id)}),
        }

    def rate(self, job_id: str, now: float) -> float:
        """Queries accepted per second over the last RATE_WINDOW_S seconds."""
        book = self.books[job_id]
        _trim(book.accepted, now)
        start = max(now - RATE_WINDOW_S, self.scheduler.jobs[job_id].submitted_at)
        span = max(now - start, 1e-9)
        return sum(n for _, n in book.accepted) / span if book.accepted else 0.0

    def stats(self, job_id: str) -> dict[str, Any]:
        """C2: per-query processing time over every result so far (ms)."""
        book = self.books[job_id]
        times = sorted(
            float(r["processing_ms"]) for r in book.results.values() if r.get("error") is None
        )
        out: dict[str, Any] = {"id": job_id, "name": book.spec.name, "count": len(times)}
        if not times:
            return out | dict.fromkeys(
                ("mean_ms", "sd_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms")
            )
        return out | {
            "mean_ms": statistics.fmean(times),
            "sd_ms": statistics.pstdev(times),
            "median_ms": statistics.median(times),
            "p90_ms": percentile(times, 90),
            "p95_ms": percentile(times, 95),
            "p99_ms": percentile(times, 99),
        }

    def shares(self, now: float) -> dict[str, float]:
        """Each job's fraction of the workers' busy time over the last window (C5)."""
        busy: dict[str, float] = {}
        for job_id, book in self.books.items():
            _trim(book.busy, now)
            busy[job_id] = sum(s for _, s in book.busy)
        total = sum(busy.values())
        return {j: (b / total if total else 0.0) for j, b in busy.items()}

    def results(
        self, job_id: str, offset: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        book = self.books[job_id]
        indices = sorted(book.results)[offset:]
        if limit is not None:
            indices = indices[:limit]
        return [book.results[q] for q in indices]

    def snapshot(self) -> dict[str, Any]:
        """Everything, for a standby that joins mid-reign (and for equality in tests)."""
        return {
            "applied": self.applied,
            "scheduler": self.scheduler.dump(),
            "books": {
                j: {
                    "spec": b.spec.to_json(),
                    "results": [b.results[q] for q in sorted(b.results)],
                    "unflushed": list(b.unflushed),
                    "errors": b.errors,
                    "accepted": [list(x) for x in b.accepted],
                    "busy": [list(x) for x in b.busy],
                    "first_result_at": b.first_result_at,
                }
                for j, b in self.books.items()
            },
        }

    @classmethod
    def from_snapshot(cls, snap: Mapping[str, Any], prefetch: int = 2) -> ControlState:
        state = cls(prefetch)
        state.applied = int(snap["applied"])
        state.scheduler = Scheduler.load(snap["scheduler"], prefetch)
        for job_id, b in snap["books"].items():
            book = JobBook(JobSpec.from_json(b["spec"]))
            book.results = {int(r["q"]): r for r in b["results"]}
            book.unflushed = [int(q) for q in b["unflushed"]]
            book.errors = int(b["errors"])
            book.accepted = deque((float(t), int(n)) for t, n in b["accepted"])
            book.busy = deque((float(t), float(s)) for t, s in b["busy"])
            book.first_result_at = b["first_result_at"]
            state.books[job_id] = book
        return state


def _trim(window: deque[Any], now: float) -> None:
    while window and window[0][0] < now - RATE_WINDOW_S:
        window.popleft()


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]
