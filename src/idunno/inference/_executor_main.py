"""The executor's child process (see executor.py): `python -m idunno.inference._executor_main N`
runs ONNX Runtime with N intra-op threads and serves requests read from stdin.

Threads: the main thread reads requests; one decode thread decodes batches; one inference thread
opens sessions and runs batches, one at a time in arrival order. A run is decoded while the
previous one is inferred (ORT and Pillow release the GIL), which is the executor's pipelining.
Those two threads run at a lower CPU priority than the process (BACKGROUND_NICE): an "urgent"
batch (a new job's first query) is decoded and run by a third thread at the process's own
priority, alongside the batch running, and the node raises the process's scheduling group while
it runs (cpu_priority.GroupPriority), so on saturated cores the kernel gives it most of one and the
new job's first result waits for neither the running batch nor the queue.
Replies go to the parent's pipe in completion order, tagged with the request id.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import IO, Any, Final

from idunno.inference.cpu_priority import BACKGROUND, enter_background, lower_thread_priority
from idunno.inference.executor import (
    HEADER_SIZE,
    BatchResult,
    LoadReport,
    ModelError,
    Preprocess,
    QueryResult,
    ScoreKind,
    encode_frame,
    frame_length,
)

NICENESS: Final = 5  # the whole process, below the node (see main)
if __name__ == "__main__":
    # Into the background before the imports below (NumPy, ONNX Runtime, Pillow: about a
    # second of CPU): a fresh session's scheduling group weighs like the node's until lowered,
    # and an executor restarted while the others work took most of a core from them.
    enter_background(NICENESS, BACKGROUND)
    if len(sys.argv) > 2:  # the CPUs it may use: set before any thread starts, all inherit it
        os.sched_setaffinity(0, {int(c) for c in sys.argv[2].split(",")})

# isort: off
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from idunno.inference.digits import decode_digit  # noqa: E402
from idunno.inference.images import decode_imagenet  # noqa: E402

# isort: on

PROBE_BATCH: Final = 8  # the batch size the cost per query is measured at (dynamic models)
MEASURE_BUDGET_S: Final = 0.25  # timed runs continue until this much time has passed ...
MIN_PROBE_RUNS: Final = 2
MAX_PROBE_RUNS: Final = 200  # ... or this many runs (tiny models)
# What each preprocessing feeds the model per query; "none" feeds the model's own sample shape.
SAMPLE_SHAPES: Final[dict[str, tuple[int, ...]]] = {"imagenet": (3, 224, 224), "digits": (64,)}
MAX_MESSAGE: Final = 300  # characters of an error message (one line)
# Added to NICENESS for the threads running ordinary batches (nice 15): CFS weights nice 5 to
# nice 15 about 9 to 1, so an urgent run next to them gets ~90% of a shared core.
BACKGROUND_NICE: Final = 10

_ORT_ERROR = re.compile(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : (?:Load model from .* failed:)?")

Array = np.ndarray[Any, Any]


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, bounded (errors travel as one line)."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return (text or type(exc).__name__)[:MAX_MESSAGE]


# --- opening a model ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelSlot:
    """An open session and how to feed it and read it."""

    name: str
    preprocess: Preprocess
    session: Any  # ort.InferenceSession (onnxruntime has no type stubs)
    input_name: str
    sample_shape: tuple[int, ...]  # one query's input, without the batch dimension
    fixed_batch: int | None  # None: dynamic batch dimension
    output_name: str
    scores: ScoreKind
    report: LoadReport | None = None


def _session_options(threads: int) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: warnings would flood the node's stderr
    # Idle ORT workers spin by default; on a small node that steals the cores the decode thread
    # and the node's event loop need.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def open_session(name: str, path: str, threads: int) -> Any:
    """An ORT session for the file at `path`; ModelError naming the cause if there is none."""
    if not os.path.isfile(path):
        raise ModelError(f"model {name!r}: no model file at {path}")
    try:
        return ort.InferenceSession(
            path, sess_options=_session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT's pybind11 errors share no base class below Exception
        raise ModelError(f"model {name!r}: {_load_failure(path, exc)}") from None


def _load_failure(path: str, exc: Exception) -> str:
    message = one_line(exc)
    match = _ORT_ERROR.match(message)
    cause = (message[match.end() :] if match else message).strip().rstrip(".")
    if match and (match.group(1) == "INVALID_PROTOBUF" or "No graph was found" in cause):
        return f"{path} is not an ONNX model ({cause})"
    return f"ONNX Runtime cannot load {path}: {cause}"


def _dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    """ORT reports a dimension as an int, a symbolic name (str) or None; None = dynamic."""
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def _show(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def check_input(
    name: str, session: Any, preprocess: Preprocess
) -> tuple[str, tuple[int | None, ...], tuple[int, ...]]:
    """(input name, input dims, sample shape) if the model's one input can take this
    preprocessing's queries; ModelError naming the mismatch otherwise."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs)
        raise ModelError(f"model {name!r} has {len(inputs)} inputs ({names}); it needs exactly 1")
    (inp,) = inputs
    if inp.type != "tensor(float)":
        raise ModelError(f"model {name!r}: input {inp.name!r} is {inp.type}, not float32")
    dims = _dims(inp.shape)
    if preprocess == "none":
        if len(dims) < 1 or any(d is None for d in dims[1:]):
            raise ModelError(
                f"model {name!r}: input {inp.name!r} is {_show(inp.shape)}; preprocess 'none' "
                "needs fixed dimensions after the batch dimension"
            )
        return inp.name, dims, tuple(d for d in dims[1:] if d is not None)
    sample = SAMPLE_SHAPES[preprocess]
    fits = len(dims) == len(sample) + 1 and all(
        d is None or d == s for d, s in zip(dims[1:], sample, strict=True)
    )
    if not fits:
        raise ModelError(
            f"model {name!r} does not fit {preprocess} data: its input {inp.name!r} is "
            f"{_show(inp.shape)}, {preprocess} queries are {_show(['N', *sample])}"
        )
    return inp.name, dims, sample


