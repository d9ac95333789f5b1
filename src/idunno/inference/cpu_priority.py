"""CPU priority for the executor's work: ordinary batches are background work, a new job's first
query (urgent) is not. Linux only, best effort, no privilege needed.

Two levels, because Linux schedules in two:
- Threads: on Linux nice is per thread. The threads running ordinary batches raise their own
  nice (`lower_thread_priority`); the thread running urgent batches keeps the process's, so in
  one process the kernel gives it ~9/10 of a core the two share.
- Scheduling groups: with autogroup (kernel.sched_autogroup_enabled, the default on most
  distributions) every session is a group and groups share the CPU equally whatever the nice
  values inside them. The executor therefore runs in a session of its own and its node keeps
  that group's nice at BACKGROUND (weight 110, against 1024 for a nice-0 group such as the
  node's) except while an urgent batch runs (`GroupPriority`, driven from the node's event
  loop, so the group is raised before the request reaches the child). Without it, six nodes
  on two cores give an urgent query a third of a core at best.
The kernel lets an unprivileged process change an autogroup's nice once per 100 ms machine-wide
(EAGAIN otherwise) and never below 0: raising retries briefly, the return to background waits
out the interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

BACKGROUND: Final = 10  # the executor's scheduling group between urgent batches
URGENT: Final = 0  # ... and while one runs (the lowest nice allowed without privilege)
CHANGE_INTERVAL_S: Final = 0.11  # the kernel's limit is one change per 100 ms
RAISE_WAIT_S: Final = 0.05  # an urgent batch waits at most this long for its raise
START_WAIT_S: Final = 1.0
RETRY_S: Final = 0.005


def lower_thread_priority(step: int) -> None:
    """Raise the calling thread's nice value by `step`; threads it starts later (ONNX Runtime's
    pools) inherit it."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + step)


def enter_background(process_nice: int, group_nice: int, wait_s: float = 0.25) -> None:
    """Lower the calling process (`process_nice` more) and its session's scheduling group (to
    `group_nice`) at once, best effort: for a process that starts in a session of its own,
    whose fresh group would otherwise weigh like a nice-0 one until its parent lowers it."""
    with contextlib.suppress(OSError):
        os.nice(process_nice)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            write_group_nice(autogroup_path(os.getpid()), group_nice)
            return
        except BlockingIOError:  # another group changed within 100 ms: try again shortly
            if time.monotonic() >= deadline:
                return
            time.sleep(RETRY_S)
        except OSError:  # no autogroups here
            return


def autogroup_path(pid: int) -> str:
    return f"/proc/{pid}/autogroup"


def write_group_nice(path: str, value: int) -> None:
    """Set an autogroup's nice; BlockingIOError if one was changed too recently (anywhere)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


class GroupPriority:
    """The scheduling group of process `pid` (a session leader): BACKGROUND, and URGENT while
    any `urgent()` block runs. Writes go through `write(value)`: BlockingIOError means try
    again later; any other OSError that groups are unavailable here (no autogroup, or the
    process is gone), after which this does nothing."""

    def __init__(
        self,
        pid: int,
        write: Callable[[str, int], None] = write_group_nice,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = autogroup_path(pid)
        self._write, self._clock = write, clock
        self._urgent = 0
        self._raised = False
        self._changed = float("-inf")
        self._lowering: asyncio.Task[None] | None = None
        self.available = True

    async def start(self) -> bool:
        """Put the group at BACKGROUND; False if that is impossible here."""
        return await self._set(BACKGROUND, self._clock() + START_WAIT_S)

    @contextlib.asynccontextmanager
    async def urgent(self) -> AsyncIterator[None]:
        self._urgent += 1
        try:
            if not self._raised:
                self._raised = await self._set(URGENT, self._clock() + RAISE_WAIT_S)
            yield
        finally:
            self._urgent -= 1
            if self._urgent == 0 and self._raised and self._lowering is None:
                self._lowering = asyncio.ensure_future(self._lower())

    async def _lower(self) -> None:
        try:
            while self._urgent == 0 and self._raised and self.available:
                wait = self._changed + CHANGE_INTERVAL_S - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                if self._try(BACKGROUND):
                    self._raised = False
                    return
                await asyncio.sleep(RETRY_S)
        finally:
            self._lowering = None

    async def _set(self, value: int, deadline: float) -> bool:
        while self.available:
            if self._try(value):
                return True
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(RETRY_S)
        return False

    def _try(self, value: int) -> bool:
        try:
            self._write(self._path, value)
        except BlockingIOError:
            return False
        except OSError:
            self.available = False
            return False
        self._changed = self._clock()
        return True
