"""The inference executor: ONNX Runtime in a separate OS process, driven from the node's event loop.

A node never runs inference in its own process: a CPU-bound batch would stall the event loop and,
with it, the failure detector. `Executor.start()` spawns one child process
(`python -m idunno.inference._executor_main`, a fresh interpreter: nothing is forked from the
asyncio parent and no socket is inherited) and talks to it over its stdin/stdout with
length-prefixed pickles. The child does all the CPU work:

- `load(model, path, preprocess)` opens an ONNX Runtime session (intra-op threads as configured,
  default 1; inter-op 1), checks that the model's input fits the preprocessing, warms it up and
  measures its cost per query: the `LoadReport` the training phase reports.
- `run(batch_id, model, items)` decodes and preprocesses the raw items (JPEG bytes for
  "imagenet", 64 bytes for "digits", raw float32 for "none") and runs them. An item that cannot
  be decoded gets an error result of its own; the rest of the batch runs.
- Pipelining: the child has one decode thread and one inference thread, so while batch k runs in
  ONNX Runtime (which releases the GIL) batch k+1 is already being decoded; up to `max_inflight`
  (default 2) `run` calls may overlap, and more simply wait their turn.

If the child dies, every pending call and every later one raises `ExecutorError` and `alive`
becomes False; start a new executor to recover. A model that cannot be used raises `ModelError`
(a ValueError) whose one-line message names the cause.

Trust: the pickles only ever travel between a node and the child it spawned, over a private pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pickle
import signal
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, Self

from idunno.inference.cpu_priority import GroupPriority

DEFAULT_THREADS: Final = 1
MAX_INFLIGHT: Final = 2  # one batch running, one being decoded (see docs/control-plane.md)
PREPROCESSINGS: Final = ("imagenet", "digits", "none")
CHILD_MODULE: Final = "idunno.inference._executor_main"
START_TIMEOUT_S: Final = 60.0
CLOSE_TIMEOUT_S: Final = 5.0

Preprocess = Literal["imagenet", "digits", "none"]
ScoreKind = Literal["probabilities", "softmax", "raw"]

# Frame: 4-byte big-endian payload length, then a pickle. 1 GiB bounds a corrupt header.
_HEADER: Final = struct.Struct("!I")
MAX_FRAME: Final = 1 << 30


class ExecutorError(RuntimeError):
    """The executor process is gone (killed, crashed or closed) or misbehaved."""


class ModelError(ValueError):
    """A model that cannot be loaded or run; the message is one line naming the cause."""


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What `load` found out about a model (the training phase reports cost_per_query_s)."""

    model: str
    preprocess: Preprocess
    cost_per_query_s: float  # inference only, measured after a warm-up at probe_batch
    probe_batch: int
    input_name: str
    input_shape: tuple[int | None, ...]  # None: a dynamic dimension
    batch_dim_dynamic: bool  # False: a fixed batch dimension, fed in chunks of that size
    output_name: str
    scores: ScoreKind  # how the output becomes scores (see _executor_main.pick_output)
    num_classes: int | None  # None: not a classifier ("raw") or not known before a run
    open_s: float  # opening the session (reading and optimizing the graph)
    threads: int


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One query's answer: the top classes with their scores, the raw output row for a model
    that is not a classifier, or an error that concerns this query alone."""

    query_id: str
    class_ids: tuple[int, ...] = ()
    scores: tuple[float, ...] = ()  # descending, same order as class_ids
    output: tuple[float, ...] | None = None  # set only when LoadReport.scores == "raw"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A batch's results, in the order of the items, and where the time went. The timestamps
    are the child's time.monotonic(), the same clock as the parent's on one host (Linux)."""

    batch_id: str
    model: str
    results: tuple[QueryResult, ...]
    decode_s: float  # decoding and preprocessing every item
    infer_s: float  # ONNX Runtime and turning outputs into scores
    decode_started: float
    infer_started: float  # later than decode end when the batch waited for the previous one
    finished: float

    @property
    def per_query_s(self) -> float:
        """Processing time per query (decode + inference, shared equally)."""
        return (self.decode_s + self.infer_s) / max(1, len(self.results))


