"""Fair-time batch scheduling as a pure state machine (no I/O, no clock: `now` is passed in).

Weighted fair queueing over query counts: a free worker gets a batch of the runnable job with the
smallest virtual time, and dispatching n queries of a job with weight w adds n / w to it. Jobs
therefore advance at query rates proportional to their weights whatever their per-query cost;
work-conserving by construction, and reacting at once to arrivals, departures, failures and
batch-size changes, since every decision is taken when a worker asks. See docs/control-plane.md.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


class SchedulerError(ValueError):
    """A request the scheduler cannot honour; the message names the cause."""


MAX_BATCH = 4096


@dataclass(frozen=True, slots=True)
class Batch:
    id: int
    job: str
    model: str
    worker: str
    queries: tuple[int, ...]
    dispatched_at: float


@dataclass
class Job:
    id: str
    model: str
    weight: float
    batch_size: int
    total: int
    submitted_at: float
    pending: deque[int] = field(default_factory=deque)  # undispatched; requeued ones first
    done: set[int] = field(default_factory=set)
    ids: frozenset[int] = frozenset()
    vtime: float = 0.0
    status: JobStatus = JobStatus.RUNNING
    finished_at: float | None = None

    @property
    def remaining(self) -> int:
        return self.total - len(self.done)


def check_batch_size(n: int) -> int:
    if not 1 <= n <= MAX_BATCH:
        raise SchedulerError(f"batch size must be between 1 and {MAX_BATCH}, got {n}")
    return n


class Scheduler:
    def __init__(self, prefetch: int = 2) -> None:
        # Batches a worker may hold at once: one running, the rest queued so it never idles.
        self.prefetch = prefetch
        self.jobs: dict[str, Job] = {}
        self.batches: dict[int, Batch] = {}
        self._next_batch = 1

    # --- jobs -----------------------------------------------------------------------------

    def submit(
        self,
        job_id: str,
        model: str,
        queries: Sequence[int],
        batch_size: int,
        now: float,
        weight: float = 1.0,
    ) -> Job:
        if job_id in self.jobs:
            raise SchedulerError(f"a job named {job_id!r} already exists: choose another name")
        if not weight > 0:
            raise SchedulerError(f"weight must be positive, got {weight}")
        if not queries:
            raise SchedulerError("the dataset has no items: add some before submitting a job")
        check_batch_size(batch_size)
        ids = frozenset(queries)
        if len(ids) != len(queries):
            raise SchedulerError("query ids must be unique within a job")
        job = Job(job_id, model, weight, batch_size, len(ids), now, deque(queries), ids=ids)
        # Start level with the running jobs: no catch-up burst, no starvation.
        job.vtime = self._floor_vtime()
        self.jobs[job_id] = job
        return job

    def _floor_vtime(self) -> float:
        running = [j.vtime for j in self.jobs.values() if self._runnable(j)]
        return min(running, default=0.0)

    def cancel(self, job_id: str, now: float) -> list[Batch]:
        """Stop a job; returns its in-flight batches (their results will be ignored)."""
        job = self._job(job_id)
        if job.status == JobStatus.RUNNING:
            job.status = JobStatus.CANCELLED
            job.finished_at = now
            job.pending.clear()
        dropped = [b for b in self.batches.values() if b.job == job_id]
        for b in dropped:
            del self.batches[b.id]
        return dropped

    def drop(self, job_id: str) -> None:
        """Forget a job entirely (its submission failed); its batches' results are ignored."""
        self.jobs.pop(job_id, None)
        for b in [b for b in self.batches.values() if b.job == job_id]:
            del self.batches[b.id]

    def set_batch_size(self, job_id: str, n: int) -> None:
        """Takes effect from the next batch dispatched."""
        self._job(job_id).batch_size = check_batch_size(n)

    def _job(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise SchedulerError(f"no job {job_id!r}: see `idunno job list`") from None

    @staticmethod
    def _runnable(job: Job) -> bool:
        return job.status == JobStatus.RUNNING and bool(job.pending)

    # --- dispatch -------------------------------------------------------------------------

    def held_by(self, worker: str) -> list[Batch]:
        return [b for b in self.batches.values() if b.worker == worker]

    def next_batch(
        self,
        worker: str,
        now: float,
        can_run: Callable[[str], bool] | None = None,
        room: int | None = None,
    ) -> Batch | None:
        """The next batch for `worker` (None if it is full or there is no work it can run).

        `can_run(model)` says whether the worker has that model ready (trained); `room`, if
        given, caps the batches it may hold below `prefetch` for now (see `fill`).
        """
        cap = self.prefetch if room is None else min(self.prefetch, room)
        if len(self.held_by(worker)) >= cap:
            return None
        candidates = [
            j
            for j in self.jobs.values()
            if self._runnable(j) and (can_run is None or can_run(j.model))
        ]
        in_flight: dict[str, int] = {}
        for b in self.batches.values():
            in_flight[b.job] = in_flight.get(b.job, 0) + 1
        while candidates:
            # Ties go to the job with the fewest batches out: a job that just arrived (level
            # with the others) gets its first batch out at once.
            job = min(
                candidates, key=lambda j: (j.vtime, in_flight.get(j.id, 0), j.submitted_at, j.id)
            )
            queries = self._take(job)
            if not queries:
                candidates.remove(job)
                continue
            job.vtime += len(queries) / job.weight
            batch = Batch(self._next_batch, job.id, job.model, worker, tuple(queries), now)
            self._next_batch += 1
            self.batches[batch.id] = batch
            return batch
        return None

    def first_batch(self, job_id: str, worker: str, now: float, size: int) -> Batch | None:
        """A small batch of a job that has none out yet, for `worker` even if it is full: the
        worker runs it next (urgent), so a new job's first result does not wait for the
        batches queued before it arrived."""
        job = self._job(job_id)
        if not self._runnable(job) or self.held_by_job(job_id):
            return None
        queries = self._take(job, size)
        if not queries:
            return None
        job.vtime += len(queries) / job.weight
        batch = Batch(self._next_batch, job.id, job.model, worker, tuple(queries), now)
        self._next_batch += 1
        self.batches[batch.id] = batch
        return batch

    @staticmethod
    def _take(job: Job, limit: int | None = None) -> list[int]:
        out: list[int] = []
        size = job.batch_size if limit is None else min(limit, job.batch_size)
        while job.pending and len(out) < size:
            q = job.pending.popleft()
            if q not in job.done:  # a late result may have answered a requeued query
                out.append(q)
        return out

    def fill(
        self,
        workers: Iterable[str],
        now: float,
        can_run: Callable[[str, str], bool] | None = None,
        room: Callable[[str], int] | None = None,
    ) -> list[Batch]:
        """Dispatch until every worker holds `prefetch` batches (or `room(worker)`, asked once
        per call, if less) or no work is left.

        `room` is how late binding is done: a worker whose running batch is far from its end
        gets its next batch only when that end is near, so the job it runs next is chosen
        from the progress of all jobs at that moment rather than a whole batch earlier (the
        completions, and so the query rates, then follow the fair shares much more closely).
        Rounds go worker by worker so that batches spread across workers first.
        """
        out: list[Batch] = []
        active = list(workers)
        caps = {w: room(w) for w in active} if room is not None else {}
        while active:
            still = []
            for w in active:
                fits = None if can_run is None else (lambda m, w=w: can_run(w, m))
                b = self.next_batch(w, now, fits, caps.get(w))
                if b is not None:
                    out.append(b)
                    still.append(w)
            active = still
        return out

    # --- results and failures -------------------------------------------------------------

    def complete(self, batch_id: int, answered: Iterable[int], now: float) -> list[int]:
        """Record results for a batch; returns the query ids accepted (first result wins).

        Results of a batch that was already requeued (its worker was presumed dead) are still
        accepted for queries nobody answered yet: the work is not wasted, and the requeued
        copies are skipped or discarded when they come back.
        """
        batch = self.batches.pop(batch_id, None)
        if batch is None:
            return []
        job = self.jobs.get(batch.job)
        if job is None or job.status == JobStatus.CANCELLED:
            return []
        allowed = set(batch.queries)
        accepted = [q for q in answered if q in allowed and q not in job.done]
        job.done.update(accepted)
        # Queries of the batch without an answer go back to the queue.
        missing = [q for q in batch.queries if q not in job.done]
        job.pending.extendleft(reversed(missing))
        if job.remaining == 0 and job.status == JobStatus.RUNNING:
            job.status = JobStatus.DONE
            job.finished_at = now
        return accepted

    def accept_late(self, job_id: str, answered: Iterable[int], now: float) -> list[int]:
        """Results for queries of a batch that is no longer tracked (requeued after a worker
        was presumed dead): keep the answers nobody else gave yet."""
        job = self.jobs.get(job_id)
        if job is None or job.status == JobStatus.CANCELLED:
            return []
        accepted = [q for q in answered if q in job.ids and q not in job.done]
        job.done.update(accepted)
        if accepted:  # answered now: not to be dispatched again (same on coordinator and standby)
            answered_now = set(accepted)
            job.pending = deque(q for q in job.pending if q not in answered_now)
        if job.remaining == 0 and job.status == JobStatus.RUNNING:
            job.status = JobStatus.DONE
            job.finished_at = now
        return accepted

    def requeue(self, batch_id: int) -> Batch | None:
        batch = self.batches.pop(batch_id, None)
        if batch is None:
            return None
        job = self.jobs.get(batch.job)
        if job is not None and job.status == JobStatus.RUNNING:
            missing = [q for q in batch.queries if q not in job.done]
            job.pending.extendleft(reversed(missing))
            # The requeued queries were charged when dispatched; refund so the job is not
            # penalised for a worker's failure.
            job.vtime -= len(missing) / job.weight
        return batch

    def number_from(self, first: int) -> None:
        """Number the next batches from `first` on (if that is higher than the next one)."""
        self._next_batch = max(self._next_batch, first)

    def record(self, batch: Batch) -> None:
        """Apply a dispatch decided elsewhere (the standby mirroring its coordinator)."""
        job = self._job(batch.job)
        taken = set(batch.queries)
        job.pending = deque(q for q in job.pending if q not in taken)
        job.vtime += len(batch.queries) / job.weight
        self.batches[batch.id] = batch
        self._next_batch = max(self._next_batch, batch.id + 1)

    def restore_done(self, job_id: str, done: Iterable[int]) -> None:
        """Mark queries answered before a rebuild from durable state."""
        job = self._job(job_id)
        job.done.update(q for q in done if q in job.ids)
        job.pending = deque(q for q in job.pending if q not in job.done)
        if job.remaining == 0 and job.status == JobStatus.RUNNING:
            job.status = JobStatus.DONE
            job.finished_at = job.submitted_at

    def fail_worker(self, worker: str) -> list[Batch]:
        """Put every batch the worker held back at the front of its job's queue."""
        return [b for b in (self.requeue(b.id) for b in self.held_by(worker)) if b is not None]

    # --- views ----------------------------------------------------------------------------

    def held_by_job(self, job_id: str) -> list[Batch]:
        return [b for b in self.batches.values() if b.job == job_id]

    def assignment(self) -> dict[str, list[str]]:
        """worker -> the jobs of the batches it holds right now (course measurement 1a)."""
        out: dict[str, list[str]] = {}
        for b in sorted(self.batches.values(), key=lambda b: b.id):
            jobs = out.setdefault(b.worker, [])
            if b.job not in jobs:
                jobs.append(b.job)
        return out

    def shares(self) -> dict[str, float]:
        """Each running job's share of the in-flight batches."""
        total = len(self.batches)
        counts: dict[str, int] = {}
        for b in self.batches.values():
            counts[b.job] = counts.get(b.job, 0) + 1
        return {j: (counts.get(j, 0) / total if total else 0.0) for j in self.jobs}

    def snapshot(self) -> dict[str, Any]:
        return {
            "jobs": {
                j.id: {
                    "model": j.model,
                    "weight": j.weight,
                    "batch_size": j.batch_size,
                    "total": j.total,
                    "done": len(j.done),
                    "status": j.status.value,
                }
                for j in self.jobs.values()
            },
            "in_flight": len(self.batches),
        }

    def dump(self) -> dict[str, Any]:
        """The whole state as plain data (`load` inverts it): a standby's starting point."""
        return {
            "next_batch": self._next_batch,
            "jobs": [
                {
                    "id": j.id,
                    "model": j.model,
                    "weight": j.weight,
                    "batch_size": j.batch_size,
                    "total": j.total,
                    "submitted_at": j.submitted_at,
                    "pending": list(j.pending),
                    "done": sorted(j.done),
                    "ids": sorted(j.ids),
                    "vtime": j.vtime,
                    "status": j.status.value,
                    "finished_at": j.finished_at,
                }
                for j in self.jobs.values()
            ],
            "batches": [
                [b.id, b.job, b.model, b.worker, list(b.queries), b.dispatched_at]
                for b in self.batches.values()
            ],
        }

    @classmethod
    def load(cls, data: dict[str, Any], prefetch: int = 2) -> Scheduler:
        s = cls(prefetch)
        s._next_batch = int(data["next_batch"])
        for j in data["jobs"]:
            s.jobs[j["id"]] = Job(
                j["id"],
                j["model"],
                float(j["weight"]),
                int(j["batch_size"]),
                int(j["total"]),
                float(j["submitted_at"]),
                deque(int(q) for q in j["pending"]),
                {int(q) for q in j["done"]},
                frozenset(int(q) for q in j["ids"]),
                float(j["vtime"]),
                JobStatus(j["status"]),
                j["finished_at"],
            )
        for bid, job, model, worker, queries, t in data["batches"]:
            s.batches[int(bid)] = Batch(int(bid), job, model, worker, tuple(queries), float(t))
        return s
