"""The coordinator's pure control state (`idunno.control.state`) and its durable format.

The coordinator applies every change as an op and mirrors the op log to the hot standby, whose
`ControlState` must end identical; a seeded random workload (`Workload`) drives a coordinator
state exactly like `Coordinator` does (dispatch decided by `scheduler.fill` and recorded as
"dispatch" ops, everything else through `apply`) and a standby applies the same log.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from typing import Any

import pytest

from idunno.control import durable
from idunno.control.rpc import pack, unpack
from idunno.control.scheduler import Batch, JobStatus, SchedulerError
from idunno.control.state import ControlState, JobSpec, percentile

MODELS = ("resnet18", "alexnet")


def spec(
    job_id: str,
    n: int,
    *,
    name: str | None = None,
    model: str = "resnet18",
    batch_size: int = 4,
    weight: float = 1.0,
    t: float = 0.0,
) -> JobSpec:
    return JobSpec(
        id=job_id,
        name=name or f"job-{job_id}",
        model=model,
        model_version=3,
        preprocess="imagenet",
        dataset="photos",
        item_ids=tuple(f"{job_id}-item{i:04d}" for i in range(n)),
        shards=(
            {"name": "photos/shard-0", "version": 1, "sha256": "ab" * 32, "count": n, "first": 0},
        ),
        batch_size=batch_size,
        weight=weight,
        submitted_at=t,
        labels=("cat", "dog", "fish"),
    )


def submit_op(s: JobSpec) -> dict[str, Any]:
    return {"op": "submit", "spec": s.to_json(), "t": s.submitted_at}


def result(
    q: int,
    *,
    batch: int = 0,
    worker: str = "w0",
    t: float = 0.0,
    ms: float = 10.0,
    error: str | None = None,
    tag: str = "",
) -> dict[str, Any]:
    return {
        "q": q,
        "id": f"item{q:04d}",
        "class_ids": [] if error else [q % 3, (q + 1) % 3],
        "scores": [] if error else [0.75, 0.25],
        "output": tag or None,
        "error": error,
        "worker": worker,
        "processing_ms": ms,
        "epoch": 1,
        "batch": batch,
        "t": t,
    }


def complete_op(batch: Batch, results: list[dict[str, Any]], t: float) -> dict[str, Any]:
    return {"op": "complete", "batch": batch.id, "job": batch.job, "results": results, "t": t}


def dispatch_ops(state: ControlState, workers: list[str], now: float) -> list[dict[str, Any]]:
    """What `Coordinator.pump` does: the scheduler decides and applies, the op records it."""
    return state.dispatched(state.scheduler.fill(workers, now), now)


class Workload:
    """A coordinator state driven by a seeded random workload, its op log, and a standby."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.coord = ControlState()
        self.standby = ControlState()
        self.log: list[dict[str, Any]] = []
        self.now = 0.0
        self.workers = [f"w{i}" for i in range(self.rng.randint(2, 4))]
        self.dead: set[str] = set()
        self.orphans: list[Batch] = []  # requeued batches whose worker may still answer
        self.completions: list[dict[str, Any]] = []  # complete ops, replayed as duplicates
        self.first: dict[tuple[str, int], dict[str, Any]] = {}  # first accepted result
        self.jobs = 0
        self.cancelled_with: dict[str, int] = {}  # job -> results held when cancelled

    # --- what the coordinator does --------------------------------------------------------

    def commit(self, op: dict[str, Any]) -> list[int]:
        accepted = self.coord.apply(op)
        self.log.append(op)
        assert self.standby.apply(op) == accepted, f"seed {self.seed}: {op}"
        for q in accepted:
            key = (str(op["job"]), q)
            assert key not in self.first, f"seed {self.seed}: {key} accepted twice"
            self.first[key] = next(r for r in op["results"] if r["q"] == q)
        return accepted

    def pump(self) -> None:
        ops = dispatch_ops(self.coord, [w for w in self.workers if w not in self.dead], self.now)
        self.log.extend(ops)
        for op in ops:
            self.standby.apply(op)

    def results_for(self, batch: Batch, drop: float, tag: str) -> list[dict[str, Any]]:
        rng = self.rng
        return [
            result(
                q,
                batch=batch.id,
                worker=batch.worker,
                t=self.now,
                ms=round(rng.uniform(2, 40), 3),
                error="cannot decode image" if rng.random() < 0.15 else None,
                tag=tag,
            )
            for q in batch.queries
            if rng.random() >= drop
        ]

    # --- the random workload --------------------------------------------------------------

    def step(self) -> None:
        rng = self.rng
        self.now += rng.uniform(0.05, 1.5)
        sched = self.coord.scheduler
        in_flight = [sched.batches[b] for b in sorted(sched.batches)]
        running = [j for j, job in sorted(sched.jobs.items()) if job.status == JobStatus.RUNNING]
        x = rng.random()
        if self.jobs < 3 and (x < 0.08 or not sched.jobs):
            self.jobs += 1
            s = spec(
                f"j{self.jobs}",
                rng.randint(3, 30),
                model=rng.choice(MODELS),
                batch_size=rng.randint(1, 5),
                weight=rng.choice((0.5, 1.0, 2.0)),
                t=self.now,
            )
            self.commit(submit_op(s))
        elif x < 0.30:
            self.pump()
        elif x < 0.55 and in_flight:
            b = rng.choice(in_flight)
            op = complete_op(b, self.results_for(b, 0.2, "first"), self.now)
            self.completions.append(op)
            self.commit(op)
        elif x < 0.60 and self.completions:  # the same batch completed again
            old = rng.choice(self.completions)
            dup = [dict(r, output="dup", t=self.now) for r in old["results"]]
            self.commit(dict(old, results=dup, t=self.now))
        elif x < 0.70 and in_flight:  # its connection dropped: requeued, may answer late
            b = rng.choice(in_flight)
            self.orphans.append(b)
            self.commit({"op": "requeue", "batch": b.id})
        elif x < 0.78 and (late := self.answerable_orphans()):  # a requeued batch answers
            b = rng.choice(late)
            self.orphans.remove(b)
            self.commit(complete_op(b, self.results_for(b, 0.3, "late"), self.now))
        elif x < 0.83:
            alive = [w for w in self.workers if w not in self.dead]
            if len(alive) > 1:
                w = rng.choice(alive)
                self.dead.add(w)
                held = sched.held_by(w)
                self.orphans.extend(held)
                for b in held:
                    self.commit({"op": "requeue", "batch": b.id})
            elif self.dead:
                self.dead.pop()
        elif x < 0.86 and self.dead:
            self.dead.discard(rng.choice(sorted(self.dead)))
        elif x < 0.90 and running:
            self.commit({"op": "batch_size", "job": rng.choice(running), "n": rng.randint(1, 6)})
        elif x < 0.905 and running:
            j = rng.choice(running)
            self.commit({"op": "cancel", "job": j, "t": self.now})
            self.cancelled_with[j] = len(self.coord.books[j].results)
        else:
            books = [j for j, b in sorted(self.coord.books.items()) if b.unflushed]
            if books:
                j = rng.choice(books)
                unflushed = self.coord.books[j].unflushed
                queries = unflushed[: rng.randint(1, len(unflushed))]
                self.commit({"op": "flushed", "job": j, "queries": list(queries)})

    def answerable_orphans(self) -> list[Batch]:
        """Requeued batches none of whose queries wait undispatched: a late answer for a
        query still pending makes the standby differ (see the xfail test below)."""
        jobs = self.coord.scheduler.jobs
        return [b for b in self.orphans if not set(b.queries) & set(jobs[b.job].pending)]

    def deliver_orphans(self) -> None:
        for b in self.answerable_orphans():
            self.orphans.remove(b)
            self.commit(complete_op(b, self.results_for(b, 0.5, "late"), self.now))

    def finish(self) -> None:
        """Revive every worker and run until every running job is answered."""
        self.dead.clear()
        for _ in range(1000):
            self.now += 0.5
            self.pump()
            self.deliver_orphans()
            sched = self.coord.scheduler
            if not sched.batches:
                break
            for b in [sched.batches[i] for i in sorted(sched.batches)]:
                self.commit(complete_op(b, self.results_for(b, 0.0, "final"), self.now))
        self.deliver_orphans()
        assert not self.coord.scheduler.batches and not self.orphans, f"seed {self.seed}"

    def assert_mirrored(self) -> None:
        a, b = self.coord.snapshot(), self.standby.snapshot()
        assert a == b, f"seed {self.seed}: standby differs after {len(self.log)} ops"
        assert self.coord.applied == self.standby.applied == len(self.log)