def pick_output(session: Any) -> tuple[str, ScoreKind, int | None]:
    """(output name, score kind, classes). Scores: an output named "probabilities" (skl2onnx's
    classifiers) or "*prob*"/"*softmax*" is used as it is; any other float32 [N, C] output is
    taken as logits and softmaxed (the zoo's "logits"); a model without such an output gives
    its first output row as it is ("raw")."""
    outputs = session.get_outputs()
    classifiers = [o for o in outputs if o.type == "tensor(float)" and len(o.shape) == 2]
    named = [o for o in classifiers if o.name == "probabilities"]
    if named or classifiers:
        out = (named or classifiers)[0]
        probs = any(word in out.name.lower() for word in ("prob", "softmax"))
        return out.name, "probabilities" if probs else "softmax", _dims(out.shape)[1]
    return outputs[0].name, "raw", None


# --- running ----------------------------------------------------------------------------------


def forward(slot: ModelSlot, batch: Array) -> Array:
    """The chosen output for a batch of any size: one run for a dynamic batch dimension,
    chunks of the fixed size (the last one zero-padded) otherwise."""
    if len(batch) == 0:
        return np.empty((0, 0), dtype=np.float32)
    size = slot.fixed_batch
    if size is None:
        return _run(slot, batch)
    outputs = []
    for start in range(0, len(batch), size):
        chunk = batch[start : start + size]
        count = len(chunk)
        if count < size:
            padding = np.zeros((size - count, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, padding])
        outputs.append(_run(slot, chunk)[:count])
    return np.concatenate(outputs)


def _run(slot: ModelSlot, batch: Array) -> Array:
    output: Array = slot.session.run([slot.output_name], {slot.input_name: batch})[0]
    return output


