"""The coordinator of one reign (epoch): jobs, dispatch to workers, results, durability.

It exists only while its node leads. Every change goes through `_commit`: applied to the pure
`ControlState`, sent to the standby (`MirrorLink`) and only then acknowledged. Dispatch: each
batch is one HTTP request to the worker, answered with the results, so a worker that dies
drops the connection and its batch is requeued at once; a silent worker (SIGSTOP) is requeued
when membership marks it failed. Results are flushed to the store about once a second, stamped
with the epoch so that a deposed coordinator can write nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from idunno.control import durable
from idunno.control.mirror import MirrorLink
from idunno.control.pacing import Pacing
from idunno.control.rpc import Rpc, RpcError, refuses_connections
from idunno.control.scheduler import MAX_BATCH, Batch, JobStatus, SchedulerError
from idunno.control.state import ControlState, JobSpec
from idunno.inference import catalog
from idunno.inference.refusals import EXECUTOR_LOST, NO_INFERENCE
from idunno.store.service import NotFound

RUN_PATH = "/v1/internal/work/run"
COLLECT_PATH = "/v1/internal/work/collect"
LOAD_PATH = "/v1/internal/work/load"
STATUS_PATH = "/v1/internal/work/status"
STATUS_TIMEOUT_S = 2.0
FLUSH_INTERVAL_S = 1.0
RUN_TIMEOUT_S = 120.0  # backstop only: failures are found by the connection or by membership
LOAD_TIMEOUT_S = 120.0
EXCLUDE_S = 0.5  # how often a worker whose connection failed is probed
TOP_K = 5
FIRST_BATCH = 1  # queries in a new job's urgent first batch
MAX_WEIGHT = 1000.0

LogFn = Callable[..., None]


class Deposed(Exception):
    """A worker or a store replica has seen a newer epoch: this reign is over."""


class JobError(ValueError):
    """Bad job input; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Coordinator:
    def __init__(
        self,
        me: str,
        epoch: int,
        state: ControlState,
        store: Any,  # StoreService: put_bytes, read_bytes, names
        rpc: Rpc,
        live: Callable[[], dict[str, str]],
        mirror: MirrorLink,
        log: LogFn,
        on_deposed: Callable[[str], None],
    ) -> None:
        self.me = me
        self.epoch = epoch
        self.state = state
        self.store = store
        self.rpc = rpc
        self.live = live
        self.mirror = mirror
        self.log = log
        self._on_deposed = on_deposed
        self.ready: dict[str, dict[str, int]] = {}  # worker -> model -> version loaded
        self.costs: dict[str, dict[str, float]] = {}  # worker -> model -> s/query
        self.disabled: set[str] = set()  # workers started with no inference threads
        self._training: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._excluded: dict[str, float] = {}  # worker -> when to probe it again
        self._probing: set[str] = set()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._seq = 0
        self._done_logged: set[str] = set()
        self._flush_now = asyncio.Event()  # a job has all its results: make them durable now
        self.deposed = False
        self.stopped = False
        # job, model, seconds from dispatch to accepted result: for /metrics
        self.on_batch_done: Callable[[str, str, float], None] | None = None
        self._last_reply: dict[str, float] = {}  # worker -> when its last batch came back
        self.pacing = Pacing()  # when a worker gets its queued batch (late binding)
        self._wakeups: dict[str, asyncio.TimerHandle] = {}  # worker -> pump() when it is due
        self._alongside: set[int] = set()  # urgent batches running next to a worker's batch
        self._names = 0
        self.started_at = time.time()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.mirror.start()
        self.spawn(self._flush_loop(), "flush")
        self.spawn(self._learn_loaded(), "learn-loaded")
        self.pump()

    async def _learn_loaded(self) -> None:
        """Which models each live worker has loaded already (a new reign knows none): without
        this, a job submitted after a takeover would wait for every worker to be asked to load
        its model, and its first batch would not go out as the urgent single query."""

        async def ask(worker: str, addr: str) -> None:
            try:
                status = await self.rpc.get(addr, STATUS_PATH, STATUS_TIMEOUT_S)
                loaded = {
                    str(name): (int(m["version"]), float(m["cost_per_query_s"]))
                    for name, m in dict(status.get("models") or {}).items()
                }
            except (RpcError, AttributeError, KeyError, TypeError, ValueError):
                return  # pump() asks it to load what a job needs, as for any new worker
            for name, (version, cost) in loaded.items():
                self.ready.setdefault(worker, {}).setdefault(name, version)
                self.costs.setdefault(worker, {}).setdefault(name, cost)

        await asyncio.gather(*(ask(w, a) for w, a in self.live().items()))

    async def stop(self) -> None:
        self.stopped = True  # from now on nothing is dispatched under this reign's epoch
        for timer in self._wakeups.values():
            timer.cancel()
        tasks = [*self._tasks, *self._running.values(), *self._training.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.mirror.stop()

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def commit(self, ops: list[dict[str, Any]]) -> list[list[int]]:
        """Apply ops and return once the standby has them too (the caller acknowledges after)."""
        out = [self.state.apply(op) for op in ops]
        # No await between applying and queueing: the standby gets ops in applied order.
        await self.mirror.send(self.state.applied - len(ops), ops)
        return out

    # --- jobs ------------------------------------------------------------------------------

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        model = catalog.validate_name(_field(body, "model", str), "model")
        dataset = catalog.validate_name(_field(body, "dataset", str), "dataset")
        batch_size = _field(body, "batch_size", int)
        if not 1 <= batch_size <= MAX_BATCH:
            raise JobError(f"batch size must be between 1 and {MAX_BATCH}, got {batch_size}")
        weight = body.get("weight", 1.0)
        if weight is None:
            weight = 1.0
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise JobError(f"weight must be a number, got {weight!r}")
        if not 0 < weight <= MAX_WEIGHT:
            raise JobError(f"weight must be above 0 and at most {MAX_WEIGHT:g}, got {weight:g}")
        name = body.get("name")
        if name is not None:
            name = catalog.validate_name(str(name), "job")
        record, manifest = await asyncio.gather(self._model_record(model), self._manifest(dataset))
        _check_fit(record, manifest)
        job_id = "j" + uuid.uuid4().hex[:8]
        if name is None:
            name = self._default_name(model)
        elif any(b.spec.name == name for b in self.state.books.values()):
            raise JobError(f"a job named {name!r} exists: choose another --name", 409)
        spec = JobSpec(
            id=job_id,
            name=name,
            model=model,
            model_version=record.version,
            preprocess=record.preprocess,
            dataset=dataset,
            item_ids=manifest.item_ids,
            shards=tuple(
                {"name": s.name, "version": s.version, "sha256": s.sha256, "count": n, "first": i}
                for s, i, n in manifest.shard_ranges()
            ),
            batch_size=batch_size,
            weight=weight,
            submitted_at=time.time(),
            labels=record.labels,
        )
        # The spec is made durable while the first batches already run: the submission is
        # acknowledged only once both the store and the standby have it, but its first result
        # does not wait for the store write.
        saving = asyncio.ensure_future(self._save_spec(spec, JobStatus.RUNNING, batch_size))
        op = {"op": "submit", "spec": spec.to_json(), "t": spec.submitted_at}
        self.state.apply(op)
        mirrored = self.mirror.send(self.state.applied - 1, [op])
        # No await since applying: the first batch goes out before any other event can hand
        # the new job a normal batch queued behind a worker's running one.
        self._first_batch(job_id)
        self.pump()
        try:
            await mirrored
            await saving
        except Exception:
            await self.commit([{"op": "drop", "job": job_id}])  # never acknowledged: undo it
            self.pump()
            raise
        self.log(
            "job_submitted",
            job=job_id,
            name=name,
            model=model,
            dataset=dataset,
            queries=spec.total,
            batch_size=batch_size,
        )
        return self.state.job_view(job_id, time.time())

    def _default_name(self, model: str) -> str:
        taken = {b.spec.name for b in self.state.books.values()}
        k = 1
        while f"{model}-{k}" in taken:
            k += 1
        return f"{model}-{k}"

    async def _model_record(self, model: str) -> catalog.ModelRecord:
        file = catalog.model_record_file(model)
        hint = "add it with `idunno model add` (`idunno model list` shows the models there are)"
        doc = await self._catalog_doc(file, f"unknown model {model!r}: {hint}")
        return catalog.ModelRecord.from_json(doc, file)

    async def _manifest(self, dataset: str) -> catalog.DatasetManifest:
        file = catalog.manifest_file(dataset)
        hint = (
            "add it with `idunno dataset add` or `idunno dataset sample` "
            "(`idunno dataset list` shows them)"
        )
        doc = await self._catalog_doc(file, f"unknown dataset {dataset!r}: {hint}")
        return catalog.DatasetManifest.from_json(doc, file)

    async def _catalog_doc(self, file: str, unknown: str) -> Any:
        try:
            _, data = await self.store.read_bytes(file, None)
        except NotFound:
            raise JobError(unknown, 404) from None
        return _json(data)

    async def _save_spec(self, spec: JobSpec, status: JobStatus, batch_size: int) -> None:
        doc = spec.to_json() | {"status": status.value, "batch_size": batch_size}
        await self._put(durable.spec_file(spec.id), durable.dump_json(doc))

    async def _put(self, name: str, data: bytes) -> int:
        try:
            version: int = await self.store.put_bytes(name, data, (self.epoch, self.me))
        except ValueError as exc:
            if "stale epoch" in str(exc):
                self._deposed(str(exc))
                raise Deposed(str(exc)) from None
            raise
        return version

    def resolve(self, key: str) -> str:
        try:
            return self.state.resolve(key)
        except SchedulerError as exc:
            raise JobError(str(exc), 404) from None

    async def cancel(self, key: str) -> dict[str, Any]:
        job_id = self.resolve(key)
        book = self.state.books[job_id]
        job = self.state.scheduler.jobs[job_id]
        if job.status == JobStatus.RUNNING:
            await self._save_spec(book.spec, JobStatus.CANCELLED, job.batch_size)
            await self.commit([{"op": "cancel", "job": job_id, "t": time.time()}])
            for batch_id in [b for b, t in self._running.items() if not t.done()]:
                if batch_id not in self.state.scheduler.batches:
                    self._running[batch_id].cancel()
            self.log("job_cancelled", job=job_id, name=book.spec.name)
            self.pump()
        return self.state.job_view(job_id, time.time())

    async def set_batch_size(self, key: str, n: Any) -> dict[str, Any]:
        job_id = self.resolve(key)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_BATCH:
            raise JobError(f"batch size must be a whole number from 1 to {MAX_BATCH}, got {n!r}")
        job = self.state.scheduler.jobs[job_id]
        previous = job.batch_size
        await self._save_spec(self.state.books[job_id].spec, job.status, n)
        await self.commit([{"op": "batch_size", "job": job_id, "n": n}])
        self.log("batch_size_changed", job=job_id, previous=previous, batch_size=n)
        self.pump()
        return {"job": self.state.job_view(job_id, time.time()), "previous": previous}

    # --- training --------------------------------------------------------------------------

    async def train(self, models: list[str]) -> dict[str, Any]:
        names = models or catalog.model_names(await self.store.names(catalog.MODELS_DIR + "/"))
        if not names:
            raise JobError("no models to train: add one with `idunno model add`", 404)
        records = [await self._model_record(catalog.validate_name(m, "model")) for m in names]
        refs = [{"name": r.name, "version": r.version, "preprocess": r.preprocess} for r in records]
        workers = self._workers(include_training=True)
        reports = await asyncio.gather(*(self._load_on(w, refs) for w in workers))
        if self.deposed:
            raise Deposed("a newer coordinator took over during training")
        out = []
        for r in records:
            per_worker = {
                w: rep.get(r.name, {"error": "no answer"})
                for w, rep in zip(workers, reports, strict=True)
                if w not in self.disabled  # nodes started with --inference-threads 0
            }
            out.append({"model": r.name, "version": r.version, "workers": per_worker})
        self.pump()
        return {"models": out}

    async def _load_on(self, worker: str, refs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        addr = self.live().get(worker)
        if addr is None:
            return {r["name"]: {"error": f"{worker} is not live"} for r in refs}
        try:
            reply = await self.rpc.call(
                addr,
                LOAD_PATH,
                {"epoch": self.epoch, "coordinator": self.me, "models": refs},
                LOAD_TIMEOUT_S,
            )
        except RpcError as exc:
            if exc.status == 409:
                self._deposed(str(exc))
            elif exc.status == 503 and NO_INFERENCE in str(exc):
                self.disabled.add(worker)
            return {r["name"]: {"error": str(exc)} for r in refs}
        out: dict[str, dict[str, Any]] = {}
        for ref in refs:
            rep = reply.get("models", {}).get(ref["name"], {"error": "not reported"})
            if "error" in rep:
                out[ref["name"]] = {"error": str(rep["error"])}
                continue
            self.ready.setdefault(worker, {})[ref["name"]] = int(ref["version"])
            cost = float(rep.get("cost_per_query_s", 0.0))
            self.costs.setdefault(worker, {})[ref["name"]] = cost
            out[ref["name"]] = {"cost_per_query_ms": cost * 1000}
        return out

    def _ensure_trained(self, worker: str, spec: JobSpec) -> None:
        """A worker that lacks a running job's model loads it in the background first."""
        key = (worker, spec.model)
        if key in self._training:
            return

        async def train_one() -> None:
            try:
                await self._load_on(worker, [spec.model_ref()])
            finally:
                self._training.pop(key, None)
            # A job that waited for the model still gets its first result from one urgent query.
            job = self.state.scheduler.jobs.get(spec.id)
            if job is not None and not job.done and spec.id in self.state.books:
                self._first_batch(spec.id)
            self.pump()

        self._training[key] = asyncio.ensure_future(train_one())

    # --- dispatch --------------------------------------------------------------------------

    def _workers(self, include_training: bool = False) -> list[str]:
        live = self.live()
        return sorted(
            w
            for w in live
            if w not in self.disabled and (include_training or not self._is_excluded(w, live[w]))
        )

    def _is_excluded(self, worker: str, addr: str) -> bool:
        """A worker whose connection failed gets no batch until a probe finds its port open
        again (or membership drops it): a dead node that membership has not confirmed yet
        must not be handed the batches just requeued from it."""
        until = self._excluded.get(worker)
        if until is None:
            return False
        if time.monotonic() >= until and worker not in self._probing:
            self._probing.add(worker)
            self.spawn(self._probe(worker, addr), f"probe-{worker}")
        return True

    async def _probe(self, worker: str, addr: str) -> None:
        try:
            if await refuses_connections(addr) is False:
                self._excluded.pop(worker, None)
                self.pump()
            else:
                self._excluded[worker] = time.monotonic() + EXCLUDE_S
        finally:
            self._probing.discard(worker)

    def pump(self) -> None:
        """Hand out batches until every worker holds its share (called on every event)."""
        if self.stopped or self.deposed:
            return
        workers = self._workers()
        running = {
            j: b.spec
            for j, b in self.state.books.items()
            if self.state.scheduler.jobs[j].status == JobStatus.RUNNING
        }
        for w in workers:
            for spec in running.values():
                if self.ready.get(w, {}).get(spec.model) != spec.model_version:
                    self._ensure_trained(w, spec)

        def can_run(worker: str, model: str) -> bool:
            return any(
                s.model == model and self.ready.get(worker, {}).get(model) == s.model_version
                for s in running.values()
            )

        now, clock = time.time(), time.monotonic()
        held = {w: len(self.state.scheduler.held_by(w)) for w in workers}
        batches = self.state.scheduler.fill(workers, now, can_run, lambda w: self._room(w, clock))
        if not batches:
            return
        ops = self.state.dispatched(batches, now)
        self.mirror.send(self.state.applied - len(ops), ops)
        for b in batches:
            self.pacing.dispatched(b.worker, held[b.worker], clock)
            held[b.worker] += 1
            self._running[b.id] = asyncio.ensure_future(self._run(b))

    def _room(self, worker: str, clock: float) -> int:
        """Batches `worker` may hold now (see pacing.py); pump() runs again when it may hold
        one more."""
        held = [(b.model, len(b.queries)) for b in self.state.scheduler.held_by(worker)]
        room, ask_at = self.pacing.room(worker, held, clock)
        if ask_at is not None:
            old = self._wakeups.pop(worker, None)
            if old is not None:
                old.cancel()
            delay = max(0.0, ask_at - time.monotonic())
            self._wakeups[worker] = asyncio.get_running_loop().call_later(delay, self.pump)
        return room

    def _first_batch(self, job_id: str) -> None:
        """A new job's first batch: one query, marked urgent (the worker runs it at once, next
        to its running batch and at a higher CPU priority), to an idle worker if there is one,
        else to the least loaded worker (the one that replied longest ago among those). Its
        first result then waits for neither a whole batch of its own nor the batches queued
        before it; pump() hands out the rest of the job in full batches."""
        spec = self.state.books[job_id].spec
        if self.stopped or self.deposed or self.state.scheduler.held_by_job(job_id):
            return
        ready = [
            w
            for w in self._workers()
            if self.ready.get(w, {}).get(spec.model) == spec.model_version
        ]
        if not ready:
            return  # workers are still loading the model: pump() dispatches when they are done
        held = self.state.scheduler.held_by
        worker = min(ready, key=lambda w: (len(held(w)), self._last_reply.get(w, 0.0), w))
        now, before = time.time(), len(held(worker))
        batch = self.state.scheduler.first_batch(job_id, worker, now, FIRST_BATCH)
        if batch is None:
            return
        if before:  # runs next to the worker's batch: not part of its sequence of batches
            self._alongside.add(batch.id)
        else:
            self.pacing.dispatched(worker, before, time.monotonic())
        ops = self.state.dispatched([batch], now)  # numbered before it is sent: see commit()
        self.mirror.send(self.state.applied - len(ops), ops)
        self._running[batch.id] = asyncio.ensure_future(self._run(batch, urgent=True))

    async def _run(self, batch: Batch, adopt: bool = False, urgent: bool = False) -> None:
        """Send a batch (or, for a batch the previous reign sent, collect its reply from the
        worker) and account for the answer."""
        book = self.state.books.get(batch.job)
        if book is None:
            return
        spec = book.spec
        addr = self.live().get(batch.worker)
        try:
            if addr is None:
                raise RpcError(f"{batch.worker} is not live")
            if adopt:
                request: dict[str, Any] = {
                    "epoch": self.epoch,
                    "coordinator": self.me,
                    "batch": batch.id,
                    "job": batch.job,
                }
                reply = await self.rpc.call(addr, COLLECT_PATH, request, RUN_TIMEOUT_S)
            else:
                request = {
                    "epoch": self.epoch,
                    "coordinator": self.me,
                    "batch": batch.id,
                    "job": batch.job,
                    "model": spec.model_ref(),
                    "dataset": spec.dataset,
                    "shards": _shards_for(spec, batch.queries),
                    "queries": list(batch.queries),
                    "top_k": TOP_K,
                    "urgent": urgent,
                }
                reply = await self.rpc.call(addr, RUN_PATH, request, RUN_TIMEOUT_S)
        except RpcError as exc:
            self._running.pop(batch.id, None)
            if exc.status == 409:
                self._deposed(str(exc))
            elif exc.status == 400 and not adopt:
                # The worker cannot ever run it (e.g. a damaged shard): answer with the error.
                await self._accept(batch, spec, _error_reply(batch, spec, str(exc)))
            else:
                await self._requeue(batch, exc)
            return
        self._running.pop(batch.id, None)
        self._last_reply[batch.worker] = time.monotonic()
        if batch.id in self._alongside:
            self._alongside.discard(batch.id)
        else:
            others = sum(1 for b in self.state.scheduler.held_by(batch.worker) if b.id != batch.id)
            busy = reply.get("infer_s") if isinstance(reply, dict) else None
            self.pacing.replied(
                batch.worker,
                batch.model,
                len(batch.queries),
                float(busy) if isinstance(busy, int | float) else 0.0,
                others,
                time.monotonic(),
            )
        await self._accept(batch, spec, reply)

    async def _requeue(self, batch: Batch, exc: RpcError) -> None:
        self.pacing.forget(batch.worker)
        self._alongside.discard(batch.id)
        if exc.unreachable:
            self._excluded[batch.worker] = time.monotonic() + EXCLUDE_S
        if exc.status == 503 and NO_INFERENCE in str(exc):
            self.disabled.add(batch.worker)
        if exc.status == 503 and EXECUTOR_LOST in str(exc):
            # Its new executor holds no model yet: no batch goes there until the pump's load
            # (which waits for the worker's own reload) reports the model ready again; batches
            # sent meanwhile would wait seconds for it.
            self.ready.pop(batch.worker, None)
        self.log(
            "batch_requeued",
            level="warning",
            batch=batch.id,
            job=batch.job,
            worker=batch.worker,
            detail=str(exc),
        )
        await self.commit([{"op": "requeue", "batch": batch.id}])
        self.pump()

    async def _accept(self, batch: Batch, spec: JobSpec, reply: dict[str, Any]) -> None:
        per_query_ms = float(reply.get("per_query_s", 0.0)) * 1000
        now = time.time()
        results = [
            {
                "q": int(r["q"]),
                "id": r["id"],
                "class_ids": r.get("class_ids") or [],
                "scores": r.get("scores") or [],
                "output": r.get("output"),
                "error": r.get("error"),
                "worker": batch.worker,
                "processing_ms": per_query_ms,
                "epoch": self.epoch,  # the reign that accepted it
                "batch": batch.id,
                "t": now,
            }
            for r in reply.get("results", [])
        ]
        op = {"op": "complete", "batch": batch.id, "job": batch.job, "results": results, "t": now}
        await self.commit([op])
        if self.on_batch_done is not None:
            self.on_batch_done(batch.job, spec.model, max(0.0, now - batch.dispatched_at))
        job = self.state.scheduler.jobs.get(batch.job)
        if job is None:  # a submission undone meanwhile
            return
        if job.status == JobStatus.DONE and batch.job not in self._done_logged:
            self._done_logged.add(batch.job)
            self._flush_now.set()  # the job reads "done" once its last results are durable
            self.log(
                "job_done",
                job=batch.job,
                name=spec.name,
                queries=spec.total,
                errors=self.state.books[batch.job].errors,
            )
        self.pump()

    def adopt(self, batch_ids: Iterable[int]) -> None:
        """Collect the replies of batches the previous reign sent (a hot takeover): the
        workers finish them anyway, so nothing is run twice; a worker that does not have
        one, or cannot be reached, gets it requeued."""
        for batch_id in batch_ids:
            batch = self.state.scheduler.batches.get(batch_id)
            if batch is not None:
                self._running[batch_id] = asyncio.ensure_future(self._run(batch, adopt=True))

    def worker_failed(self, worker: str) -> None:
        """Membership marked `worker` failed (or it left): requeue everything it held."""
        held = self.state.scheduler.held_by(worker)
        self.ready.pop(worker, None)
        self.pacing.forget(worker)
        self._alongside.difference_update(b.id for b in held)
        if not held:
            return
        for b in held:
            task = self._running.pop(b.id, None)
            if task is not None:
                task.cancel()
        ops = [{"op": "requeue", "batch": b.id} for b in held]
        self.log("worker_failed", level="warning", worker=worker, requeued=[b.id for b in held])
        self.spawn(self._requeue_and_pump(ops), "requeue")

    async def _requeue_and_pump(self, ops: list[dict[str, Any]]) -> None:
        await self.commit(ops)
        self.pump()

    def _deposed(self, why: str) -> None:
        if self.deposed or self.stopped:
            return  # already stepping down: one notice is enough
        self.deposed = True
        self._on_deposed(why)

    # --- durability ------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), FLUSH_INTERVAL_S)
            self._flush_now.clear()
            try:
                await self.flush()
            except Deposed:
                return
            except Exception as exc:  # the store may be short of nodes: try again next time
                self.log("flush_failed", level="warning", detail=str(exc)[:300])

    async def flush(self) -> None:
        for job_id, book in list(self.state.books.items()):
            if not book.unflushed:
                continue
            queries = list(book.unflushed)
            self._seq += 1
            data = durable.encode_segment(book.results[q] for q in queries)
            await self._put(durable.segment_file(job_id, self.epoch, self._seq), data)
            await self.commit([{"op": "flushed", "job": job_id, "queries": queries}])

    # --- views -----------------------------------------------------------------------------

    def jobs_view(self) -> list[dict[str, Any]]:
        now = time.time()
        return [self.state.job_view(j, now) for j in self.state.books]

    def assignment(self) -> dict[str, Any]:
        shares = self.state.shares(time.time())
        held = self.state.scheduler.assignment()
        return {
            "workers": held,
            "jobs": [
                {
                    "id": j,
                    "name": b.spec.name,
                    "workers": sorted(w for w, jobs in held.items() if j in jobs),
                    "share": shares.get(j, 0.0),
                }
                for j, b in self.state.books.items()
            ],
        }

    def results(
        self, key: str, query: str | None, offset: int, limit: int | None
    ) -> dict[str, Any]:
        job_id = self.resolve(key)
        book = self.state.books[job_id]
        spec = book.spec
        if query is not None:
            try:
                index = spec.item_ids.index(query)
            except ValueError:
                raise JobError(f"job {spec.name!r} has no query {query!r}", 404) from None
            rows = [book.results[index]] if index in book.results else []
        else:
            rows = self.state.results(job_id, offset, limit)
        return {
            "id": job_id,
            "name": spec.name,
            "total": spec.total,
            "answered": len(book.results),
            "results": [_public_result(r, spec) for r in rows],
        }


def _public_result(r: dict[str, Any], spec: JobSpec) -> dict[str, Any]:
    labels = None
    if spec.labels is not None and r.get("error") is None:
        labels = [spec.labels[c] if 0 <= c < len(spec.labels) else str(c) for c in r["class_ids"]]
    return {
        "query": r["id"],
        "index": r["q"],
        "class_ids": r["class_ids"],
        "scores": r["scores"],
        "labels": labels,
        "output": r.get("output"),
        "error": r.get("error"),
        "worker": r["worker"],
        "processing_ms": r["processing_ms"],
        "epoch": r["epoch"],
        "batch": r["batch"],
        "accepted_at": r["t"],
    }


def _error_reply(batch: Batch, spec: JobSpec, error: str) -> dict[str, Any]:
    return {
        "results": [{"q": q, "id": spec.item_ids[q], "error": error} for q in batch.queries],
        "per_query_s": 0.0,
    }


def _shards_for(spec: JobSpec, queries: Iterable[int]) -> list[dict[str, Any]]:
    wanted = sorted(set(queries))
    out = []
    for s in spec.shards:
        lo, hi = int(s["first"]), int(s["first"]) + int(s["count"])
        if any(lo <= q < hi for q in wanted):
            out.append(s)
    return out


def _check_fit(record: catalog.ModelRecord, manifest: catalog.DatasetManifest) -> None:
    if record.preprocess != manifest.preprocess:
        raise JobError(
            f"model {record.name!r} takes {record.preprocess!r} input but dataset "
            f"{manifest.name!r} holds {manifest.kind} items (made for {manifest.preprocess!r}): "
            "pick a model and a dataset of the same kind"
        )
    shape = record.input_shape[1:] if record.input_shape else ()
    fixed = bool(shape) and all(d is not None for d in shape)
    if manifest.item_shape is not None and fixed and tuple(shape) != tuple(manifest.item_shape):
        raise JobError(
            f"model {record.name!r} takes items of shape {tuple(shape)} but dataset "
            f"{manifest.name!r} holds {tuple(manifest.item_shape)}: they do not fit"
        )


def _field(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        raise JobError(f"missing {key!r}: a job needs --model, --dataset and --batch-size")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise JobError(f"{key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _json(data: bytes) -> Any:
    import json

    try:
        return json.loads(data)
    except ValueError as exc:
        raise JobError(f"a catalog record in the store is damaged ({exc})", 500) from None
