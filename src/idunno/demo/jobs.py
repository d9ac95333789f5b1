"""The demo's main act: a ResNet18 job, then an AlexNet job, a worker and later the coordinator
SIGKILLed while both run, all shown live."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from idunno.client import Client, ClientError
from idunno.demo import view
from idunno.demo.cluster import PHOTOS, DemoCluster, DemoError
from idunno.demo.events import EventFeed, LogTail
from idunno.demo.figures import Kill, ShareSample
from idunno.node.logs import read_events

RESNET, ALEXNET = "resnet18", "alexnet"  # the job names are the models'
BATCH = 8
SECOND_JOB_AFTER_S = 5.0
WORKER_KILL_AT = 0.40  # of the ResNet18 job done, both jobs running
COORDINATOR_KILL_AT = 0.70
KILL_GAP_S = 5.0  # at least this long between the two kills
JOBS_TIMEOUT_S = 120.0
POLL_S = 0.5  # GET /v1/jobs; members and assignment every other poll
TICK_S = 0.25
PLAIN_EVERY_S = 2.0
POLL_TIMEOUT_S = 3.0
RESULTS_LIMIT = 100_000
Record = Mapping[str, Any]


class Gateway:
    """The node the demo talks to: never one it is about to kill (thread-safe)."""

    def __init__(self, cluster: DemoCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self._lock = threading.Lock()

    def client(self, timeout: float = 10.0) -> Client:
        with self._lock:
            return self.cluster.client(self.name, timeout)

    def move_off(self, victim: str, avoid: Sequence[str]) -> None:
        with self._lock:
            if self.name != victim:
                return
            spare = [n for n in self.cluster.live() if n != victim]
            self.name = next((n for n in spare if n not in avoid), spare[0])


class Poller:
    """Polls jobs (every POLL_S), members and C5 shares (every 2 POLL_S) in a thread."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.jobs: list[dict[str, Any]] = []
        self.members: list[dict[str, Any]] = []
        self.samples: list[ShareSample] = []
        self.note = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def by_name(self) -> dict[str, dict[str, Any]]:
        return {str(j.get("name")): j for j in self.jobs}

    def _loop(self) -> None:
        tick = 0
        while not self._stop.is_set():
            client = self.gateway.client(POLL_TIMEOUT_S)
            try:
                self.jobs = client.jobs()["jobs"]
                if tick % 2 == 0:
                    self.members = client.members()["members"]
                    self._sample(client.assignment())
                self.note = ""
            except ClientError as exc:
                self.note = f"{self.gateway.name}: {exc}"
            tick += 1
            self._stop.wait(POLL_S)

    def _sample(self, assignment: Record) -> None:
        shares = {str(j["name"]): float(j["share"]) for j in assignment.get("jobs", [])}
        self.samples.append(ShareSample(time.time(), shares))


@dataclass
class Chaos:
    """SIGKILLs a worker, then the coordinator, as the ResNet18 job passes 40% and 70%."""

    cluster: DemoCluster
    gateway: Gateway
    feed: EventFeed
    kills: list[Kill] = field(default_factory=list)

    def step(self, jobs: Mapping[str, Record]) -> None:
        r, a = jobs.get(RESNET), jobs.get(ALEXNET)
        if r is None or a is None or a.get("first_result_at") is None:
            return
        if r.get("status") != "running" or a.get("status") != "running":
            return
        done = int(r.get("done") or 0) / max(int(r.get("total") or 1), 1)
        if not self.kills and done >= WORKER_KILL_AT:
            self._kill("worker")
        elif (
            len(self.kills) == 1
            and done >= COORDINATOR_KILL_AT
            and time.time() - self.kills[0].at >= KILL_GAP_S
        ):
            self._kill("coordinator")

    def _kill(self, role: str) -> None:
        try:
            ctl = self.gateway.client(POLL_TIMEOUT_S).control()
        except ClientError:
            return  # try again on the next tick
        coordinator, standby = ctl.get("coordinator"), ctl.get("standby")
        if not coordinator:
            return
        coordinator = str(coordinator)
        if role == "worker":
            busy = (coordinator, standby, self.gateway.name)
            spare = [n for n in self.cluster.live() if n not in busy]
            if not spare:
                return
            victim = spare[-1]
        else:
            victim = coordinator
            self.gateway.move_off(victim, [str(standby)])
        pid, at = self.cluster.kill(victim)
        self.kills.append(Kill(role, victim, pid, at, int(ctl["epoch"]), coordinator))
        self.feed.note(at, f"SIGKILL {victim} (the {role}, pid {pid})")