SEEDS = range(60)


@pytest.mark.parametrize("seed", SEEDS)
def test_standby_applying_the_log_stays_identical(seed: int) -> None:
    w = Workload(seed)
    for _ in range(150):
        w.step()
        w.assert_mirrored()
    for j in w.coord.books:  # the views agree too (they trim both windows alike)
        assert w.coord.job_view(j, w.now) == w.standby.job_view(j, w.now), f"seed {seed}"
        assert w.coord.stats(j) == w.standby.stats(j), f"seed {seed}"
        assert w.coord.results(j) == w.standby.results(j), f"seed {seed}"
    assert w.coord.shares(w.now) == w.standby.shares(w.now), f"seed {seed}"
    w.finish()
    w.assert_mirrored()


@pytest.mark.parametrize("seed", SEEDS)
def test_every_query_ends_with_exactly_one_result(seed: int) -> None:
    w = Workload(seed)
    for _ in range(150):
        w.step()
    w.finish()
    for j, book in w.coord.books.items():
        job = w.coord.scheduler.jobs[j]
        assert all(book.results[q] is w.first[(j, q)] for q in book.results), f"seed {seed}"
        assert set(book.results) == job.done, f"seed {seed}: {j}"
        errors = sum(r["error"] is not None for r in book.results.values())
        assert book.errors == errors, f"seed {seed}: {j}"
        if job.status == JobStatus.CANCELLED:
            assert len(book.results) == w.cancelled_with[j], f"seed {seed}: {j} after cancel"
            continue
        assert set(book.results) == set(range(book.spec.total)), f"seed {seed}: {j}"
        assert job.status == JobStatus.DONE and not job.pending, f"seed {seed}: {j}"
        assert [r["q"] for r in w.coord.results(j)] == list(range(book.spec.total))
    assert set(w.first) == {(j, q) for j, b in w.coord.books.items() for q in b.results}


