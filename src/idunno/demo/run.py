"""`idunno demo`: the whole system in under three minutes (see the package docstring)."""

from __future__ import annotations

import contextlib
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from rich.console import Console

from idunno.client import Client
from idunno.demo import cluster as dc
from idunno.demo import report
from idunno.demo.cluster import DemoCluster
from idunno.demo.figures import marked_failed, top1_accuracy
from idunno.demo.jobs import ALEXNET, RESNET, RESULTS_LIMIT, Gateway, JobsPhase, JobsRun
from idunno.localcluster import DEFAULT_DIR
from idunno.node.logs import read_events
from idunno.transport import tokens

NODES = 6
BASE_PORT = 7100
PHOTOS = 2000
DIGITS_BATCH = 64
DIGITS_TIMEOUT_S = 60.0


def say(text: str) -> None:
    print(text, flush=True)


def run_demo(
    directory: Path | None = None,
    keep: bool = False,
    base_port: int = BASE_PORT,
    photos: int = PHOTOS,
) -> int:
    """Run the demo on a fresh local cluster in `directory`; stop it at the end (also on
    errors, Ctrl-C and SIGTERM) unless `keep`. 0 when every step completed."""
    t0 = time.time()
    directory = (directory or DEFAULT_DIR).resolve()
    dc.check_free(directory, base_port, NODES)
    say(
        f"IDUNNO demo: {NODES} nodes share a {RESNET} and an {ALEXNET} job fairly; midway a "
        "worker and then the coordinator are SIGKILLed\n\nsetup"
    )
    with _sigterm_as_interrupt():
        with dc.timed(say, f"cluster: {NODES} nodes started, all see each other") as out:
            cluster = dc.start(directory, base_port, NODES)
            out["detail"] = f"(127.0.0.1:{base_port}..{base_port + NODES - 1}, {directory})"
        try:
            return _run(cluster, photos, t0)
        finally:
            _finish(cluster, keep)


def _run(cluster: DemoCluster, photos: int, t0: float) -> int:
    gateway = _setup(cluster, photos, t0)
    t_setup = time.time()
    say(f"\njobs (talking to {gateway.name}; it is never one of the nodes killed)")
    run = JobsPhase(cluster, gateway, Console(), t0).run()
    t_jobs = time.time()
    digits = _digits_job(gateway.client())
    t_digits = time.time()
    outcome = report.Outcome(
        t0=t0,
        names=(RESNET, ALEXNET),
        jobs=run.jobs,
        rows=run.rows,
        stats=run.stats,
        samples=run.samples,
        kills=run.kills,
        events=run.events,
        digits=digits,
        digits_model=dc.DIGITS_MODEL,
        durations=_durations(t0, t_setup, t_jobs, t_digits),
        dashboard=dashboard_url(cluster.node(gateway.name).address, cluster.key),
    )
    say("")
    for line in report.lines(outcome):
        say(line)
    return 0 if _complete(run, digits) else 1


def _setup(cluster: DemoCluster, photos: int, t0: float) -> Gateway:
    client = cluster.client(cluster.live()[0], timeout=120.0)
    dc.add_models(client, say)
    dc.add_datasets(client, photos, say)
    dc.wait_coordinator(client)
    dc.train(client, say)
    _false_failures(cluster, client, t0)
    ctl = dc.wait_coordinator(client)
    busy = {ctl.get("coordinator"), ctl.get("standby")}
    name = next(n for n in reversed(cluster.live()) if n not in busy)
    say(f"  roles: coordinator {ctl['coordinator']}, standby {ctl.get('standby')}")
    return Gateway(cluster, name)


def _false_failures(cluster: DemoCluster, client: Client, t0: float) -> None:
    """Say so if the failure detector marked nodes failed while nothing was killed yet."""
    events = [e for n in cluster.nodes for e in read_events(Path(n.data_dir), None, t0)]
    marked = marked_failed(sorted(events, key=lambda e: float(e.get("ts", 0.0))))
    if not marked:
        return
    alive = [m["id"] for m in client.members()["members"] if m.get("status") == "alive"]
    back = "all are alive again" if set(marked) <= set(alive) else f"alive now: {', '.join(alive)}"
    say(
        f"  note: during setup the failure detector marked {', '.join(marked)} failed, though "
        f"no node was killed (false positives; {back})"
    )


def _digits_job(client: Client) -> tuple[int, int] | None:
    from idunno.inference.digits import digits_dataset

    name = dc.DIGITS
    t = time.monotonic()
    job = client.submit_job(dc.DIGITS_MODEL, dc.DIGITS, DIGITS_BATCH, name=name)
    while job.get("status") == "running" and time.monotonic() - t < DIGITS_TIMEOUT_S:
        time.sleep(0.2)
        job = client.job(name)
    if job.get("status") != "done":
        say(f"\ndigits job {job.get('status')} after {time.monotonic() - t:.0f} s")
        return None
    rows = client.job_results(name, limit=RESULTS_LIMIT)["results"]
    _, labels = digits_dataset()
    say(
        f"\ndigits: {dc.DIGITS_MODEL} on {job.get('total')} digits (batch {DIGITS_BATCH}) "
        f"done in {time.monotonic() - t:.1f} s"
    )
    return top1_accuracy(rows, [int(y) for y in labels])


def _durations(t0: float, t_setup: float, t_jobs: float, t_digits: float) -> dict[str, float]:
    return {
        "total": time.time() - t0,
        "setup": t_setup - t0,
        "the two jobs": t_jobs - t_setup,
        "digits": t_digits - t_jobs,
    }


def _complete(run: JobsRun, digits: tuple[int, int] | None) -> bool:
    done = all(j.get("status") == "done" for j in run.jobs.values())
    return done and len(run.kills) == 2 and digits is not None


def dashboard_url(address: str, key: bytes) -> str | None:
    """http://ADDRESS/ if the node serves an HTML page at / (the dashboard), else None."""
    url = f"http://{address}/"
    req = urllib.request.Request(url)
    req.add_header("Authorization", f"Bearer {tokens.mint(key, ttl=60)}")
    try:
        with urllib.request.urlopen(req, timeout=2.0) as resp:
            html = "text/html" in resp.headers.get("Content-Type", "")
            return url if resp.status == 200 and html else None
    except urllib.error.HTTPError as exc:
        exc.close()  # its socket
        return None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _finish(cluster: DemoCluster, keep: bool) -> None:
    if keep:
        say(
            f"\nthe cluster is still up ({cluster.directory / 'cluster.json'}; "
            f"{', '.join(cluster.killed) or 'no node'} killed): explore it with "
            "`idunno members`, `idunno job list`, `idunno job results resnet18 --limit 5`, "
            "`idunno job assignment`; stop it with `idunno down`"
        )
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut this short
    t = time.monotonic()
    stopped = cluster.stop()
    say(
        f"\ncluster stopped ({len(stopped)} nodes left, {len(cluster.killed)} had been killed; "
        f"{time.monotonic() - t:.1f} s)"
    )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the demo like Ctrl-C does (the cluster is stopped on the way out)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
