"""What the dashboard shows, built once per second per node however many pages watch it.

A snapshot (the `snapshot` event of /v1/dashboard/stream, and GET /v1/dashboard/snapshot):

    {"t": unix time, "node": this node, "interval_s": 1.0,
     "members": [{"id", "address", "status", "role" (coordinator|standby|worker, null once
                  failed or left), "jobs": [ids of the jobs it holds batches of]}],
     "counts": {"alive": n, "suspect": n, "failed": n, "left": n},
     "control": {"epoch", "coordinator", "standby"},
     "jobs": [{"id", "name", "model", "dataset", "status", "batch_size", "weight", "total",
               "done", "errors", "rate", "share", "workers", "submitted_at", "finished_at"}],
     "jobs_hidden": finished jobs left out, "jobs_note": why there are no jobs, or null,
     "store": {"at": unix time measured, "nodes": [{"id", "files", "bytes"}], "note"},
     "events": [{"ts", "node", "event", "level", "count", "text"}]}   (newest first, <= 20)

Jobs come from the coordinator: here when this node leads, else from its
GET /v1/dashboard/coordinator (one request per second, and only while someone watches). Store
usage is every node's inventory, asked for at most every 5 s in the background. Each job's rate
is also kept for the last 2 minutes, so a page that connects gets the chart's history first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import aiohttp

from idunno.dashboard import events as ev
from idunno.node.logs import LOG_FILE
from idunno.transport import tokens

if TYPE_CHECKING:
    from idunno.control.coordinator import Coordinator
    from idunno.control.plane import ControlPlane
    from idunno.node.server import Node

INTERVAL_S = 1.0
STORE_EVERY_S = 5.0
HISTORY_S = 120.0
COORDINATOR_TIMEOUT_S = 2.0
MAX_JOBS = 20  # every running job, then the newest finished ones up to this many
EVENTS_SHOWN = 20
COORDINATOR_PATH = "/v1/dashboard/coordinator"
QUEUE_DEPTH = 2  # snapshots waiting for a slow page; older ones are dropped


def _round(x: Any, digits: int) -> float:
    try:
        return round(float(x), digits)
    except (TypeError, ValueError):
        return 0.0


def job_row(job: dict[str, Any], share: float) -> dict[str, Any]:
    return {
        "id": job.get("id"),
        "name": job.get("name"),
        "model": job.get("model"),
        "dataset": job.get("dataset"),
        "status": job.get("status"),
        "batch_size": job.get("batch_size"),
        "weight": job.get("weight"),
        "total": job.get("total"),
        "done": job.get("done"),
        "errors": job.get("errors"),
        "rate": _round(job.get("rate"), 2),
        "share": _round(share, 3),
        "workers": list(job.get("workers") or []),
        "submitted_at": job.get("submitted_at"),
        "finished_at": job.get("finished_at"),
    }


def pick_jobs(
    jobs: list[dict[str, Any]], limit: int = MAX_JOBS
) -> tuple[list[dict[str, Any]], int]:
    """Running jobs (oldest first), then finished ones (newest first), at most `limit` unless
    more are running; returns them and how many finished ones were left out."""
    running = sorted(
        (j for j in jobs if j.get("status") == "running"),
        key=lambda j: float(j.get("submitted_at") or 0),
    )
    finished = sorted(
        (j for j in jobs if j.get("status") != "running"),
        key=lambda j: float(j.get("finished_at") or j.get("submitted_at") or 0),
        reverse=True,
    )
    room = max(0, limit - len(running))
    return running + finished[:room], max(0, len(finished) - room)


def coordinator_view(c: Coordinator, plane: ControlPlane, tail: ev.LogTail) -> dict[str, Any]:
    """What the coordinator tells the dashboards of the other nodes (and its own)."""
    assignment = c.assignment()
    shares = {j["id"]: float(j.get("share") or 0.0) for j in assignment["jobs"]}
    jobs, hidden = pick_jobs(c.jobs_view())
    return {
        "epoch": c.epoch,
        "coordinator": c.me,
        "standby": plane.reign.standby if plane.reign else None,
        "jobs": [job_row(j, shares.get(str(j.get("id")), 0.0)) for j in jobs],
        "jobs_hidden": hidden,
        "workers": assignment["workers"],
        "events": [e for e in tail.recent(ev.KEEP) if e["event"] in ev.COORDINATOR_EVENTS],
    }


def sse(event: str, data: Any) -> bytes:
    """One server-sent event (JSON on one line)."""
    text = json.dumps(data, separators=(",", ":"), default=str)
    return f"event: {event}\ndata: {text}\n\n".encode()


class Hub:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.tail = ev.LogTail(node.data_dir / LOG_FILE)
        self._tail_lock = asyncio.Lock()
        self._subs: set[asyncio.Queue[bytes | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._store_task: asyncio.Task[None] | None = None
        self._store: dict[str, Any] = {"at": None, "nodes": [], "note": "not measured yet"}
        self._store_at = 0.0
        self._rates: dict[str, deque[tuple[float, float]]] = {}
        self.latest: dict[str, Any] | None = None
        self.closed = False

    # --- subscribers ------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[bytes | None]:
        q: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=QUEUE_DEPTH)
        if self.closed:
            q.put_nowait(None)
            return q
        self._subs.add(q)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="dashboard-hub")
        return q

    def unsubscribe(self, q: asyncio.Queue[bytes | None]) -> None:
        self._subs.discard(q)

    @property
    def watchers(self) -> int:
        return len(self._subs)

    def history(self) -> dict[str, Any]:
        """Each job's (time, rate) over the last HISTORY_S seconds this node has watched."""
        since = time.time() - HISTORY_S
        return {
            "window_s": HISTORY_S,
            "series": {j: [[t, r] for t, r in s if t >= since] for j, s in self._rates.items()},
        }

    async def close(self) -> None:
        """The node stops: every stream ends (each gets None), the loop and refresh stop."""
        self.closed = True
        for q in list(self._subs):
            _offer(q, None)
        self._subs.clear()
        for task in (self._task, self._store_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._subs and not self.closed:
            started = loop.time()
            try:
                snap = await self.build()
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a bug: logged, the loop goes on
                self.node.log("dashboard_error", level="error", error=repr(exc)[:300])
                await asyncio.sleep(INTERVAL_S)
                continue
            self._sample(snap)
            message = sse("snapshot", snap)
            for q in list(self._subs):
                _offer(q, message)
            await asyncio.sleep(max(0.05, INTERVAL_S - (loop.time() - started)))

    def _sample(self, snap: dict[str, Any]) -> None:
        t = float(snap["t"])
        listed = set()
        for job in snap["jobs"]:
            job_id = str(job["id"])
            listed.add(job_id)
            series = self._rates.setdefault(job_id, deque())
            series.append((round(t, 3), float(job["rate"])))
            while series and series[0][0] < t - HISTORY_S:
                series.popleft()
        for job_id in set(self._rates) - listed:
            del self._rates[job_id]

    # --- building a snapshot --------------------------------------------------------------

    async def build(self) -> dict[str, Any]:
        node = self.node
        now = time.time()
        plane = node.control
        reign = plane.reign
        async with self._tail_lock:
            await asyncio.to_thread(self.tail.poll)
        coord = await self._coordinator()
        if self._store_at == 0.0:
            await self._refresh_store()  # the first snapshot shows it already
        elif now - self._store_at >= STORE_EVERY_S and (
            self._store_task is None or self._store_task.done()
        ):
            self._store_task = asyncio.create_task(self._refresh_store())
        holding = coord.get("workers") or {}
        members = []
        counts = {"alive": 0, "suspect": 0, "failed": 0, "left": 0}
        for m in sorted(node.membership.core.members.values(), key=lambda m: m.name):
            status = m.status.value
            counts[status] = counts.get(status, 0) + 1
            members.append(
                {
                    "id": m.name,
                    "address": m.addr,
                    "status": status,
                    "role": plane.role_of(m.name) if status in ("alive", "suspect") else None,
                    "jobs": list(holding.get(m.name, [])),
                }
            )
        jobs = coord.get("jobs") or []
        names = {str(j["id"]): str(j["name"]) for j in jobs}
        recent = ev.merge(self.tail.recent(ev.KEEP), coord.get("events") or [], EVENTS_SHOWN)
        for e in recent:
            e["text"] = ev.describe(e, names)
        snap = {
            "t": round(now, 3),
            "node": node.name,
            "interval_s": INTERVAL_S,
            "members": members,
            "counts": counts,
            "control": {
                "epoch": coord.get("epoch", reign.epoch if reign else 0),
                "coordinator": coord.get("coordinator", reign.coordinator if reign else None),
                "standby": coord.get("standby", reign.standby if reign else None),
            },
            "jobs": jobs,
            "jobs_hidden": int(coord.get("jobs_hidden") or 0),
            "jobs_note": coord.get("note"),
            "store": self._store,
            "events": recent,
        }
        self.latest = snap
        return snap

    async def _coordinator(self) -> dict[str, Any]:
        """The coordinator's view (jobs, assignment, its events), or {"note": why not}."""
        plane = self.node.control
        c = plane.coordinator
        if c is not None and not c.deposed:
            return coordinator_view(c, plane, self.tail)
        addr = plane.coordinator_addr()
        if addr is None:
            return {"note": "no coordinator yet (an election or failover is under way)"}
        headers = {"Authorization": f"Bearer {tokens.mint(self.node.opts.key, ttl=60)}"}
        try:
            async with plane.rpc.session.get(
                f"http://{addr}{COORDINATOR_PATH}",
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=COORDINATOR_TIMEOUT_S),
            ) as r:
                body = await r.json(content_type=None)
                if r.status != 200 or not isinstance(body, dict):
                    error = body.get("error") if isinstance(body, dict) else None
                    return {"note": f"the coordinator at {addr} answered {r.status}: {error}"}
                return body
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            why = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)[:120]
            return {"note": f"the coordinator at {addr} did not answer ({why}): retrying"}

    async def coordinator_answer(self) -> dict[str, Any] | None:
        """GET /v1/dashboard/coordinator: the view above if this node leads, else None."""
        plane = self.node.control
        c = plane.coordinator
        if c is None or c.deposed:
            return None
        async with self._tail_lock:
            await asyncio.to_thread(self.tail.poll)
        return coordinator_view(c, plane, self.tail)

    async def _refresh_store(self) -> None:
        node = self.node
        self._store_at = time.time()
        live = node.live_view()
        try:
            inventories = await node.store.inventory_everywhere()
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # the store is stopping, or a bug: shown, not fatal
            self._store = {**self._store, "note": f"cannot measure: {exc}"[:200]}
            return
        rows: list[dict[str, Any]] = []
        for member in sorted(live):
            inv = inventories.get(member)
            if inv is None:
                rows.append({"id": member, "files": None, "bytes": None})
                continue
            files = sum(1 for meta in inv.values() if meta.get("versions"))
            size = sum(int(v.get("size", 0)) for m in inv.values() for v in m.get("versions", []))
            rows.append({"id": member, "files": files, "bytes": size})
        self._store = {"at": round(self._store_at, 3), "nodes": rows, "note": None}


def _offer(q: asyncio.Queue[bytes | None], item: bytes | None) -> None:
    """Queue without waiting: a page that reads slowly loses its oldest snapshot."""
    while True:
        try:
            q.put_nowait(item)
            return
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                q.get_nowait()