@pytest.mark.parametrize("seed", range(25))
def test_snapshots_round_trip_and_a_late_standby_catches_up(seed: int) -> None:
    w = Workload(seed)
    steps = 120
    join_at = random.Random(-seed).randrange(steps)
    late: ControlState | None = None
    joined_at_op = 0
    for i in range(steps):
        w.step()
        snap = w.coord.snapshot()
        assert ControlState.from_snapshot(snap).snapshot() == snap, f"seed {seed} step {i}"
        wire = unpack(pack(snap))  # what MirrorLink sends
        assert ControlState.from_snapshot(wire).snapshot() == snap, f"seed {seed} step {i}"
        if i == join_at:
            late = ControlState.from_snapshot(wire)
            joined_at_op = len(w.log)
            assert late.applied == joined_at_op  # the standby's position in the log
    assert late is not None
    w.finish()
    for op in w.log[joined_at_op:]:
        late.apply(op)
    assert late.applied == w.coord.applied
    assert late.snapshot() == w.coord.snapshot(), f"seed {seed}"


# --- late results (bugs found by these tests, fixed) ------------------------------------------


def test_a_late_result_leaves_coordinator_and_standby_identical() -> None:
    """A late answer for requeued queries that wait undispatched takes them off the queue the
    same way on both sides, so a job submitted afterwards starts level on both."""
    coord, standby = ControlState(), ControlState()
    log: list[dict[str, Any]] = [submit_op(spec("j", 8, batch_size=4))]
    coord.apply(log[0])
    b1, b2 = coord.scheduler.fill(["w0"], 1.0)
    log += coord.dispatched([b1, b2], 1.0)
    for op in (
        {"op": "requeue", "batch": b1.id},
        complete_op(b1, [result(q, batch=b1.id, t=3.0) for q in b1.queries], 3.0),
        submit_op(spec("k", 8, batch_size=4)),
    ):
        coord.apply(op)
        log.append(op)
    for op in log:
        standby.apply(op)
    assert not set(b1.queries) & set(coord.scheduler.jobs["j"].pending)
    assert standby.snapshot() == coord.snapshot()
    # The idle coordinator hands out the same next batch as the standby would.
    assert coord.scheduler.fill(["w1"], 4.0) == standby.scheduler.fill(["w1"], 4.0)


