"""GroupPriority: the executor's scheduling group sits at BACKGROUND and is raised to URGENT
only while urgent batches run, within the kernel's limit of one unprivileged change per
100 ms (EAGAIN otherwise). Driven with a fake writer; timings are the real clock's."""

from __future__ import annotations

import asyncio
import time

from idunno.inference.cpu_priority import (
    BACKGROUND,
    CHANGE_INTERVAL_S,
    URGENT,
    GroupPriority,
    autogroup_path,
)


class Writer:
    """Records (time, value); refuses with EAGAIN `busy` times first, or always with `error`."""

    def __init__(self, busy: int = 0, error: OSError | None = None) -> None:
        self.writes: list[tuple[float, int]] = []
        self.busy = busy
        self.error = error
        self.paths: set[str] = set()

    def __call__(self, path: str, value: int) -> None:
        self.paths.add(path)
        if self.error is not None:
            raise self.error
        if self.busy > 0:
            self.busy -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable")
        self.writes.append((time.monotonic(), value))

    @property
    def values(self) -> list[int]:
        return [v for _, v in self.writes]


async def settle(g: GroupPriority, within_s: float = 5.0) -> None:
    """Wait for the return to BACKGROUND to finish (it waits out the kernel's interval)."""
    deadline = time.monotonic() + within_s
    while g._lowering is not None:
        assert time.monotonic() < deadline, "the group was never lowered again"
        await asyncio.sleep(0.01)


def test_raised_while_urgent_work_runs_and_lowered_after_the_kernel_interval() -> None:
    async def run() -> None:
        w = Writer()
        g = GroupPriority(4242, write=w)
        assert await g.start()
        async with g.urgent():
            assert w.values == [BACKGROUND, URGENT]
        await settle(g)
        assert w.values == [BACKGROUND, URGENT, BACKGROUND]
        assert w.writes[2][0] - w.writes[1][0] >= CHANGE_INTERVAL_S
        assert w.paths == {autogroup_path(4242)}

    asyncio.run(run())


def test_overlapping_urgent_batches_raise_once_and_lower_after_the_last() -> None:
    async def run() -> None:
        w = Writer()
        g = GroupPriority(1, write=w)
        await g.start()
        first_done = asyncio.Event()

        async def urgent(hold: float, done: asyncio.Event | None = None) -> None:
            async with g.urgent():
                await asyncio.sleep(hold)
            if done is not None:
                done.set()

        second = asyncio.create_task(urgent(0.3))
        await urgent(0.01, first_done)
        await asyncio.sleep(CHANGE_INTERVAL_S + 0.05)
        assert w.values == [BACKGROUND, URGENT]  # the second batch still runs
        await second
        await settle(g)
        assert w.values == [BACKGROUND, URGENT, BACKGROUND]

    asyncio.run(run())


def test_eagain_is_retried() -> None:
    async def run() -> None:
        w = Writer(busy=3)
        g = GroupPriority(1, write=w)
        assert await g.start()
        assert w.values == [BACKGROUND]

    asyncio.run(run())


def test_without_autogroup_nothing_is_written_and_urgent_work_still_runs() -> None:
    async def run() -> None:
        w = Writer(error=FileNotFoundError(2, "No such file or directory"))
        g = GroupPriority(1, write=w)
        assert not await g.start()
        async with g.urgent():
            pass
        assert not g.available and w.writes == []

    asyncio.run(run())
