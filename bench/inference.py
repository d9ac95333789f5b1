"""Inference benchmark: fair-time jobs, failover and throughput with real `idunno node`
processes on loopback (not a timed test).

    .venv/bin/python bench/inference.py              # full run (about 15 minutes on 2 cores)
    .venv/bin/python bench/inference.py --quick      # smoke run: small datasets, 1 trial (5 min)
    .venv/bin/python bench/inference.py --only worker_fail,coordinator_fail --trials 3

Every cluster has 6 nodes (the store needs at least 4), preset `lan`, each node's worker with
one ONNX Runtime thread unless said otherwise. Models: the built-in `resnet18` and `alexnet`
(seeded, untrained: the compute is real), dataset: `sample_images` photos (224x224 JPEGs),
generated once per run and uploaded to each cluster. Sections (--only or --sections):
  share             1a: ResNet18 and AlexNet run together; `GET /v1/assignment` sampled every
                    second in steady state (share = the job's fraction of the workers' busy
                    time over the last 10 s), against the share the measured costs per query
                    predict under equal query rates: cost_r / (cost_r + cost_a)
  first_result      1b: ResNet18 runs; AlexNet is submitted; first_result_at - submitted_at of
                    the second job (both stamped by the coordinator), at the run's batch size
                    and at batch size 1
  worker_fail       2: SIGKILL (node restarted after) and SIGSTOP (SIGCONT after) of a worker
                    that is neither coordinator nor standby, while both jobs run
  coordinator_fail  3: the same for the coordinator (its own cluster: a takeover snapshots the
                    whole control state, which grows with every job run before)
  throughput        one ResNet18 job over N photos: submitted -> finished, against bare
                    single-process ONNX Runtime (intra-op threads = cores) decoding and running
                    the same JPEGs with the same model bytes, interleaved in the same run
  fairness          max/min of the two jobs' query rates over 10 s windows in steady state,
                    from the results' accepted_at (same run as `share`)
  scaling           one ResNet18 job with 1, 2, 4, 6 worker nodes (the others started with
                    --inference-threads 0): queries/s and C2 per-query processing time

Recovery (sections 2 and 3; FAILOVER_DEFINITION below, repeated in the markdown, has every
detail): t0 = when the bench sent the signal; requeued = the (new) coordinator's last
`batch_requeued`/`worker_failed` record naming the victim, and in the coordinator case no
earlier than the new coordinator's `coordinator_elected` record; recovered = the earliest
t >= requeued (coordinator case: once every job has a result accepted again) such that, over
[t, t + W), every job has results accepted and the jobs' query rates are within 20% of each
other, W = max(1 s, 10 batches of the slower job).

Writes bench/results/inference.json, inference.md, inference.png (per-job query rate over time,
failure events marked) and inference_summary.png; prints the markdown. Every node is started
through ProcCluster (killed on exit, error, Ctrl-C or SIGTERM; stopped nodes are continued
first); all data lives in a temporary directory under /tmp deleted at the end (unless --keep).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import math
import os
import pickle
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import _report
from _report import log
from idunno.client import Client, ClientError
from idunno.control import durable
from idunno.inference import catalog
from idunno.localcluster import ClusterError, wait_converged
from idunno.node.logs import read_events
from idunno.testing.procs import ProcCluster, WaitTimeoutError, wait_for

T = TypeVar("T")

NODES = 6
PRESET = "lan"
MODELS = ("resnet18", "alexnet")
DATASET = "photos"
TPUT_DATASET = "photos-tput"
SECTIONS = (
    "share",
    "first_result",
    "worker_fail",
    "coordinator_fail",
    "throughput",
    "fairness",
    "scaling",
)
STARTUP_ATTEMPTS = 3
SETTLE_S = 2.0  # after a job's first result, before it counts as running steadily
FAIL_SETTLE_S = 3.0  # failover: after both jobs' first results, before the steady window
MIN_BATCHES = 10  # failover: the recovery window holds at least this many of a job's batches
MAX_WINDOW_S = 3.0  # ... unless that takes longer than this
FAIR_WINDOW_S = 10.0  # the fairness windows (and C1/C5's own window)
BALANCE = 0.8  # "rates within 20% of each other": min >= BALANCE x max
SCAN_STEP_S = 0.01
RESULTS_LIMIT = 100_000
CLIENT_TIMEOUT_S = 30.0
MEMBERSHIP_JSON = _report.RESULTS_DIR / "membership.json"
# Log records kept with each failover trial (member_changed only about the victim).
EVENTS = frozenset(
    {
        "member_changed",
        "batch_requeued",
        "worker_failed",
        "coordinator_gone",
        "coordinator_elected",
        "coordinator_deposed",
        "claim_failed",
        "standby_chosen",
        "standby_synced",
        "standby_lagging",
        "control_step_failed",
        "executor_died",
        "flush_failed",
        "reconcile_failed",
        "file_put",  # of CLAIM_FILE only: a new coordinator's epoch claim
    }
)
CLAIM_FILE = durable.EPOCH_FILE

# Figures to reach (the targets).
FIRST_RESULT_TARGET_S = 0.100  # p95
WORKER_KILL_TARGET_S = 0.5  # p95
COORDINATOR_KILL_TARGET_S = 1.0  # p95
STOP_MARGIN_S = 0.5  # SIGSTOP: the failure detector's bound plus this
THROUGHPUT_TARGET = 0.95  # cluster / bare ONNX Runtime
FAIRNESS_TARGET = 1.05  # max/min rate over 10 s windows


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    quick: bool
    trials: int
    sections: tuple[str, ...]
    batch: int  # every job's batch size (1b also runs at batch 1)
    photos: int  # items of the main dataset
    steady_warm_s: float  # share/fairness: both jobs running this long before sampling
    steady_measure_s: float
    pre_s: float  # failover: steady running before the signal
    observe_s: float  # failover: observed after the signal
    window_s: float  # failover: the sliding window of the recovery criterion
    tput_images: int
    tput_rounds: int
    scaling_workers: tuple[int, ...]
    scaling_images: int
    scaling_measure_s: float
    out_dir: Path
    keep: bool


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    _report.add_run_args(
        p,
        SECTIONS,
        quick_help="smoke run: small datasets, short windows, 1 trial",
        trials_help="trials of first_result and of each failover case (default 5, quick 1)",
    )
    p.add_argument("--sections", dest="only", help="the same as --only")
    p.add_argument("--batch-size", type=int, default=8, help="every job's batch size (8)")
    p.add_argument(
        "--window", type=float, default=1.0, help="recovery criterion's sliding window, s (1)"
    )
    _report.add_output_args(p)
    # The bare ONNX Runtime baseline runs in a child process: python bench/inference.py --bare.
    p.add_argument(
        "--bare", type=Path, nargs=2, metavar=("MODEL", "IMAGES"), help=argparse.SUPPRESS
    )
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.bare is not None:
        return _dummy_settings(a), a
    sections = _report.parse_sections(p, a.only, SECTIONS)
    q = a.quick
    trials = _report.parse_trials(p, a.trials, 1 if q else 5)
    if not 1 <= a.batch_size <= 256:
        p.error("--batch-size must be from 1 to 256")
    settings = Settings(
        quick=q,
        trials=trials,
        sections=sections,
        batch=a.batch_size,
        photos=1200 if q else 4000,
        steady_warm_s=FAIR_WINDOW_S + 1.0 if q else FAIR_WINDOW_S + 2.0,
        steady_measure_s=8.0 if q else 30.0,
        pre_s=3.0 if q else 4.0,
        observe_s=7.0,
        window_s=a.window,
        tput_images=300 if q else 2000,
        tput_rounds=1 if q else 2,
        scaling_workers=(1, NODES) if q else (1, 2, 4, NODES),
        scaling_images=600 if q else 2000,
        scaling_measure_s=4.0 if q else 8.0,
        out_dir=a.out,
        keep=a.keep,
    )
    return settings, a


def _dummy_settings(a: argparse.Namespace) -> Settings:
    return Settings(
        quick=True,
        trials=1,
        sections=(),
        batch=a.batch_size,
        photos=0,
        steady_warm_s=0,
        steady_measure_s=0,
        pre_s=0,
        observe_s=0,
        window_s=0,
        tput_images=0,
        tput_rounds=0,
        scaling_workers=(),
        scaling_images=0,
        scaling_measure_s=0,
        out_dir=a.out,
        keep=False,
    )


# --- bare ONNX Runtime (the throughput baseline, run in a child process) -----------------------


def bare_ort(model: Path, images: Path, threads: int, batch: int) -> dict[str, Any]:
    """One process, ONNX Runtime's defaults but for intra-op threads = `threads`: decode and
    preprocess each batch of JPEGs (idunno.inference.images, the workers' code), then run it.
    Session creation and one warm-up batch are not timed."""
    import onnxruntime as ort

    from idunno.inference.images import preprocess_imagenet

    photos: list[bytes] = pickle.loads(images.read_bytes())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: preprocess_imagenet(photos[:batch])})  # warm-up
    decode = infer = 0.0
    cpu0, start = time.process_time(), time.perf_counter()
    for i in range(0, len(photos), batch):
        a = time.perf_counter()
        x = preprocess_imagenet(photos[i : i + batch])
        b = time.perf_counter()
        session.run(None, {name: x})
        decode, infer = decode + b - a, infer + time.perf_counter() - b
    wall = time.perf_counter() - start
    return {
        "images": len(photos),
        "seconds": wall,
        "rate": len(photos) / wall,
        "decode_s": decode,
        "infer_s": infer,
        "cpu_s": time.process_time() - cpu0,
        "onnxruntime": ort.__version__,
    }


def run_bare(model: Path, images: Path, threads: int, batch: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--bare", str(model), str(images)]
    cmd += ["--threads", str(threads), "--batch-size", str(batch)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"bare ONNX Runtime run failed:\n{done.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout)
    return out


# --- clusters ------------------------------------------------------------------------------


class Cluster(ProcCluster):
    """ProcCluster whose nodes may each get their own extra arguments (`node_extra`)."""

    def __init__(
        self,
        n: int,
        directory: Path,
        node_extra: Mapping[str, Sequence[str]] | None = None,
        preset: str = PRESET,
    ) -> None:
        super().__init__(n, directory, preset=preset, node_extra=node_extra)

    def __enter__(self) -> Cluster:
        super().__enter__()
        return self

    def restart_node(self, name: str) -> None:
        self.restart(name, self.extra + self.node_extra.get(name, ()))

    def converged(self, timeout: float = 30.0) -> None:
        """Every node sees every node alive."""
        addresses = [nd.address for nd in self.nodes.values()]
        wait_converged(addresses, self.key, time.monotonic() + timeout)


@dataclass
class Prepared:
    """A started cluster with the models and datasets in its store, the models trained."""

    label: str
    c: Cluster
    workers: tuple[str, ...]  # nodes that take inference work
    train: dict[str, Any]
    setup_s: dict[str, float]

    def client(self, name: str | None = None, timeout: float = CLIENT_TIMEOUT_S) -> Client:
        return self.c.client(name or "n1", timeout=timeout)

    def train_cost_ms(self, model: str) -> float | None:
        """Median over workers of the cost per query the training phase measured."""
        for m in self.train.get("models", []):
            if m["model"] == model:
                costs = [
                    float(w["cost_per_query_ms"])
                    for w in m["workers"].values()
                    if "cost_per_query_ms" in w
                ]
                return statistics.median(costs) if costs else None
        return None


@dataclass
class Harness:
    root: Path
    s: Settings
    startup_failures: list[dict[str, Any]] = field(default_factory=list)
    setups: dict[str, dict[str, float]] = field(default_factory=dict)
    _photos: list[tuple[str, bytes]] = field(default_factory=list)
    _models: dict[str, tuple[Path, catalog.ModelRecord]] = field(default_factory=dict)
    _main: tuple[ExitStack, Prepared] | None = None

    def dump(self, name: str, obj: Any) -> None:
        """Raw data of a measurement in the work dir (kept with --keep), for a closer look."""
        (self.root / "raw").mkdir(exist_ok=True)
        (self.root / "raw" / f"{name}.json").write_text(json.dumps(obj, default=str))

    def photos(self, n: int) -> list[tuple[str, bytes]]:
        """The first n sample photos (generated once per run, the largest count needed)."""
        if len(self._photos) < n:
            from idunno.inference.images import sample_images

            want = max(n, self.s.photos, self.s.tput_images, self.s.scaling_images)
            log(f"  generating {want} sample photos")
            self._photos = list(sample_images(want, seed=0))
        return self._photos[:n]

    def model(self, name: str) -> tuple[Path, catalog.ModelRecord]:
        """The built-in model's bytes in a local file and its record (built once per run)."""
        if name not in self._models:
            data, record = catalog.builtin_model(name)
            path = self.root / f"{name}.onnx"
            path.write_bytes(data)
            self._models[name] = (path, record)
        return self._models[name]

    @contextlib.contextmanager
    def cluster(
        self,
        label: str,
        models: Sequence[str] = MODELS,
        datasets: Mapping[str, int] | None = None,
        disabled: Sequence[str] = (),
    ) -> Iterator[Prepared]:
        with ExitStack() as stack:
            yield self._prepare(stack, label, models, datasets, disabled)

    def main(self) -> Prepared:
        """The cluster shared by share, fairness, first_result, worker_fail, throughput and
        scaling at 6 workers (started on first use; `drop_main` after a section fails)."""
        if self._main is None:
            stack = ExitStack()
            datasets = {DATASET: self.s.photos}
            if "throughput" in self.s.sections:
                datasets[TPUT_DATASET] = self.s.tput_images
            try:
                prepared = self._prepare(stack, "main", MODELS, datasets, ())
            except BaseException:
                stack.close()
                raise
            self._main = (stack, prepared)
        return self._main[1]

    def drop_main(self) -> None:
        if self._main is not None:
            stack, self._main = self._main[0], None
            stack.close()

    def _prepare(
        self,
        stack: ExitStack,
        label: str,
        models: Sequence[str],
        datasets: Mapping[str, int] | None,
        disabled: Sequence[str],
    ) -> Prepared:
        datasets = {DATASET: self.s.photos} if datasets is None else datasets
        extra = {name: ("--inference-threads", "0") for name in disabled}
        t0 = time.monotonic()
        c = self._start(stack, label, extra)
        started = time.monotonic()
        client = c.client("n1", timeout=120.0)
        cat = catalog.Catalog(client)
        for name in models:
            path, record = self.model(name)
            cat.add_model(record, path)
        for name, count in datasets.items():
            origin = f"sample_images(count={count}, seed=0)"
            cat.add_dataset(name, "jpeg", iter(self.photos(count)), origin)
        uploaded = time.monotonic()
        train = client.train(list(models))
        trained = time.monotonic()
        workers = tuple(sorted(n for n in c.nodes if n not in disabled))
        setup = {
            "start_s": started - t0,
            "upload_s": uploaded - started,
            "train_s": trained - uploaded,
        }
        log(
            f"  cluster {label}: started {setup['start_s']:.1f} s, models and "
            f"{sum(datasets.values())} photos stored {setup['upload_s']:.1f} s, trained "
            f"{setup['train_s']:.1f} s"
        )
        self.setups[label] = setup
        return Prepared(label, c, workers, train, setup)

    def _start(self, stack: ExitStack, label: str, extra: Mapping[str, Sequence[str]]) -> Cluster:
        last = ""
        for attempt in range(1, STARTUP_ATTEMPTS + 1):
            directory = self.root / f"{label}-try{attempt}"
            try:
                c = stack.enter_context(Cluster(NODES, directory, extra))
            except ClusterError as exc:
                last = str(exc)
                self.startup_failures.append({"cluster": label, "attempt": attempt, "error": last})
                log(f"  cluster {label} did not start (attempt {attempt}): {last}")
                continue
            if not self.s.keep:
                stack.callback(_rmtree, directory)
            return c
        raise ClusterError(f"cluster {label} did not start in {STARTUP_ATTEMPTS} attempts: {last}")


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# --- jobs and results ------------------------------------------------------------------------


def wait_job(
    client: Client,
    job: str,
    cond: Callable[[dict[str, Any]], bool],
    timeout: float,
    what: str,
    every: float = 0.05,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        view = client.job(job)
        return view if cond(view) else None

    return wait_for(check, timeout, what, every=every)


def first_result(client: Client, job: str, timeout: float = 60.0) -> dict[str, Any]:
    return wait_job(
        client, job, lambda j: j.get("first_result_at") is not None, timeout, f"{job} to answer"
    )


def cancel_all(client: Client, jobs: Sequence[str]) -> None:
    for job in jobs:
        with contextlib.suppress(ClientError):
            client.cancel_job(job)


def results_of(client: Client, job: str) -> list[dict[str, Any]]:
    """Every result of the job so far (only the fields the bench uses)."""
    rows = client.job_results(job, limit=RESULTS_LIMIT)["results"]
    keep = ("index", "worker", "batch", "epoch", "accepted_at", "processing_ms", "error")
    return [{k: r.get(k) for k in keep} for r in rows]


def accepted_times(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    return sorted(float(r["accepted_at"]) for r in rows)


def count_in(times: Sequence[float], a: float, b: float) -> int:
    """Results accepted in [a, b) (times sorted)."""
    return bisect.bisect_left(times, b) - bisect.bisect_left(times, a)


def balanced(counts: Sequence[int], ratio: float = BALANCE) -> bool:
    return min(counts) > 0 and min(counts) >= ratio * max(counts)


def recovered_at(
    times: Mapping[str, Sequence[float]], start: float, end: float, window: float
) -> float | None:
    """The earliest t >= start (in SCAN_STEP_S steps) with every job's results in [t, t+window)
    non-empty and within 20% of each other; None if there is none with t + window <= end."""
    steps = math.floor((end - window - start) / SCAN_STEP_S) + 1
    for k in range(max(0, steps)):
        t = start + k * SCAN_STEP_S
        if balanced([count_in(ts, t, t + window) for ts in times.values()]):
            return t
    return None


def progress_after(times: Mapping[str, Sequence[float]], start: float) -> float | None:
    """When every job has had a result accepted at or after `start` (None: some job has not)."""
    firsts = []
    for ts in times.values():
        k = bisect.bisect_left(ts, start)
        if k == len(ts):
            return None
        firsts.append(ts[k])
    return max(firsts, default=None)


def pass_fraction(
    times: Mapping[str, Sequence[float]], start: float, end: float, window: float
) -> float | None:
    """Fraction of windows [t, t+window) starting in [start, end - window] (0.05 s steps)
    that meet the recovery criterion: how often steady running itself meets it."""
    steps = math.floor((end - window - start) / 0.05) + 1
    if steps <= 0:
        return None
    ok = sum(
        balanced([count_in(ts, t, t + window) for ts in times.values()])
        for t in (start + k * 0.05 for k in range(steps))
    )
    return ok / steps


def rerun_queries(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Results that came from a re-run: the job's queries are dispatched in dataset order, so a
    query answered by a later batch than some later query of the same job was requeued. (A
    requeued batch re-dispatched before any later query is not detected; it is answered first.)"""
    out = []
    lowest = math.inf
    for r in sorted(rows, key=lambda r: int(r["index"]), reverse=True):
        if int(r["batch"]) > lowest:
            out.append(r)
        lowest = min(lowest, int(r["batch"]))
    return out


def sliding_rates(
    times: Sequence[float], start: float, end: float, window: float, step: float
) -> list[float]:
    """Queries/s over the trailing `window` at start, start+step, ... end."""
    n = math.floor((end - start) / step) + 1
    return [count_in(times, t - window, t) / window for t in (start + k * step for k in range(n))]


def node_cpu_s(c: Cluster) -> float:
    """CPU seconds of every node process and its children (the executors) so far."""
    total = 0.0
    for nd in c.nodes.values():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(nd.pid)
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
    return total


def roles(client: Client) -> dict[str, Any]:
    """{epoch, coordinator, standby} from the coordinator itself (the request is forwarded)."""
    a = client.assignment()
    return {"epoch": a["epoch"], "coordinator": a["coordinator"], "standby": a["standby"]}


# --- 1a share and fairness (one steady-state run) ----------------------------------------------


def steady_run(h: Harness) -> dict[str, Any]:
    s = h.s
    p = h.main()
    cl = p.client()
    ids: list[str] = []
    samples: list[dict[str, Any]] = []
    try:
        for model in MODELS:
            ids.append(cl.submit_job(model, DATASET, s.batch)["id"])
        model_of = dict(zip(ids, MODELS, strict=True))
        views = [first_result(cl, j) for j in ids]
        both = max(float(v["first_result_at"]) for v in views)
        log(
            f"  both jobs answering; warming up {s.steady_warm_s:g} s, "
            f"sampling {s.steady_measure_s:g} s"
        )
        time.sleep(max(0.0, both + s.steady_warm_s - time.time()))
        t_sample = time.time()
        tick = t_sample
        while tick < t_sample + s.steady_measure_s:
            a, r = cl.assignment(), cl.rates()
            mine = [j for j in a["jobs"] if j["id"] in model_of]
            share = {model_of[j["id"]]: float(j["share"]) for j in mine}
            held = {model_of[j["id"]]: len(j["workers"]) for j in mine}
            rate = {model_of[j["id"]]: j["rate"] for j in r["jobs"] if j["id"] in model_of}
            samples.append({"t": time.time(), "share": share, "workers": held, "c1_rate": rate})
            tick += 1.0
            time.sleep(max(0.0, tick - time.time()))
        t_end = time.time()
        stats = {m: cl.job_stats(j) for m, j in zip(MODELS, ids, strict=True)}
        jobs = {m: cl.job(j) for m, j in zip(MODELS, ids, strict=True)}
        rows = {m: results_of(cl, j) for m, j in zip(MODELS, ids, strict=True)}
    finally:
        cancel_all(cl, ids)
    h.dump("steady", {"rows": rows, "samples": samples})
    finished = [float(j["finished_at"]) for j in jobs.values() if j.get("finished_at")]
    if finished and min(finished) < t_end:
        log("  a job finished during the measurement: the windows stop there")
        t_end = min(finished)
    times = {m: accepted_times(rows[m]) for m in MODELS}
    submitted = min(float(j["submitted_at"]) for j in jobs.values())
    return {
        "cluster": p.label,
        "batch_size": s.batch,
        "jobs": {
            m: {
                k: jobs[m][k]
                for k in ("id", "name", "submitted_at", "first_result_at", "total", "done")
            }
            for m in MODELS
        },
        "both_answering_at": both,
        "sampling": [t_sample, t_end],
        "samples": [x for x in samples if x["t"] <= t_end],
        "c2": stats,
        "train_cost_ms": {m: p.train_cost_ms(m) for m in MODELS},
        "steady_from": both + SETTLE_S,
        "until": t_end,
        "timeline": {
            "t0": submitted,
            "step": 0.5,
            "rates_1s": {m: sliding_rates(times[m], submitted, t_end, 1.0, 0.5) for m in MODELS},
            "rates_10s": {
                m: sliding_rates(times[m], submitted, t_end, FAIR_WINDOW_S, 0.5) for m in MODELS
            },
        },
        "_times": times,
    }


def steady(h: Harness, cache: dict[str, Any]) -> dict[str, Any]:
    if "steady" not in cache:
        cache["steady"] = steady_run(h)
    out: dict[str, Any] = cache["steady"]
    return out


def run_share(h: Harness, cache: dict[str, Any]) -> dict[str, Any]:
    run = steady(h, cache)
    r, a = MODELS
    shares = [x["share"].get(r, 0.0) for x in run["samples"]]
    c2 = {m: run["c2"][m]["mean_ms"] for m in MODELS}
    train = run["train_cost_ms"]

    def expected(costs: Mapping[str, float | None]) -> float | None:
        cr, ca = costs[r], costs[a]
        return cr / (cr + ca) if cr is not None and ca is not None and cr + ca > 0 else None

    held = {m: statistics.fmean(x["workers"].get(m, 0) for x in run["samples"]) for m in MODELS}
    out = {
        "share": {r: _report.summarize(shares), a: _report.summarize([1 - x for x in shares])},
        "expected_from_c2": expected(c2),
        "expected_from_train": expected(train),
        "cost_ms_c2": c2,
        "cost_ms_train": train,
        "workers_holding_mean": held,
        "samples": len(shares),
    }
    log(
        f"  share of {r}: {statistics.fmean(shares):.3f} measured, "
        f"{out['expected_from_c2'] or float('nan'):.3f} expected (C2 costs), "
        f"{out['expected_from_train'] or float('nan'):.3f} (training costs)"
    )
    return out


def run_fairness(h: Harness, cache: dict[str, Any]) -> dict[str, Any]:
    run = steady(h, cache)
    times = run["_times"]
    start, end = run["steady_from"], run["until"]
    windows = []
    t = start
    while t + FAIR_WINDOW_S <= end + 1e-9:
        rates = {m: count_in(times[m], t, t + FAIR_WINDOW_S) / FAIR_WINDOW_S for m in MODELS}
        lo = min(rates.values())
        windows.append(
            {"start": t - start, "rates": rates, "ratio": max(rates.values()) / lo if lo else None}
        )
        t += 1.0
    ratios = [w["ratio"] for w in windows if w["ratio"] is not None]
    disjoint = [w["ratio"] for w in windows[:: int(FAIR_WINDOW_S)] if w["ratio"] is not None]
    c1 = [x["c1_rate"] for x in run["samples"]]
    c1_ratios = [max(r.values()) / min(r.values()) for r in c1 if r and min(r.values()) > 0]
    out = {
        "steady_s": end - start,
        "windows": windows,
        "ratio": _report.summarize(ratios),
        "ratio_disjoint": _report.summarize(disjoint),
        "c1_ratio": _report.summarize(c1_ratios),
        "rates": {
            m: count_in(times[m], start, end) / (end - start) if end > start else None
            for m in MODELS
        },
    }
    if ratios:
        log(f"  fairness: max/min over {len(ratios)} 10 s windows: worst {max(ratios):.3f}")
    return out


# --- 1b first result of a second job ---------------------------------------------------------


def run_first_result(h: Harness, cache: dict[str, Any]) -> dict[str, Any]:
    s = h.s
    p = h.main()
    cl = p.client()
    cases = []
    for batch in sorted({s.batch, 1}, reverse=True):
        trials = []
        for i in range(s.trials):
            ids: list[str] = []
            try:
                ids.append(cl.submit_job("resnet18", DATASET, batch)["id"])
                first_result(cl, ids[0])
                time.sleep(SETTLE_S)
                running = cl.job_stats(ids[0])
                t_call = time.time()
                job = cl.submit_job("alexnet", DATASET, batch)
                call_s = time.time() - t_call
                ids.append(job["id"])
                view = first_result(cl, job["id"])
                rows = cl.job_results(job["id"], limit=4 * batch + 64)["results"]
            finally:
                cancel_all(cl, ids)
            first = min(rows, key=lambda r: float(r["accepted_at"])) if rows else {}
            took = float(view["first_result_at"]) - float(view["submitted_at"])
            trials.append(
                {
                    "first_result_s": took,
                    "submit_call_s": call_s,
                    "worker": first.get("worker"),
                    "batch": first.get("batch"),
                    "processing_ms": first.get("processing_ms"),
                    "running_job_ms_per_query": running.get("mean_ms"),
                }
            )
            log(
                f"  batch {batch} trial {i + 1}: first result {1000 * took:.0f} ms after submit "
                f"(worker {first.get('worker')}, {first.get('processing_ms') or 0:.0f} ms/query; "
                f"ResNet18 {running.get('mean_ms') or 0:.0f} ms/query)"
            )
        values = [float(t["first_result_s"] or 0.0) for t in trials]
        summary = _report.summarize(values)
        summary["p95"] = _report.percentile(values, 95)
        cases.append({"batch_size": batch, "trials": trials, "summary": summary})
    return {"cluster": p.label, "cases": cases}


# --- 2, 3 failover ------------------------------------------------------------------------------


def membership_bound() -> dict[str, Any]:
    """The failure detector's SIGSTOP detection p99 from bench/results/membership.json."""
    try:
        data = json.loads(MEMBERSHIP_JSON.read_text())
        cases = [c for c in data["detection"]["cases"] if c["signal"] == "SIGSTOP"]
        p99 = {int(c["n"]): float(c["summary"]["p99"]) for c in cases}
        return {
            "source": str(MEMBERSHIP_JSON.relative_to(_report.REPO_DIR)),
            "date": data["machine"]["date"],
            "sigstop_p99_s": p99,
            "bound_s": max(p99.values()),
        }
    except (OSError, ValueError, KeyError) as exc:
        return {"source": None, "error": str(exc), "sigstop_p99_s": {}, "bound_s": 2.5}


def target_s(kind: str, sig: str, bound: float) -> float:
    if sig == "SIGSTOP":
        return bound + STOP_MARGIN_S
    return WORKER_KILL_TARGET_S if kind == "worker" else COORDINATOR_KILL_TARGET_S


def events_since(c: Cluster, since: float, until: float, victim: str) -> list[dict[str, Any]]:
    out = []
    for nd in c.nodes.values():
        for e in read_events(Path(nd.data_dir), None, since):
            if e.get("event") not in EVENTS or float(e["ts"]) > until:
                continue
            if e["event"] == "member_changed" and e.get("member") != victim:
                continue
            if e["event"] == "file_put" and e.get("file") != CLAIM_FILE:
                continue
            out.append(e)
    return sorted(out, key=lambda e: float(e["ts"]))


def _event_row(e: Mapping[str, Any], t0: float) -> dict[str, Any]:
    skip = {"ts", "node", "level", "event"}
    detail = {k: v for k, v in e.items() if k not in skip}
    return {
        "dt": round(float(e["ts"]) - t0, 4),
        "node": e.get("node"),
        "event": e["event"],
        **detail,
    }


def analyse_failover(
    kind: str,
    victim: str,
    before: Mapping[str, Any],
    t0: float,
    t_end: float,
    min_window: float,
    batch: int,
    pre_from: float,
    events: Sequence[Mapping[str, Any]],
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, Any]:
    """Detection, requeue and recovery times (seconds after t0) from the logs and results."""
    failed = [
        float(e["ts"])
        for e in events
        if e["event"] == "member_changed" and e.get("new") == "failed" and float(e["ts"]) >= t0
    ]
    out: dict[str, Any] = {"detected_s": min(failed) - t0 if failed else None}
    after = [e for e in events if float(e["ts"]) >= t0]
    requeued: float | None = None
    coordinator = before["coordinator"]
    if kind == "coordinator":
        gone = [float(e["ts"]) for e in after if e["event"] == "coordinator_gone"]
        out["coordinator_gone_s"] = min(gone) - t0 if gone else None
        elected = [
            e
            for e in after
            if e["event"] == "coordinator_elected" and int(e.get("epoch", 0)) > int(before["epoch"])
        ]
        first = min(elected, key=lambda e: float(e["ts"])) if elected else None
        out["elected"] = (
            {
                k: first.get(k)
                for k in ("node", "epoch", "takeover", "took_ms", "adopted", "standby")
            }
            if first
            else None
        )
        out["elected_s"] = float(first["ts"]) - t0 if first else None
        out["elections"] = len(elected)
        coordinator = first.get("node") if first else None
        requeued = float(first["ts"]) if first else None
    # Batches the victim held (as a worker), requeued by the coordinator (the new one, after a
    # takeover: batches it adopted from the old reign and found held by the dead node).
    marks = [
        e
        for e in after
        if e["event"] in ("batch_requeued", "worker_failed")
        and e.get("worker") == victim
        and e.get("node") == coordinator
    ]
    out["requeue_records"] = len(marks)
    out["requeued_batches"] = sorted(
        {int(e["batch"]) for e in marks if "batch" in e}
        | {int(b) for e in marks for b in e.get("requeued", [])}
    )
    out["first_requeue_s"] = min(float(e["ts"]) for e in marks) - t0 if marks else None
    if marks and (kind == "worker" or requeued is not None):
        requeued = max([float(e["ts"]) for e in marks] + ([requeued] if requeued else []))
    out["requeued_s"] = requeued - t0 if requeued is not None else None
    times = {m: accepted_times(r) for m, r in rows.items()}
    rates = {
        m: count_in(ts, pre_from, t0) / (t0 - pre_from) if t0 > pre_from else 0.0
        for m, ts in times.items()
    }
    # At least MIN_BATCHES batches of the slower job per window: one batch more or less is
    # then at most 1/MIN_BATCHES of its count, well inside the 20% the criterion allows.
    slowest = min(rates.values(), default=0.0)
    window = max(min_window, MIN_BATCHES * batch / slowest) if slowest > 0 else min_window
    window = min(window, max(min_window, MAX_WINDOW_S))
    out["window_s"] = window
    # A worker that held no batch has nothing to requeue: recovery is then judged from t0.
    start = requeued if requeued is not None else (t0 if kind == "worker" else None)
    # Progress again. A coordinator's failure stops every job until the new one accepts
    # results (only it accepts any after t0; they may carry the old epoch when it adopted the
    # batch): every job has a result accepted since `start`. A worker's failure never stops
    # the coordinator accepting the other workers' results: no stall to wait for.
    resumed = start
    if kind == "coordinator" and start is not None:
        resumed = progress_after(times, start)
    out["resumed_s"] = resumed - t0 if resumed is not None else None
    recovered = recovered_at(times, resumed, t_end, window) if resumed is not None else None
    out["recovered_s"] = recovered - t0 if recovered is not None else None
    reruns = [r for rs in rows.values() for r in rerun_queries(rs) if float(r["accepted_at"]) >= t0]
    out["rerun_queries"] = len(reruns)
    out["rerun_answered_s"] = max(float(r["accepted_at"]) for r in reruns) - t0 if reruns else None
    out["baseline_pass"] = pass_fraction(times, pre_from, t0, window)
    out["rates_before"] = rates
    out["results_after"] = {m: count_in(ts, t0, t_end) for m, ts in times.items()}
    out["by_victim_after"] = sum(
        1
        for rs in rows.values()
        for r in rs
        if r["worker"] == victim and float(r["accepted_at"]) >= t0
    )
    return out


def failover_trial(
    h: Harness, p: Prepared, kind: str, sig: signal.Signals, i: int
) -> dict[str, Any]:
    s = h.s
    c = p.c
    probe = p.client(sorted(c.nodes)[-1])
    before = roles(probe)
    spare = sorted(n for n in c.nodes if n not in (before["coordinator"], before["standby"]))
    victim = spare[i % len(spare)] if kind == "worker" else before["coordinator"]
    gateway = next(n for n in spare if n != victim)
    cl = p.client(gateway)
    history = sum(int(j["done"]) for j in cl.jobs()["jobs"])
    ids: list[str] = []
    hit = False  # the victim was signalled and not yet restored
    try:
        for model in MODELS:
            ids.append(cl.submit_job(model, DATASET, s.batch)["id"])
        both = max(float(first_result(cl, j)["first_result_at"]) for j in ids)
        time.sleep(max(0.0, both + FAIL_SETTLE_S + s.pre_s - time.time()))
        t0 = time.time()
        hit = True
        if sig == signal.SIGKILL:
            c.kill(victim)  # SIGKILL and reap
        else:
            c.pause(victim)
        time.sleep(max(0.0, t0 + s.observe_s - time.time()))
        t_end = t0 + s.observe_s
        rows = {m: results_of(cl, j) for m, j in zip(MODELS, ids, strict=True)}
        events = events_since(c, t0 - s.pre_s - FAIL_SETTLE_S, t_end, victim)
        after = roles(cl)
        cancel_all(cl, ids)  # less load (and control state) while the victim comes back
        h.dump(
            f"{kind}-{sig.name}-{i}", {"t0": t0, "before": before, "rows": rows, "events": events}
        )
        restore_t = time.monotonic()
        hit = False
        restore(p, victim, sig, after["epoch"] if kind == "coordinator" else None)
        cl.train([])  # a restarted worker loads the models again (a no-op on the others)
        restore_s = time.monotonic() - restore_t
    finally:
        if hit:  # the trial failed half-way: bring the victim back for the next one
            with contextlib.suppress(ClientError, ClusterError, WaitTimeoutError, OSError):
                restore(p, victim, sig, None)
        cancel_all(cl, ids)
    pre_from = both + FAIL_SETTLE_S
    result = analyse_failover(
        kind, victim, before, t0, t_end, s.window_s, s.batch, pre_from, events, rows
    )
    times = {m: accepted_times(r) for m, r in rows.items()}
    step = 0.1
    result |= {
        "kind": kind,
        "signal": sig.name,
        "trial": i,
        "victim": victim,
        "before": before,
        "after": after,
        "gateway": gateway,
        "history_results": history,
        "restore_s": restore_s,
        "events": [_event_row(e, t0) for e in events],
        "timeline": {
            "start": pre_from - t0,
            "step": step,
            "window": result["window_s"],
            "rates": {
                m: sliding_rates(ts, pre_from + result["window_s"], t_end, result["window_s"], step)
                for m, ts in times.items()
            },
            "start_rates": pre_from + result["window_s"] - t0,
        },
    }
    log(
        f"  {kind} {sig.name} trial {i + 1} ({victim}): detected "
        f"{_s(result['detected_s'])}, requeued {_s(result['requeued_s'])}, recovered "
        f"{_s(result['recovered_s'])}, re-run queries answered {_s(result['rerun_answered_s'])} "
        f"({result['rerun_queries']}); steady windows meeting the criterion "
        f"{_pct(result['baseline_pass'])}; restored in {restore_s:.1f} s"
    )
    return result


def restore(p: Prepared, victim: str, sig: signal.Signals, epoch: int | None) -> None:
    """SIGCONT a stopped victim or restart a killed one on its data dir; wait until every
    node sees every node alive and (a former coordinator) it follows the new epoch."""
    if sig == signal.SIGSTOP:
        p.c.resume(victim)
    else:
        p.c.restart_node(victim)
    p.c.converged(timeout=60.0)
    if epoch is not None:
        wait_for(
            lambda: _follows(p.client(victim, timeout=2.0), epoch),
            30.0,
            f"{victim} to follow epoch {epoch}",
        )


def _follows(client: Client, epoch: int) -> bool:
    try:
        ctl = client.control()
    except ClientError:
        return False
    return int(ctl["epoch"]) >= epoch and ctl["role"] != "coordinator"


def _s(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f} s"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.0f}%"


def failover_cases(h: Harness, p: Prepared, kind: str) -> dict[str, Any]:
    bound = membership_bound()
    cases = []
    for sig in (signal.SIGKILL, signal.SIGSTOP):
        trials, failed = [], []
        for i in range(h.s.trials):
            try:
                trials.append(failover_trial(h, p, kind, sig, i))
            except (ClientError, WaitTimeoutError, RuntimeError) as exc:
                log(f"  {kind} {sig.name} trial {i + 1} failed: {exc}")
                failed.append({"trial": i, "error": f"{type(exc).__name__}: {exc}"})
                if len(failed) > 1:
                    raise
        if not trials:
            raise RuntimeError(f"no {kind} {sig.name} trial completed: {failed[-1]['error']}")
        values = [t["recovered_s"] for t in trials]
        got = [v for v in values if v is not None]
        summary = _report.summarize(got)
        summary["p95"] = _report.percentile(got, 95) if got else None
        summary["not_recovered"] = len(values) - len(got)
        cases.append(
            {
                "signal": sig.name,
                "target_s": target_s(kind, sig.name, bound["bound_s"]),
                "failed_trials": failed,
                "summary": summary,
                "summaries": {
                    key: _report.summarize([t[key] for t in trials if t[key] is not None])
                    for key in (
                        "detected_s",
                        "requeued_s",
                        "resumed_s",
                        "rerun_answered_s",
                        "baseline_pass",
                    )
                },
                "trials": trials,
            }
        )
    return {
        "cluster": p.label,
        "kind": kind,
        "window_s": h.s.window_s,
        "balance": BALANCE,
        "detector": bound,
        "cases": cases,
    }


def run_worker_fail(h: Harness, cache: dict[str, Any]) -> dict[str, Any]:
    return failover_cases(h, h.main(), "worker")


def run_coordinator_fail(h: Harness, cache: dict[str, Any]) -> dict[str, Any]:
    with h.cluster("coordinator") as p:
        return failover_cases(h, p, "coordinator")


# --- throughput against bare ONNX Runtime -------------------------------------------------------


def cluster_job(p: Prepared, dataset: str, count: int, batch: int) -> dict[str, Any]:
    cl = p.client()
    cpu0 = node_cpu_s(p.c)
    job = cl.submit_job("resnet18", dataset, batch)
    try:
        view = wait_job(
            cl, job["id"], lambda j: j["status"] != "running", 120.0 + count / 5.0, "the job", 0.25
        )
    finally:
        cancel_all(cl, [job["id"]])
    cpu = node_cpu_s(p.c) - cpu0
    rows = results_of(cl, job["id"])
    stats = cl.job_stats(job["id"])
    times = accepted_times(rows)
    took = float(view["finished_at"]) - float(view["submitted_at"])
    lo, hi = _report.percentile(times, 10), _report.percentile(times, 90)
    steady = count_in(times, lo, hi) / (hi - lo) if hi > lo else None
    return {
        "status": view["status"],
        "images": int(view["done"]),
        "seconds": took,
        "rate": int(view["done"]) / took,
        "steady_rate": steady,
        "first_result_s": float(view["first_result_at"]) - float(view["submitted_at"]),
        "node_cpu_s": cpu,
        "c2": stats,
        "workers": sorted({str(r["worker"]) for r in rows}),
    }


def run_throughput(h: Harness, cache: dict[str, Any]) -> dict[str, Any]:
    s = h.s
    p = h.main()
    cores = os.cpu_count() or 1
    images = h.root / "tput-images.pkl"
    images.write_bytes(pickle.dumps([b for _, b in h.photos(s.tput_images)]))
    model, _ = h.model("resnet18")
    rounds = []
    for r in range(s.tput_rounds):
        entry: dict[str, Any] = {}
        for what in ("bare", "cluster") if r % 2 == 0 else ("cluster", "bare"):
            load = os.getloadavg()[0]
            if what == "bare":
                entry["bare"] = run_bare(model, images, cores, s.batch)
            else:
                entry["cluster"] = cluster_job(p, TPUT_DATASET, s.tput_images, s.batch)
            entry[what]["loadavg_before"] = load
        entry["ratio"] = entry["cluster"]["rate"] / entry["bare"]["rate"]
        entry["steady_ratio"] = (entry["cluster"]["steady_rate"] or 0.0) / entry["bare"]["rate"]
        # CPU seconds per image, bare over cluster: the overhead the cluster adds, whatever
        # share of the cores other processes leave to each side.
        entry["cpu_ratio"] = (entry["bare"]["cpu_s"] / entry["bare"]["images"]) / (
            entry["cluster"]["node_cpu_s"] / max(1, entry["cluster"]["images"])
        )
        log(
            f"  round {r + 1}: cluster {entry['cluster']['rate']:.1f} q/s "
            f"(steady {entry['cluster']['steady_rate'] or 0:.1f}), bare ONNX Runtime "
            f"{entry['bare']['rate']:.1f} img/s: ratio {entry['ratio']:.3f}"
        )
        rounds.append(entry)
    return {
        "cluster": p.label,
        "images": s.tput_images,
        "batch_size": s.batch,
        "bare_threads": cores,
        "worker_threads": 1,
        "rounds": rounds,
        "ratio": _report.summarize([x["ratio"] for x in rounds]),
        "steady_ratio": _report.summarize([x["steady_ratio"] for x in rounds]),
        "cpu_ratio": _report.summarize([x["cpu_ratio"] for x in rounds]),
    }


# --- scaling ------------------------------------------------------------------------------


def scaling_point(p: Prepared, k: int, measure_s: float, batch: int) -> dict[str, Any]:
    cl = p.client()
    coordinator = roles(cl)["coordinator"]
    job = cl.submit_job("resnet18", DATASET, batch)
    try:
        view = first_result(cl, job["id"])
        start = float(view["first_result_at"]) + SETTLE_S
        time.sleep(max(0.0, start + measure_s - time.time()))
        rows = results_of(cl, job["id"])
        stats = cl.job_stats(job["id"])
    finally:
        cancel_all(cl, [job["id"]])
    times = accepted_times(rows)
    inside = [r for r in rows if start <= float(r["accepted_at"]) < start + measure_s]
    point = {
        "workers": k,
        "worker_nodes": list(p.workers),
        "coordinator": coordinator,
        "coordinator_works": coordinator in p.workers,
        "rate": count_in(times, start, start + measure_s) / measure_s,
        "c2": stats,
        "window_ms": _report.summarize([float(r["processing_ms"]) for r in inside]),
        "workers_used": sorted({str(r["worker"]) for r in inside}),
        "first_result_s": float(view["first_result_at"]) - float(view["submitted_at"]),
    }
    log(
        f"  {k} worker(s): {point['rate']:.1f} q/s, C2 mean {stats['mean_ms'] or 0:.1f}"
        f" ms, p95 {stats['p95_ms'] or 0:.1f} ms per query"
    )
    return point


def run_scaling(h: Harness, cache: dict[str, Any]) -> dict[str, Any]:
    s = h.s
    points = []
    for k in s.scaling_workers:
        if k == NODES:
            points.append(scaling_point(h.main(), k, s.scaling_measure_s, s.batch))
            continue
        disabled = [f"n{i}" for i in range(k + 1, NODES + 1)]
        with h.cluster(f"scale{k}", ("resnet18",), {DATASET: s.scaling_images}, disabled) as p:
            points.append(scaling_point(p, k, s.scaling_measure_s, s.batch))
    return {"cores": os.cpu_count(), "batch_size": s.batch, "points": points}


# --- running ------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Harness, dict[str, Any]], dict[str, Any]]] = {
    "share": run_share,
    "first_result": run_first_result,
    "worker_fail": run_worker_fail,
    "coordinator_fail": run_coordinator_fail,
    "throughput": run_throughput,
    "fairness": run_fairness,
    "scaling": run_scaling,
}


def ok(sec: Mapping[str, Any] | None) -> bool:
    return sec is not None and "error" not in sec


def run_sections(h: Harness) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each section in turn; a failed one is recorded (and the shared cluster replaced)."""
    results: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    for name in h.s.sections:
        log(f"== {name}")
        t0 = time.monotonic()
        try:
            results[name] = RUNNERS[name](h, cache)
        except Exception as exc:  # recorded: one section's failure must not lose the others
            log(traceback.format_exc())
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            h.drop_main()
            cache.pop("steady", None)
        results[name]["wall_s"] = time.monotonic() - t0
    return results, cache


# --- figures to reach ----------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    figure: str
    target: str
    measured: str
    ok: bool | None


def section(data: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The section's results if it ran and did not fail."""
    sec = data.get(name)
    return sec if isinstance(sec, dict) and "error" not in sec else None


def goals(data: Mapping[str, Any]) -> list[Goal]:
    out: list[Goal] = []
    sec = section(data, "share")
    if sec:
        m = sec["share"][MODELS[0]]["mean"]
        e = sec["expected_from_c2"]
        out.append(
            Goal(
                "1a ResNet18's share of worker time (AlexNet alongside)",
                "≈ cost_r / (cost_r + cost_a)",
                f"{m:.3f} (expected {_f3(e)} from C2 costs, "
                f"{_f3(sec['expected_from_train'])} from training costs)",
                None,
            )
        )
    sec = section(data, "first_result")
    if sec:
        for case in sec["cases"]:
            p95 = case["summary"]["p95"]
            out.append(
                Goal(
                    f"1b second job's first result, batch size {case['batch_size']}",
                    f"p95 ≤ {1000 * FIRST_RESULT_TARGET_S:g} ms",
                    f"p95 {1000 * p95:.0f} ms (mean {1000 * case['summary']['mean']:.0f}, "
                    f"{case['summary']['n']} trials)",
                    p95 <= FIRST_RESULT_TARGET_S,
                )
            )
    for key, label in (("worker_fail", "2 worker"), ("coordinator_fail", "3 coordinator")):
        sec = section(data, key)
        if not sec:
            continue
        for case in sec["cases"]:
            sm = case["summary"]
            p95, miss = sm["p95"], sm["not_recovered"]
            measured = "—" if p95 is None else f"p95 {p95:.2f} s (mean {sm['mean']:.2f})"
            if miss:
                measured += f", {miss} of {sm['n'] + miss} not recovered"
            target = f"p95 ≤ {case['target_s']:.2f} s"
            if case["signal"] == "SIGSTOP":
                target += f" (detector p99 {sec['detector']['bound_s']:.2f} + {STOP_MARGIN_S:g})"
            out.append(
                Goal(
                    f"{label} {case['signal']} → normal operation",
                    target,
                    measured,
                    None if p95 is None else (p95 <= case["target_s"] and not miss),
                )
            )
    sec = section(data, "throughput")
    if sec:
        r = sec["ratio"]["mean"]
        out.append(
            Goal(
                "throughput, one ResNet18 job / bare ONNX Runtime",
                f"≥ {THROUGHPUT_TARGET:.0%}",
                f"{r:.1%} (steady part {sec['steady_ratio']['mean']:.1%})",
                r >= THROUGHPUT_TARGET,
            )
        )
    sec = section(data, "fairness")
    if sec and sec["ratio"]["n"]:
        worst = sec["ratio"]["max"]
        out.append(
            Goal(
                "fairness: max/min query rate over 10 s windows",
                f"≤ {FAIRNESS_TARGET}",
                f"worst {worst:.3f}, mean {sec['ratio']['mean']:.3f} ({sec['ratio']['n']} windows)",
                worst <= FAIRNESS_TARGET,
            )
        )
    return out


def _f3(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


# --- markdown ------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{1000 * v:.0f}"


def md_share(sec: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    r = MODELS[0]
    rows = [
        [
            m,
            sec["share"][m]["mean"],
            sec["share"][m]["sd"],
            sec["share"][m]["min"],
            sec["share"][m]["max"],
            (sec["expected_from_c2"] if m == r else 1 - sec["expected_from_c2"]),
            (
                None
                if sec["expected_from_train"] is None
                else sec["expected_from_train"]
                if m == r
                else 1 - sec["expected_from_train"]
            ),
            sec["cost_ms_c2"][m],
            sec["cost_ms_train"][m],
            sec["workers_holding_mean"][m],
        ]
        for m in MODELS
    ]
    head = ["job", "share mean", "sd", "min", "max", "expected (C2)", "expected (train)"]
    head += ["C2 ms/query", "train ms/query", "workers holding it (mean)"]
    return (
        "## 1a Share of the workers (ResNet18 and AlexNet together)\n\n"
        f"`GET /v1/assignment` sampled once a second ({sec['samples']} samples) after both jobs "
        f"had answered for {data['run']['settings']['steady_warm_s']:g} s (the share covers the "
        "last 10 s). Fair-time gives equal query rates, so the expected share of a job is its "
        "cost per query over the sum of both: with C2's mean per-query processing time measured "
        "in this run, and with the training phase's cost (median over the 6 workers, measured "
        "alone at load time). Workers holding it: nodes with at least one of the job's batches "
        "at the sample.\n\n" + _report.table(head, rows, 3)
    )


def md_first_result(sec: Mapping[str, Any]) -> str:
    rows = []
    for case in sec["cases"]:
        s = case["summary"]
        tr = case["trials"]
        rows.append(
            [
                case["batch_size"],
                s["n"],
                _ms(s["mean"]),
                _ms(s["sd"]),
                _ms(s["p50"]),
                _ms(s["p95"]),
                _ms(s["max"]),
                _ms(statistics.fmean(t["submit_call_s"] for t in tr)),
                statistics.fmean(t["processing_ms"] or 0 for t in tr),
                statistics.fmean(t["running_job_ms_per_query"] or 0 for t in tr),
            ]
        )
    head = ["batch size", "trials", "mean ms", "sd ms", "p50 ms", "p95 ms", "max ms"]
    head += ["submit call ms", "AlexNet ms/query", "ResNet18 ms/query"]
    return (
        "## 1b First result of a second job\n\n"
        "A ResNet18 job runs (submitted, answering, then "
        f"{SETTLE_S:g} s more so every worker holds its batches); an AlexNet job is submitted; "
        "figure = its `first_result_at - submitted_at` (both stamped by the coordinator; "
        "`submitted_at` is taken before the job's spec is written to the store). Both jobs at "
        "the same batch size, then cancelled. Submit call = the client's wall time for `POST "
        "/v1/jobs`. ms/query = C2 per-query processing time (decode + inference on the worker) "
        "of the first AlexNet result and of the running ResNet18 job. A new job's first batch is "
        "one query sent urgent: its worker's executor runs it at once, next to the batch it is "
        "running, at a higher CPU priority (docs/control-plane.md).\n\n"
        + _report.table(head, rows, 1)
    )


FAILOVER_DEFINITION = (
    "t0 = the bench's `time.time()` just before the signal. *Requeued* = the latest of: the new "
    "coordinator's `coordinator_elected` record with a higher epoch (coordinator case; the "
    "standby takes over, adopting the batches the old reign had out), and the (new) "
    "coordinator's last `batch_requeued` or `worker_failed` record naming the victim (records "
    "from the nodes' DATA_DIR/node.jsonl). *Resumed* (coordinator case) = when every job has "
    "had a result accepted (`accepted_at` from `GET /v1/jobs/J/results`) since requeued: no job "
    "progresses while there is no coordinator; in the worker case the coordinator keeps "
    "accepting the other workers' results throughout, so resumed = requeued. *Recovered* = the "
    "earliest t ≥ resumed (0.01 s steps) such that, over [t, t + W), every job has results "
    "accepted and the jobs' query rates are within 20% of each other (min ≥ 0.8 x max); W = "
    "max({w:g} s, the time the slower job took for {mb} batches before t0; at most {maxw:g} s), "
    "so that one batch more or less moves a count by at most 1/{mb}. The figure is recovered - "
    "t0. Detected = the first survivor's `member_changed new=failed` record for the victim. "
    "Re-run answered = the last result of a query that ran again (found in the results: "
    "answered by a later batch than some later query of the same job; a requeued batch "
    "re-dispatched ahead of every later query is not found): not part of the criterion, which "
    "asks for requeued queries to be re-dispatched, not answered. Steady windows = fraction of "
    "the windows of length W within the {pre:g} s before t0 that meet the same criterion (how "
    "often steady running itself meets it: below 100% the criterion adds noise). Fresh jobs "
    "(ResNet18 and AlexNet, batch size {b}) per trial, running {settle:g} + {pre:g} s after "
    "both answered before the signal; the victim is rotated among the nodes that are neither "
    "coordinator nor standby (worker case); after {obs:g} s of observation the jobs are "
    "cancelled, a SIGSTOPped node is SIGCONTed and a SIGKILLed one restarted on its data dir, "
    "and the next trial waits until every node sees every node alive (and a former coordinator "
    "follows the new epoch) and the models are loaded again (`POST /v1/train`)."
)


def md_failover(sec: Mapping[str, Any], data: Mapping[str, Any], number: str) -> str:
    s = data["run"]["settings"]
    det = sec["detector"]
    p99 = ", ".join(f"N={n}: {v:.2f} s" for n, v in sorted(det["sigstop_p99_s"].items()))
    who = (
        "a worker (neither coordinator nor standby)"
        if sec["kind"] == "worker"
        else "the coordinator"
    )
    parts = [
        f"## {number} Failure of {who}\n\n"
        + FAILOVER_DEFINITION.format(
            w=sec["window_s"],
            mb=MIN_BATCHES,
            maxw=MAX_WINDOW_S,
            pre=s["pre_s"],
            settle=FAIL_SETTLE_S,
            b=s["batch"],
            obs=s["observe_s"],
        )
        + f"\n\nFailure detector (from {det.get('source') or 'no membership.json: 2.5 s target'}"
        f", {det.get('date', '')}): SIGSTOP detection p99 {p99 or '—'}; bound used "
        f"{det['bound_s']:.2f} s."
    ]
    head = ["signal", "trials", "recovered mean s", "sd", "p50", "p95", "max", "target"]
    head += ["detected mean s", "requeued mean s", "resumed mean s", "re-run answered mean s"]
    head += ["steady windows"]
    rows = []
    for case in sec["cases"]:
        sm, ss = case["summary"], case["summaries"]
        rows.append(
            [
                case["signal"],
                f"{sm['n']}"
                + (f" (+{sm['not_recovered']} not recovered)" if sm["not_recovered"] else ""),
                sm["mean"],
                sm["sd"],
                sm["p50"],
                sm["p95"],
                sm["max"],
                f"≤ {case['target_s']:.2f}",
                ss["detected_s"]["mean"],
                ss["requeued_s"]["mean"],
                ss["resumed_s"]["mean"],
                ss["rerun_answered_s"]["mean"],
                _pct(ss["baseline_pass"]["mean"]),
            ]
        )
    parts.append(_report.table(head, rows, 3))
    first = "first requeue" if sec["kind"] == "worker" else "standby saw it gone / elected"
    head = ["signal", "#", "victim", "coordinator → after", "detected", first, "requeued"]
    head += ["resumed", "recovered", "W s", "re-run answered (queries)", "steady windows"]
    head += ["rates before q/s", "restore s"]
    trows = []
    for case in sec["cases"]:
        for t in case["trials"]:
            rates = "/".join(f"{v:.0f}" for v in t["rates_before"].values() if v is not None)
            trows.append(
                [
                    t["signal"],
                    t["trial"] + 1,
                    t["victim"],
                    f"{t['before']['coordinator']} (e{t['before']['epoch']}) → "
                    f"{t['after']['coordinator']} (e{t['after']['epoch']})",
                    t["detected_s"],
                    _s(t["first_requeue_s"])
                    if sec["kind"] == "worker"
                    else f"{_s(t['coordinator_gone_s'])} / {_s(t['elected_s'])}",
                    t["requeued_s"],
                    t["resumed_s"],
                    t["recovered_s"],
                    t["window_s"],
                    f"{_s(t['rerun_answered_s'])} ({t['rerun_queries']})",
                    _pct(t["baseline_pass"]),
                    rates,
                    t["restore_s"],
                ]
            )
    parts.append("Every trial (seconds after t0):\n\n" + _report.table(head, trows, 3))
    errors = [
        f"- {case['signal']} trial {f['trial'] + 1}: `{f['error']}`"
        for case in sec["cases"]
        for f in case["failed_trials"]
    ]
    if errors:
        parts.append("Trials that failed (not counted):\n\n" + "\n".join(errors))
    slow = [
        t
        for case in sec["cases"]
        for t in case["trials"]
        if t["recovered_s"] is None or t["recovered_s"] > case["target_s"]
    ]
    if slow:
        lines = []
        for t in slow[:4]:
            lines.append(f"{t['signal']} trial {t['trial'] + 1}, victim {t['victim']}:")
            for e in t["events"]:
                if e["dt"] < -0.5:
                    continue
                detail = {k: v for k, v in e.items() if k not in ("dt", "node", "event")}
                text = json.dumps(detail, default=str)[:160]
                lines.append(f"  {e['dt']:+8.3f} s {e['node']} {e['event']} {text}")
        parts.append(
            "Log records around the trials over target (seconds after t0; membership records "
            "only about the victim):\n\n```\n" + "\n".join(lines) + "\n```"
        )
    return "\n\n".join(parts)


def md_throughput(sec: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    rows = []
    for i, r in enumerate(sec["rounds"], start=1):
        cl, b = r["cluster"], r["bare"]
        rows.append(
            [
                i,
                cl["rate"],
                cl["steady_rate"],
                cl["seconds"],
                b["rate"],
                b["seconds"],
                r["ratio"],
                r["steady_ratio"],
                cl["node_cpu_s"] / max(1, cl["images"]) * 1000,
                b["cpu_s"] / max(1, b["images"]) * 1000,
                r["cpu_ratio"],
                b["cpu_s"] / b["seconds"] / sec["bare_threads"],
                f"{b['loadavg_before']:.1f} / {cl['loadavg_before']:.1f}",
            ]
        )
    head = ["round", "cluster q/s", "cluster steady q/s", "cluster s", "bare img/s", "bare s"]
    head += ["ratio", "steady ratio", "cluster CPU ms/query", "bare CPU ms/img"]
    head += ["CPU ratio (bare / cluster)", "bare CPU share", "load before (bare / cluster)"]
    return (
        "## Throughput: one ResNet18 job against bare ONNX Runtime\n\n"
        f"{sec['images']} photos, batch size {sec['batch_size']}. Cluster: one job over a "
        f"dataset of those photos on the 6-node cluster (every node's worker with "
        f"{sec['worker_threads']} ONNX Runtime thread), queries / (finished_at - submitted_at); "
        "steady = the rate between the 10th and 90th percentile of the results' accepted_at "
        "(no start-up or tail). Bare: one Python process, onnxruntime with intra-op threads = "
        f"{sec['bare_threads']} (the core count), decoding + preprocessing the same JPEGs with "
        "`idunno.inference.images.preprocess_imagenet` and running the same model bytes batch "
        "by batch (session creation and one warm-up batch not timed). The two alternate in each "
        "round, on an otherwise idle cluster. CPU = CPU time of all node processes and their "
        "executors (cluster) or of the bare process, per image; CPU ratio = bare CPU per image / "
        "cluster CPU per query (1.0 = the cluster adds no CPU work); bare CPU share = its CPU "
        "time / (wall time x threads), below 1 when its threads waited (for each other or for "
        "the cores). Load = the 1-minute load "
        "average just before each measurement: with other processes running, the OS gives the "
        "cluster's 6 executor processes more of the cores than the single bare process, so the "
        "throughput ratio only means something on an otherwise idle machine.\n\n"
        + _report.table(head, rows, 2)
    )


def md_fairness(sec: Mapping[str, Any]) -> str:
    r = sec["ratio"]
    d = sec["ratio_disjoint"]
    c1 = sec["c1_ratio"]
    rates = ", ".join(f"{m} {v:.1f} q/s" for m, v in sec["rates"].items() if v is not None)
    rows = [
        ["sliding 10 s windows (1 s steps), results' accepted_at", r["n"], r["mean"], r["max"]],
        ["disjoint 10 s windows", d["n"], d["mean"], d["max"]],
        ["C1 `GET /v1/rates` (10 s) sampled each second", c1["n"], c1["mean"], c1["max"]],
    ]
    return (
        "## Fairness: query rates of ResNet18 and AlexNet together\n\n"
        f"Steady state = from {SETTLE_S:g} s after both jobs first answered, "
        f"{sec['steady_s']:.0f} s long (the same run as 1a). Rates over it: {rates}.\n\n"
        + _report.table(["max/min of the two rates", "windows", "mean", "worst"], rows, 3)
    )


def md_scaling(sec: Mapping[str, Any]) -> str:
    rows = [
        [
            p["workers"],
            ", ".join(p["worker_nodes"]),
            p["rate"],
            p["c2"]["mean_ms"],
            p["c2"]["p95_ms"],
            p["window_ms"]["mean"],
            len(p["workers_used"]),
            p["coordinator_works"],
        ]
        for p in sec["points"]
    ]
    head = ["worker nodes", "nodes", "q/s", "C2 mean ms", "C2 p95 ms", "window mean ms"]
    head += ["workers seen", "coordinator works too"]
    return (
        f"## Scaling with worker nodes (this machine has {sec['cores']} cores)\n\n"
        f"One ResNet18 job, batch size {sec['batch_size']}, on 6 nodes of which 1, 2, 4 or 6 "
        "take inference work (the others started with `--inference-threads 0`; each worker "
        "has one ONNX Runtime thread). q/s over a window starting 2 s after the first result; "
        "C2 = the job's per-query processing time (decode + inference on the worker) from `GET "
        f"/v1/jobs/J/stats`. With {sec['cores']} cores, more than {sec['cores']} single-threaded "
        "workers only share the same cores: per-query time grows as throughput levels off.\n\n"
        + _report.table(head, rows, 1)
    )


def render_markdown(data: Mapping[str, Any]) -> str:
    m, run = data["machine"], data["run"]
    goal_rows = [[g.figure, g.target, g.measured, _report.verdict(g.ok)] for g in goals(data)]
    parts = [
        "# Inference benchmark (control plane and workers)",
        f"`{run['command']}` ({'quick smoke run' if run['quick'] else 'full run'}), "
        f"{m['date']}, {m['cores']} cores ({m['cpu_model']}), {m['memory_mb']} MB, Python "
        f"{m['python']}, {NODES} real `idunno node` processes on 127.0.0.1 (preset `{PRESET}`), "
        f"git {str(data['git']['commit'])[:12]}"
        + (
            f" with changes in {', '.join(data['git']['src_changes'])}"
            if data["git"]["src_changes"]
            else ""
        )
        + f". Load average {run['loadavg_start'][0]:.2f} at start and "
        f"{run['loadavg_end'][0]:.2f} at the end. Wall time {run['wall_s']:.0f} s.",
        "## Figures to reach\n\n"
        + _report.table(["figure", "target", "measured", "result"], goal_rows),
    ]
    renderers: dict[str, Callable[[Mapping[str, Any]], str]] = {
        "share": lambda s: md_share(s, data),
        "first_result": md_first_result,
        "worker_fail": lambda s: md_failover(s, data, "2"),
        "coordinator_fail": lambda s: md_failover(s, data, "3"),
        "throughput": lambda s: md_throughput(s, data),
        "fairness": md_fairness,
        "scaling": md_scaling,
    }
    for name in SECTIONS:
        sec = data.get(name)
        if sec is None:
            continue
        parts.append(renderers[name](sec) if ok(sec) else f"## {name}\n\nFailed: `{sec['error']}`")
    if data["clusters"]:
        rows = [[k, v["start_s"], v["upload_s"], v["train_s"]] for k, v in data["clusters"].items()]
        parts.append(
            "## Cluster set-up\n\n"
            + _report.table(["cluster", "start s", "store models + photos s", "train s"], rows, 1)
        )
    if data["startup_failures"]:
        parts.append(_report.startup_failures_md(data["startup_failures"]))
    return "\n\n".join(parts) + "\n"


# --- figures -------------------------------------------------------------------------------

COLORS = {"resnet18": "tab:blue", "alexnet": "tab:orange"}


def plot_steady(ax: Axes, run: Mapping[str, Any] | None) -> None:
    title = "ResNet18 + AlexNet together (1a, fairness)"
    if run is None:
        _report.blank_axis(ax, title, hide_axes=True)
        return
    tl = run["timeline"]
    for m in MODELS:
        for key, style, label in (("rates_1s", ":", "1 s"), ("rates_10s", "-", "10 s")):
            ys = tl[key][m]
            xs = [k * tl["step"] for k in range(len(ys))]
            ax.plot(xs, ys, style, color=COLORS[m], label=f"{m} ({label} window)")
    t0 = tl["t0"]
    ax.axvline(run["steady_from"] - t0, color="gray", linestyle="--", linewidth=1)
    ax.axvspan(run["sampling"][0] - t0, run["until"] - t0, color="gray", alpha=0.1)
    ax.set_xlabel("seconds after the first submit (shaded: 1a sampling)")
    ax.set_ylabel("queries/s")
    ax.set_title(title)
    ax.legend(fontsize=7)


def _median_trial(case: Mapping[str, Any]) -> Mapping[str, Any]:
    trials: list[Mapping[str, Any]] = list(case["trials"])
    done = sorted(
        (t for t in trials if t["recovered_s"] is not None), key=lambda t: t["recovered_s"]
    )
    return done[len(done) // 2] if done else trials[0]


def plot_failover(ax: Axes, sec: Mapping[str, Any] | None, kind: str, sig: str) -> None:
    title = f"{kind} {sig}"
    case = None
    if ok(sec):
        assert sec is not None
        case = next((c for c in sec["cases"] if c["signal"] == sig), None)
    if case is None:
        _report.blank_axis(ax, title, hide_axes=True)
        return
    t = _median_trial(case)
    tl = t["timeline"]
    for m, ys in tl["rates"].items():
        xs = [tl["start_rates"] + k * tl["step"] for k in range(len(ys))]
        ax.plot(xs, ys, color=COLORS.get(m, "black"), label=m)
    marks = (
        (0.0, "black", "signal"),
        (t["detected_s"], "tab:purple", "detected"),
        (t["requeued_s"], "tab:red", "requeued"),
        (t["resumed_s"], "tab:olive", "resumed"),
        (t["recovered_s"], "tab:green", "recovered"),
    )
    for x, color, label in marks:
        if x is not None:
            ax.axvline(x, color=color, linestyle="--", linewidth=1, label=f"{label} {x:.2f} s")
    ax.axvline(case["target_s"], color="red", linestyle=":", linewidth=1, label="target")
    ax.set_title(
        f"{title}: trial {t['trial'] + 1} of {len(case['trials'])} (median), {t['victim']}"
    )
    ax.set_xlabel(f"seconds after the signal (rates over the trailing {tl['window']:.2f} s)")
    ax.set_ylabel("queries/s")
    ax.legend(fontsize=7, loc="lower left")


def render_figure(data: Mapping[str, Any], steady_run: Mapping[str, Any] | None) -> Figure:
    fig = Figure(figsize=(14, 13), layout="constrained")
    axes = fig.subplots(3, 2)
    plot_steady(axes[0][0], steady_run)
    plot_first_result(axes[0][1], data.get("first_result"))
    plot_failover(axes[1][0], data.get("worker_fail"), "worker", "SIGKILL")
    plot_failover(axes[1][1], data.get("worker_fail"), "worker", "SIGSTOP")
    plot_failover(axes[2][0], data.get("coordinator_fail"), "coordinator", "SIGKILL")
    plot_failover(axes[2][1], data.get("coordinator_fail"), "coordinator", "SIGSTOP")
    fig.suptitle("IDUNNO inference: per-job query rate over time, failures marked")
    return fig


def plot_first_result(ax: Axes, sec: Mapping[str, Any] | None) -> None:
    title = "1b: second job's first result"
    if not ok(sec):
        _report.blank_axis(ax, title, hide_axes=True)
        return
    assert sec is not None
    for k, case in enumerate(sec["cases"]):
        ys = [1000 * t["first_result_s"] for t in case["trials"]]
        ax.scatter([k] * len(ys), ys, color="tab:orange", zorder=3)
        ax.hlines(1000 * case["summary"]["p95"], k - 0.3, k + 0.3, color="black")
    ax.axhline(1000 * FIRST_RESULT_TARGET_S, color="red", linestyle=":", label="target (p95)")
    ax.set_xticks(range(len(sec["cases"])), [f"batch {c['batch_size']}" for c in sec["cases"]])
    ax.set_ylabel("ms (bar: p95)")
    ax.set_title(title)
    ax.legend(fontsize=7)


def render_summary(data: Mapping[str, Any]) -> Figure:
    fig = Figure(figsize=(14, 9), layout="constrained")
    axes = fig.subplots(2, 2)
    plot_recovery(axes[0][0], data)
    plot_throughput(axes[0][1], data.get("throughput"))
    plot_scaling(axes[1][0], data.get("scaling"))
    plot_share(axes[1][1], data.get("share"))
    fig.suptitle("IDUNNO inference benchmark: summary")
    return fig


def plot_recovery(ax: Axes, data: Mapping[str, Any]) -> None:
    title = "Failure → normal operation (each trial; red: target)"
    labels: list[str] = []
    for key, kind in (("worker_fail", "worker"), ("coordinator_fail", "coordinator")):
        sec = data.get(key)
        if not ok(sec):
            continue
        assert sec is not None
        for case in sec["cases"]:
            k = len(labels)
            labels.append(f"{kind}\n{case['signal']}")
            ys = [t["recovered_s"] for t in case["trials"] if t["recovered_s"] is not None]
            ds = [t["detected_s"] for t in case["trials"] if t["detected_s"] is not None]
            ax.scatter([k] * len(ys), ys, color="tab:green", zorder=3)
            ax.scatter([k + 0.15] * len(ds), ds, color="tab:purple", marker="x", zorder=3)
            ax.hlines(case["target_s"], k - 0.3, k + 0.3, color="red")
    if not labels:
        _report.blank_axis(ax, title, hide_axes=True)
        return
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("seconds after the signal (x: detected)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)


def plot_throughput(ax: Axes, sec: Mapping[str, Any] | None) -> None:
    title = "One ResNet18 job vs bare ONNX Runtime"
    if not ok(sec):
        _report.blank_axis(ax, title, hide_axes=True)
        return
    assert sec is not None
    labels, values, colors = [], [], []
    for i, r in enumerate(sec["rounds"], start=1):
        for label, v, color in (
            ("cluster", r["cluster"]["rate"], "tab:blue"),
            ("cluster\nsteady", r["cluster"]["steady_rate"] or 0.0, "lightsteelblue"),
            (f"bare ORT\n{sec['bare_threads']} thr", r["bare"]["rate"], "tab:gray"),
        ):
            labels.append(f"{label}\n#{i}")
            values.append(v)
            colors.append(color)
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("queries (images) per second")
    ax.set_title(title)


def plot_scaling(ax: Axes, sec: Mapping[str, Any] | None) -> None:
    title = "Scaling: one ResNet18 job"
    if not ok(sec):
        _report.blank_axis(ax, title, hide_axes=True)
        return
    assert sec is not None
    ks = [p["workers"] for p in sec["points"]]
    ax.plot(ks, [p["rate"] for p in sec["points"]], "o-", color="tab:blue", label="queries/s")
    ax.set_xlabel(f"worker nodes (machine: {sec['cores']} cores)")
    ax.set_ylabel("queries/s")
    ax.set_xticks(ks)
    ax2 = ax.twinx()
    ax2.plot(
        ks, [p["c2"]["mean_ms"] for p in sec["points"]], "s--", color="tab:red", label="C2 mean ms"
    )
    ax2.plot(
        ks, [p["c2"]["p95_ms"] for p in sec["points"]], "^:", color="tab:red", label="C2 p95 ms"
    )
    ax2.set_ylabel("ms per query")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=7)
    ax2.legend(loc="lower right", fontsize=7)


def plot_share(ax: Axes, sec: Mapping[str, Any] | None) -> None:
    title = "1a: ResNet18's share of worker time"
    if not ok(sec):
        _report.blank_axis(ax, title, hide_axes=True)
        return
    assert sec is not None
    r = MODELS[0]
    bars = [
        ("measured\n(C5)", sec["share"][r]["mean"], "tab:blue"),
        ("expected\n(C2 costs)", sec["expected_from_c2"], "tab:gray"),
        ("expected\n(train costs)", sec["expected_from_train"] or 0.0, "lightgray"),
    ]
    ax.bar(range(3), [b[1] for b in bars], color=[b[2] for b in bars])
    ax.errorbar(
        [0], [sec["share"][r]["mean"]], yerr=[sec["share"][r]["sd"]], color="black", capsize=4
    )
    ax.set_xticks(range(3), [b[0] for b in bars])
    ax.set_ylim(0, 1)
    ax.set_title(title)


# --- main ----------------------------------------------------------------------------------


def save_png(fig: Figure, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    settings, args = parse_args(argv)
    if args.bare is not None:
        print(json.dumps(bare_ort(args.bare[0], args.bare[1], args.threads, args.batch_size)))
        return 0
    _report.stop_on_sigterm()  # unwind through every cluster so the nodes are killed
    t0 = time.monotonic()
    load0 = os.getloadavg()
    with _report.workdir(settings.keep, "idunno-bench-inference-", parent="/tmp") as root:
        h = Harness(root, settings)
        try:
            results, cache = run_sections(h)
        finally:
            h.drop_main()
    steady_data = cache.get("steady")
    if steady_data is not None:
        steady_data = {k: v for k, v in steady_data.items() if k != "_times"}
    data: dict[str, Any] = {
        "machine": _report.machine_info(),
        "git": _report.git_info(),
        "run": _report.run_info(settings, t0, load0),
        "targets": {
            "first_result_p95_s": FIRST_RESULT_TARGET_S,
            "worker_sigkill_p95_s": WORKER_KILL_TARGET_S,
            "coordinator_sigkill_p95_s": COORDINATOR_KILL_TARGET_S,
            "sigstop_margin_s": STOP_MARGIN_S,
            "throughput_ratio_min": THROUGHPUT_TARGET,
            "fairness_ratio_max": FAIRNESS_TARGET,
        },
        "clusters": h.setups,
        "startup_failures": h.startup_failures,
        "steady_run": steady_data,
        **results,
    }
    data["figures"] = [asdict(g) for g in goals(data)]
    markdown = render_markdown(data)
    paths = _report.write_results(
        "inference", data, markdown, render_figure(data, steady_data), settings.out_dir
    )
    summary = settings.out_dir / "inference_summary.png"
    save_png(render_summary(data), summary)
    print(markdown)
    log("wrote " + ", ".join(str(p) for p in [*paths.values(), summary]))
    failed = any(not ok(results[s]) for s in results) or any(g.ok is False for g in goals(data))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
