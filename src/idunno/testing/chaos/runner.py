"""One chaos run: a cluster of network-namespace hosts, digits jobs and file clients running while
a seeded nemesis schedule injects faults; then healing, final observations, and the checker.

    verdict = run_chaos(RunConfig(seed=7, directory=Path("/tmp/chaos-7")))
    # /tmp/chaos-7/history.jsonl and verdict.json; a failing run is replayed with the same seed

The schedule depends only on the seed and the node names, so a run can be replayed; what the
cluster does under it (timings, elections) is real and varies.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from idunno.client import Client, ClientError
from idunno.testing.chaos.checker import Verdict, check
from idunno.testing.chaos.history import (
    ELECTIONS,
    FINAL,
    INFO,
    JOBS,
    MEMBERS,
    NEMESIS,
    OK,
    READ,
    REFERENCE,
    RESULTS,
    SCHEDULE,
    SUBMIT,
    TRUTH,
    HistoryWriter,
    read_history,
)
from idunno.testing.chaos.schedule import (
    KINDS,
    OP_CONT,
    OP_KILL,
    OP_START,
    OP_STOP,
    Action,
    Schedule,
    make_schedule,
    resolve_targets,
    timeline,
)
from idunno.testing.chaos.workload import FileClient, file_names
from idunno.testing.jobs import (
    add_builtin_model,
    add_digits_dataset,
    all_results,
    digits_reference,
    events,
    job_or_none,
)
from idunno.testing.netns import NetnsCluster
from idunno.testing.procs import wait_for

SETTLE_S = 5.0  # clients keep going this long after healing, while the cluster repairs
HEAL_TIMEOUT = 60.0  # after the last fault: every node alive in every view
JOBS_TIMEOUT = 240.0  # after healing: every job done
DATASET = "digits"


@dataclass(frozen=True)
class RunConfig:
    seed: int
    directory: Path
    nodes: int = 7
    duration: float = 30.0  # seconds of faults
    clients: int = 3
    files: int = 4
    jobs: tuple[tuple[str, int], ...] = (("digits_mlp", 4), ("digits_logreg", 4))  # model, batch
    digits_times: int = 8  # each job runs over the digits this many times over
    kinds: tuple[str, ...] = KINDS
    preset: str = "lan"

    def node_names(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    def schedule(self) -> Schedule:
        return make_schedule(self.seed, self.node_names(), self.duration, kinds=self.kinds)


@dataclass
class RunResult:
    config: RunConfig
    verdict: Verdict
    schedule: Schedule
    seconds: float
    ops: int
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.config.seed,
            "ok": self.verdict.ok,
            "faults": self.schedule.counts(),
            "schedule": self.schedule.describe(),
            "ops": self.ops,
            "anomalies": [a.to_json() for a in self.verdict.anomalies],
            "seconds": round(self.seconds, 1),
            "notes": self.notes,
            "directory": str(self.config.directory),
        }


def run_chaos(config: RunConfig, say: Callable[[str], None] = lambda _: None) -> RunResult:
    """Run one seeded schedule against a fresh cluster; write history.jsonl and verdict.json."""
    t0 = time.monotonic()
    config.directory.mkdir(parents=True, exist_ok=True)
    path = config.directory / "history.jsonl"
    path.unlink(missing_ok=True)
    schedule = config.schedule()
    notes: list[str] = []
    with (
        HistoryWriter(path) as history,
        NetnsCluster(config.nodes, config.directory / "cluster", preset=config.preset) as cluster,
    ):
        history.op(NEMESIS, INFO, SCHEDULE, None, schedule.to_json())
        say(f"seed {config.seed}: {schedule.describe()}")
        entry = cluster.client(cluster.names[0], timeout=60)
        total = prepare(entry, config, history)
        stop = threading.Event()
        clients = start_clients(config, cluster, history, stop)
        try:
            Nemesis(cluster, history).run(timeline(schedule))
            heal(cluster)
            stop.wait(SETTLE_S)
        finally:
            stop.set()
            for c in clients:
                c.join(timeout=30)
        errors = [f"{c.process}: {c.error!r}" for c in clients if c.error is not None]
        if errors:
            raise RuntimeError(f"chaos client crashed: {errors[0]}")
        notes += observe(cluster, config, history, total)
    verdict = check(read_history(path))
    (config.directory / "verdict.json").write_text(json.dumps(verdict.to_json(), indent=2))
    ops = sum(c.count for c in clients)
    result = RunResult(config, verdict, schedule, time.monotonic() - t0, ops, notes)
    (config.directory / "summary.json").write_text(json.dumps(result.summary(), indent=2))
    return result


# --- setup ----------------------------------------------------------------------------------------


def prepare(client: Client, config: RunConfig, history: HistoryWriter) -> int:
    """Models, dataset, training, references and the jobs, all before the first fault."""
    for model in sorted({m for m, _ in config.jobs}):
        add_builtin_model(client, model)
    total = add_digits_dataset(client, DATASET, times=config.digits_times)
    client.train([m for m, _ in config.jobs])
    for model in sorted({m for m, _ in config.jobs}):
        ref = digits_reference(client, model, DATASET)
        history.op(FINAL, OK, REFERENCE, model, asdict(ref))
    for i, (model, batch) in enumerate(config.jobs):
        job = client.submit_job(model, DATASET, batch, name=f"job{i}")
        value = {"job": job["id"], "model": model, "dataset": DATASET, "queries": total}
        history.op(JOBS, OK, SUBMIT, None, value)
    return total


def start_clients(
    config: RunConfig, cluster: NetnsCluster, history: HistoryWriter, stop: threading.Event
) -> list[FileClient]:
    names = file_names(config.files)
    clients = [
        FileClient(
            f"c{i}",
            config.seed,
            names,
            lambda: cluster.names,
            lambda node: cluster.client(node, timeout=5.0),
            history,
            config.directory / f"c{i}",
            stop,
        )
        for i in range(config.clients)
    ]
    for c in clients:
        c.start()
    return clients


# --- the nemesis ----------------------------------------------------------------------------------


class Nemesis:
    """Executes a schedule's timeline on the cluster, recording each action as it happens."""

    def __init__(self, cluster: NetnsCluster, history: HistoryWriter) -> None:
        self.cluster = cluster
        self.history = history
        self.resolved: dict[int, tuple[str, ...]] = {}  # fault index -> the nodes it hit
        self.down: set[str] = set()

    def run(self, actions: Sequence[Action]) -> None:
        start = time.monotonic()
        for action in actions:
            delay = start + action.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            targets = self.targets(action)
            self.apply(action, targets)
            value = {"targets": list(targets), "at": action.at, **action.params}
            self.history.op(NEMESIS, INFO, action.op, None, value)

    def targets(self, action: Action) -> tuple[str, ...]:
        if action.op in (OP_KILL, OP_STOP) and action.fault not in self.resolved:
            coordinator, standby = self.roles()
            self.resolved[action.fault] = resolve_targets(
                action.targets, coordinator, standby, self.cluster.names, avoid=self.down
            )
        return self.resolved.get(action.fault, action.targets)

    def roles(self) -> tuple[str | None, str | None]:
        """The coordinator and standby as a node that answers sees them now."""
        for name in self.cluster.names:
            if name in self.down:
                continue
            try:
                control = self.cluster.client(name, timeout=1.0).control()
            except ClientError:
                continue
            return control.get("coordinator"), control.get("standby")
        return None, None

    def apply(self, action: Action, targets: Sequence[str]) -> None:
        c = self.cluster
        if action.op == OP_KILL:
            for n in targets:
                c.kill(n)
                self.down.add(n)
        elif action.op == OP_START:
            for n in targets:
                c.restart(n)
                self.down.discard(n)
        elif action.op == OP_STOP:
            for n in targets:
                c.pause(n)
                self.down.add(n)
        elif action.op == OP_CONT:
            for n in targets:
                c.resume(n)
                self.down.discard(n)
        else:  # network or heal: the action carries the whole network state
            c.set_network(*action.network().arguments())


