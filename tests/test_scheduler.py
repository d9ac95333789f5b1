"""The fair-time scheduler, driven by a small seeded event simulation of workers."""

from __future__ import annotations

import heapq
import random
from collections import Counter

import pytest

from idunno.control.scheduler import JobStatus, Scheduler, SchedulerError


class WorkerSim:
    """Workers that run batches one at a time, each query of model m costing cost[m] seconds
    (with seeded jitter of +-`jitter`); the scheduler refills a worker whenever a batch
    finishes. With a `lead`, a worker gets its queued batch only once its running batch is
    within `lead` seconds of its end (late binding, as the coordinator does)."""

    def __init__(
        self,
        sched: Scheduler,
        workers: list[str],
        cost: dict[str, float],
        seed: int,
        jitter: float = 0.1,
        lead: float | None = None,
    ):
        self.s = sched
        self.workers = list(workers)
        self.cost = cost
        self.rng = random.Random(seed)
        self.jitter = jitter
        self.lead = lead
        self.now = 0.0
        self.busy_until = dict.fromkeys(workers, 0.0)
        # (time, order, batch id): a batch finishes; batch id None: a worker's lead time
        self.events: list[tuple[float, int, int | None]] = []
        self.order = 0
        self.answered: list[tuple[float, str, int]] = []  # (time, job, query)
        self.dead: set[str] = set()

    def room(self, worker: str) -> int:
        """One batch; a second once the one it holds is within `lead` of its end."""
        assert self.lead is not None
        soon = self.busy_until[worker] - self.now <= self.lead
        return 2 if self.s.held_by(worker) and soon else 1

    def dispatch(self) -> None:
        live = [w for w in self.workers if w not in self.dead]
        room = None if self.lead is None else self.room
        for b in self.s.fill(live, self.now, room=room):
            start = max(self.now, self.busy_until[b.worker])
            took = len(b.queries) * self.cost[b.model]
            took *= self.rng.uniform(1 - self.jitter, 1 + self.jitter)
            self.busy_until[b.worker] = start + took
            self.push(start + took, b.id)
            if self.lead is not None:
                self.push(start + took - self.lead, None)

    def push(self, t: float, batch_id: int | None) -> None:
        self.order += 1
        heapq.heappush(self.events, (t, self.order, batch_id))

    def run_until(self, t: float) -> None:
        self.dispatch()
        while self.events and self.events[0][0] <= t:
            at, _, batch_id = heapq.heappop(self.events)
            self.now = max(self.now, at)
            batch = None if batch_id is None else self.s.batches.get(batch_id)
            if batch is not None and batch.worker not in self.dead:
                for q in self.s.complete(batch.id, batch.queries, self.now):
                    self.answered.append((self.now, batch.job, q))
            self.dispatch()
        self.now = t

    def rate(self, job: str, start: float, end: float) -> float:
        return sum(1 for t, j, _ in self.answered if j == job and start <= t < end) / (end - start)

    def worst_ratio(self, a: str, b: str, start: float, end: float) -> float:
        """max/min of the two jobs' rates over every 10 s window [t, t+10) in [start, end],
        t in steps of 0.5 s."""
        ratios = []
        for k in range(int((end - 10 - start) / 0.5) + 1):
            t = start + k * 0.5
            ra, rb = self.rate(a, t, t + 10), self.rate(b, t, t + 10)
            ratios.append(max(ra, rb) / min(ra, rb))
        return max(ratios)


def two_jobs(weights: tuple[float, float] = (1.0, 1.0), seed: int = 1) -> WorkerSim:
    s = Scheduler()
    s.submit("resnet", "resnet18", range(100_000), batch_size=8, now=0, weight=weights[0])
    s.submit("alex", "alexnet", range(100_000), batch_size=8, now=0, weight=weights[1])
    return WorkerSim(s, [f"w{i}" for i in range(6)], {"resnet18": 0.016, "alexnet": 0.007}, seed)


@pytest.mark.parametrize("seed", range(5))
def test_jobs_of_different_cost_get_equal_query_rates(seed: int) -> None:
    sim = two_jobs(seed=seed)
    sim.run_until(60)
    for start in range(10, 60, 10):  # every 10 s window in steady state
        a, b = sim.rate("resnet", start, start + 10), sim.rate("alex", start, start + 10)
        assert max(a, b) / min(a, b) <= 1.05
    # The costlier model gets proportionally more worker time.
    shares = Counter(b.model for b in sim.s.batches.values())
    assert shares["resnet18"] >= shares["alexnet"]


@pytest.mark.parametrize("seed", range(3))
def test_late_binding_keeps_every_sliding_window_fairer(seed: int) -> None:
    """With each worker's queued batch chosen a whole batch ahead, which job completes when
    drifts with the batches' jitter; choosing it just before the running batch ends keeps
    the completions, measured over every sliding 10 s window, much closer to equal. Costs and
    jitter close to bench/inference.py's fairness run (six workers on two cores)."""

    def worst(lead: float | None) -> float:
        s = Scheduler()
        s.submit("resnet", "resnet18", range(100_000), batch_size=8, now=0)
        s.submit("alex", "alexnet", range(100_000), batch_size=8, now=0)
        costs = {"resnet18": 0.068, "alexnet": 0.039}
        sim = WorkerSim(s, [f"w{i}" for i in range(6)], costs, seed, jitter=0.3, lead=lead)
        sim.run_until(70)
        return sim.worst_ratio("resnet", "alex", 10, 70)

    early, late = worst(None), worst(0.1)
    assert late <= 1.05 < early, (late, early)


