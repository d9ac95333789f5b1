"""The coordinator's side of the hot standby: every op is sent to the standby, in order, before
the coordinator acknowledges what caused it (group commit: ops that pile up while a send is in
flight go out together in the next one).

A standby that is new, or that missed ops, first gets a full snapshot. A standby that does not
answer within MIRROR_TIMEOUT_S is dropped from the link (the coordinator carries on alone and
re-sends a snapshot once it answers again), so a slow or dead standby never stalls the jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from idunno.control.rpc import Rpc, RpcError

MIRROR_PATH = "/v1/internal/control/mirror"
MIRROR_TIMEOUT_S = 1.0


class MirrorLink:
    def __init__(
        self,
        rpc: Rpc,
        epoch: int,
        owner: str,
        snapshot: Callable[[], dict[str, Any]],
        log: Callable[..., None],
    ) -> None:
        self._rpc = rpc
        self._epoch = epoch
        self._owner = owner
        self._snapshot = snapshot
        self._log = log
        self.target: tuple[str, str] | None = None  # (name, address)
        self.in_sync = False
        self._queue: list[tuple[int, list[dict[str, Any]], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mirror")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._release()

    def set_target(self, name: str | None, addr: str | None) -> None:
        new = (name, addr) if name and addr else None
        if new != self.target:
            self.target = new
            self.in_sync = False
            self._wake.set()

    def resync(self) -> None:
        """Send a full snapshot next (the state changed other than through ops)."""
        self.in_sync = False
        self._wake.set()

    def send(self, first: int, ops: list[dict[str, Any]]) -> asyncio.Future[None]:
        """Queue `ops` (numbered from `first`) for the standby, in the order they were applied:
        call it right after applying them, with no await in between. The future is done when
        the standby applied them, or the link dropped."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.target is None:
            done.set_result(None)
            return done
        self._queue.append((first, ops, done))
        self._wake.set()
        return done

    def _release(self) -> None:
        _resolve(self._queue)
        self._queue.clear()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            target = self.target
            if target is None:
                self._release()
                continue
            name, addr = target
            inflight: list[tuple[int, list[dict[str, Any]], asyncio.Future[None]]] = []
            try:
                if not self.in_sync:
                    # The snapshot already holds every op applied so far, queued ones included.
                    inflight, self._queue = self._queue, []
                    await self._rpc.call(
                        addr,
                        MIRROR_PATH,
                        {
                            "epoch": self._epoch,
                            "coordinator": self._owner,
                            "snapshot": self._snapshot(),
                        },
                        MIRROR_TIMEOUT_S * 5,
                    )
                    self.in_sync = True
                    self._log("standby_synced", standby=name, epoch=self._epoch)
                    _resolve(inflight)
                if self._queue:
                    inflight, self._queue = self._queue, []
                    ops = [op for _, o, _ in inflight for op in o]
                    await self._rpc.call(
                        addr,
                        MIRROR_PATH,
                        {
                            "epoch": self._epoch,
                            "coordinator": self._owner,
                            "first": inflight[0][0],
                            "ops": ops,
                        },
                        MIRROR_TIMEOUT_S,
                    )
                    _resolve(inflight)
            except RpcError as exc:
                if self.in_sync:
                    self._log("standby_lagging", level="warning", standby=name, detail=str(exc))
                self.in_sync = False
                _resolve(inflight)
                self._release()
                await asyncio.sleep(0.5)  # retry with a snapshot, without spinning
                self._wake.set()


def _resolve(entries: list[tuple[int, list[dict[str, Any]], asyncio.Future[None]]]) -> None:
    for _, _, fut in entries:
        if not fut.done():
            fut.set_result(None)
