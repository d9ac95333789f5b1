"""Every node's control plane: follows the current reign, stands by when named standby, and
takes over as coordinator when `roles.choose_coordinator` picks it.

Failover paths:
- hot: the standby holds the mirrored state; it watches the coordinator over a long-lived HTTP
  stream, and when that stream breaks and the coordinator's port refuses connections (the
  process is gone), it takes over at once instead of waiting for the failure detector;
- cold: when the coordinator and the standby are both gone, the node the rule picks rebuilds
  from the store (job specs and flushed results); unflushed results are simply run again.
Either way the new coordinator first claims an epoch (a put of `_control/epoch`; the version
the store assigns is the epoch) and announces it to every live node, whose fences then refuse
the old reign.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from idunno.control import durable, roles
from idunno.control.coordinator import Coordinator
from idunno.control.fence import Fence, StaleEpoch
from idunno.control.mirror import MirrorLink
from idunno.control.roles import Reign
from idunno.control.rpc import Rpc, RpcError, refuses_connections
from idunno.control.scheduler import JobStatus
from idunno.control.state import ControlState, JobSpec
from idunno.membership.core import MemberChanged
from idunno.membership.messages import Status
from idunno.store.service import NotFound

REIGN_PATH = "/v1/internal/control/reign"
WATCH_PATH = "/v1/internal/control/watch"
STEP_S = 0.25  # how often the rule is re-evaluated without any event
ANNOUNCE_TIMEOUT_S = 1.0
WATCH_BEAT_S = 0.3
PRESUMED_DEAD_S = 10.0
BATCH_ID_BITS = 32
REREAD_S = (
    3.0  # a follower re-reads _control/epoch this often  # long enough for membership to confirm it
)

LogFn = Callable[..., None]


class ControlPlane:
    def __init__(
        self,
        me: str,
        store: Any,  # StoreService
        rpc: Rpc,
        live: Callable[[], dict[str, str]],
        fence: Fence,
        log: LogFn,
    ) -> None:
        self.me = me
        self.store = store
        self.rpc = rpc
        self._live = live
        self.fence = fence
        self.log = log
        self.reign: Reign | None = None
        self.coordinator: Coordinator | None = None
        self.mirror_state: ControlState | None = None
        self.mirror_epoch = 0
        self._presumed_dead: dict[str, float] = {}
        self._epoch_read = False
        self._reread_at = 0.0
        self._view_changed_at = time.monotonic()  # for roles.first_claim_waits
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._reread: asyncio.Task[None] | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_batch_done: Callable[[str, str, float], None] | None = None  # for /metrics

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="control-plane")

    async def stop(self) -> None:
        self._stopping = True
        tasks = [t for t in (self._task, self._watch, self._reread) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._step_down("node stopping")

    def kick(self) -> None:
        self._kick.set()

    def on_member_change(self, change: MemberChanged) -> None:
        self._view_changed_at = time.monotonic()
        if change.new in (Status.FAILED, Status.LEFT):
            if self.coordinator is not None:
                self.coordinator.worker_failed(change.name)
        elif change.new == Status.ALIVE and self.coordinator is not None and self.reign:
            # A node that joins or comes back learns the reign at once (a deposed coordinator
            # back from a pause steps down), then gets work (training first).
            self.coordinator.spawn(self._announce_to(change.addr, self.reign), "announce")
            self.coordinator.pump()
        self.kick()

    # --- views -----------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.coordinator is not None

    def presumed_dead(self) -> frozenset[str]:
        now = time.monotonic()
        for name, until in list(self._presumed_dead.items()):
            if until < now:
                del self._presumed_dead[name]
        return frozenset(self._presumed_dead)

    def live(self) -> dict[str, str]:
        gone = self.presumed_dead()
        return {n: a for n, a in self._live().items() if n not in gone}

    def role_of(self, member: str) -> str:
        return roles.role_of(member, self.reign, self.live())

    def coordinator_addr(self) -> str | None:
        if self.reign is None:
            return None
        return self.live().get(self.reign.coordinator)

    # --- the rule --------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), STEP_S)
            self._kick.clear()
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad round must not end the control plane
                self.log("control_step_failed", level="warning", detail=str(exc)[:300])
                await asyncio.sleep(0.5)

    async def _step(self) -> None:
        live = self.live()
        known = self.reign.key[:2] if self.reign else (0, "")
        stale = self.fence.token > known or time.monotonic() > self._reread_at
        if self.coordinator is None and stale and self._epoch_read:
            # A node that missed an announcement (it was cut off, or the announcer died right
            # after claiming) learns the reign from the store: at once if its fence has seen a
            # newer token, else every REREAD_S. In the background: a store read can wait seconds
            # on a paused node, and the rule must keep running meanwhile (a takeover is due).
            self._reread_at = time.monotonic() + REREAD_S
            if self._reread is None or self._reread.done():
                self._reread = asyncio.create_task(self._refresh_reign(), name="reread-reign")
        if not self._epoch_read:
            await self._read_epoch_file()
            if not self._epoch_read:
                return
        if self.coordinator is not None:
            await self._keep_standby(live)
            return
        if roles.choose_coordinator(self.reign, live) == self.me:
            if self.reign is None and not await self._no_reign_after_settling():
                return
            await self._claim(live)
        elif self.reign is not None and self.reign.standby == self.me:
            self._ensure_watch()

    async def _no_reign_after_settling(self) -> bool:
        """True once this node's view has settled (`roles.first_claim_waits`) and a fresh read
        of the epoch file, from that view, still finds no reign: a first claim may go ahead."""
        if roles.first_claim_waits(self.reign, time.monotonic() - self._view_changed_at):
            return False
        return await self._read_epoch_file() and self.reign is None

    async def _read_epoch_file(self) -> bool:
        """Adopt the reign in the store's epoch file; False when the store could not answer."""
        try:
            v, data = await self.store.read_bytes(durable.EPOCH_FILE, None)
        except NotFound:
            self._epoch_read = True
            self._reread_at = time.monotonic() + REREAD_S
            return True
        except Exception:  # too few nodes for the store yet: try again next round
            return False
        doc = json.loads(data)
        self._adopt(Reign(v.version, str(doc["coordinator"]), doc.get("standby")))
        self._epoch_read = True
        self._reread_at = time.monotonic() + REREAD_S
        return True

    async def _refresh_reign(self) -> None:
        before = self.reign
        await self._read_epoch_file()
        if self.reign != before:
            self.kick()

    def _adopt(self, reign: Reign) -> None:
        self.reign = roles.newer(self.reign, reign)

    async def _claim(self, live: dict[str, str]) -> None:
        previous = self.reign
        standby = roles.choose_standby(previous, self.me, live)
        doc = {"coordinator": self.me, "standby": standby, "claimed_at": time.time()}
        epoch = 0
        # The store numbers the claim one above the versions live nodes hold; if the previous
        # reign's copies all died with it, that number may not exceed the epoch this node has
        # already seen announced: claim again until it does (each put numbers one higher).
        for _ in range(3):
            try:
                epoch = await self.store.put_bytes(durable.EPOCH_FILE, durable.dump_json(doc))
            except Exception as exc:
                self.log("claim_failed", level="warning", detail=str(exc)[:300])
                return
            if epoch > self.fence.epoch:
                break
        else:
            self.log("claim_failed", level="warning", detail=f"epoch {epoch} not above fence")
            return
        try:
            self.fence.admit(epoch, self.me)
        except StaleEpoch:
            return  # a newer reign started meanwhile: follow it
        hot = (
            self.mirror_state is not None
            and previous is not None
            and previous.standby == self.me
            and self.mirror_epoch == previous.epoch
        )
        t0 = time.monotonic()
        state = self.mirror_state if hot and self.mirror_state is not None else None
        if state is None:
            state = await self._rebuild()
        self.mirror_state = None
        await self._step_down("a new reign starts")  # never two live instances on one node
        reign = Reign(epoch, self.me, standby)
        self.reign = reign
        mirror = MirrorLink(self.rpc, epoch, self.me, state.snapshot, self.log)
        coordinator = self.coordinator = Coordinator(
            self.me,
            epoch,
            state,
            self.store,
            self.rpc,
            self.live,
            mirror,
            self.log,
            functools.partial(self._deposed_at, epoch),
        )
        coordinator.on_batch_done = self.on_batch_done
        # Announced while work already resumes: workers learn the new token from its first
        # batches anyway, and a 409 from any node deposes this reign through `_deposed`.
        coordinator.spawn(self._announce(reign), "announce")
        mirror.set_target(standby, live.get(standby) if standby else None)
        # Batch ids carry the epoch in their high bits, so no two reigns reuse one.
        state.scheduler.number_from(epoch << BATCH_ID_BITS)
        # Batches the previous reign sent are still running on their workers: a hot takeover
        # collects their replies; a cold one knows none (its state has no batches in flight).
        stale = list(state.scheduler.batches)
        coordinator.start()
        coordinator.adopt(stale)
        self.log(
            "coordinator_elected",
            epoch=epoch,
            takeover="hot" if hot else "cold",
            previous=previous.coordinator if previous else None,
            standby=standby,
            jobs=len(state.books),
            adopted=len(stale),
            took_ms=round((time.monotonic() - t0) * 1000, 1),
        )
        if hot:
            coordinator.spawn(self._reconcile(), "reconcile")

    async def _keep_standby(self, live: dict[str, str]) -> None:
        assert self.coordinator is not None and self.reign is not None
        standby = roles.choose_standby(self.reign, self.me, live)
        if standby != self.reign.standby:
            self.reign = Reign(self.reign.epoch, self.me, standby, self.reign.seq + 1)
            await self._announce(self.reign)
            self.log("standby_chosen", standby=standby, epoch=self.reign.epoch)
        target = self.coordinator.mirror.target
        addr = live.get(standby) if standby else None
        if target != ((standby, addr) if standby and addr else None):
            self.coordinator.mirror.set_target(standby, addr)

    async def _announce(self, reign: Reign) -> None:
        live = self.live()
        await asyncio.gather(
            *(self._announce_to(a, reign) for n, a in live.items() if n != self.me)
        )

    async def _announce_to(self, addr: str, reign: Reign) -> None:
        try:
            await self.rpc.call(addr, REIGN_PATH, reign.to_json(), ANNOUNCE_TIMEOUT_S)
        except RpcError as exc:
            if exc.status == 409:
                self._deposed_at(reign.epoch, str(exc))

    def _deposed_at(self, epoch: int, why: str) -> None:
        """A node refused reign `epoch` (409): step down if that is still this node's reign. A
        refusal that reaches an older reign's leftovers must not depose the current one, or
        every new reign is deposed by the last one's stragglers and claims the next epoch."""
        if self.coordinator is not None and self.coordinator.epoch == epoch:
            self._deposed(why)

    def _deposed(self, why: str) -> None:
        if self.coordinator is not None:
            self.log(
                "coordinator_deposed",
                level="warning",
                epoch=self.coordinator.epoch,
                detail=why[:300],
            )
            # Stop this very instance: by the time a task would run, a new claim may have
            # replaced self.coordinator, and that one must be neither stopped nor orphaned.
            coordinator, self.coordinator = self.coordinator, None
            task = asyncio.ensure_future(coordinator.stop())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self._epoch_read = False  # learn who leads now

    async def _step_down(self, why: str) -> None:
        coordinator, self.coordinator = self.coordinator, None
        if coordinator is not None:
            await coordinator.stop()

    # --- rebuilding from the store ---------------------------------------------------------

    async def _rebuild(self) -> ControlState:
        state = ControlState()
        for spec, status, batch_size, results in await self._durable_jobs():
            state.restore(spec, results, status)
            if state.scheduler.jobs[spec.id].status == JobStatus.RUNNING:
                state.scheduler.set_batch_size(spec.id, batch_size)
        return state

    async def _durable_jobs(self) -> list[tuple[JobSpec, str, int, list[dict[str, Any]]]]:
        names = await self.store.names(durable.JOBS_PREFIX)
        segments = await self.store.names("jobs/")
        out = []
        for job_id in durable.job_ids(names):
            _, data = await self.store.read_bytes(durable.spec_file(job_id), None)
            doc = json.loads(data)
            results: list[dict[str, Any]] = []
            for seg in durable.segments_of(job_id, segments):
                _, raw = await self.store.read_bytes(seg, None)
                results.extend(durable.decode_segment(raw))
            out.append(
                (JobSpec.from_json(doc), str(doc["status"]), int(doc["batch_size"]), results)
            )
        return out

    async def _reconcile(self) -> None:
        """After a hot takeover: pick up durable changes the standby may have missed (a job
        acknowledged while the mirror link was down, a cancel, a batch-size change)."""
        coordinator = self.coordinator
        if coordinator is None:
            return
        missing: list[str] = []
        try:
            names = await self.store.names(durable.JOBS_PREFIX)
            missing = [j for j in durable.job_ids(names) if j not in coordinator.state.books]
            for job_id in list(coordinator.state.books) + missing:
                _, data = await self.store.read_bytes(durable.spec_file(job_id), None)
                doc = json.loads(data)
                if job_id in missing:
                    segments = await self.store.names(durable.results_prefix(job_id))
                    results: list[dict[str, Any]] = []
                    for seg in segments:
                        _, raw = await self.store.read_bytes(seg, None)
                        results.extend(durable.decode_segment(raw))
                    coordinator.state.restore(JobSpec.from_json(doc), results, doc["status"])
                    self.log("job_recovered", job=job_id)
                    continue
                job = coordinator.state.scheduler.jobs[job_id]
                if doc["status"] == "cancelled" and job.status == JobStatus.RUNNING:
                    await coordinator.commit([{"op": "cancel", "job": job_id, "t": time.time()}])
                elif job.status == JobStatus.RUNNING and job.batch_size != doc["batch_size"]:
                    await coordinator.commit(
                        [{"op": "batch_size", "job": job_id, "n": int(doc["batch_size"])}]
                    )
        except Exception as exc:
            self.log("reconcile_failed", level="warning", detail=str(exc)[:300])
        if missing:
            coordinator.mirror.resync()  # restores are not ops: the standby needs a snapshot
        coordinator.pump()

    # --- follower side ---------------------------------------------------------------------

    def receive_reign(self, body: dict[str, Any]) -> dict[str, Any]:
        reign = Reign.from_json(body)
        self.fence.admit(reign.epoch, reign.coordinator)  # StaleEpoch -> 409
        mine = self.reign
        if self.coordinator is not None and mine is not None and reign.key[:2] > mine.key[:2]:
            self._deposed(f"epoch {reign.epoch} announced by {reign.coordinator}")
        self._adopt(reign)
        self._epoch_read = True
        self.kick()
        return {"epoch": self.fence.epoch}

    def receive_mirror(self, body: dict[str, Any]) -> dict[str, Any]:
        epoch = int(body["epoch"])
        self.fence.admit(epoch, str(body.get("coordinator") or ""))
        if "snapshot" in body:
            self.mirror_state = ControlState.from_snapshot(body["snapshot"])
            self.mirror_epoch = epoch
            return {"applied": self.mirror_state.applied}
        state = self.mirror_state
        if state is None or self.mirror_epoch != epoch or int(body["first"]) != state.applied:
            raise StaleEpoch("standby out of sync: send a snapshot")
        for op in body["ops"]:
            state.apply(op)
        return {"applied": state.applied}

    def _ensure_watch(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watch_coordinator(), name="watch")

    async def _watch_coordinator(self) -> None:
        """Hold a stream open to the coordinator; if it breaks and the coordinator's port
        refuses connections, its process is gone: take over without waiting for membership."""
        while not self._stopping and self.reign is not None and self.reign.standby == self.me:
            reign = self.reign
            addr = self.live().get(reign.coordinator)
            if addr is None:
                return
            try:
                async with self.rpc.session.get(
                    f"http://{addr}{WATCH_PATH}?epoch={reign.epoch}",
                    headers=self.rpc.headers(),
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=WATCH_BEAT_S * 10),
                ) as r:
                    if r.status != 200:
                        await asyncio.sleep(0.5)
                        continue
                    async for _ in r.content.iter_any():
                        pass
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            if await refuses_connections(addr):
                self.log(
                    "coordinator_gone",
                    level="warning",
                    coordinator=reign.coordinator,
                    epoch=reign.epoch,
                )
                self._presumed_dead[reign.coordinator] = time.monotonic() + PRESUMED_DEAD_S
                self.kick()
                return
            await asyncio.sleep(0.2)

    async def watch_stream(self, writer: Callable[[bytes], Any], epoch: int) -> None:
        """The coordinator's side of the watch: a beat every WATCH_BEAT_S while it leads."""
        while self.coordinator is not None and self.coordinator.epoch == epoch:
            await writer(b".")
            await asyncio.sleep(WATCH_BEAT_S)