def test_weights_skew_the_rates() -> None:
    sim = two_jobs(weights=(2.0, 1.0))
    sim.run_until(60)
    ratio = sim.rate("resnet", 10, 60) / sim.rate("alex", 10, 60)
    assert 1.9 <= ratio <= 2.1


def test_work_conserving_a_lone_job_gets_every_worker() -> None:
    s = Scheduler()
    s.submit("only", "m", range(10_000), batch_size=4, now=0)
    batches = s.fill([f"w{i}" for i in range(6)], now=0)
    assert {b.worker for b in batches} == {f"w{i}" for i in range(6)}
    assert len(batches) == 6 * s.prefetch  # each worker: one running, one prefetched


def test_a_new_job_is_served_at_once_and_then_at_an_equal_rate() -> None:
    s = Scheduler()
    s.submit("first", "alexnet", range(100_000), batch_size=8, now=0)
    sim = WorkerSim(s, [f"w{i}" for i in range(6)], {"alexnet": 0.007, "resnet18": 0.016}, 3)
    sim.run_until(30)
    s.submit("second", "resnet18", range(100_000), batch_size=8, now=30)
    sim.run_until(30.5)
    # Within half a second (a few batch times) the second job has results...
    assert sim.rate("second", 30, 30.5) > 0
    sim.run_until(60)
    # ...and the two run level afterwards: no catch-up burst that starves the first job.
    a, b = sim.rate("first", 35, 60), sim.rate("second", 35, 60)
    assert max(a, b) / min(a, b) <= 1.05


def test_a_failed_worker_loses_no_query_and_duplicates_nothing() -> None:
    s = Scheduler()
    s.submit("j", "m", range(2_000), batch_size=8, now=0)
    sim = WorkerSim(s, ["a", "b", "c"], {"m": 0.01}, 7)
    sim.run_until(2)
    held = s.held_by("b")
    assert held, "the failing worker must hold work for this test to mean anything"
    sim.dead.add("b")
    requeued = s.fail_worker("b")
    assert {b.id for b in requeued} == {b.id for b in held}
    sim.run_until(100)
    answered = [q for _, _, q in sim.answered]
    assert sorted(answered) == list(range(2_000))  # every query exactly once
    assert s.jobs["j"].status == JobStatus.DONE


def test_late_results_of_a_requeued_batch_count_once() -> None:
    s = Scheduler()
    s.submit("j", "m", range(16), batch_size=8, now=0)
    first = s.next_batch("slow", now=0)
    assert first is not None
    s.fail_worker("slow")  # presumed dead...
    again = s.next_batch("fast", now=1)
    assert again is not None and again.queries == first.queries
    # ...but its results arrive after all: accepted, and the re-run's become duplicates.
    assert s.accept_late("j", first.queries, 1.0) == list(first.queries)
    assert s.complete(again.id, again.queries, now=2) == []
    rest = s.next_batch("fast", now=2)
    assert rest is not None and set(rest.queries).isdisjoint(first.queries)


def test_batch_size_change_applies_from_the_next_batch() -> None:
    s = Scheduler()
    s.submit("j", "m", range(100), batch_size=8, now=0)
    b1 = s.next_batch("w", now=0)
    s.set_batch_size("j", 3)
    b2 = s.next_batch("w", now=0)
    assert b1 is not None and b2 is not None
    assert (len(b1.queries), len(b2.queries)) == (8, 3)


def test_cancel_stops_dispatch_and_ignores_results() -> None:
    s = Scheduler()
    s.submit("j", "m", range(100), batch_size=8, now=0)
    b = s.next_batch("w", now=0)
    assert b is not None
    assert [x.id for x in s.cancel("j", now=1)] == [b.id]
    assert s.next_batch("w", now=1) is None
    assert s.complete(b.id, b.queries, now=2) == []
    assert s.jobs["j"].status == JobStatus.CANCELLED


def test_only_workers_that_can_run_the_model_get_it() -> None:
    s = Scheduler()
    s.submit("j", "resnet18", range(100), batch_size=8, now=0)
    assert s.next_batch("untrained", 0, can_run=lambda m: False) is None
    assert s.next_batch("trained", 0, can_run=lambda m: m == "resnet18") is not None


def test_assignment_and_shares_describe_in_flight_work() -> None:
    sim = two_jobs()
    sim.dispatch()
    assignment = sim.s.assignment()
    assert set(assignment) == {f"w{i}" for i in range(6)}
    assert abs(sum(sim.s.shares().values()) - 1.0) < 1e-9


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"batch_size": 0}, "batch size"),
        ({"batch_size": 10**6}, "batch size"),
        ({"weight": 0.0}, "weight"),
        ({"queries": []}, "no items"),
        ({"queries": [1, 1]}, "unique"),
    ],
)
def test_bad_submissions_name_the_cause(kwargs: dict[str, object], fragment: str) -> None:
    args: dict[str, object] = {"queries": range(10), "batch_size": 4, "weight": 1.0}
    args.update(kwargs)
    with pytest.raises(SchedulerError, match=fragment):
        Scheduler().submit("j", "m", now=0, **args)  # type: ignore[arg-type]


def test_unknown_job_and_duplicate_names_are_refused() -> None:
    s = Scheduler()
    s.submit("j", "m", range(10), batch_size=4, now=0)
    with pytest.raises(SchedulerError, match="already exists"):
        s.submit("j", "m", range(10), batch_size=4, now=0)
    with pytest.raises(SchedulerError, match="no job"):
        s.set_batch_size("nope", 4)
