"""`idunno train` and `idunno job ...` (C1-C5) against real `idunno node` processes.

One shared 5-node cluster holds the trained digits models, `tinynet` (a user ONNX file shaped
like an ImageNet classifier, untrained: tests/tiny_models.py), the digits dataset, 40 sample
photos and two folder datasets: `many` (1,200 photos, long enough to change a job's batch size
while it runs) and `mixed` (six photos and one truncated JPEG). The fixture trains every model
on every worker once, so the tests start from a settled cluster. Later tests add nodes (one
that takes no inference work, one that joins while a job runs); they run in file order, after
the tests that count the workers.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from idunno import localcluster
from idunno.client import Client, ClientError
from idunno.inference.catalog import Catalog, is_image
from idunno.inference.digits import digit_items, digits_dataset, preprocess_digits
from idunno.inference.images import ImageDecodeError, decode_imagenet, sample_images
from idunno.localcluster import HOST, KEY_FILE, NodeProc, free_ports
from idunno.node.logs import read_events
from idunno.testing.jobs import add_digits_dataset
from idunno.testing.procs import ProcCluster, wait_for
from tests.conftest import (
    CLI_TIMEOUT,
    IDUNNO,
    CliRunner,
    assert_one_line_error,
    cli_env,
    stop_popen,
)
from tests.tiny_models import build_tiny_imagenet

pytestmark = pytest.mark.process

DIGITS = 1797
IMAGE_MODEL = "tinynet"
MODELS = (IMAGE_MODEL, "digits_logreg", "digits_mlp")
# Photos in the `many` dataset: tinynet (AlexNet's cost per query) on 6 workers must still be
# busy with it after its first batch and a CLI round trip (400 were answered within that with
# AlexNet on a quiet machine).
MANY = 1200
DIGIT_LABELS = [str(d) for d in range(10)]
SETTLE = 45.0  # a coordinator agreed by every node (a busy 2-core machine may fail over first)
JOB_DONE = 60.0
PREFETCH = 2  # batches a worker holds at once (docs/control-plane.md, "Scheduling")


# --- the shared cluster ---------------------------------------------------------------------------


@dataclass
class Env:
    c: ProcCluster
    root: Path
    extra: dict[str, tuple[NodeProc, subprocess.Popen[bytes]]] = field(default_factory=dict)
    no_work: set[str] = field(default_factory=set)  # nodes started with --inference-threads 0
    ready_at: float = 0.0  # when the setup was done

    def at(self, node: str = "n3") -> list[str]:
        return ["--at", self.c.nodes[node].address, "--key-file", str(self.c.directory / KEY_FILE)]

    def client(self, node: str = "n3", timeout: float = 10.0) -> Client:
        return Client(self.address(node), self.c.key, timeout=timeout)

    def address(self, node: str) -> str:
        return self.extra[node][0].address if node in self.extra else self.c.nodes[node].address

    def data_dir(self, node: str) -> Path:
        nd = self.extra[node][0] if node in self.extra else self.c.nodes[node]
        return Path(nd.data_dir)

    def names(self) -> list[str]:
        return [*self.c.nodes, *self.extra]

    def workers(self) -> list[str]:
        return [n for n in self.names() if n not in self.no_work]

    def spawn(self, name: str, threads: int | None = None) -> NodeProc:
        """Start one more node joining the cluster (once per name), with `--inference-threads
        THREADS` if given; it is stopped at the end of the module."""
        if name in self.extra:
            return self.extra[name][0]
        address = f"{HOST}:{free_ports(1)[0]}"
        data_dir = self.c.directory / "nodes" / name
        seeds = [n.address for n in self.c.nodes.values()]
        extra = () if threads is None else ("--inference-threads", str(threads))
        proc = localcluster.spawn_node(  # the session fixture tracks it as well
            name, address, seeds, data_dir, self.c.directory / KEY_FILE, self.c.preset, extra
        )
        nd = NodeProc(name, address, proc.pid, str(data_dir))
        self.extra[name] = (nd, proc)
        if threads == 0:
            self.no_work.add(name)
        wait_for(self.settled, SETTLE, f"{name} to join and the cluster to settle")
        return nd

    def no_work_node(self) -> str:
        return self.spawn("n6", threads=0).name

    def settled(self) -> bool:
        """Every node answers, sees every node alive and names the same coordinator/standby."""
        views = set()
        for name in self.names():
            try:
                ctl = self.client(name, timeout=2.0).control()
                rows = self.client(name, timeout=2.0).members()["members"]
            except ClientError:
                return False
            if {r["id"] for r in rows if r["status"] == "alive"} != set(self.names()):
                return False
            views.add((ctl["epoch"], ctl["coordinator"], ctl["standby"]))
        if len(views) != 1:
            return False
        _, coordinator, standby = views.pop()
        return coordinator is not None and standby is not None


def run_cli(e: Env, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """The CLI outside a test (the `idunno` fixture is per test): setup only."""
    return subprocess.run(
        [str(IDUNNO), *args, *e.at()],
        cwd=e.root,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def truncated_jpeg() -> bytes:
    """A JPEG cut in half: Pillow reads its header (so `dataset add` keeps it as an image) but
    cannot decode its pixels."""
    _, data = next(iter(sample_images(1)))
    return data[: len(data) // 2]


def write_folders(root: Path) -> None:
    photos = list(sample_images(40))
    many = root / "many"
    many.mkdir()
    for k in range(MANY):
        (many / f"p{k:04d}.jpg").write_bytes(photos[k % 40][1])
    mixed = root / "mixed"
    mixed.mkdir()
    for k in range(6):
        (mixed / f"good_{k}.jpg").write_bytes(photos[k][1])
    (mixed / "bad.jpg").write_bytes(truncated_jpeg())


def train_everywhere(e: Env) -> None:
    """Load every model on every worker."""
    for _ in range(3):
        try:
            report = e.client(timeout=150.0).train([])
        except ClientError:
            report = {"models": []}
        if {m["model"] for m in report["models"]} == set(MODELS) and all(
            "error" not in m["workers"].get(w, {"error": "missing"})
            for m in report["models"]
            for w in e.workers()
        ):
            return
        wait_for(e.settled, SETTLE, "the cluster to settle before training again")
    raise AssertionError(f"could not train every model on every worker: {report}")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("jobs")
    with ProcCluster(5, root / "cluster") as c:
        e = Env(c, root)
        try:
            write_folders(root)
            (root / "tinynet.onnx").write_bytes(build_tiny_imagenet())
            setup = [
                ("model", "add", "digits_logreg", "--builtin"),
                ("model", "add", "digits_mlp", "--builtin"),
                (
                    "model",
                    "add",
                    IMAGE_MODEL,
                    str(root / "tinynet.onnx"),
                    "--preprocess",
                    "imagenet",
                ),
                ("dataset", "add", "digits", "--builtin"),
                ("dataset", "sample", "photos", "--count", "40"),
                ("dataset", "add", "many", str(root / "many")),
                ("dataset", "add", "mixed", str(root / "mixed")),
            ]
            with ThreadPoolExecutor(len(setup)) as pool:
                done = list(pool.map(lambda a: run_cli(e, *a, timeout=180), setup))
            for args, r in zip(setup, done, strict=True):
                assert r.returncode == 0, (args, r.stdout, r.stderr)
            wait_for(e.settled, SETTLE, "the cluster to settle after the uploads")
            train_everywhere(e)
            wait_for(e.settled, SETTLE, "the cluster to settle after training")
            e.ready_at = time.time()
            yield e
        finally:
            for _, proc in e.extra.values():
                stop_popen(proc)


@pytest.fixture(scope="module")
def digits_job(env: Env) -> str:
    """digits_logreg over the 1,797 digits in batches of 16, run to the end (its name)."""
    out = run_cli(
        env, "job", "submit", "--model", "digits_logreg", "--dataset", "digits",
        "--batch-size", "16", "--name", "digits-logreg",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "submitted job digits-logreg" in out.stdout and "1797 queries" in out.stdout
    waited = run_cli(env, "job", "wait", "digits-logreg", "--timeout", str(JOB_DONE))
    assert waited.returncode == 0, waited.stderr
    assert "done: 1797 queries, 0 errors" in waited.stdout
    return "digits-logreg"


@pytest.fixture(autouse=True)
def _no_job_left_running(env: Env) -> Iterator[None]:
    """A test that fails halfway must not leave a job running into the next one."""
    yield
    client = env.client()
    for job in client.jobs()["jobs"]:
        if job["status"] == "running":
            client.cancel_job(job["id"])


# --- helpers --------------------------------------------------------------------------------------


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """stdout of a CLI run that must have succeeded."""
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    out: str = result.stdout
    return out


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def assert_refused(
    result: subprocess.CompletedProcess[str], *fragments: str, stdout_empty: bool = True
) -> str:
    """The cluster refused: exit 1 with one `idunno: error:` line naming the problem."""
    return assert_one_line_error(result, *fragments, code=1, stdout_empty=stdout_empty)


def all_results(e: Env, job: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = e.client().job_results(job, limit=100_000)["results"]
    return rows


def by_batch(results: Sequence[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        out[r["batch"]].append(r)
    return dict(out)


def submit(
    e: Env, idunno: CliRunner, name: str, model: str, dataset: str, batch: int, *more: str
) -> str:
    job = ok_json(
        idunno(
            "job", "submit", "--model", model, "--dataset", dataset, "--batch-size", str(batch),
            "--name", name, "--json", *more, *e.at(),
        )
    )  # fmt: skip
    assert (job["name"], job["model"], job["dataset"]) == (name, model, dataset)
    assert (job["status"], job["batch_size"]) == ("running", batch)
    assert 0 <= job["done"] <= job["total"]  # a new job's first batch may be back already
    job_id: str = job["id"]
    return job_id


# --- members and training -------------------------------------------------------------------------


def test_members_name_one_coordinator_one_standby_and_workers(env: Env, idunno: CliRunner) -> None:
    e = env

    def roles() -> dict[str, str] | None:
        seen = []
        for node in e.c.nodes:
            data = ok_json(idunno("members", "--json", *e.at(node)))
            seen.append({m["id"]: m["role"] for m in data["members"]})
        agreed = all(s == seen[0] for s in seen)
        return seen[0] if agreed else None

    view = wait_for(roles, SETTLE, "every node to agree on the roles", every=0.2)
    assert sorted(view.values()) == ["coordinator", "standby", "worker", "worker", "worker"]
    assert set(view) == set(e.c.nodes)
    table = ok(idunno("members", *e.at()))
    header, *rows = table.splitlines()
    assert header.split()[:4] == ["ID", "ADDRESS", "STATUS", "ROLE"]
    for row in rows:
        cells = [c for c in row.split() if c != "(self)"]
        assert cells[3] == view[cells[0]], row
    control = e.client().control()
    assert view[control["coordinator"]] == "coordinator" and view[control["standby"]] == "standby"


def test_train_reports_a_cost_per_query_of_every_model_on_every_worker(
    env: Env, idunno: CliRunner
) -> None:
    e = env
    data = ok_json(idunno("train", "--json", *e.at(), timeout=150))
    assert sorted(m["model"] for m in data["models"]) == sorted(MODELS)
    for m in data["models"]:
        assert m["version"] >= 1
        assert set(m["workers"]) == set(e.workers()), m
        for node, report in m["workers"].items():
            assert "error" not in report, (m["model"], node, report)
            assert report["cost_per_query_ms"] > 0, (m["model"], node, report)
    table = ok(idunno("train", *e.at(), timeout=150))
    assert f"loaded 3 models on {len(e.workers())} workers" in table
    assert table.splitlines()[1].split() == ["MODEL", "NODE", "COST/QUERY"]
    rows = [line.split() for line in table.splitlines()[2:]]
    assert {(r[0], r[1]) for r in rows} == {(m, w) for m in MODELS for w in e.workers()}
    assert all(r[3] == "ms" for r in rows), table
    one = ok_json(idunno("train", "--model", "digits_mlp", "--json", *e.at()))
    assert [m["model"] for m in one["models"]] == ["digits_mlp"]


def test_each_nodes_executor_runs_on_one_core_round_robin(env: Env) -> None:
    """A local cluster pins node n<i>'s executor to core i-1 modulo the cores this process may
    use (see idunno/inference/cpus.py); every node of this cluster has trained, so each has
    its executor."""
    cores = sorted(os.sched_getaffinity(0))
    for name, node in env.c.nodes.items():
        executors = [
            child
            for child in psutil.Process(node.pid).children()
            if "idunno.inference._executor_main" in child.cmdline()
        ]
        assert len(executors) == 1, name
        index = int(name.removeprefix("n")) - 1
        assert executors[0].cpu_affinity() == [cores[index % len(cores)]], name
        for thread in executors[0].threads():
            assert os.sched_getaffinity(thread.id) == {cores[index % len(cores)]}, name


def test_training_an_unknown_model_is_one_line(env: Env, idunno: CliRunner) -> None:
    assert_refused(
        idunno("train", "--model", "nosuch", *env.at()), "unknown model 'nosuch'", "model list"
    )


# --- one digits job: correctness, C2, C4 ----------------------------------------------------------


def test_a_digits_job_matches_a_local_onnxruntime_run(
    env: Env, idunno: CliRunner, digits_job: str
) -> None:
    import onnxruntime as ort

    e = env
    data = ok_json(idunno("job", "results", digits_job, "--json", "--limit", "100000", *e.at()))
    assert (data["name"], data["total"], data["answered"]) == (digits_job, DIGITS, DIGITS)
    results = data["results"]
    assert [r["query"] for r in results] == [str(i) for i in range(DIGITS)]
    assert [r["index"] for r in results] == list(range(DIGITS))
    assert all(r["error"] is None and len(r["class_ids"]) == 5 for r in results)
    assert {r["worker"] for r in results} <= set(e.workers())
    # Its first batch was one query (sent urgent, for a fast first result); the rest in 16s.
    per_batch = Counter(r["batch"] for r in results)
    assert per_batch[results[0]["batch"]] == 1 and results[0]["batch"] == min(per_batch)
    assert max(per_batch.values()) == 16
    # The same model bytes and the same items, run here in one process.
    cat = Catalog(e.client())
    record = cat.model("digits_logreg")
    model_bytes = cat.get_bytes("models/digits_logreg.onnx", record.version)
    items = list(cat.items(cat.dataset("digits")))
    assert items == list(digit_items())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probabilities"], {"input": preprocess_digits([d for _, d in items])})
    top1 = np.array([r["class_ids"][0] for r in results])
    assert (top1 == probs.argmax(axis=1)).all()
    np.testing.assert_allclose([r["scores"][0] for r in results], probs.max(axis=1), rtol=1e-5)
    _, truth = digits_dataset()
    assert (top1 == truth).mean() > 0.9


def test_job_stats_summarise_the_processing_times(
    env: Env, idunno: CliRunner, digits_job: str
) -> None:
    e = env
    answered = [r for r in all_results(e, digits_job) if r["error"] is None]
    stats = ok_json(idunno("job", "stats", digits_job, "--json", *e.at()))
    assert stats["name"] == digits_job and stats["count"] == len(answered) == DIGITS
    times = sorted(r["processing_ms"] for r in answered)
    assert 0 < times[0] <= stats["median_ms"] <= stats["p90_ms"]
    assert stats["p90_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= times[-1]
    assert times[0] <= stats["mean_ms"] <= times[-1] and stats["sd_ms"] >= 0
    assert stats["mean_ms"] == pytest.approx(float(np.mean(times)))
    table = ok(idunno("job", "stats", digits_job, *e.at()))
    lines = table.splitlines()
    assert lines[0].startswith(f"job {digits_job} (")
    assert [line.split()[0] for line in lines[1:]] == [
        "queries", "mean", "sd", "median", "p90", "p95", "p99",
    ]  # fmt: skip
    assert lines[1].split() == ["queries", str(DIGITS)]
    assert all(line.endswith(" ms") for line in lines[2:])


def test_job_results_by_query_and_by_page(env: Env, idunno: CliRunner, digits_job: str) -> None:
    e = env
    record = Catalog(e.client()).model("digits_logreg")
    assert list(record.labels or ()) == DIGIT_LABELS
    one = ok_json(idunno("job", "results", digits_job, "--query", "17", "--json", *e.at()))
    assert (one["total"], one["answered"]) == (DIGITS, DIGITS)
    (r,) = one["results"]
    assert (r["query"], r["index"], r["error"]) == ("17", 17, None)
    assert r["labels"] == [str(c) for c in r["class_ids"]]
    assert r["worker"] in e.workers() and r["epoch"] >= 1 and r["processing_ms"] > 0
    assert r["accepted_at"] <= time.time()
    page = ok_json(
        idunno("job", "results", digits_job, "--limit", "5", "--offset", "10", "--json", *e.at())
    )
    assert [x["query"] for x in page["results"]] == ["10", "11", "12", "13", "14"]
    assert [x["index"] for x in page["results"]] == [10, 11, 12, 13, 14]
    assert all(x["labels"] == [str(c) for c in x["class_ids"]] for x in page["results"])
    table = ok(idunno("job", "results", digits_job, "--limit", "3", *e.at()))
    lines = table.splitlines()
    assert lines[0] == f"job {digits_job} ({one['id']}): {DIGITS}/{DIGITS} queries answered"
    assert lines[1].split() == ["QUERY", "TOP-1", "SCORE", "TOP-5", "WORKER", "MS"]
    assert [line.split()[0] for line in lines[2:5]] == ["0", "1", "2"]
    assert lines[5] == f"... {DIGITS - 3} more: use --limit/--offset"
    assert_refused(
        idunno("job", "results", digits_job, "--query", "nosuch", *e.at()), "no query 'nosuch'"
    )


# --- two jobs at once: C1, C5 ---------------------------------------------------------------------


def test_two_jobs_run_at_once_with_rates_and_shares(env: Env, idunno: CliRunner) -> None:
    e = env
    # The digits 4 times over, in small batches: the two must overlap long enough to be observed
    # running together (over the plain digits both could end between two CLI calls).
    total = add_digits_dataset(e.client(), "digits4", times=4)
    ids = {
        submit(e, idunno, "both-mlp", "digits_mlp", "digits4", 2),
        submit(e, idunno, "both-logreg", "digits_logreg", "digits4", 4),
    }
    client = e.client()
    seen: dict[str, Any] = {}

    def observed_while_both_run() -> bool:
        # Polled through the API: the two jobs overlap for a few seconds only.
        if "rate" not in seen:
            rates = [j for j in client.rates()["jobs"] if j["id"] in ids]
            if all(j["status"] == "running" and j["rate"] > 0 for j in rates):
                seen["rate"] = rates
        if "assignment" not in seen:
            data = client.assignment()
            if all(j["workers"] for j in data["jobs"] if j["id"] in ids):  # held: running
                seen["assignment"] = data
        if len(seen) < 2 and all(client.job(j)["status"] != "running" for j in ids):
            raise AssertionError(f"both jobs ended before this was seen while they ran: {seen}")
        return len(seen) == 2

    wait_for(observed_while_both_run, JOB_DONE, "rates and workers of both running jobs", 0.02)
    assert sorted(j["id"] for j in seen["rate"]) == sorted(ids)
    assert all(0 < j["done"] <= j["total"] == total for j in seen["rate"])
    held = seen["assignment"]
    assert held["coordinator"] and held["standby"] and held["epoch"] >= 1
    assert set(held["workers"]) <= set(e.workers())
    for j in held["jobs"]:
        holders = {w for w, jobs in held["workers"].items() if j["id"] in jobs}
        assert set(j["workers"]) == holders, held
    # The CLI's view (rates over the last 10 s: still above 0 right after a job ends).
    rates = ok_json(idunno("job", "rate", "--json", *e.at()))
    assert rates["window_s"] == 10
    mine = [j for j in rates["jobs"] if j["id"] in ids]
    assert len(mine) == 2 and all(j["rate"] > 0 and j["done"] > 0 for j in mine), mine
    data = ok_json(idunno("job", "assignment", "--json", *e.at()))
    assert (data["coordinator"], data["epoch"]) == (held["coordinator"], held["epoch"])
    assert set(data["workers"]) <= set(e.workers())
    for j in data["jobs"]:
        assert 0 <= j["share"] <= 1 and set(j["workers"]) <= set(e.workers())
    assert sum(j["share"] for j in data["jobs"]) == pytest.approx(1.0)
    assert {j["id"] for j in data["jobs"] if j["share"] > 0} >= ids
    for job_id in ids:
        done = ok(idunno("job", "wait", job_id, "--timeout", str(JOB_DONE), *e.at()))
        assert f"done: {total} queries, 0 errors" in done
        assert [r["query"] for r in all_results(e, job_id)] == [str(i) for i in range(total)]
    listing = ok_json(idunno("job", "list", "--json", *e.at()))
    assert {j["id"]: j["status"] for j in listing["jobs"] if j["id"] in ids} == dict.fromkeys(
        ids, "done"
    )
    shares = ok_json(idunno("job", "assignment", "--json", *e.at()))["jobs"]
    assert sum(j["share"] for j in shares) in (0, pytest.approx(1.0))


# --- C3: the batch size of a running job ----------------------------------------------------------


def test_set_batch_size_applies_from_the_next_batch(env: Env, idunno: CliRunner) -> None:
    e = env
    submit(e, idunno, "resize", IMAGE_MODEL, "many", 8)
    wait_for(lambda: e.client().job("resize")["done"] >= 8, 30, "the first batch of resize")
    out = ok(idunno("job", "set-batch-size", "resize", "2", *e.at()))
    changed_at = time.time()
    assert "batch size 8 -> 2 (from the next batch)" in out
    job = e.client().job("resize")
    assert job["batch_size"] == 2
    assert job["status"] == "running", "resize ended before its batch size changed"
    ok(idunno("job", "wait", "resize", "--timeout", str(JOB_DONE), *e.at()))
    results = all_results(e, "resize")
    assert len(results) == MANY and all(r["error"] is None for r in results)
    assert all(r["labels"] is None for r in results)  # no labels file was given
    batches = by_batch(results)
    sizes = [len(batches[b]) for b in sorted(batches)]
    assert sizes[0] == 1, sizes  # a new job's first batch: one urgent query
    sizes = sizes[1:]
    first_small = next(i for i, s in enumerate(sizes) if s <= 2)
    # Batch ids grow in dispatch order: every batch dispatched after the change has <= 2
    # queries, the ones before it had the old size.
    assert all(s <= 2 for s in sizes[first_small:]), sizes
    assert all(2 < s <= 8 for s in sizes[:first_small]) and first_small >= 1, sizes
    assert len(sizes) - first_small >= 10, sizes
    # Old-size batches accepted after the change were in flight when it came.
    late = [b for b, rs in batches.items() if len(rs) > 2 and rs[0]["accepted_at"] > changed_at]
    assert len(late) <= PREFETCH * len(e.workers()), late


def test_set_batch_size_errors_are_one_line(env: Env, idunno: CliRunner, digits_job: str) -> None:
    e = env
    for bad in ("0", "5000"):
        assert_one_line_error(idunno("job", "set-batch-size", digits_job, bad, *e.at()), bad)
    assert_refused(idunno("job", "set-batch-size", "nosuch", "2", *e.at()), "no job 'nosuch'")
    for action in ("wait", "stats", "results", "cancel"):
        assert_refused(idunno("job", action, "nosuch", *e.at()), "no job 'nosuch'", "job list")


# --- cancel ---------------------------------------------------------------------------------------


def test_cancel_stops_a_running_job(env: Env, idunno: CliRunner, digits_job: str) -> None:
    e = env
    # The digits 16 times over: long enough to be still running when the CLI cancels it.
    total = add_digits_dataset(e.client(), "digits16", times=16)
    job_id = submit(e, idunno, "to-cancel", "digits_mlp", "digits16", 1)
    wait_for(lambda: e.client().job(job_id)["done"] >= 20, 30, "to-cancel to make progress")
    listing = ok_json(idunno("job", "list", "--json", *e.at()))
    (listed,) = [j for j in listing["jobs"] if j["id"] == job_id]
    assert listed["status"] == "running" and listed["done"] >= 20
    assert listing["coordinator"] and listing["epoch"] >= 1
    out = ok(idunno("job", "cancel", "to-cancel", *e.at()))
    assert out.startswith(f"cancelled job to-cancel ({job_id}) after ")
    done = e.client().job(job_id)["done"]
    assert 20 <= done < total
    deadline = time.monotonic() + 2.0  # watch it for a while: nothing more is accepted
    while time.monotonic() < deadline:
        job = e.client().job(job_id)
        assert (job["status"], job["done"]) == ("cancelled", done)
        assert job["finished_at"] is not None and not job["workers"]
        time.sleep(0.1)
    assert len(all_results(e, job_id)) == done
    assert_refused(
        idunno("job", "wait", "to-cancel", *e.at()), "to-cancel", "was cancelled", "job results"
    )
    again = ok_json(idunno("job", "cancel", job_id, "--json", *e.at()))
    assert (again["status"], again["done"]) == ("cancelled", done)
    finished = ok(idunno("job", "cancel", digits_job, *e.at()))
    label = f"{digits_job} ({e.client().job(digits_job)['id']})"
    assert finished == f"job {label} is already done: nothing to cancel\n"
    assert e.client().job(digits_job)["status"] == "done"


# --- bad input ------------------------------------------------------------------------------------


def test_submit_errors_are_one_line(env: Env, idunno: CliRunner, digits_job: str) -> None:
    e = env
    before = len(e.client().jobs()["jobs"])

    def job(*args: str) -> subprocess.CompletedProcess[str]:
        return idunno("job", "submit", *args, *e.at())

    base = ["--batch-size", "4"]
    assert_refused(
        job("--model", "digits_mlp", "--dataset", "photos", *base), "'digits_mlp'", "'photos'"
    )
    assert_refused(
        job("--model", "nosuch", "--dataset", "digits", *base),
        "unknown model 'nosuch'",
        "model list",
    )
    assert_refused(
        job("--model", "digits_mlp", "--dataset", "nosuch", *base),
        "unknown dataset 'nosuch'",
        "dataset list",
    )
    assert_refused(
        job("--model", "digits_mlp", "--dataset", "digits", *base, "--name", digits_job),
        f"a job named {digits_job!r} exists",
        "--name",
    )
    assert_one_line_error(
        job("--model", "digits_mlp", "--dataset", "digits", *base, "--weight", "0"), "--weight"
    )
    assert_one_line_error(
        job("--model", "digits_mlp", "--dataset", "digits", "--batch-size", "0"), "--batch-size"
    )
    assert len(e.client().jobs()["jobs"]) == before


def test_the_api_refuses_a_bad_weight(env: Env) -> None:
    client = env.client()
    weights: list[Any] = [0, "heavy"]
    try:
        for weight in weights:
            with pytest.raises(ClientError) as info:
                client.submit_job(IMAGE_MODEL, "mixed", 4, f"weight-{weight}", weight)
            assert info.value.status == 400 and "weight" in str(info.value)
    finally:  # a job the bug let in must not slow the next tests down
        for job in client.jobs()["jobs"]:
            if job["name"].startswith("weight-") and job["status"] == "running":
                client.cancel_job(job["id"])


def test_an_unreadable_image_fails_only_its_own_query(env: Env, idunno: CliRunner) -> None:
    e = env
    bad = e.root / "mixed" / "bad.jpg"
    assert is_image(bad)  # Pillow reads the header...
    with pytest.raises(ImageDecodeError):  # ...but not the pixels
        decode_imagenet(bad.read_bytes(), "bad.jpg")
    manifest = Catalog(e.client()).dataset("mixed")
    assert list(manifest.item_ids) == ["bad.jpg", *(f"good_{k}.jpg" for k in range(6))]
    submit(e, idunno, "mixed-job", IMAGE_MODEL, "mixed", 4)
    waited = ok(idunno("job", "wait", "mixed-job", "--timeout", str(JOB_DONE), *e.at()))
    assert "done: 7 queries, 1 error," in waited
    results = {r["query"]: r for r in all_results(e, "mixed-job")}
    assert set(results) == set(manifest.item_ids)
    broken = results.pop("bad.jpg")
    assert broken["error"] and "\n" not in broken["error"] and "bad.jpg" in broken["error"]
    assert broken["class_ids"] == [] and broken["labels"] is None
    for r in results.values():
        assert r["error"] is None and len(r["class_ids"]) == 5
        assert all(0 <= c < 1000 for c in r["class_ids"])
    table = ok(idunno("job", "results", "mixed-job", *e.at()))
    (row,) = [line for line in table.splitlines() if line.startswith("bad.jpg ")]
    assert "error: " in row
    assert e.client().job_stats("mixed-job")["count"] == 6


# --- who works ------------------------------------------------------------------------------------


def test_train_skips_a_node_that_takes_no_inference_work(env: Env, idunno: CliRunner) -> None:
    # With no job running, nothing has made the coordinator try the new node yet.
    assert all(j["status"] != "running" for j in env.client().jobs()["jobs"])
    node = env.no_work_node()
    result = idunno("train", "--model", "digits_logreg", "--json", *env.at())
    assert result.returncode == 0, result.stderr
    (m,) = json.loads(result.stdout)["models"]
    assert "error" not in m["workers"].get(node, {}), m


def test_a_node_with_no_inference_threads_never_works(env: Env, idunno: CliRunner) -> None:
    e = env
    node = e.no_work_node()
    job_id = submit(e, idunno, "not-on-n6", "digits_logreg", "digits", 4)
    seen: set[str] = set()

    def finished() -> bool:
        data = ok_json(idunno("job", "assignment", "--json", *e.at()))
        seen.update(data["workers"])
        for j in data["jobs"]:
            seen.update(j["workers"])
        return bool(e.client().job(job_id)["status"] == "done")

    wait_for(finished, JOB_DONE, "not-on-n6 to finish", every=0.1)
    assert node not in seen and seen <= set(e.workers())
    # No job of this module ever ran a query on it.
    for job in e.client().jobs()["jobs"]:
        workers = {r["worker"] for r in all_results(e, job["id"])}
        assert node not in workers, job["name"]
    assert len({r["worker"] for r in all_results(e, job_id)}) >= 2


def test_a_node_that_joins_mid_job_trains_and_takes_batches(env: Env, idunno: CliRunner) -> None:
    e = env
    job_id = submit(e, idunno, "late-joiner", "digits_mlp", "digits", 1)
    wait_for(lambda: e.client().job(job_id)["done"] > 0, 30, "late-joiner to start")
    joined_at = time.time()
    node = e.spawn("n7")
    # The job may end before the newcomer is up on a fast run: then it gets the next one.
    rounds = itertools.count(2)

    def its_results() -> list[dict[str, Any]]:
        nonlocal job_id
        mine = [r for r in all_results(e, job_id) if r["worker"] == node.name]
        if not mine and e.client().job(job_id)["status"] == "done":
            job_id = submit(e, idunno, f"late-joiner-{next(rounds)}", "digits_mlp", "digits", 1)
        return mine

    mine = wait_for(its_results, 60, f"{node.name} to answer queries of late-joiner", every=0.2)
    loaded = read_events(e.data_dir(node.name), "model_loaded", since=joined_at)
    assert "digits_mlp" in [x["model"] for x in loaded]
    trained_at = min(x["ts"] for x in loaded if x["model"] == "digits_mlp")
    assert min(r["accepted_at"] for r in mine) >= trained_at
    assert all(r["error"] is None for r in mine)
    e.client().cancel_job(job_id)
    later = ok_json(idunno("job", "results", job_id, "--json", "--limit", "100000", *e.at()))
    assert node.name in {r["worker"] for r in later["results"]}


def test_the_standby_stays_in_sync_while_jobs_run(env: Env, idunno: CliRunner) -> None:
    e = env
    job_id = submit(e, idunno, "in-sync", "digits_mlp", "digits", 1)
    wait_for(lambda: e.client().job(job_id)["done"] >= 300, JOB_DONE, "in-sync to progress")
    e.client().cancel_job(job_id)
    lagging = [
        ev
        for node in e.names()
        for ev in read_events(e.data_dir(node), "standby_lagging", since=e.ready_at)
        if "out of sync" in str(ev.get("detail"))
    ]
    assert not lagging, lagging[:3]
