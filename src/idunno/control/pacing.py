"""Late binding of a worker's queued batch (pure: the clock is passed in).

A worker holds its running batch and one more, so that the next is fetched and decoded while
the current one runs. If that second batch were chosen as soon as the first went out, the
scheduler would pick its job a whole batch (0.3-1 s here) before it runs; which job completes
when would then drift with the batches' jitter, and the jobs' query rates over 10 s windows
would stray several percent from equal. Instead a worker gets its second batch only once its
running batch is expected to end within LEAD_S: the choice is then made from every job's
progress at that moment, still early enough for the batch to arrive and be decoded.

Expected end = when the running batch started (its dispatch to an idle worker, or the reply
to the batch before it) + its size x the worker's seconds of inference per query for that
model (a moving average of what its executor reported). The estimate leans early on purpose:
it leaves out decoding and transfer, which overlap the batch before. Measured as the time
between replies instead, it would count any gap a late second batch caused, push the next
one later still, and end with workers idling between batches (it did: one worker's
throughput fell from 55 to 48 queries/s). Early only means prefetching as without pacing.
Without an estimate yet the worker gets its second batch at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

LEAD_S: Final = 0.15
SMOOTHING: Final = 0.3  # weight of the newest batch in the moving average


@dataclass
class Pacing:
    lead_s: float = LEAD_S
    _front_since: dict[str, float] = field(default_factory=dict)  # worker -> its batch began
    _pace: dict[tuple[str, str], float] = field(default_factory=dict)  # -> s per query

    def dispatched(self, worker: str, held_before: int, now: float) -> None:
        """A batch went to `worker`, which held `held_before` batches: an idle worker starts
        it at once."""
        if held_before == 0:
            self._front_since[worker] = now

    def replied(
        self, worker: str, model: str, queries: int, busy_s: float, still_held: int, now: float
    ) -> None:
        """The worker's running batch came back after `busy_s` s of inference; the next one
        it holds starts now."""
        self._front_since.pop(worker, None)
        if queries > 0 and busy_s > 0:
            took = busy_s / queries
            old = self._pace.get((worker, model))
            self._pace[worker, model] = took if old is None else old + SMOOTHING * (took - old)
        if still_held:
            self._front_since[worker] = now

    def forget(self, worker: str) -> None:
        """The worker failed or its batches were requeued: its timing starts over."""
        self._front_since.pop(worker, None)

    def expected_end(self, worker: str, model: str, queries: int) -> float | None:
        began = self._front_since.get(worker)
        pace = self._pace.get((worker, model))
        if began is None or pace is None:
            return None
        return began + pace * queries

    def room(
        self, worker: str, held: list[tuple[str, int]], now: float
    ) -> tuple[int, float | None]:
        """(batches `worker` may hold now, when to ask again): `held` = (model, queries) of its
        batches, running one first."""
        if not held:
            return 1, None
        if len(held) > 1:
            return len(held), None
        model, queries = held[0]
        end = self.expected_end(worker, model, queries)
        if end is None or end - now <= self.lead_s:
            return 2, None
        return 1, end - self.lead_s