def test_a_finished_job_reads_done_once_its_results_are_durable() -> None:
    s = ControlState()
    s.apply(submit_op(spec("j", 4, batch_size=4)))
    (b,) = s.scheduler.fill(["w0"], 1.0)
    s.apply({"op": "requeue", "batch": b.id})
    s.apply(complete_op(b, [result(q, batch=b.id, t=5.0) for q in b.queries], 5.0))
    view = s.job_view("j", 5.0)
    assert view["status"] == "running"  # every result is in, not yet durable
    assert view["finished_at"] == 5.0 and view["done"] == 4
    s.apply({"op": "flushed", "job": "j", "queries": list(b.queries[:2])})
    assert s.job_view("j", 5.5)["status"] == "running"
    s.apply({"op": "flushed", "job": "j", "queries": list(b.queries[2:])})
    assert s.job_view("j", 6.0)["status"] == "done"


# --- exactly once ---------------------------------------------------------------------------


def started(n: int = 8, batch_size: int = 4) -> tuple[ControlState, list[Batch]]:
    s = ControlState()
    s.apply(submit_op(spec("j", n, batch_size=batch_size)))
    batches = s.scheduler.fill(["w0"], 1.0)
    return s, batches


def test_a_batch_completed_twice_counts_once() -> None:
    s, (b1, _) = started()
    first = [result(q, batch=b1.id, t=2.0, error="bad" if q == 0 else None) for q in b1.queries]
    again = [result(q, batch=b1.id, t=3.0, tag="again") for q in b1.queries]
    assert s.apply(complete_op(b1, first, 2.0)) == [0, 1, 2, 3]
    assert s.apply(complete_op(b1, again, 3.0)) == []
    book = s.books["j"]
    assert [book.results[q] for q in range(4)] == first
    assert book.errors == 1
    assert s.rate("j", 3.0) == 4 / 3.0  # the duplicate is not counted either


@pytest.mark.parametrize("late_first", [False, True])
def test_a_requeued_batch_answered_twice_keeps_the_first_answer(late_first: bool) -> None:
    s, (b1, b2) = started()
    s.apply({"op": "requeue", "batch": b1.id})  # w0 presumed dead
    (b3,) = s.scheduler.fill(["w1"], 2.0)  # prefetch: w1 gets b1's queries first...
    assert b3.queries == b1.queries and b3.worker == "w1"
    late = complete_op(b1, [result(q, batch=b1.id, t=3.0, tag="late") for q in b1.queries], 3.0)
    rerun = complete_op(
        b3, [result(q, batch=b3.id, t=3.0, error="oom", tag="rerun") for q in b3.queries], 3.0
    )
    ops = [late, rerun] if late_first else [rerun, late]
    assert s.apply(ops[0]) == list(b1.queries)
    assert s.apply(ops[1]) == []
    s.apply(complete_op(b2, [result(q, batch=b2.id, t=4.0) for q in b2.queries], 4.0))
    book = s.books["j"]
    assert sorted(book.results) == list(range(8))
    assert {book.results[q]["output"] for q in b1.queries} == {"late" if late_first else "rerun"}
    assert book.errors == (0 if late_first else 4)
    assert s.scheduler.jobs["j"].status == JobStatus.DONE
    assert not s.scheduler.batches and not s.scheduler.jobs["j"].pending


