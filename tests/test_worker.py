"""The worker service (idunno.inference.worker) and its internal routes (worker_api).

The store is a fake `read_file` over a dict of files built with the real catalog helpers: the
builtin digits_logreg model and the digits dataset in 8 shards. Each test has its own event loop
(an asyncio.Runner) and its own workers, stopped at teardown; tests marked `process` start
executor children.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import numpy as np
import onnxruntime as ort
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from idunno.control.fence import Fence, StaleEpoch
from idunno.inference import catalog
from idunno.inference.digits import digit_items
from idunno.inference.worker import WorkerService, WorkerUnavailable
from idunno.inference.worker_api import MSGPACK, add_routes
from idunno.store.service import NotFound, Unavailable

MODEL = "digits_logreg"
MODEL_V = 3
DATASET = "digits"
SHARD_V = 2
DEADLINE_S = 20.0

# --- the fake store -------------------------------------------------------------------------

Files = dict[tuple[str, int], bytes]


@pytest.fixture(scope="module")
def items() -> list[tuple[str, bytes]]:
    return list(digit_items())


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    data, _ = catalog.builtin_model(MODEL)
    return data


@pytest.fixture(scope="module")
def dataset(items: list[tuple[str, bytes]]) -> tuple[Files, list[dict[str, Any]]]:
    """The digits as stored shards: (files, the manifest's shard entries with `first`)."""
    files: Files = {}
    shards: list[dict[str, Any]] = []
    first = 0
    for k, chunk in enumerate(catalog.shards_for(items)):
        data = catalog.encode_shard(chunk)
        name = catalog.shard_name(k)
        files[catalog.shard_file(DATASET, name), SHARD_V] = data
        sha = hashlib.sha256(data).hexdigest()
        shards.append(
            {"name": name, "version": SHARD_V, "sha256": sha, "count": len(chunk), "first": first}
        )
        first += len(chunk)
    assert len(shards) >= 2 and first == len(items)
    return files, shards


class FakeStore:
    """read_file and fetch_file over a dict; records every read; `gate` (if set) holds reads
    until it opens."""

    def __init__(self, files: Files) -> None:
        self.files = dict(files)
        self.reads: list[tuple[str, int | None]] = []
        self.gate: asyncio.Event | None = None
        self.down = False

    async def read_file(self, name: str, version: int | None) -> tuple[Any, bytes]:
        self.reads.append((name, version))
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise Unavailable(f"no replica of {name!r} v{version} could be read (test)")
        data = self.files.get((name, version or 0))
        if data is None:
            raise NotFound(f"no version {version} of {name!r}")
        return SimpleNamespace(version=version, sha256=hashlib.sha256(data).hexdigest()), data

    async def fetch_file(self, name: str, version: int | None, dest: Path) -> Any:
        v, data = await self.read_file(name, version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return v

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.reads if n == name)


@pytest.fixture
def files(dataset: tuple[Files, list[dict[str, Any]]], model_bytes: bytes) -> Files:
    out = dict(dataset[0])
    out[catalog.model_file(MODEL), MODEL_V] = model_bytes
    out[catalog.model_file(MODEL), MODEL_V + 1] = model_bytes
    out[catalog.model_file("broken"), 1] = b"this is not an ONNX model"
    return out


@pytest.fixture
def shards(dataset: tuple[Files, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [dict(s) for s in dataset[1]]


def model_spec(version: int = MODEL_V, preprocess: str = "digits") -> dict[str, Any]:
    return {"name": MODEL, "version": version, "preprocess": preprocess}


def run_request(queries: list[int], shards: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "epoch": 1,
        "batch": 7,
        "job": "job-1",
        "model": model_spec(),
        "dataset": DATASET,
        "shards": shards,
        "queries": queries,
        "top_k": 3,
    }
    request.update(changes)
    return request


# --- workers --------------------------------------------------------------------------------


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


class Events:
    """The worker's log calls, as (event, fields) pairs."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        self.seen.append((event, fields))

    def count(self, event: str) -> int:
        return sum(1 for e, _ in self.seen if e == event)


Made = tuple[WorkerService, FakeStore, Events]
MakeWorker = Callable[..., Made]


@pytest.fixture
def make_worker(runner: asyncio.Runner, files: Files, tmp_path: Path) -> Iterator[MakeWorker]:
    """`make_worker(threads=1, cache_bytes=..., start=True)`: a worker over a fresh FakeStore,
    stopped at teardown (and its executor children SIGKILLed if stopping failed)."""
    made: list[Made] = []

    def make(threads: int = 1, cache_bytes: int = 256 << 20, start: bool = True) -> Made:
        store, events = FakeStore(files), Events()
        n = len(made)
        worker = WorkerService(
            f"n{n}",
            tmp_path / f"cache{n}",
            store.read_file,
            store.fetch_file,
            Fence(tmp_path / f"fence{n}"),
            events,
            threads=threads,
            cache_bytes=cache_bytes,
        )
        made.append((worker, store, events))
        if start:
            runner.run(worker.start())
        return worker, store, events

    yield make
    for worker, _, events in made:
        try:
            runner.run(worker.stop())
        finally:
            for event, fields in events.seen:
                if event in ("executor_started", "executor_restarted"):
                    with contextlib.suppress(ProcessLookupError, ChildProcessError):
                        if os.waitpid(fields["pid"], os.WNOHANG) == (0, 0):  # still ours, alive
                            os.kill(fields["pid"], signal.SIGKILL)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def direct_probabilities(model_bytes: bytes, data: list[bytes]) -> np.ndarray:
    """The reference: one plain single-process ONNX Runtime run."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    x = np.stack([np.frombuffer(d, dtype=np.uint8) for d in data]).astype(np.float32)
    out: np.ndarray = session.run(["probabilities"], {"input": x})[0]
    return out


# --- running batches ------------------------------------------------------------------------


@pytest.mark.process
def test_run_matches_direct_onnxruntime_in_query_order(
    make_worker: MakeWorker,
    runner: asyncio.Runner,
    shards: list[dict[str, Any]],
    items: list[tuple[str, bytes]],
    model_bytes: bytes,
    tmp_path: Path,
) -> None:
    worker, store, _ = make_worker()
    assert worker.status()["models"] == {}  # nothing loaded until a batch needs it
    queries = [1000, 3, 257, 256, 1796, 0, 3, 511, 512, 255]
    before = time.time()
    reply = runner.run(worker.run(run_request(queries, shards)))
    assert (reply["worker"], reply["epoch"], reply["batch"]) == ("n0", 1, 7)
    assert before <= reply["started"] <= reply["finished"] <= time.time()
    assert reply["per_query_s"] > 0 and reply["infer_s"] > 0
    results = reply["results"]
    assert [r["q"] for r in results] == queries
    assert [r["id"] for r in results] == [items[q][0] for q in queries]
    probabilities = direct_probabilities(model_bytes, [items[q][1] for q in queries])
    for row, r in zip(probabilities, results, strict=True):
        assert r["error"] is None and r["output"] is None
        expected = np.argsort(-row, kind="stable")[:3]
        assert r["class_ids"] == expected.tolist()
        np.testing.assert_allclose(r["scores"], row[expected], rtol=0, atol=1e-6)

    # Loaded lazily by that batch, at the requested version.
    status = worker.status()
    assert status["models"][MODEL]["version"] == MODEL_V
    assert status["models"][MODEL]["cost_per_query_s"] > 0
    assert status["running"] == 0 and status["threads"] == 1 and status["enabled"]
    cached = tmp_path / "cache0" / "models" / f"{MODEL}-v{MODEL_V}.onnx"
    assert cached.read_bytes() == model_bytes

    # Another version of the model is loaded before it runs; the old cached file goes.
    runner.run(worker.run(run_request([5], shards, model=model_spec(MODEL_V + 1))))
    assert worker.status()["models"][MODEL]["version"] == MODEL_V + 1
    assert store.count(catalog.model_file(MODEL)) == 2
    assert not cached.exists()


@pytest.mark.process
def test_a_model_that_does_not_fit_gives_every_query_its_error(
    make_worker: MakeWorker, runner: asyncio.Runner, shards: list[dict[str, Any]]
) -> None:
    worker, store, _ = make_worker()
    wrong = run_request([3, 300], shards, model=model_spec(preprocess="imagenet"))
    for _ in range(2):
        results = runner.run(worker.run(wrong))["results"]
        assert [(r["q"], r["id"]) for r in results] == [(3, "3"), (300, "300")]
        errors = {r["error"] for r in results}
        assert len(errors) == 1
        (error,) = errors
        assert MODEL in error and "\n" not in error
        assert all(r["class_ids"] == [] for r in results)
    assert store.count(catalog.model_file(MODEL)) == 1  # the failure is remembered per version
    # The job goes on: the same worker still runs the model with the right preprocessing.
    ok = runner.run(worker.run(run_request([3], shards)))["results"][0]
    assert ok["error"] is None and ok["class_ids"][0] == 3


# --- loading (the training phase) -------------------------------------------------------------


@pytest.mark.process
def test_load_reports_cost_and_per_model_errors(
    make_worker: MakeWorker, runner: asyncio.Runner
) -> None:
    worker, store, events = make_worker()
    models = [
        model_spec(),
        {"name": "broken", "version": 1, "preprocess": "digits"},
        {"name": "missing", "version": 9, "preprocess": "none"},
    ]
    out = runner.run(worker.load(1, models))
    report = out[MODEL]
    assert report["version"] == MODEL_V and report["cost_per_query_s"] > 0
    assert report["input_shape"] == [None, 64] and report["num_classes"] == 10
    assert report["threads"] == 1 and report["probe_batch"] >= 1 and report["open_s"] >= 0
    for name in ("broken", "missing"):
        assert set(out[name]) == {"error"}, out[name]
        assert name in out[name]["error"] and "\n" not in out[name]["error"]
    assert "models/missing.onnx v9" in out["missing"]["error"]
    assert set(worker.status()["models"]) == {MODEL}
    assert events.count("model_loaded") == 1

    # Loaded at that version already: the same report, nothing read again.
    reads = len(store.reads)
    assert runner.run(worker.load(2, [model_spec()])) == {MODEL: report}
    assert len(store.reads) == reads


# --- fencing ----------------------------------------------------------------------------------


@pytest.mark.process
def test_stale_epochs_are_refused_and_the_fence_advances(
    make_worker: MakeWorker, runner: asyncio.Runner, shards: list[dict[str, Any]], tmp_path: Path
) -> None:
    worker, _, _ = make_worker()
    assert runner.run(worker.run(run_request([1], shards, epoch=5)))["epoch"] == 5
    with pytest.raises(StaleEpoch, match="stale epoch 4"):
        runner.run(worker.run(run_request([1], shards, epoch=4)))
    with pytest.raises(StaleEpoch):
        runner.run(worker.load(4, [model_spec()]))
    assert worker.status()["fence"] == 5
    assert runner.run(worker.load(7, [model_spec()]))[MODEL]["version"] == MODEL_V
    assert worker.status()["fence"] == 7
    assert Fence(tmp_path / "fence0").epoch == 7  # persisted: a restarted node still refuses 5


@pytest.mark.process
def test_a_new_coordinator_collects_a_run_the_old_one_sent(
    make_worker: MakeWorker, runner: asyncio.Runner, shards: list[dict[str, Any]]
) -> None:
    """The reply of a batch whose coordinator died is kept for its successor, which collects
    it with its own (newer) epoch instead of running the batch again."""
    worker, _, _ = make_worker()

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        sender = asyncio.ensure_future(worker.run(run_request([3, 1, 2], shards, batch=41)))
        await asyncio.sleep(0)  # the run is registered; the old coordinator now "dies"
        sender.cancel()
        collected = await worker.collect({"epoch": 2, "batch": 41, "job": "job-1"})
        again = await worker.collect({"epoch": 2, "batch": 41, "job": "job-1"})
        return collected, again

    collected, again = runner.run(scenario())
    assert [r["q"] for r in collected["results"]] == [3, 1, 2]
    assert collected["epoch"] == 1 and collected["batch"] == 41
    assert again == collected
    assert worker.status()["fence"] == 2
    with pytest.raises(KeyError, match="no run of batch 42"):
        runner.run(worker.collect({"epoch": 2, "batch": 42, "job": "job-1"}))
    with pytest.raises(KeyError):  # the id exists but for another job
        runner.run(worker.collect({"epoch": 2, "batch": 41, "job": "job-2"}))
    with pytest.raises(StaleEpoch):
        runner.run(worker.collect({"epoch": 1, "batch": 41, "job": "job-1"}))


# --- shards -----------------------------------------------------------------------------------


@pytest.mark.process
def test_concurrent_batches_share_one_shard_fetch_and_one_model_load(
    make_worker: MakeWorker, runner: asyncio.Runner, shards: list[dict[str, Any]]
) -> None:
    worker, store, _ = make_worker(cache_bytes=0)  # no cache: only coalescing can save a read
    shard0 = catalog.shard_file(DATASET, shards[0]["name"])

    async def two_batches() -> list[dict[str, Any]]:
        store.gate = asyncio.Event()
        runs = [
            asyncio.create_task(worker.run(run_request(q, shards, batch=b)))
            for b, q in enumerate([[1, 2], [3, 4]])
        ]
        # Both runs were scheduled before the fetch task they created, so both wait on it now.
        await wait_until(lambda: store.count(shard0) == 1, "the first shard read")
        assert worker.status()["running"] == 2
        store.gate.set()
        return list(await asyncio.gather(*runs))

    replies = runner.run(two_batches())
    assert [[r["id"] for r in reply["results"]] for reply in replies] == [["1", "2"], ["3", "4"]]
    assert store.count(shard0) == 1
    assert store.count(catalog.model_file(MODEL)) == 1  # the per-model lock: one load
    runner.run(worker.run(run_request([5], shards)))
    assert store.count(shard0) == 2  # nothing was cached
    assert worker.status()["cache"]["shards"] == 0


@pytest.mark.process
def test_shard_cache_reuses_shards_and_evicts_the_least_recent_by_bytes(
    make_worker: MakeWorker, runner: asyncio.Runner, shards: list[dict[str, Any]]
) -> None:
    limit = 100_000  # holds a few digits shards (about 33 kB each), not all 8
    worker, store, _ = make_worker(cache_bytes=limit)
    name = [catalog.shard_file(DATASET, s["name"]) for s in shards]
    runner.run(worker.run(run_request([1, 2], shards)))
    runner.run(worker.run(run_request([3, 200], shards)))
    assert store.count(name[0]) == 1  # the second batch used the cached shard

    for s in shards:
        runner.run(worker.run(run_request([s["first"]], shards)))
    cache = worker.status()["cache"]
    assert 1 <= cache["shards"] < len(shards)
    assert 0 < cache["bytes"] <= cache["limit"] == limit
    last = shards[-1]
    runner.run(worker.run(run_request([last["first"] + 1], shards)))
    assert store.count(name[-1]) == 1  # the most recent shard stayed
    runner.run(worker.run(run_request([7], shards)))
    assert store.count(name[0]) == 2  # the least recent one was evicted


@pytest.mark.process
def test_shard_problems_are_one_line_errors_naming_the_shard(
    make_worker: MakeWorker, runner: asyncio.Runner, shards: list[dict[str, Any]]
) -> None:
    worker, store, _ = make_worker()
    bad = [dict(s) for s in shards]
    bad[1]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match=r"shard-00001\.bin") as info:
        runner.run(worker.run(run_request([300], bad)))
    assert "manifest" in str(info.value) and "\n" not in str(info.value)

    store.files[catalog.shard_file(DATASET, "shard-00002.bin"), SHARD_V] = b"\xc1junk"
    bad[2]["sha256"] = hashlib.sha256(b"\xc1junk").hexdigest()
    with pytest.raises(ValueError, match=r"shard-00002\.bin v2: not an idunno shard"):
        runner.run(worker.run(run_request([600], bad)))

    bad[3]["version"] = 99
    with pytest.raises(ValueError, match=r"shard-00003\.bin v99"):
        runner.run(worker.run(run_request([800], bad)))

    store.down = True  # a store that cannot answer now: retry elsewhere (503)
    with pytest.raises(WorkerUnavailable, match="could not read datasets/digits/shard-00000"):
        runner.run(worker.run(run_request([0], shards)))


# --- executor death ---------------------------------------------------------------------------


@pytest.mark.process
def test_executor_death_fails_its_batches_and_a_fresh_one_takes_over(
    make_worker: MakeWorker, runner: asyncio.Runner, shards: list[dict[str, Any]], tmp_path: Path
) -> None:
    worker, store, events = make_worker(cache_bytes=0)
    runner.run(worker.load(1, [model_spec()]))
    cost = worker.status()["models"][MODEL]["cost_per_query_s"]
    cached = tmp_path / "cache0" / "models" / f"{MODEL}-v{MODEL_V}.onnx"
    first_pid = worker.status()["executor_pid"]
    assert isinstance(first_pid, int)
    shard0 = catalog.shard_file(DATASET, shards[0]["name"])

    async def kill_under_two_batches() -> list[BaseException | dict[str, Any]]:
        store.gate = asyncio.Event()
        runs = [asyncio.create_task(worker.run(run_request([q], shards, batch=q))) for q in (1, 2)]
        await wait_until(lambda: store.count(shard0) == 1, "both batches under way")
        os.kill(first_pid, signal.SIGKILL)
        await wait_until(lambda: worker.status()["executor_pid"] is None, "the death noticed")
        store.gate.set()
        return list(await asyncio.gather(*runs, return_exceptions=True))

    for failure in runner.run(kill_under_two_batches()):
        assert isinstance(failure, WorkerUnavailable), failure
        assert "killed by SIGKILL" in str(failure) and "\n" not in str(failure)
    # Two batches failed at once (without waiting for the restart), one restart.
    runner.run(wait_until(lambda: events.count("executor_restarted") >= 1, "the restart"))
    assert events.count("executor_died") == 1 and events.count("executor_restarted") == 1
    status = worker.status()
    second_pid = status["executor_pid"]
    assert second_pid not in (None, first_pid)
    assert status["running"] == 0

    # The fresh executor loads the dead one's model again by itself, before any batch asks:
    # from the file already in the cache, keeping the cost measured the first time.
    runner.run(wait_until(lambda: MODEL in worker.status()["models"], "the model reloaded"))
    assert worker.status()["models"][MODEL]["version"] == MODEL_V
    assert worker.status()["models"][MODEL]["cost_per_query_s"] == cost
    assert store.count(catalog.model_file(MODEL)) == 1
    reply = runner.run(worker.run(run_request([4, 5], shards)))
    assert [(r["id"], r["error"], len(r["class_ids"])) for r in reply["results"]] == [
        ("4", None, 3),
        ("5", None, 3),
    ]
    assert store.count(catalog.model_file(MODEL)) == 1  # the batch found it loaded

    # A death while idle fails the next batch; the one after runs. The cached file was
    # damaged meanwhile: the reload fetches it from the store again and measures it anew.
    cached.write_bytes(b"not a model any more")
    os.kill(second_pid, signal.SIGKILL)
    with pytest.raises(WorkerUnavailable, match="SIGKILL"):
        runner.run(worker.run(run_request([6], shards)))
    runner.run(wait_until(lambda: events.count("executor_restarted") >= 2, "the second restart"))
    assert events.count("executor_restarted") == 2
    reply = runner.run(worker.run(run_request([6], shards)))
    assert reply["results"][0]["error"] is None
    assert store.count(catalog.model_file(MODEL)) == 2
    assert cached.read_bytes() == store.files[catalog.model_file(MODEL), MODEL_V]
    assert worker.status()["executor_pid"] not in (None, first_pid, second_pid)


@pytest.mark.process
def test_stop_fails_batches_in_flight_and_leaves_nothing_running(
    make_worker: MakeWorker, runner: asyncio.Runner, shards: list[dict[str, Any]]
) -> None:
    worker, store, _ = make_worker()
    shard0 = catalog.shard_file(DATASET, shards[0]["name"])

    async def stop_during_a_fetch() -> None:
        store.gate = asyncio.Event()
        run = asyncio.create_task(worker.run(run_request([1], shards)))
        await wait_until(lambda: store.count(shard0) == 1, "the batch under way")
        await worker.stop()
        with pytest.raises(WorkerUnavailable, match="stopped"):
            await run
        assert worker.status()["executor_pid"] is None
        with pytest.raises(WorkerUnavailable, match="not running"):
            await worker.run(run_request([1], shards))
        assert asyncio.all_tasks() == {asyncio.current_task()}

    runner.run(stop_during_a_fetch())


# --- bad requests, a worker that takes no work ------------------------------------------------


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda r: r.pop(key)


BAD_REQUESTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no epoch": _without("epoch"),
    "no shards": _without("shards"),
    "epoch is text": lambda r: r.update(epoch="1"),
    "batch is a bool": lambda r: r.update(batch=True),
    "empty queries": lambda r: r.update(queries=[]),
    "negative index": lambda r: r.update(queries=[1, -1]),
    "float index": lambda r: r.update(queries=[1.0]),
    "index no shard covers": lambda r: r.update(queries=[5000]),
    "top_k 0": lambda r: r.update(top_k=0),
    "top_k 1001": lambda r: r.update(top_k=1001),
    "model not a map": lambda r: r.update(model="digits_logreg"),
    "model name with a path": lambda r: r.update(model={**model_spec(), "name": "../x"}),
    "model version 0": lambda r: r.update(model=model_spec(version=0)),
    "unknown preprocess": lambda r: r.update(model=model_spec(preprocess="jpeg")),
    "dataset with a path": lambda r: r.update(dataset="a/b"),
    "shards overlap": lambda r: r["shards"][1].update(first=10),
    "shard count 0": lambda r: r["shards"][0].update(count=0),
    "job missing": _without("job"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_raise_one_line_value_errors(
    make_worker: MakeWorker, runner: asyncio.Runner, shards: list[dict[str, Any]], case: str
) -> None:
    worker, store, _ = make_worker(start=False)  # refused before any work: no executor needed
    request = run_request([1, 2], shards, epoch=9)
    BAD_REQUESTS[case](request)
    with pytest.raises(ValueError) as info:
        runner.run(worker.run(request))
    assert not isinstance(info.value, StaleEpoch)
    assert str(info.value) and "\n" not in str(info.value)
    assert worker.status()["fence"] == 0  # a malformed request does not advance the fence
    assert store.reads == []


def test_bad_load_requests_raise_value_errors(
    make_worker: MakeWorker, runner: asyncio.Runner
) -> None:
    worker, _, _ = make_worker(start=False)
    for epoch, models in [(None, [model_spec()]), (1, "digits_logreg"), (1, [{"name": MODEL}])]:
        with pytest.raises(ValueError):
            runner.run(worker.load(epoch, models))  # type: ignore[arg-type]


def test_a_worker_with_no_threads_takes_no_work(
    make_worker: MakeWorker, runner: asyncio.Runner, shards: list[dict[str, Any]]
) -> None:
    worker, store, events = make_worker(threads=0)
    assert not worker.enabled
    status = worker.status()
    assert (status["enabled"], status["threads"], status["executor_pid"]) == (False, 0, None)
    expected = r"node n0 takes no inference work \(--inference-threads 0\)"
    with pytest.raises(WorkerUnavailable, match=expected):
        runner.run(worker.run(run_request([1], shards)))
    with pytest.raises(WorkerUnavailable, match=expected):
        runner.run(worker.load(1, [model_spec()]))
    assert store.reads == [] and events.seen == []


# --- HTTP -------------------------------------------------------------------------------------


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


@pytest.mark.process
def test_http_routes_speak_msgpack_with_fitting_status_codes(
    make_worker: MakeWorker, runner: asyncio.Runner, shards: list[dict[str, Any]]
) -> None:
    worker, _, _ = make_worker()
    idle, _, _ = make_worker(threads=0)

    async def exchange() -> None:
        app = web.Application()
        add_routes(app, worker)
        idle_app = web.Application()
        add_routes(idle_app, idle)
        async with TestClient(TestServer(app)) as client, TestClient(TestServer(idle_app)) as off:

            async def post(c: TestClient[Any, Any], path: str, body: Any) -> tuple[int, Any]:
                headers = {"Content-Type": MSGPACK}
                async with c.post(f"/v1/internal/work/{path}", data=body, headers=headers) as r:
                    assert r.content_type == MSGPACK
                    return r.status, msgpack.unpackb(await r.read(), raw=False)

            status, reply = await post(
                client, "load", _pack({"epoch": 2, "models": [model_spec()]})
            )
            assert status == 200 and reply["worker"] == "n0"
            assert reply["models"][MODEL]["cost_per_query_s"] > 0

            status, reply = await post(client, "run", _pack(run_request([9, 1], shards, epoch=2)))
            assert status == 200, reply
            assert [(r["q"], r["class_ids"][0]) for r in reply["results"]] == [(9, 9), (1, 1)]

            status, reply = await post(client, "run", _pack(run_request([1], shards, epoch=1)))
            assert status == 409 and "stale epoch 1" in reply["error"]

            for garbage in (b"\xc1\xc1", b"", _pack([1, 2]), _pack(run_request([], shards))):
                status, reply = await post(client, "run", garbage)
                assert status == 400 and reply["error"], garbage
            status, reply = await post(client, "load", _pack({"models": []}))
            assert status == 400 and "epoch" in reply["error"]
            status, reply = await post(client, "run", io.BytesIO(bytes(2 << 20)))
            assert status == 413, reply

            status, reply = await post(off, "run", _pack(run_request([1], shards)))
            assert status == 503 and "takes no inference work" in reply["error"]

            async with client.get("/v1/internal/work/status") as r:
                assert r.status == 200 and r.content_type == MSGPACK
                st = msgpack.unpackb(await r.read(), raw=False)
            assert st["models"][MODEL]["version"] == MODEL_V and st["fence"] == 2

    runner.run(exchange())