def probe_batch(slot: ModelSlot, count: int) -> Array:
    """Seeded input with the statistics of real queries (compute cost barely depends on it)."""
    rng = np.random.default_rng(0)
    shape = (count, *slot.sample_shape)
    if slot.preprocess == "digits":
        return rng.integers(0, 17, size=shape).astype(np.float32)
    return rng.standard_normal(shape, dtype=np.float32)


def measure_cost(slot: ModelSlot) -> tuple[float, int]:
    """(seconds per query, batch size) after one warm-up run; the first run allocates memory
    and initializes kernels, so it would overstate the steady cost."""
    count = slot.fixed_batch or PROBE_BATCH
    batch = probe_batch(slot, count)
    forward(slot, batch)
    runs, started = 0, time.perf_counter()
    while True:
        forward(slot, batch)
        runs += 1
        elapsed = time.perf_counter() - started
        if runs >= MAX_PROBE_RUNS or (runs >= MIN_PROBE_RUNS and elapsed >= MEASURE_BUDGET_S):
            return elapsed / (runs * count), count


def load_model(
    name: str,
    path: str,
    preprocess: Preprocess,
    threads: int,
    measured: tuple[float, int] | None = None,
) -> ModelSlot:
    """Open, check, warm up and measure a model. `measured` = (cost per query, probe batch)
    of an earlier load of the same file (by an executor that died): one warm-up run instead
    of the measurement, so a restart on busy cores takes less from the other executors."""
    started = time.perf_counter()
    session = open_session(name, path, threads)
    open_s = time.perf_counter() - started
    input_name, dims, sample = check_input(name, session, preprocess)
    output_name, scores, classes = pick_output(session)
    slot = ModelSlot(name, preprocess, session, input_name, sample, dims[0], output_name, scores)
    try:
        if measured is None:
            cost, count = measure_cost(slot)
        else:
            cost, count = measured
            forward(slot, probe_batch(slot, count))  # the first run allocates: not in a batch
    except Exception as exc:  # a graph ORT accepts may still fail when it runs
        raise ModelError(f"model {name!r} fails on a {preprocess} batch: {one_line(exc)}") from None
    report = LoadReport(
        model=name,
        preprocess=preprocess,
        cost_per_query_s=cost,
        probe_batch=count,
        input_name=input_name,
        input_shape=dims,
        batch_dim_dynamic=dims[0] is None,
        output_name=output_name,
        scores=scores,
        num_classes=classes,
        open_s=open_s,
        threads=threads,
    )
    return dataclasses.replace(slot, report=report)


# --- decoding and results ---------------------------------------------------------------------


def decode_item(slot: ModelSlot, query_id: str, data: bytes) -> Array:
    """One query's model input; ValueError naming the query if its bytes do not decode."""
    if slot.preprocess == "imagenet":
        return decode_imagenet(data, query_id)
    if slot.preprocess == "digits":
        return decode_digit(data, query_id)
    expected = int(np.prod(slot.sample_shape)) * 4
    if len(data) != expected:
        raise ValueError(
            f"query {query_id!r}: expected {expected} bytes of float32, got {len(data)}"
        )
    return np.frombuffer(data, dtype="<f4").reshape(slot.sample_shape)


@dataclass(frozen=True, slots=True)
class Decoded:
    slot: ModelSlot
    batch: Array  # the decodable items, in order
    good: list[int]  # their positions in the request
    errors: dict[int, str]  # position -> why it could not be decoded
    started: float  # time.monotonic()
    seconds: float


def decode_batch(slot: ModelSlot, items: Sequence[tuple[str, bytes]]) -> Decoded:
    started, clock = time.monotonic(), time.perf_counter()
    batch = np.empty((len(items), *slot.sample_shape), dtype=np.float32)
    good: list[int] = []
    errors: dict[int, str] = {}
    for position, (query_id, data) in enumerate(items):
        try:
            batch[len(good)] = decode_item(slot, query_id, data)
        except ValueError as exc:  # ImageDecodeError and decode_digit name the query
            errors[position] = one_line(exc)
            continue
        except Exception as exc:  # whatever else the bytes provoke, only this query fails
            errors[position] = f"cannot decode {query_id!r}: {type(exc).__name__}: {one_line(exc)}"
            continue
        good.append(position)
    return Decoded(slot, batch[: len(good)], good, errors, started, time.perf_counter() - clock)