# --- framing (shared with the child) ---------------------------------------------------------


def encode_frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) > MAX_FRAME:
        raise ValueError(f"message of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(payload)) + payload


def frame_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ExecutorError(f"corrupt frame header: {length} bytes announced")
    return int(length)


HEADER_SIZE: Final = _HEADER.size


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    length = frame_length(await reader.readexactly(HEADER_SIZE))
    return pickle.loads(await reader.readexactly(length))


# --- the parent side --------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    """The node's environment, plus: idunno importable even when not installed, and no stray
    math-library thread pools (the child's CPU budget is ORT's threads plus one decode thread;
    extra pools would oversubscribe a small node and slow its event loop)."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def _describe_exit(pid: int, returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"executor process {pid} was killed by {signal.Signals(-returncode).name}"
    return f"executor process {pid} exited with code {returncode}"


class Executor:
    """Handle on one executor child process; use from a single asyncio event loop."""

    def __init__(self, proc: asyncio.subprocess.Process, threads: int, max_inflight: int) -> None:
        # Use Executor.start(); the constructor only wires up a process that already runs.
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._priority = GroupPriority(proc.pid)
        self._stdin = proc.stdin
        self.threads = threads
        self._slots = asyncio.Semaphore(max_inflight)
        self._ids = itertools.count(1)  # 0 is the child's hello
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._hello: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[0] = self._hello
        self._closing = False
        self._death: str | None = None  # why the child is gone, once it is
        self._reader = asyncio.create_task(self._read_replies(proc.stdout), name="executor-reader")
        self._reports: dict[str, LoadReport] = {}

    @classmethod
    async def start(
        cls,
        threads: int = DEFAULT_THREADS,
        *,
        max_inflight: int = MAX_INFLIGHT,
        start_timeout: float = START_TIMEOUT_S,
        cpus: frozenset[int] | None = None,
    ) -> Self:
        """Spawn the child and wait until it is ready (its imports take about 0.3 s). With
        `cpus`, the child and every thread it starts run only on those CPUs (see cpus.py)."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            CHILD_MODULE,
            str(threads),
            *([",".join(str(c) for c in sorted(cpus))] if cpus else []),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=_child_env(),
            close_fds=True,  # the node's sockets stay in the node
            # A session, hence a scheduling group, of its own: its CPU share can then be set
            # below the node's (inference is background work) and raised for urgent batches.
            # It still ends with the node: it exits when its stdin closes.
            start_new_session=True,
        )
        ex = cls(proc, threads, max_inflight)
        try:
            await asyncio.wait_for(asyncio.shield(ex._hello), start_timeout)
            await ex._priority.start()
        except BaseException as exc:
            await ex.close()
            if isinstance(exc, TimeoutError):
                raise ExecutorError(f"executor did not start within {start_timeout} s") from None
            raise
        return ex

    # -- state ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def models(self) -> Mapping[str, LoadReport]:
        """The report of every model loaded and not unloaded, by name."""
        return MappingProxyType(self._reports)

    @property
    def returncode(self) -> int | None:
        """The child's exit status once it has exited and been reaped, else None."""
        return self._proc.returncode

    @property
    def alive(self) -> bool:
        return self._death is None and not self._closing

    def _check_alive(self) -> None:
        if self._closing:
            raise ExecutorError("executor is closed")
        if self._death is not None:
            raise ExecutorError(self._death)

    # -- calls ---------------------------------------------------------------------------------

    async def load(
        self,
        model: str,
        path: str | os.PathLike[str],
        preprocess: str,
        measured: LoadReport | None = None,
    ) -> LoadReport:
        """Open `path` as `model` (replacing a model of that name), check it against the
        preprocessing, warm it up and measure its cost per query. With `measured`, the report
        of an earlier load of the same file, its measured cost is kept and only one
        warm-up run is made (a restart). Raises ModelError."""
        if preprocess not in PREPROCESSINGS:
            raise ValueError(f"preprocess must be one of {', '.join(PREPROCESSINGS)}")
        request: dict[str, Any] = {
            "op": "load",
            "model": model,
            "path": os.fspath(path),
            "prep": preprocess,
        }
        if measured is not None:
            request["measured"] = (measured.cost_per_query_s, measured.probe_batch)
        report: LoadReport = await self._call(request)
        self._reports[model] = report
        return report

    async def unload(self, model: str) -> None:
        """Drop a model's session (batches already submitted still finish)."""
        self._reports.pop(model, None)
        await self._call({"op": "unload", "model": model})

    async def run(
        self,
        batch_id: str,
        model: str,
        items: Sequence[tuple[str, bytes]],
        top_k: int = 5,
        urgent: bool = False,
    ) -> BatchResult:
        """Decode and run `items` ((query id, raw bytes) pairs) on a loaded model. Waits while
        `max_inflight` batches are already in the child. Raises ModelError if the model is not
        loaded or fails on the batch, ExecutorError if the child dies. An `urgent` batch (a new
        job's first: its first result) waits for nothing: the child runs it at once, alongside
        the batch running, at a higher CPU priority."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        request = {
            "op": "run",
            "batch": batch_id,
            "model": model,
            "items": [(str(q), bytes(data)) for q, data in items],
            "top_k": top_k,
            "urgent": urgent,
        }
        if urgent:  # skips the queue here and in the child
            async with self._priority.urgent():
                urgent_result: BatchResult = await self._call(request)
            return urgent_result
        async with self._slots:
            result: BatchResult = await self._call(request)
        return result

    async def _call(self, request: dict[str, Any]) -> Any:
        self._check_alive()
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Registered before any await, so a child death seen by the reader fails this call too.
        self._pending[call_id] = future
        try:
            self._stdin.write(encode_frame({**request, "id": call_id}))
            await self._stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._pending.pop(call_id, None)
            raise ExecutorError(self._death or f"executor pipe closed ({exc})") from None
        try:
            return await future
        finally:
            self._pending.pop(call_id, None)  # also on cancellation: a late reply is dropped

    # -- replies -------------------------------------------------------------------------------

    async def _read_replies(self, stdout: asyncio.StreamReader) -> None:
        """Resolve calls by id until the child's stdout ends, then fail what is left with the
        reason (exit code or signal)."""
        problem = ""
        try:
            while True:
                self._dispatch(await _read_frame(stdout))
        except asyncio.IncompleteReadError:
            pass  # end of stream: the child exited or was killed
        except asyncio.CancelledError:
            self._death = self._death or "executor reader cancelled (event loop closing)"
            self._fail_pending()
            raise
        except Exception as exc:  # any unreadable reply means the protocol is broken
            problem = f" after an unreadable reply ({type(exc).__name__}: {exc})"
            self.kill()
        # New calls fail at once from here on; pending ones get the exit status below.
        self._death = f"executor process {self._proc.pid} stopped"
        returncode = await self._proc.wait()
        self._death = _describe_exit(self._proc.pid, returncode) + problem
        self._fail_pending()

    def _dispatch(self, reply: dict[str, Any]) -> None:
        future = self._pending.pop(reply["id"], None)
        if future is None or future.done():
            return  # the caller gave up (cancelled) before the reply came
        if "ok" in reply:
            future.set_result(reply["ok"])
        elif reply.get("kind") == "model":
            future.set_exception(ModelError(reply["error"]))
        else:
            future.set_exception(ExecutorError(f"executor failed: {reply['error']}"))

    def _fail_pending(self) -> None:
        reason = "executor is closed" if self._closing else (self._death or "executor stopped")
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ExecutorError(reason))
        # A hello nobody awaits any more must not log "exception was never retrieved".
        if self._hello.done() and not self._hello.cancelled():
            self._hello.exception()

    # -- shutdown ------------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the child now (it is reaped by the reader task)."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Stop the child: closing its stdin makes it exit at once (batches in flight are
        abandoned and their callers get ExecutorError); SIGKILL if it does not. Idempotent."""
        if not self._closing:
            self._closing = True
            self._fail_pending()
            self._stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except TimeoutError:
            self.kill()
            await self._reader
        with contextlib.suppress(ConnectionError):
            await self._stdin.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
