"""Deposition is tied to the reign a node refused: the chaos suite found a livelock where a
refusal of an old reign's straggling request deposed every new reign in turn (epochs climbed
by hundreds and jobs stopped). These tests drive ControlPlane's deposition with stub
coordinators (no network)."""

from __future__ import annotations

import asyncio
from typing import Any

from idunno.control.fence import Fence
from idunno.control.plane import ControlPlane


class StubCoordinator:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True


def _plane(events: list[dict[str, Any]]) -> ControlPlane:
    def log(event: str, **fields: Any) -> None:
        events.append({"event": event, **fields})

    return ControlPlane("n1", None, None, dict, Fence(), log)  # type: ignore[arg-type]


def test_a_refusal_of_an_older_reign_leaves_the_current_one_alone() -> None:
    async def run() -> None:
        events: list[dict[str, Any]] = []
        plane = _plane(events)
        current: Any = StubCoordinator(epoch=7)
        plane.coordinator = current
        plane._deposed_at(2, "stale epoch 2 of n1")  # a straggler of reign 2 was refused
        await asyncio.sleep(0)
        assert plane.coordinator is current and not current.stopped
        assert not [e for e in events if e["event"] == "coordinator_deposed"]

    asyncio.run(run())


def test_a_refusal_of_the_current_reign_stops_exactly_that_instance() -> None:
    async def run() -> None:
        events: list[dict[str, Any]] = []
        plane = _plane(events)
        old: Any = StubCoordinator(epoch=7)
        plane.coordinator = old
        plane._deposed_at(7, "epoch 8 announced by n2")
        # A new reign claimed before the stop task ran must survive it.
        new: Any = StubCoordinator(epoch=9)
        plane.coordinator = new
        await asyncio.gather(*plane._tasks)
        assert old.stopped and not new.stopped
        assert plane.coordinator is new
        (deposed,) = [e for e in events if e["event"] == "coordinator_deposed"]
        assert deposed["epoch"] == 7

    asyncio.run(run())