def _softmax(logits: Array) -> Array:
    z = logits.astype(np.float64)  # float64: no overflow, and exact enough to rank
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def answers(output: Array, ids: Sequence[str], scores: ScoreKind, top_k: int) -> list[QueryResult]:
    """One result per row of the output: top-k (ties: lower class id first) or the raw row."""
    if not ids:
        return []  # every item failed to decode (reshape cannot infer -1 for 0 rows)
    rows = output.reshape(len(ids), -1)
    if scores == "raw":
        return [
            QueryResult(q, output=tuple(row.tolist())) for q, row in zip(ids, rows, strict=True)
        ]
    values = _softmax(rows) if scores == "softmax" else rows
    order = np.argsort(-values, axis=1, kind="stable")[:, :top_k]
    best = np.take_along_axis(values, order, axis=1)
    return [
        QueryResult(q, class_ids=tuple(c), scores=tuple(s))
        for q, c, s in zip(ids, order.tolist(), best.tolist(), strict=True)
    ]


# --- the process ------------------------------------------------------------------------------


class Channel:
    """Frames to the parent; the inference thread and the main thread both reply."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        frame = encode_frame(message)
        try:
            with self._lock:
                self._out.write(frame)
                self._out.flush()
        except OSError:  # the parent is gone: nobody wants the rest of our work
            os._exit(0)


class Lane:
    """One worker thread running tasks in arrival order; a `background` lane's thread runs at
    BACKGROUND_NICE below the process."""

    def __init__(self, name: str, background: bool = False) -> None:
        self._tasks: deque[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]] = deque()
        self._ready = threading.Condition()
        self._background = background
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._ready:
            self._tasks.append((fn, args, future))
            self._ready.notify()
        return future

    def _work(self) -> None:
        if self._background:
            lower_thread_priority(BACKGROUND_NICE)
        while True:
            with self._ready:
                while not self._tasks:
                    self._ready.wait()
                fn, args, future = self._tasks.popleft()
            _execute(fn, args, future)


def _execute(fn: Callable[..., Any], args: tuple[Any, ...], future: Future[Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # handed to the waiter, like concurrent.futures does
        future.set_exception(exc)


class Child:
    def __init__(self, threads: int, channel: Channel) -> None:
        self.threads = threads
        self.channel = channel
        self.decoder = Lane("decode", background=True)
        self.inferrer = Lane("infer", background=True)
        self.urgent = Lane("urgent")  # decodes and runs urgent batches at the process priority
        # A model's load is in flight or done; runs wait for it.
        self.models: dict[str, Future[ModelSlot]] = {}

    def serve(self, inp: IO[bytes]) -> None:
        """Handle requests until stdin ends (the parent closed it or died)."""
        while len(header := inp.read(HEADER_SIZE)) == HEADER_SIZE:
            length = frame_length(header)
            payload = inp.read(length)
            if len(payload) != length:
                return
            self.handle(pickle.loads(payload))

    def handle(self, request: dict[str, Any]) -> None:
        call_id, op = request["id"], request.get("op")
        if op == "load":
            loading = self.inferrer.submit(
                load_model,
                request["model"],
                request["path"],
                request["prep"],
                self.threads,
                request.get("measured"),
            )
            self.models[request["model"]] = loading
            self._reply_when_done(call_id, loading, lambda slot: slot.report)
        elif op == "run":
            slot = self.models.get(request["model"])
            if request.get("urgent"):
                running = self.urgent.submit(self.decode_and_infer, request, slot)
            else:
                decoding = self.decoder.submit(self.decode, request, slot)
                running = self.inferrer.submit(self.infer, request, decoding)
            self._reply_when_done(call_id, running)
        elif op == "unload":
            self.models.pop(request["model"], None)
            self.channel.send({"id": call_id, "ok": None})
        else:
            self.channel.send({"id": call_id, "error": f"unknown op {op!r}", "kind": "internal"})

    def decode(self, request: dict[str, Any], loading: Future[ModelSlot] | None) -> Decoded:
        name = request["model"]
        if loading is None:
            raise ModelError(f"model {name!r} is not loaded")
        try:
            slot = loading.result()
        except ModelError:
            raise ModelError(f"model {name!r} is not loaded (its load failed)") from None
        return decode_batch(slot, request["items"])

    def decode_and_infer(
        self, request: dict[str, Any], loading: Future[ModelSlot] | None
    ) -> BatchResult:
        decoding: Future[Decoded] = Future()
        _execute(self.decode, (request, loading), decoding)
        return self.infer(request, decoding)

    def infer(self, request: dict[str, Any], decoding: Future[Decoded]) -> BatchResult:
        decoded = decoding.result()
        infer_started, clock = time.monotonic(), time.perf_counter()
        slot, items = decoded.slot, request["items"]
        try:
            output = forward(slot, decoded.batch)
        except Exception as exc:
            raise ModelError(
                f"model {slot.name!r} failed on batch {request['batch']!r}: {one_line(exc)}"
            ) from None
        good_ids = [items[i][0] for i in decoded.good]
        by_position = dict(
            zip(decoded.good, answers(output, good_ids, slot.scores, request["top_k"]), strict=True)
        )
        for position, error in decoded.errors.items():
            by_position[position] = QueryResult(items[position][0], error=error)
        return BatchResult(
            batch_id=request["batch"],
            model=slot.name,
            results=tuple(by_position[i] for i in range(len(items))),
            decode_s=decoded.seconds,
            infer_s=time.perf_counter() - clock,
            decode_started=decoded.started,
            infer_started=infer_started,
            finished=time.monotonic(),
        )

    def _reply_when_done(
        self, call_id: int, future: Future[Any], convert: Callable[[Any], Any] = lambda r: r
    ) -> None:
        def reply(done: Future[Any]) -> None:
            exc = done.exception()
            if exc is None:
                self.channel.send({"id": call_id, "ok": convert(done.result())})
            elif isinstance(exc, ModelError):
                self.channel.send({"id": call_id, "error": str(exc), "kind": "model"})
            else:
                error = f"{type(exc).__name__}: {one_line(exc)}"
                self.channel.send({"id": call_id, "error": error, "kind": "internal"})

        future.add_done_callback(reply)


def _claim_stdio() -> tuple[IO[bytes], IO[bytes]]:
    """Private copies of stdin/stdout for the protocol; fd 1 then points at stderr, so a stray
    print (ours or a native library's) cannot corrupt a frame, and fd 0 at /dev/null."""
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return inp, out


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    threads = int(args[0]) if args else 1
    # Ctrl-C in a terminal signals the node's whole process group; the node decides when its
    # executor stops (by closing our stdin), so a half-finished shutdown leaves no traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The process runs NICENESS below the node (done at import, see the top): when cores are
    # short (six nodes loading AlexNet on two cores), the node's failure detector and HTTP
    # server run first, so inference load never makes a live node look dead. With idle cores it
    # changes nothing.
    inp, out = _claim_stdio()
    ort.set_default_logger_severity(3)
    child = Child(threads, Channel(out))
    child.channel.send({"id": 0, "ok": {"pid": os.getpid(), "onnxruntime": ort.__version__}})
    child.serve(inp)
    # stdin ended: the node closed us or died. Work in flight is abandoned; _exit does not wait
    # for the pool threads (a batch may take seconds).
    os._exit(0)


if __name__ == "__main__":
    main()
