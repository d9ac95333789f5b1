"""Every node's worker: runs the coordinator's batches on the node's Executor.

The worker owns one `Executor` (ONNX Runtime in a child process). It loads models from the store
on demand (`load`, the training phase, or lazily on the first batch that needs one), fetches the
dataset shards a batch needs from the store (checked against the manifest's sha256, decoded and
kept in a bounded in-memory LRU), and answers the batch with one result per query, in the order
of the request's `queries`.

Every command carries the coordinator's epoch and passes the node's `Fence` first, so a deposed
coordinator cannot make this node work for it. If the executor's child dies, the worker starts a
fresh one (models reload lazily) and raises `WorkerUnavailable`: the API answers 503 and the
coordinator requeues the batch. See docs/control-plane.md, "Interfaces".
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from idunno.control.fence import Fence
from idunno.inference.catalog import (
    CatalogError,
    Item,
    decode_shard,
    model_file,
    one_line,
    shard_file,
    validate_name,
)
from idunno.inference.executor import (
    PREPROCESSINGS,
    Executor,
    ExecutorError,
    LoadReport,
    ModelError,
    QueryResult,
)
from idunno.inference.refusals import EXECUTOR_LOST, NO_INFERENCE
from idunno.store.disk import StoreError
from idunno.store.peers import PeerError
from idunno.store.service import NotFound

# (store file name, version or None for the newest) -> (store Version, verified bytes)
ReadFile = Callable[[str, int | None], Awaitable[tuple[Any, bytes]]]
# (name, version, destination): the file copied there chunk by chunk (models: hundreds of MB)
FetchFile = Callable[[str, int | None, Path], Awaitable[Any]]
LogFn = Callable[..., None]

MAX_TOP_K: Final = 1000
RUN_MEMORY_S: Final = 60.0
BUSY_HOLD_S: Final = 2.0  # a worker counts as busy this long after its last batch ended
DEFAULT_CACHE_BYTES: Final = 256 << 20
_ITEM_OVERHEAD: Final = 64  # bytes a cached item costs beyond its id and data, roughly


class WorkerUnavailable(RuntimeError):
    """This worker cannot run work now (its executor died, or it takes none); one-line message.
    The coordinator should give the batch to another worker or retry."""


@dataclass(frozen=True, slots=True)
class _ModelSpec:
    name: str
    version: int
    preprocess: str


@dataclass(frozen=True, slots=True)
class _ShardSpec:
    name: str
    version: int
    sha256: str
    count: int
    first: int


@dataclass(frozen=True, slots=True)
class _Loaded:
    version: int
    preprocess: str
    report: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Shard:
    sha256: str
    items: list[Item]
    size: int  # bytes it takes in the cache, roughly


# --- request validation (pure) -------------------------------------------------------------


def _field(obj: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in obj:
        raise ValueError(f"{what}: missing field {key!r}")
    return obj[key]


def _int(obj: Mapping[str, Any], key: str, what: str, lo: int = 0, hi: int | None = None) -> int:
    value = _field(obj, key, what)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what}: {key!r} must be an integer, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        bounds = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{what}: {key!r} must be {bounds}, got {value}")
    return value


def _str(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = _field(obj, key, what)
    if not isinstance(value, str):
        raise ValueError(f"{what}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _map(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a map, got {type(value).__name__}")
    return value


def _epoch(value: Any) -> int:
    return _int({"epoch": value}, "epoch", "request")


def _model_spec(value: Any, what: str = "model") -> _ModelSpec:
    obj = _map(value, what)
    # A valid name cannot hold "/" or "..": it is safe in a cache file name.
    name = validate_name(_str(obj, "name", what), "model")
    preprocess = _str(obj, "preprocess", what)
    if preprocess not in PREPROCESSINGS:
        raise ValueError(f"{what}: 'preprocess' must be one of {', '.join(PREPROCESSINGS)}")
    return _ModelSpec(name, _int(obj, "version", what, lo=1), preprocess)


def _shard_specs(value: Any) -> list[_ShardSpec]:
    if not isinstance(value, list) or not value:
        raise ValueError("request: 'shards' must be a non-empty list")
    shards = []
    for i, raw in enumerate(value):
        what = f"shards[{i}]"
        obj = _map(raw, what)
        name = validate_name(_str(obj, "name", what), "shard")
        sha = _str(obj, "sha256", what)
        shards.append(
            _ShardSpec(
                name,
                _int(obj, "version", what, lo=1),
                sha,
                _int(obj, "count", what, lo=1),
                _int(obj, "first", what),
            )
        )
    shards.sort(key=lambda s: s.first)
    for a, b in itertools.pairwise(shards):
        if a.first + a.count > b.first:
            raise ValueError(f"request: shards {a.name} and {b.name} overlap")
    return shards


def _queries(value: Any, shards: list[_ShardSpec]) -> list[tuple[int, _ShardSpec]]:
    """Each query index with the shard holding it, in request order."""
    if not isinstance(value, list) or not value:
        raise ValueError("request: 'queries' must be a non-empty list of item indices")
    starts = [s.first for s in shards]
    out = []
    for q in value:
        if not isinstance(q, int) or isinstance(q, bool) or q < 0:
            raise ValueError(f"request: query index {q!r} is not a non-negative integer")
        k = bisect.bisect_right(starts, q) - 1
        if k < 0 or q >= shards[k].first + shards[k].count:
            raise ValueError(f"request: query index {q} is in none of the given shards")
        out.append((q, shards[k]))
    return out


def _report(version: int, r: LoadReport) -> dict[str, Any]:
    return {
        "version": version,
        "cost_per_query_s": r.cost_per_query_s,
        "probe_batch": r.probe_batch,
        "input_shape": list(r.input_shape),
        "num_classes": r.num_classes,
        "open_s": r.open_s,
        "threads": r.threads,
    }


def _result(q: int, r: QueryResult) -> dict[str, Any]:
    return {
        "q": q,
        "id": r.query_id,
        "class_ids": list(r.class_ids),
        "scores": list(r.scores),
        "output": list(r.output) if r.output is not None else None,
        "error": r.error,
    }


def _hash_and_decode(data: bytes, label: str) -> _Shard:
    sha = hashlib.sha256(data).hexdigest()
    try:
        items = decode_shard(data)
    except CatalogError as exc:
        raise CatalogError(f"{label}: {exc}") from None
    size = sum(len(q) + len(b) + _ITEM_OVERHEAD for q, b in items)
    return _Shard(sha, items, size)


# --- the service -----------------------------------------------------------------------------


class WorkerService:
    def __init__(
        self,
        me: str,
        cache_dir: Path,
        read_file: ReadFile,
        fetch_file: FetchFile,
        fence: Fence,
        log: LogFn,
        threads: int = 1,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.me = me
        self.cache_dir = cache_dir
        self.threads = threads
        self.cpus = cpus  # where its executor runs (None: anywhere)
        self.enabled = threads > 0
        self.fence = fence
        self._read_file = read_file
        self._fetch_file = fetch_file
        self._log = log
        self._executor: Executor | None = None
        self._started = False
        self._stopped = False
        self._spawn_lock = asyncio.Lock()  # one executor start or restart at a time
        self._death: tuple[Executor, str] | None = None  # the last executor that died, why
        self._loaded: dict[str, _Loaded] = {}  # on the current executor only
        self._model_locks: dict[str, asyncio.Lock] = {}
        self._failed: dict[_ModelSpec, str] = {}  # ModelError per stored version: deterministic
        self._files: dict[str, Path] = {}  # the cached .onnx of each model name
        self._cache_limit = cache_bytes
        self._cache: OrderedDict[tuple[str, str, int], _Shard] = OrderedDict()
        self._cache_size = 0
        self._fetching: dict[tuple[str, str, int], asyncio.Task[_Shard]] = {}
        self._running = 0
        self._last_batch_end = -BUSY_HOLD_S  # monotonic
        self._reloading: asyncio.Task[None] | None = None  # models back into a new executor
        self.on_batch_done: Callable[[str, float], None] | None = None  # model, s: /metrics
        # batch id -> (job, its run, when it finished): kept RUN_MEMORY_S for `collect`
        self._runs: dict[int, tuple[str, asyncio.Future[dict[str, Any]], float | None]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Accept work. The executor is spawned by the first load (`idunno train`, or the
        coordinator training a node that joined), not here: importing ONNX Runtime in every
        node at once slowed a cluster's start by a sixth, and a node that only stores files
        never needs it."""
        self._started = True

    async def stop(self) -> None:
        """Close the executor (runs in flight get WorkerUnavailable) and cancel shard fetches."""
        self._stopped = True
        background = [t for t in (self._reloading,) if t is not None]
        for task in [*self._fetching.values(), *background]:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        async with self._spawn_lock:
            ex, self._executor = self._executor, None
            self._loaded.clear()
        if ex is not None:
            await ex.close()

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise WorkerUnavailable(f"node {self.me} {NO_INFERENCE} (--inference-threads 0)")

    async def _current(self) -> Executor:
        self._check_enabled()
        ex = self._executor
        if ex is not None:
            return ex
        async with self._spawn_lock:
            if self._stopped or not self._started:
                raise WorkerUnavailable(f"the worker on node {self.me} is not running")
            if self._executor is None:
                try:
                    self._executor = await Executor.start(self.threads, cpus=self.cpus)
                except ExecutorError as exc:
                    self._log("executor_start_failed", level="error", detail=str(exc))
                    raise WorkerUnavailable(
                        f"node {self.me} could not start its executor: {exc}"
                    ) from None
                self._log("executor_started", pid=self._executor.pid, threads=self.threads)
            return self._executor

    async def _replace(self, dead: Executor, exc: ExecutorError) -> WorkerUnavailable:
        """After `dead` failed a call: note it once however many calls saw it fail, start a
        fresh executor and load the models back in the background, and return the error for
        the caller to raise at once (its batch is requeued without waiting for the restart)."""
        async with self._spawn_lock:
            if self._executor is dead and not self._stopped:
                self._log("executor_died", level="error", pid=dead.pid, detail=str(exc))
                self._death = (dead, str(exc))
                self._executor = None
                had = [_ModelSpec(n, m.version, m.preprocess) for n, m in self._loaded.items()]
                self._loaded.clear()  # the new child has no model
                self._reloading = asyncio.create_task(
                    self._restart(dead, had), name="executor-restart"
                )
        why = self._death[1] if self._death and self._death[0] is dead else str(exc)
        return WorkerUnavailable(
            f"node {self.me}: its {EXECUTOR_LOST} ({why}); retry the work elsewhere"
        )

    async def _restart(self, dead: Executor, had: list[_ModelSpec]) -> None:
        await dead.close()
        async with self._spawn_lock:
            if self._stopped:
                return
            if self._executor is None:  # else a command started one meanwhile
                try:
                    self._executor = await Executor.start(self.threads, cpus=self.cpus)
                except ExecutorError as again:
                    # Left at None: the next command tries to start one again.
                    self._log("executor_start_failed", level="error", detail=str(again))
                    return
                self._log("executor_restarted", pid=self._executor.pid)
            ex = self._executor
        # Load the models back now, so the next batch does not wait for it: from the files
        # already in the cache, with the dead one's measurements (see Executor.load).
        await self._reload(ex, had, dead.models)

    async def _reload(
        self, ex: Executor, specs: list[_ModelSpec], measured: Mapping[str, LoadReport]
    ) -> None:
        for spec in specs:
            try:
                await self._ensure_model(ex, spec, measured.get(_session_key(spec)))
            except ExecutorError:
                return  # this one died too: its replacement reloads what it needs
            except (ModelError, CatalogError, StoreError, PeerError, OSError) as exc:
                self._log("model_reload_failed", level="warning", model=spec.name, detail=str(exc))

    # -- models ----------------------------------------------------------------------------

    async def load(
        self, epoch: int, models: list[dict[str, Any]], coordinator: str = ""
    ) -> dict[str, dict[str, Any]]:
        """Load each model (at its store version) and report its cost; a model that cannot be
        loaded gets {"error": one line} and the others still load."""
        self._check_enabled()
        if not isinstance(models, list):
            raise ValueError("request: 'models' must be a list")
        specs = [_model_spec(m, f"models[{i}]") for i, m in enumerate(models)]
        self.fence.admit(_epoch(epoch), _owner(coordinator))
        ex = await self._current()
        out: dict[str, dict[str, Any]] = {}
        for spec in specs:
            try:
                out[spec.name] = await self._ensure_model(ex, spec)
            except ExecutorError as exc:
                raise await self._replace(ex, exc) from None
            except (ModelError, CatalogError, StoreError, PeerError, OSError) as exc:
                out[spec.name] = {"error": one_line(str(exc)) or type(exc).__name__}
        return out

    async def _ensure_model(
        self, ex: Executor, spec: _ModelSpec, measured: LoadReport | None = None
    ) -> dict[str, Any]:
        """The model's report, loading it into `ex` first unless it is there at that version.
        With `measured` (a reload after an executor died), the file fetched and verified then
        is used again if it is still in the cache. Raises ModelError, CatalogError (not in the
        store), store errors, ExecutorError."""
        lock = self._model_locks.setdefault(spec.name, asyncio.Lock())
        async with lock:
            if ex is not self._executor:  # replaced while this call waited: skip the fetch
                raise ExecutorError(f"executor process {ex.pid} stopped")
            have = self._loaded.get(spec.name)
            if have and (have.version, have.preprocess) == (spec.version, spec.preprocess):
                return have.report
            if spec in self._failed:
                raise ModelError(self._failed[spec])
            source = model_file(spec.name)
            path = self.cache_dir / "models" / f"{spec.name}-v{spec.version}.onnx"
            # After an executor died, the file fetched (and verified) for it is still here.
            cached = measured is not None and self._files.get(spec.name) == path and path.exists()
            key = _session_key(spec)
            try:
                if cached:
                    try:
                        loaded = await ex.load(key, path, spec.preprocess, measured)
                    except ModelError:  # the copy no longer loads (damaged on disk): fetch it
                        cached = False
                if not cached:
                    try:
                        await self._fetch_file(source, spec.version, path)
                    except NotFound as exc:
                        raise CatalogError(
                            f"{source} v{spec.version}: {one_line(str(exc))}"
                        ) from None
                    loaded = await ex.load(key, path, spec.preprocess)
            except ModelError as exc:
                self._failed[spec] = f"model {spec.name} v{spec.version}: {exc}"
                self._loaded.pop(spec.name, None)
                path.unlink(missing_ok=True)
                raise ModelError(self._failed[spec]) from None
            report = _report(spec.version, loaded)
            old = self._files.get(spec.name)
            self._files[spec.name] = path
            if old is not None and old != path:
                old.unlink(missing_ok=True)
            if ex is self._executor:  # not a child that died meanwhile
                self._loaded[spec.name] = _Loaded(spec.version, spec.preprocess, report)
            self._log(
                "model_loaded",
                model=spec.name,
                version=spec.version,
                cost_per_query_ms=round(report["cost_per_query_s"] * 1e3, 4),
            )
            return report

    # -- shards ----------------------------------------------------------------------------

    async def _shard_items(self, dataset: str, shard: _ShardSpec) -> list[Item]:
        key = (dataset, shard.name, shard.version)
        got = self._cache.get(key)
        if got is not None:
            self._cache.move_to_end(key)
        else:
            task = self._fetching.get(key)
            if task is None:  # the first asker fetches; later ones wait for the same bytes
                task = asyncio.create_task(self._fetch(key), name=f"fetch-{shard.name}")
                self._fetching[key] = task
                task.add_done_callback(lambda t: self._fetched(key, t))
            # Shielded: one waiter giving up must not cancel the fetch for the others.
            try:
                got = await asyncio.shield(task)
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise  # this run itself was cancelled
                raise WorkerUnavailable(f"the worker on node {self.me} stopped") from None
        label = f"shard {shard.name} v{shard.version} of dataset {dataset!r}"
        if got.sha256 != shard.sha256:
            raise CatalogError(
                f"{label} does not match its manifest (sha256 {got.sha256[:16]}..., expected "
                f"{shard.sha256[:16]}...)"
            )
        if len(got.items) != shard.count:
            raise CatalogError(
                f"{label} holds {len(got.items)} items, the manifest says {shard.count}"
            )
        return got.items

    async def _fetch(self, key: tuple[str, str, int]) -> _Shard:
        dataset, name, version = key
        source = shard_file(dataset, name)
        try:
            _, data = await self._read_file(source, version)
        except NotFound as exc:
            raise CatalogError(f"{source} v{version}: {one_line(str(exc))}") from None
        except (StoreError, PeerError, OSError) as exc:
            raise WorkerUnavailable(
                f"node {self.me} could not read {source} v{version}: {one_line(str(exc))}"
            ) from None
        # Hashing and decoding megabytes off the event loop (the failure detector runs there).
        return await asyncio.to_thread(_hash_and_decode, data, f"{source} v{version}")

    def _fetched(self, key: tuple[str, str, int], task: asyncio.Task[_Shard]) -> None:
        self._fetching.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            return  # errors reach the waiters; nothing is cached
        shard = task.result()
        if shard.size > self._cache_limit or key in self._cache:
            return
        self._cache[key] = shard
        self._cache_size += shard.size
        while self._cache_size > self._cache_limit:
            _, evicted = self._cache.popitem(last=False)
            self._cache_size -= evicted.size

    # -- batches ---------------------------------------------------------------------------

    async def _items(
        self, dataset: str, queries: list[tuple[int, _ShardSpec]]
    ) -> list[tuple[int, Item]]:
        """(index, item) of each query, in order; the shards are fetched concurrently."""
        needed = {s.name: s for _, s in queries}
        fetched = await asyncio.gather(*(self._shard_items(dataset, s) for s in needed.values()))
        by_shard = dict(zip(needed, fetched, strict=True))
        return [(q, by_shard[s.name][q - s.first]) for q, s in queries]

    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one batch; see the module docstring and docs/control-plane.md for the reply."""
        started = time.time()
        self._check_enabled()
        req = _map(request, "request")
        epoch = _epoch(_field(req, "epoch", "request"))
        batch = _int(req, "batch", "request")
        _str(req, "job", "request")
        spec = _model_spec(_field(req, "model", "request"))
        dataset = validate_name(_str(req, "dataset", "request"), "dataset")
        top_k = _int(req, "top_k", "request", lo=1, hi=MAX_TOP_K)
        queries = _queries(_field(req, "queries", "request"), _shard_specs(req.get("shards")))
        # Only a well-formed request may advance the fence.
        self.fence.admit(epoch, _owner(req.get("coordinator", "")))
        # The run is a task of its own, remembered by batch id: if the coordinator that sent it
        # dies, the run still finishes and its successor collects the reply (`collect`).
        job = str(req["job"])
        urgent = req.get("urgent", False)
        if not isinstance(urgent, bool):
            raise ValueError("request: 'urgent' must be true or false")
        task = asyncio.ensure_future(
            self._run(started, epoch, batch, spec, dataset, top_k, queries, urgent)
        )
        self._remember(batch, job, task)
        return await asyncio.shield(task)

    def _remember(self, batch: int, job: str, task: asyncio.Future[dict[str, Any]]) -> None:
        now = time.monotonic()
        for old, (_, _, finished) in list(self._runs.items()):
            if finished is not None and finished < now - RUN_MEMORY_S:
                del self._runs[old]
        self._runs[batch] = (job, task, None)

        def done(t: asyncio.Future[dict[str, Any]]) -> None:
            if not t.cancelled():
                t.exception()  # retrieved here so an uncollected failure is not reported
            entry = self._runs.get(batch)
            if entry is not None and entry[1] is t:
                self._runs[batch] = (job, t, time.monotonic())

        task.add_done_callback(done)

    async def collect(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply of a batch sent by an earlier coordinator (waiting for it if it still
        runs). KeyError if this worker has no such run (never got it, or forgot it)."""
        req = _map(request, "request")
        epoch = _epoch(_field(req, "epoch", "request"))
        batch = _int(req, "batch", "request")
        job = _str(req, "job", "request")
        self.fence.admit(epoch, _owner(req.get("coordinator", "")))
        entry = self._runs.get(batch)
        if entry is None or entry[0] != job:
            raise KeyError(f"node {self.me} has no run of batch {batch} of job {job}")
        return await asyncio.shield(entry[1])

    async def _run(
        self,
        started: float,
        epoch: int,
        batch: int,
        spec: _ModelSpec,
        dataset: str,
        top_k: int,
        queries: list[tuple[int, _ShardSpec]],
        urgent: bool = False,
    ) -> dict[str, Any]:
        self._running += 1
        try:
            # A batch runs on the executor current at its arrival; if that one dies first, the
            # batch fails (503) and the coordinator requeues it.
            ex = await self._current()
            items = await self._items(dataset, queries)
            try:
                await self._ensure_model(ex, spec)
                result = await ex.run(
                    str(batch), _session_key(spec), [i for _, i in items], top_k, urgent
                )
            except ExecutorError as exc:
                raise await self._replace(ex, exc) from None
            except (ModelError, CatalogError) as exc:
                # The model cannot serve these items: each query gets the error, the job goes on.
                error = one_line(str(exc)) or type(exc).__name__
                results = [_result(q, QueryResult(item[0], error=error)) for q, item in items]
                times = {"decode_s": 0.0, "infer_s": 0.0, "per_query_s": 0.0}
            except (StoreError, PeerError, OSError) as exc:
                raise WorkerUnavailable(
                    f"node {self.me} could not read model {spec.name} v{spec.version}: "
                    f"{one_line(str(exc))}"
                ) from None
            else:
                results = [_result(q, r) for (q, _), r in zip(queries, result.results, strict=True)]
                times = {
                    "decode_s": result.decode_s,
                    "infer_s": result.infer_s,
                    "per_query_s": result.per_query_s,
                }
        finally:
            self._running -= 1
            self._last_batch_end = time.monotonic()
        if self.on_batch_done is not None:
            self.on_batch_done(spec.name, time.time() - started)
        return {
            "worker": self.me,
            "epoch": epoch,
            "batch": batch,
            "results": results,
            **times,
            "started": started,
            "finished": time.time(),
        }

    # -- status ----------------------------------------------------------------------------

    def busy(self) -> bool:
        """Running a batch now or a moment ago (the gap between a job's batches is not idle)."""
        return self._running > 0 or time.monotonic() - self._last_batch_end < BUSY_HOLD_S

    def status(self) -> dict[str, Any]:
        ex = self._executor
        return {
            "worker": self.me,
            "threads": self.threads,
            "cpus": sorted(self.cpus) if self.cpus is not None else None,
            "enabled": self.enabled,
            "models": {
                name: {"version": m.version, "cost_per_query_s": m.report["cost_per_query_s"]}
                for name, m in sorted(self._loaded.items())
            },
            "running": self._running,
            "executor_pid": ex.pid if ex is not None and ex.alive else None,
            "fence": self.fence.epoch,
            "cache": {
                "shards": len(self._cache),
                "bytes": self._cache_size,
                "limit": self._cache_limit,
            },
        }


def _session_key(spec: _ModelSpec) -> str:
    """The executor's name for a model version: two versions of one model never share it."""
    return f"{spec.name}@v{spec.version}"


def _owner(value: Any) -> str:
    """The coordinator a request names (its fencing token is (epoch, name))."""
    if not isinstance(value, str) or len(value) > 128:
        raise ValueError("request: 'coordinator' must be a node name")
    return value