def heal(cluster: NetnsCluster) -> None:
    """Whatever the schedule left (it should leave nothing): network healed, every node running."""
    cluster.heal()
    for name in cluster.names:
        if not cluster.is_up(name):
            with contextlib.suppress(ProcessLookupError):
                cluster.resume(name)
            if not cluster.is_up(name):
                cluster.restart(name)


# --- after healing --------------------------------------------------------------------------------


def _all_alive(cluster: NetnsCluster) -> bool:
    want = set(cluster.names)
    for name in cluster.names:
        view = cluster.statuses(name)
        if view is None or {m for m, s in view.items() if s == "alive"} != want:
            return False
    return True


def observe(
    cluster: NetnsCluster, config: RunConfig, history: HistoryWriter, total: int
) -> list[str]:
    """Final observations for the checker; returns notes on what did not settle in time."""
    notes: list[str] = []
    try:
        wait_for(lambda: _all_alive(cluster), HEAL_TIMEOUT, "every node alive in every view")
    except AssertionError as exc:
        notes.append(str(exc))
    for name in cluster.names:
        view = cluster.statuses(name) or {}
        history.op(FINAL, OK, MEMBERS, None, {"node": name, "view": view})
    history.op(FINAL, OK, TRUTH, None, {"alive": list(cluster.names), "dead": []})
    notes += final_jobs(cluster, config, history, total)
    final_reads(cluster, config, history)
    for name in cluster.names:
        elected = events(cluster.data_dir(name), "coordinator_elected")
        value = [{"epoch": e.get("epoch"), "coordinator": name, "t": e.get("ts")} for e in elected]
        history.op(FINAL, OK, ELECTIONS, None, {"node": name, "events": value})
    return notes


def final_jobs(
    cluster: NetnsCluster, config: RunConfig, history: HistoryWriter, total: int
) -> list[str]:
    client = cluster.client(cluster.names[0], timeout=10.0)
    notes = []
    for i in range(len(config.jobs)):
        job = f"job{i}"

        def finished(job: str = job) -> dict[str, Any] | None:
            obj = job_or_none(client, job)
            return obj if obj is not None and obj.get("status") == "done" else None

        try:
            wait_for(finished, JOBS_TIMEOUT, f"{job} to finish", every=0.5)
        except AssertionError as exc:
            notes.append(str(exc))
        try:
            obj = client.job(job)
            results = all_results(client, job)
        except ClientError as exc:
            notes.append(f"{job}: results unreadable: {exc}")
            continue
        history.op(FINAL, OK, RESULTS, None, {"job": obj["id"], "results": results})
    return notes


def final_reads(cluster: NetnsCluster, config: RunConfig, history: HistoryWriter) -> None:
    """Every file read through every node, once the store had time to repair."""
    scratch = config.directory / "final"
    scratch.mkdir(exist_ok=True)
    for name in file_names(config.files):
        for node in cluster.names:
            value: dict[str, Any] = {"node": node}
            try:
                meta = cluster.client(node, timeout=10.0).get(name, scratch / "read.bin")
                value.update(version=int(meta["version"]), sha256=meta["sha256"])
            except ClientError as exc:
                if exc.status != 404:
                    value["error"] = str(exc)[:200]
                else:
                    value["missing"] = True
            history.op(FINAL, OK, READ, name, value)
