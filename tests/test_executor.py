"""The inference executor (idunno.inference.executor): ONNX Runtime in a child process.

One event loop (an asyncio.Runner) and one executor with the zoo models loaded serve most tests;
tests that kill or close an executor start their own. Every child is closed at teardown, and
SIGKILLed if closing failed, whatever the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from PIL import Image

from idunno.inference import zoo
from idunno.inference.digits import digit_items, train_digits_models
from idunno.inference.executor import (
    BatchResult,
    Executor,
    ExecutorError,
    ModelError,
    QueryResult,
)
from idunno.inference.images import preprocess_imagenet, sample_images

ZOO = {
    "resnet18": "imagenet",
    "alexnet": "imagenet",
    "digits_logreg": "digits",
    "digits_mlp": "digits",
}


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the module, so the shared executor outlives a single test."""
    with asyncio.Runner() as r:
        yield r


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("models")
    built = {"resnet18": zoo.build_resnet18(0), "alexnet": zoo.build_alexnet(0)}
    built.update(train_digits_models(0))
    paths = {}
    for name, data in built.items():
        paths[name] = directory / f"{name}.onnx"
        paths[name].write_bytes(data)
    return paths


def _stop(runner: asyncio.Runner, ex: Executor) -> None:
    """Close the executor; if that fails, SIGKILL it (returncode None: not yet reaped, so the
    pid is still our child's)."""
    try:
        runner.run(ex.close())
    finally:
        if ex.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(ex.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def executor(runner: asyncio.Runner, model_files: dict[str, Path]) -> Iterator[Executor]:
    ex = runner.run(Executor.start())
    try:
        for name, preprocess in ZOO.items():
            runner.run(ex.load(name, model_files[name], preprocess))
        yield ex
    finally:
        _stop(runner, ex)


Spawn = Callable[..., Executor]


@pytest.fixture
def spawn(runner: asyncio.Runner) -> Iterator[Spawn]:
    """`spawn(threads=1)` starts an executor of the test's own, stopped at teardown."""
    started: list[Executor] = []

    def start(**kwargs: Any) -> Executor:
        ex = runner.run(Executor.start(**kwargs))
        started.append(ex)
        return ex

    yield start
    for ex in started:
        _stop(runner, ex)


def photos(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    return list(sample_images(count, seed))


def screenshots(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """640x480 PNGs: unlike a 224x224 JPEG (about 1 ms), each costs about as much to decode
    as AlexNet takes to run it."""
    items = []
    for query_id, data in sample_images(count, seed):
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).resize((640, 480)).save(buf, format="PNG")
        items.append((query_id.replace(".jpg", ".png"), buf.getvalue()))
    return items


def direct_session(path: Path) -> Any:
    """A plain single-process ONNX Runtime session, the reference results come from."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def assert_top_k(result: QueryResult, k: int, classes: int) -> None:
    assert result.ok, result.error
    assert len(result.class_ids) == len(result.scores) == k
    assert len(set(result.class_ids)) == k
    assert all(0 <= c < classes for c in result.class_ids)
    assert list(result.scores) == sorted(result.scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in result.scores)
    assert sum(result.scores) <= 1.0 + 1e-9


# --- loading ------------------------------------------------------------------------------------


def test_load_reports_cost_shape_and_scores(executor: Executor) -> None:
    reports = executor.models
    assert set(reports) == set(ZOO)
    for report in reports.values():
        assert report.batch_dim_dynamic
        assert report.threads == 1
        assert 0 < report.cost_per_query_s < 1.0, report
        assert report.probe_batch == 8
    assert reports["resnet18"].input_shape == (None, 3, 224, 224)
    assert reports["resnet18"].scores == "softmax"
    assert reports["resnet18"].num_classes == 1000
    assert reports["digits_mlp"].input_shape == (None, 64)
    assert reports["digits_mlp"].scores == "probabilities"
    assert reports["digits_mlp"].output_name == "probabilities"
    # Real costs: ResNet18 needs more compute per image than AlexNet, digits almost none.
    assert reports["resnet18"].cost_per_query_s > reports["alexnet"].cost_per_query_s
    assert reports["alexnet"].cost_per_query_s > 100 * reports["digits_mlp"].cost_per_query_s
    print({n: f"{r.cost_per_query_s * 1e3:.4f} ms/query" for n, r in reports.items()})


def test_threads_option(spawn: Spawn, runner: asyncio.Runner, model_files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="threads"):
        runner.run(Executor.start(threads=0))
    ex = spawn(threads=2)
    report = runner.run(ex.load("digits", model_files["digits_logreg"], "digits"))
    assert report.threads == ex.threads == 2
    assert runner.run(ex.run("b", "digits", list(digit_items())[:2])).results[1].ok
    runner.run(ex.unload("digits"))
    assert "digits" not in ex.models
    with pytest.raises(ModelError, match="not loaded"):
        runner.run(ex.run("b", "digits", list(digit_items())[:2]))


# --- results ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["resnet18", "alexnet"])
def test_zoo_batch_gives_sorted_top5(
    executor: Executor, runner: asyncio.Runner, model: str
) -> None:
    items = photos(8)
    batch = runner.run(executor.run("b1", model, items))
    assert batch.batch_id == "b1"
    assert batch.model == model
    assert [r.query_id for r in batch.results] == [q for q, _ in items]
    for result in batch.results:
        assert_top_k(result, 5, 1000)
        assert result.output is None
    assert batch.decode_s > 0 and batch.infer_s > 0
    assert batch.decode_started <= batch.infer_started <= batch.finished
    assert batch.per_query_s == pytest.approx((batch.decode_s + batch.infer_s) / 8)


def test_resnet18_matches_direct_onnxruntime(
    executor: Executor, runner: asyncio.Runner, model_files: dict[str, Path]
) -> None:
    items = photos(8, seed=3)
    batch = runner.run(executor.run("b", "resnet18", items, top_k=5))
    logits = (
        direct_session(model_files["resnet18"])
        .run(None, {"input": preprocess_imagenet([d for _, d in items])})[0]
        .astype(np.float64)
    )
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for row, result in zip(probs, batch.results, strict=True):
        expected = np.argsort(-row, kind="stable")[:5]
        assert list(result.class_ids) == expected.tolist()
        np.testing.assert_allclose(result.scores, row[expected], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model", ["digits_logreg", "digits_mlp"])
def test_digits_equal_single_process_onnxruntime(
    executor: Executor, runner: asyncio.Runner, model_files: dict[str, Path], model: str
) -> None:
    """The cluster's correctness proof: every digit, in batches submitted concurrently (more
    than max_inflight, so some wait), gives the labels and probabilities of one plain run."""
    items = list(digit_items())
    batches = [items[i : i + 200] for i in range(0, len(items), 200)]

    async def run_all() -> list[BatchResult]:
        runs = (executor.run(f"b{k}", model, b, top_k=10) for k, b in enumerate(batches))
        return list(await asyncio.gather(*runs))

    results = [r for batch in runner.run(run_all()) for r in batch.results]
    assert [r.query_id for r in results] == [q for q, _ in items]
    x = np.stack([np.frombuffer(d, dtype=np.uint8) for _, d in items]).astype(np.float32)
    labels, probabilities = direct_session(model_files[model]).run(
        ["label", "probabilities"], {"input": x}
    )
    assert [r.class_ids[0] for r in results] == labels.tolist()
    for row, result in zip(probabilities, results, strict=True):
        got = np.zeros(10)
        got[list(result.class_ids)] = result.scores
        np.testing.assert_allclose(got, row, rtol=0, atol=1e-6)


def test_unreadable_items_fail_alone(executor: Executor, runner: asyncio.Runner) -> None:
    good = photos(3)
    truncated = good[1][1][: len(good[1][1]) // 3]
    items = [
        good[0],
        ("truncated.jpg", truncated),
        ("noise.jpg", os.urandom(5000)),
        ("empty.jpg", b""),
        good[2],
    ]
    batch = runner.run(executor.run("mixed", "resnet18", items))
    clean = runner.run(executor.run("clean", "resnet18", [good[0], good[2]]))
    ok = [r for r in batch.results if r.ok]
    assert [r.query_id for r in ok] == [good[0][0], good[2][0]]
    for got, expected in zip(ok, clean.results, strict=True):
        assert got.class_ids == expected.class_ids
        np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5)
    for result in batch.results[1:4]:
        assert not result.ok and result.class_ids == ()
        assert result.error is not None and "\n" not in result.error
        assert repr(result.query_id) in result.error  # names the query
        assert "cannot decode image" in result.error

    digits = list(digit_items())[:2]
    bad = [digits[0], ("short", b"\x01" * 10), ("bright", bytes([255] * 64)), digits[1]]
    results = runner.run(executor.run("d", "digits_mlp", bad)).results
    assert [r.ok for r in results] == [True, False, False, True]
    assert "expected 64 bytes" in (results[1].error or "")
    assert "0..16" in (results[2].error or "")

    everything_bad = runner.run(executor.run("x", "resnet18", items[1:4])).results
    assert not any(r.ok for r in everything_bad)


# --- unusable models ------------------------------------------------------------------------------


def _load_error(runner: asyncio.Runner, ex: Executor, name: str, path: Path, prep: str) -> str:
    with pytest.raises(ModelError) as info:
        runner.run(ex.load(name, path, prep))
    message = str(info.value)
    assert "\n" not in message and f"'{name}'" in message
    return message


def test_unusable_models_get_one_line_errors_naming_the_cause(
    executor: Executor, runner: asyncio.Runner, model_files: dict[str, Path], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"GIF89a this is not a model" * 20)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model_files["resnet18"].read_bytes()[:100_000])

    assert "is not an ONNX model" in _load_error(runner, executor, "j", junk, "imagenet")
    assert "is not an ONNX model" in _load_error(runner, executor, "e", empty, "imagenet")
    assert str(truncated) in _load_error(runner, executor, "t", truncated, "imagenet")
    missing = _load_error(runner, executor, "m", tmp_path / "nope.onnx", "digits")
    assert "no model file" in missing

    wrong = _load_error(runner, executor, "d", model_files["digits_mlp"], "imagenet")
    assert "does not fit imagenet data" in wrong and "[?, 64]" in wrong
    wrong = _load_error(runner, executor, "r", model_files["resnet18"], "digits")
    assert "does not fit digits data" in wrong and "[N, 3, 224, 224]" in wrong

    with pytest.raises(ModelError, match=r"'nothing' is not loaded$"):
        runner.run(executor.run("b", "nothing", photos(1)))
    with pytest.raises(ModelError, match=r"'j' is not loaded \(its load failed\)"):
        runner.run(executor.run("b", "j", photos(1)))
    with pytest.raises(ValueError, match="preprocess must be one of"):
        runner.run(executor.load("x", junk, "jpeg"))
    # The executor goes on serving the models it has.
    assert executor.alive
    assert runner.run(executor.run("b", "digits_mlp", list(digit_items())[:3])).results[0].ok


def _tiny_model(
    path: Path, batch: int | str, out_shape: Sequence[int | str], scale: float = 1.0
) -> np.ndarray:
    """A [batch, 64] -> MatMul -> "logits" classifier, or (out_shape of rank 3) a reshape that
    returns its input; written to path. Returns the weights."""
    weights = np.random.default_rng(1).standard_normal((64, 10)).astype(np.float32) * scale
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64])
    if len(out_shape) == 2:
        w = helper.make_tensor("w", TensorProto.FLOAT, (64, 10), weights.ravel().tolist())
        nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"])]
        inits, out_name = [w], "logits"
    else:
        shape = helper.make_tensor("shape", TensorProto.INT64, (3,), [-1, 8, 8])
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["grid"])]
        inits, out_name = [shape], "grid"
    out = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, list(out_shape))
    graph = helper.make_graph(nodes, "tiny", [x], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return weights


@pytest.mark.parametrize("fixed", [1, 4])
def test_fixed_batch_models_run_any_batch_size(
    spawn: Spawn, runner: asyncio.Runner, tmp_path: Path, fixed: int
) -> None:
    weights = _tiny_model(tmp_path / "fixed.onnx", fixed, [fixed, 10], scale=0.05)
    ex = spawn()
    report = runner.run(ex.load("fixed", tmp_path / "fixed.onnx", "digits"))
    assert not report.batch_dim_dynamic and report.input_shape == (fixed, 64)
    assert report.probe_batch == fixed
    items = list(digit_items())[:6]  # 6 = one full chunk of 4 and a padded one, or 6 of 1
    batch = runner.run(ex.run("b", "fixed", items, top_k=3))
    x = np.stack([np.frombuffer(d, dtype=np.uint8) for _, d in items]).astype(np.float64)
    logits = x @ weights.astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for row, result in zip(probs, batch.results, strict=True):
        expected = np.argsort(-row)[:3]
        assert list(result.class_ids) == expected.tolist()
        np.testing.assert_allclose(result.scores, row[expected], rtol=1e-4)


def test_raw_input_and_raw_output(spawn: Spawn, runner: asyncio.Runner, tmp_path: Path) -> None:
    _tiny_model(tmp_path / "grid.onnx", "N", ["N", 8, 8])
    ex = spawn()
    report = runner.run(ex.load("grid", tmp_path / "grid.onnx", "none"))
    assert report.scores == "raw" and report.num_classes is None
    values = np.arange(64, dtype="<f4")
    items = [("a", values.tobytes()), ("short", b"\x00" * 8), ("b", (values * 2).tobytes())]
    results = runner.run(ex.run("b", "grid", items)).results
    assert results[0].output == tuple(values.tolist())
    assert results[2].output == tuple((values * 2).tolist())
    assert not results[1].ok and "expected 256 bytes" in (results[1].error or "")
    assert results[0].class_ids == ()


# --- the process --------------------------------------------------------------------------------


async def _after(delay: float, awaitable: Awaitable[Any]) -> Any:
    await asyncio.sleep(delay)
    return await awaitable


def test_killed_child_fails_pending_and_later_calls(
    spawn: Spawn, runner: asyncio.Runner, model_files: dict[str, Path]
) -> None:
    ex = spawn()
    runner.run(ex.load("resnet18", model_files["resnet18"], "imagenet"))
    items = photos(32)

    async def kill_during_run() -> None:
        running = asyncio.create_task(ex.run("long", "resnet18", items))
        await asyncio.sleep(0.15)  # decode done, inference under way (about 0.5 s)
        os.kill(ex.pid, signal.SIGKILL)
        with pytest.raises(ExecutorError, match="killed by SIGKILL"):
            await running

    runner.run(kill_during_run())
    assert not ex.alive
    assert ex.returncode == -signal.SIGKILL
    with pytest.raises(ExecutorError, match="killed by SIGKILL"):
        runner.run(ex.run("next", "resnet18", items[:1]))
    with pytest.raises(ExecutorError):
        runner.run(ex.load("digits", model_files["digits_mlp"], "digits"))
    runner.run(ex.close())  # harmless on a dead executor

    # Restarting is starting again; closing abandons a batch in flight with ExecutorError.
    again = spawn()
    runner.run(again.load("resnet18", model_files["resnet18"], "imagenet"))

    async def close_during_run() -> None:
        running = asyncio.create_task(again.run("long", "resnet18", items))
        await asyncio.sleep(0.15)
        await again.close()
        with pytest.raises(ExecutorError, match="closed"):
            await running

    runner.run(close_during_run())
    assert not again.alive and again.returncode == 0


def test_child_holds_no_socket_of_the_node(spawn: Spawn) -> None:
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.exists():
        pytest.skip("needs /proc")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        ex = spawn()
        links = [os.readlink(p) for p in Path(f"/proc/{ex.pid}/fd").iterdir()]
    assert not [link for link in links if link.startswith("socket:")], links


def _gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie counts: its parent may be slow to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_child_exits_when_the_node_dies(tmp_path: Path) -> None:
    """A node killed with SIGKILL cannot close its executor; the child sees its stdin end."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    script = (
        "import asyncio, sys\n"
        "from idunno.inference.executor import Executor\n"
        "async def main():\n"
        "    ex = await Executor.start()\n"
        "    print(ex.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    node = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None
        child = int(node.stdout.readline())
    finally:
        node.kill()
        node.wait(timeout=10)
        if node.stdout is not None:
            node.stdout.close()
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _gone(child):  # do not leave it behind, then fail
        os.kill(child, signal.SIGKILL)
        pytest.fail(f"executor {child} outlived its node")


def test_event_loop_stays_responsive_during_a_long_batch(
    executor: Executor, runner: asyncio.Runner
) -> None:
    items = photos(32)

    async def measure() -> tuple[float, float]:
        gaps: list[float] = []
        running = asyncio.create_task(executor.run("long", "resnet18", items))
        last = time.monotonic()
        while not running.done():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        batch = await running
        assert all(r.ok for r in batch.results)
        return max(gaps), batch.infer_s

    max_gap, infer_s = runner.run(measure())
    print(f"event loop: max gap {max_gap * 1e3:.1f} ms during a {infer_s:.2f} s batch")
    assert infer_s > 0.2  # the batch was long enough to matter
    # Had the batch run on the loop's thread, one gap would span the whole
    # batch; a loaded CI machine may delay a tick, never by a third of it.
    assert max_gap < infer_s / 3


def test_next_batch_is_decoded_while_the_current_one_runs(
    executor: Executor, runner: asyncio.Runner
) -> None:
    """AlexNet on 640x480 PNGs, where decoding is about half of the work: of four batches
    submitted together (two in flight at a time), each is decoded while the previous one runs."""
    batches = [screenshots(8, seed=s) for s in range(4)]

    async def pipelined() -> tuple[float, list[BatchResult]]:
        started = time.monotonic()
        runs = (executor.run(f"p{k}", "alexnet", b) for k, b in enumerate(batches))
        done = list(await asyncio.gather(*runs))
        return time.monotonic() - started, done

    pipelined_wall, done = runner.run(pipelined())
    work = sum(b.decode_s + b.infer_s for b in done)
    decode_share = sum(b.decode_s for b in done) / work
    print(f"pipelining: {pipelined_wall:.3f} s, decode {decode_share:.0%} of the work")
    # Structure: batch k+1 was decoded while batch k was in ONNX Runtime ...
    for current, following in itertools.pairwise(done):
        assert following.decode_started < current.finished
        assert following.infer_started >= current.finished
    # ... so the wall time is below the serial sum of decode + inference. (Whether that beats
    # running them one by one depends on a free core: a figure for bench/, not a test.)
    assert pipelined_wall < work


@pytest.mark.parametrize("delay", [0.0, 0.3], ids=["while-decoding", "while-running"])
def test_an_urgent_batch_runs_at_once_alongside_the_running_one(
    executor: Executor, runner: asyncio.Runner, delay: float
) -> None:
    """A new job's first batch (urgent) waits neither for the long batch being decoded or run
    nor behind it: it answers first, and the long batch still answers in full."""
    long_items, urgent_items = photos(48), photos(1, seed=5)

    async def scenario() -> tuple[BatchResult, BatchResult, float]:
        long = asyncio.create_task(executor.run("long", "resnet18", long_items))
        await asyncio.sleep(delay)
        t0 = time.monotonic()
        urgent = await executor.run("urgent", "alexnet", urgent_items, urgent=True)
        waited = time.monotonic() - t0
        return await long, urgent, waited

    long, urgent, waited = runner.run(scenario())
    assert urgent.finished < long.finished
    assert all(r.ok for r in long.results) and len(long.results) == 48
    assert urgent.results[0].ok
    # Behind the long batch, the urgent one would wait for most of 48 ResNet18 queries.
    assert waited < long.infer_s / 2, (waited, long.infer_s)
    assert long.infer_s > 0.5


def test_ordinary_batches_run_at_a_lower_cpu_priority_than_urgent_ones(executor: Executor) -> None:
    """The decode and inference threads of ordinary batches sit BACKGROUND_NICE below the rest
    of the child (its main thread and the urgent lane), which sits NICENESS below the node."""
    from idunno.inference._executor_main import BACKGROUND_NICE, NICENESS

    def nice(stat: str) -> int:
        return int(stat.rsplit(")", 1)[1].split()[16])  # field 19 of /proc/<pid>/task/<tid>/stat

    tasks = Path(f"/proc/{executor.pid}/task")
    values = sorted(nice((t / "stat").read_text()) for t in tasks.iterdir())
    base = os.nice(0) + NICENESS
    assert values.count(base) >= 2, values  # the main thread and the urgent lane
    assert values.count(base + BACKGROUND_NICE) >= 2, values  # decode and inference lanes


def test_the_executor_has_a_scheduling_group_of_its_own_at_background(executor: Executor) -> None:
    """Its own session (so its own autogroup, where the kernel has them), at nice BACKGROUND
    between urgent batches: inference yields the CPU to the nodes' event loops."""
    from idunno.inference.cpu_priority import BACKGROUND, autogroup_path

    assert os.getsid(executor.pid) == executor.pid
    group = Path(autogroup_path(executor.pid))
    if group.exists():
        assert group.read_text().split()[-1] == str(BACKGROUND)


def test_a_reload_with_earlier_measurements_skips_measuring(
    spawn: Spawn, runner: asyncio.Runner, model_files: dict[str, Path]
) -> None:
    """What a restarted executor does with its predecessor's report: the cost is kept (not
    measured again on busy cores), and the model runs as before."""
    ex = spawn()
    first = runner.run(ex.load("mlp", model_files["digits_mlp"], "digits"))
    again = runner.run(ex.load("mlp2", model_files["digits_mlp"], "digits", measured=first))
    assert (again.cost_per_query_s, again.probe_batch) == (first.cost_per_query_s, 8)
    items = list(digit_items())[:5]
    runs = [runner.run(ex.run("b", name, items)).results for name in ("mlp", "mlp2")]
    assert runs[0] == runs[1] and all(r.ok for r in runs[1])


def test_a_process_can_put_itself_in_the_background_before_its_imports() -> None:
    """The executor's first step (before NumPy and ONNX Runtime load): its own nice and, in a
    session of its own, its scheduling group's."""
    from idunno.inference.cpu_priority import BACKGROUND

    code = (
        "import os\n"
        "from idunno.inference.cpu_priority import enter_background\n"
        "before = os.nice(0)\n"
        "enter_background(5, 10)\n"
        "group = open('/proc/self/autogroup').read().split()[-1] "
        "if os.path.exists('/proc/self/autogroup') else 'none'\n"
        "print(os.nice(0) - before, group)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,
    )
    assert out.returncode == 0, out.stderr
    niced, group = out.stdout.split()
    assert int(niced) == 5
    assert group in (str(BACKGROUND), "none")


def test_a_pinned_executor_runs_every_thread_on_its_cpus(
    spawn: Spawn, runner: asyncio.Runner, model_files: dict[str, Path]
) -> None:
    """Set in the child before any thread starts: its decode, inference and urgent threads
    (and ONNX Runtime's) all inherit it."""
    cpu = max(os.sched_getaffinity(0))
    ex = spawn(cpus=frozenset({cpu}))
    runner.run(ex.load("mlp", model_files["digits_mlp"], "digits"))
    assert runner.run(ex.run("b", "mlp", list(digit_items())[:4])).results[0].ok
    threads = [int(t) for t in os.listdir(f"/proc/{ex.pid}/task")]
    assert len(threads) >= 4  # main, decode, infer, urgent
    assert all(os.sched_getaffinity(t) == {cpu} for t in threads)