def test_a_partial_answer_requeues_the_rest_and_a_cancelled_job_takes_nothing() -> None:
    s, (b1, b2) = started()
    assert s.apply(complete_op(b1, [result(0, batch=b1.id), result(2, batch=b1.id)], 2.0)) == [
        0,
        2,
    ]
    assert list(s.scheduler.jobs["j"].pending) == [1, 3]
    s.apply({"op": "cancel", "job": "j", "t": 3.0})
    assert s.apply(complete_op(b2, [result(q, batch=b2.id) for q in b2.queries], 4.0)) == []
    assert sorted(s.books["j"].results) == [0, 2]
    assert s.scheduler.jobs["j"].status == JobStatus.CANCELLED
    assert s.scheduler.fill(["w0"], 5.0) == []


def segments(*chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results as a rebuild reads them: segments in store order, decoded."""
    store = {durable.segment_file("j", 9 + i // 2, 1 + i % 2): c for i, c in enumerate(chunks)}
    store[durable.spec_file("j")] = []
    out: list[dict[str, Any]] = []
    for name in durable.segments_of("j", reversed(list(store))):
        out.extend(durable.decode_segment(durable.encode_segment(store[name])))
    return out


def test_restore_keeps_the_first_result_per_query_and_requeues_only_the_rest() -> None:
    s = spec("j", 10)
    durable_results = segments(
        [result(q, tag="seg1", error="bad" if q == 2 else None) for q in range(5)],
        [result(q, tag="seg2", error="bad") for q in (3, 4, 5, 6)],
        [result(6, tag="seg3"), result(99, tag="out of range"), result(-1, tag="negative")],
    )
    state = ControlState()
    state.restore(s, durable_results, "running")
    book = state.books["j"]
    assert sorted(book.results) == [0, 1, 2, 3, 4, 5, 6]
    assert [book.results[q]["output"] for q in range(7)] == ["seg1"] * 5 + ["seg2"] * 2
    assert book.errors == 3  # q2 (seg1), q5 and q6 (seg2); q3 and q4's later errors are dropped
    assert book.unflushed == []  # already durable
    job = state.scheduler.jobs["j"]
    assert list(job.pending) == [7, 8, 9] and job.status == JobStatus.RUNNING
    batches = state.scheduler.fill(["w0", "w1"], 1.0)
    assert sorted(q for b in batches for q in b.queries) == [7, 8, 9]


@pytest.mark.parametrize(
    ("answered", "status", "expected"),
    [
        (range(10), "running", JobStatus.DONE),
        (range(10), "cancelled", JobStatus.DONE),
        (range(4), "cancelled", JobStatus.CANCELLED),
        (range(4), "done", JobStatus.RUNNING),  # not all answered: run the rest again
    ],
)
def test_restore_derives_the_status(answered: range, status: str, expected: JobStatus) -> None:
    state = ControlState()
    state.restore(spec("j", 10, t=7.0), [result(q) for q in answered], status)
    job = state.scheduler.jobs["j"]
    assert job.status == expected
    if expected == JobStatus.DONE:
        assert job.finished_at == 7.0 and not job.pending
    if expected == JobStatus.CANCELLED:
        assert state.scheduler.fill(["w0"], 8.0) == []


# --- views ----------------------------------------------------------------------------------


def state_with_results(times_ms: list[float], errors: int = 0) -> ControlState:
    s = ControlState()
    n = len(times_ms) + errors
    s.apply(submit_op(spec("j", n, batch_size=n)))
    (b,) = s.scheduler.fill(["w0"], 0.0)[:1]
    rs = [result(q, batch=b.id, ms=ms) for q, ms in enumerate(times_ms)]
    rs += [result(len(times_ms) + i, batch=b.id, ms=1e6, error="bad") for i in range(errors)]
    s.apply(complete_op(b, rs, 1.0))
    return s


def test_rate_counts_accepted_queries_over_the_last_ten_seconds() -> None:
    def at(now: float) -> float:
        s = ControlState()
        s.apply(submit_op(spec("j", 40, batch_size=4)))
        for t, n in ((1.0, 4), (5.0, 3), (12.0, 2)):
            if t > now:
                break
            b = s.scheduler.next_batch("w0", t)
            assert b is not None
            s.apply(complete_op(b, [result(q, batch=b.id) for q in b.queries[:n]], t))
        return s.rate("j", now)

    assert at(0.5) == 0.0
    assert at(5.0) == pytest.approx(7 / 5.0)  # younger than the window: over its lifetime
    assert at(11.0) == pytest.approx(7 / 10.0)  # t=1 is exactly at the window's edge: kept
    assert at(12.0) == pytest.approx(5 / 10.0)  # t=1 left the window
    assert at(15.0) == pytest.approx(5 / 10.0)
    assert at(30.0) == 0.0


def test_stats_are_nearest_rank_percentiles_of_successful_queries() -> None:
    times = [float(x) for x in (50, 10, 40, 20, 30, 90, 70, 60, 80, 100, 5, 15, 25, 35, 45)]
    s = state_with_results(times, errors=2)
    st = s.stats("j")
    ordered = sorted(times)  # 5 10 15 20 25 30 35 40 45 50 60 70 80 90 100
    assert st["count"] == 15
    assert st["mean_ms"] == pytest.approx(sum(times) / 15)
    assert st["sd_ms"] == pytest.approx(statistics.pstdev(times))
    assert st["median_ms"] == 40.0
    assert st["p90_ms"] == 90.0  # rank ceil(13.5) = 14
    assert st["p95_ms"] == 100.0  # rank ceil(14.25) = 15
    assert st["p99_ms"] == 100.0
    assert ordered[math.ceil(0.9 * 15) - 1] == 90.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0  # rank 2, not the interpolated 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 1) == 1.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([float(i) for i in range(1, 101)], 90) == 90.0


def test_stats_of_a_job_without_successful_results_are_null() -> None:
    for s in (state_with_results([], errors=3), ControlState()):
        if not s.books:
            s.apply(submit_op(spec("j", 5)))
        st = s.stats("j")
        assert st["count"] == 0
        assert {k: st[k] for k in st if k.endswith("_ms")} == dict.fromkeys(
            ("mean_ms", "sd_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms")
        )


def test_shares_split_the_busy_time_of_the_window() -> None:
    s = ControlState()
    for j, model in (("a", "resnet18"), ("b", "alexnet"), ("c", "alexnet")):
        s.apply(submit_op(spec(j, 8, name=j, model=model, batch_size=4)))
    batches = {b.job: b for b in s.scheduler.fill(["w0", "w1", "w2"], 0.0)}
    s.apply(complete_op(batches["a"], [result(q, ms=750.0) for q in batches["a"].queries], 2.0))
    s.apply(complete_op(batches["b"], [result(q, ms=250.0) for q in batches["b"].queries], 3.0))
    shares = s.shares(5.0)
    assert shares == pytest.approx({"a": 0.75, "b": 0.25, "c": 0.0})
    assert sum(shares.values()) == pytest.approx(1.0)
    assert s.shares(12.5) == pytest.approx({"a": 0.0, "b": 1.0, "c": 0.0})  # a left the window
    assert s.shares(20.0) == {"a": 0.0, "b": 0.0, "c": 0.0}


def test_resolve_by_id_or_name() -> None:
    s = ControlState()
    s.apply(submit_op(spec("j1", 3, name="cats")))
    s.apply(submit_op(spec("j2", 3, name="dogs")))
    assert (s.resolve("j1"), s.resolve("dogs"), s.resolve("cats")) == ("j1", "j2", "j1")
    with pytest.raises(SchedulerError, match=r"no job 'birds'.*idunno job list"):
        s.resolve("birds")


def test_a_duplicate_job_name_is_refused_and_changes_nothing() -> None:
    s = ControlState()
    s.apply(submit_op(spec("j1", 3, name="cats")))
    before = s.snapshot()
    with pytest.raises(SchedulerError, match="a job named 'cats' exists"):
        s.apply(submit_op(spec("j2", 5, name="cats")))
    assert s.snapshot() == before


def test_results_are_in_dataset_order_with_offset_and_limit() -> None:
    s = ControlState()
    s.apply(submit_op(spec("j", 12, batch_size=3)))
    batches = s.scheduler.fill(["w0", "w1"], 0.0)  # 0-2, 3-5, 6-8, 9-11
    for b in reversed(batches):  # answered out of order, each batch backwards
        s.apply(complete_op(b, [result(q, batch=b.id) for q in reversed(b.queries)], 1.0))
    assert [r["q"] for r in s.results("j")] == list(range(12))
    assert [r["q"] for r in s.results("j", offset=4, limit=3)] == [4, 5, 6]
    assert [r["q"] for r in s.results("j", offset=10)] == [10, 11]
    assert s.results("j", offset=20) == []
    assert [r["q"] for r in s.results("j", limit=0)] == []


def test_unknown_ops_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown control op 'launch'"):
        ControlState().apply({"op": "launch"})


def test_job_spec_json_round_trip() -> None:
    s = spec("j", 5, name="cats", weight=2.5, t=12.5)
    assert JobSpec.from_json(unpack(pack(s.to_json()))) == s
    bare = JobSpec.from_json(dict(s.to_json(), labels=None))
    assert bare.labels is None and bare.total == 5
    assert s.model_ref() == {"name": "resnet18", "version": 3, "preprocess": "imagenet"}


# --- durable format -------------------------------------------------------------------------


def test_segments_sort_by_epoch_then_sequence() -> None:
    written = [(9, 1), (9, 2), (9, 10), (10, 1), (10, 2), (123, 1), (1_000_000_000, 3)]
    names = [durable.segment_file("j", e, q) for e, q in written]
    shuffled = names[:]
    random.Random(5).shuffle(shuffled)
    noise = [
        durable.segment_file("other", 9, 1),
        durable.segment_file("j", 11, 1) + ".tmp",
        "jobs/j/results/README",
        durable.spec_file("j"),
        "jobs/jj/results/0000000001-00000001.jsonl",
    ]
    assert durable.segments_of("j", shuffled + noise) == names
    assert durable.segment_file("j", 9, 2) == "jobs/j/results/0000000009-00000002.jsonl"


def test_segment_encoding_round_trips() -> None:
    rows = [result(q, error="bad" if q == 1 else None, tag="ünïcode ✓") for q in range(5)]
    data = durable.encode_segment(rows)
    assert data.count(b"\n") == 5 and data.endswith(b"\n")
    assert list(durable.decode_segment(data)) == rows
    assert durable.encode_segment([]) == b""


def test_a_torn_or_garbled_line_is_skipped() -> None:
    rows = [result(q) for q in range(4)]
    data = durable.encode_segment(rows)
    torn = data[: len(data) - 17]  # the last line cut short (a crash mid-write)
    assert list(durable.decode_segment(torn)) == rows[:3]
    garbled = b'not json\n{"q": "3"}\n[1, 2]\n\n' + durable.encode_segment(rows[1:2])
    assert list(durable.decode_segment(garbled)) == rows[1:2]


def test_job_ids_come_from_spec_files_only() -> None:
    names = [
        durable.spec_file("j2"),
        durable.spec_file("j1"),
        "_control/jobs/j3.json.tmp",
        "_control/jobs/sub/j4.json",
        durable.EPOCH_FILE,
        durable.segment_file("j5", 1, 1),
    ]
    assert durable.job_ids(names) == ["j1", "j2"]
    assert durable.dump_json({"b": 1, "a": [1.5, None]}) == b'{"a":[1.5,null],"b":1}'


def test_pending_holds_deques_after_a_round_trip() -> None:
    s, _ = started(n=12, batch_size=4)
    loaded = ControlState.from_snapshot(unpack(pack(s.snapshot())))
    assert isinstance(loaded.scheduler.jobs["j"].pending, deque)
    assert loaded.scheduler.fill(["w1"], 2.0)[0].queries == (8, 9, 10, 11)


def test_a_dropped_submission_leaves_no_trace_and_ignores_its_results() -> None:
    s = ControlState()
    s.apply(submit_op(spec("j", 8, batch_size=4)))
    (b, _) = s.scheduler.fill(["w0"], 1.0)
    s.apply({"op": "drop", "job": "j"})
    assert "j" not in s.books and "j" not in s.scheduler.jobs and not s.scheduler.batches
    assert s.apply(complete_op(b, [result(q, batch=b.id, t=2.0) for q in b.queries], 2.0)) == []
    s.apply(submit_op(spec("j", 8, batch_size=4)))  # the id is free again
    assert s.job_view("j", 3.0)["done"] == 0