@dataclass
class JobsRun:
    """What the jobs phase leaves for the report."""

    jobs: dict[str, dict[str, Any]]
    rows: dict[str, list[dict[str, Any]]]
    stats: dict[str, dict[str, Any]]
    samples: list[ShareSample]
    kills: list[Kill]
    events: list[dict[str, Any]]


class JobsPhase:
    def __init__(self, cluster: DemoCluster, gateway: Gateway, console: Console, t0: float):
        self.cluster = cluster
        self.gateway = gateway
        self.console = console
        self.t0 = t0
        self.feed = EventFeed(t0)
        self.tail = LogTail([Path(n.data_dir) for n in cluster.nodes], t0)
        self.poller = Poller(gateway)
        self.chaos = Chaos(cluster, gateway, self.feed)
        self.phase = ""

    def run(self) -> JobsRun:
        client = self.gateway.client()
        client.submit_job(RESNET, PHOTOS, BATCH, name=RESNET)
        submitted = time.monotonic()
        self.phase = f"{RESNET} submitted"
        self.poller.start()
        try:
            with self._display() as show:
                self._loop(client, submitted, show)
        finally:
            self.poller.stop()
        return self._collect()

    def _loop(self, client: Client, submitted: float, show: Callable[[bool], None]) -> None:
        second = False
        while True:
            if not second and time.monotonic() - submitted >= SECOND_JOB_AFTER_S:
                client.submit_job(ALEXNET, PHOTOS, BATCH, name=ALEXNET)
                second, self.phase = True, "both jobs submitted"
            self.feed.add(self.tail.poll())
            jobs = self.poller.by_name()
            self.chaos.step(jobs)
            show(False)
            if second and _all_done(jobs, (RESNET, ALEXNET)):
                self.phase = "both jobs done"
                show(True)
                return
            if time.monotonic() - submitted > JOBS_TIMEOUT_S:
                raise DemoError(f"the jobs did not finish within {JOBS_TIMEOUT_S:g} s")
            time.sleep(TICK_S)

    def frame(self) -> view.Frame:
        return view.Frame(
            elapsed=time.time() - self.t0,
            jobs=view.job_rows(self.poller.jobs),
            members=view.member_roles(self.poller.members),
            events=self.feed.last(view.EVENT_LINES),
            note=self.poller.note,
            phase=self.phase,
        )

    @contextlib.contextmanager
    def _display(self) -> Iterator[Callable[[bool], None]]:
        if self.console.is_terminal:
            live = Live(
                console=self.console,
                refresh_per_second=4,
                get_renderable=lambda: view.render(self.frame()),
            )
            with live:
                yield lambda final: live.refresh() if final else None  # it refreshes itself
            return
        last = [0.0]

        def show(final: bool) -> None:
            for line in self.feed.take_fresh():
                print(f"  event {line}", flush=True)
            due = time.monotonic() - last[0] >= PLAIN_EVERY_S
            if self.poller.jobs and (final or due):
                last[0] = time.monotonic()
                print("  " + view.plain(self.frame()), flush=True)

        yield show

    def _collect(self) -> JobsRun:
        client = self.gateway.client(timeout=30.0)
        jobs = {str(j["name"]): j for j in client.jobs()["jobs"]}
        names = (RESNET, ALEXNET)
        events = [
            e for n in self.cluster.nodes for e in read_events(Path(n.data_dir), None, self.t0)
        ]
        return JobsRun(
            jobs=jobs,
            rows={n: client.job_results(n, limit=RESULTS_LIMIT)["results"] for n in names},
            stats={n: client.job_stats(n) for n in names},
            samples=list(self.poller.samples),
            kills=list(self.chaos.kills),
            events=sorted(events, key=lambda e: float(e.get("ts", 0.0))),
        )


def _all_done(jobs: Mapping[str, Record], names: Sequence[str]) -> bool:
    return all(n in jobs and jobs[n].get("status") in ("done", "cancelled") for n in names)
