"""Membership benchmark (not a timed test): the course's MP2 measurements and more.

    .venv/bin/python bench/membership.py             # full run (about 7 minutes on 2 cores)
    .venv/bin/python bench/membership.py --quick     # smoke run (~2 min): 3 trials, short
                                                     # windows, 2 x 120 s FP runs, sim N=200
    .venv/bin/python bench/membership.py --only detection,bandwidth --trials 5

Sections (each says whether its numbers come from real processes or simulated protocol time):
  detection        real `idunno node` processes on loopback, N=6 and N=10, SIGKILL and SIGSTOP;
                   detection = last survivor's `member_changed ... new=failed` log record minus
                   the wall time taken just before os.kill (read from the node logs, not polled)
  false_positives  SimCluster (simulated protocol time) at 3/10/30% datagram loss for N=2/6/10,
                   plus a short real-process check at 10% loss via the hidden --fault-drop flag
  bandwidth        real processes: idle bytes/s, CPU and RSS per node (N=6, N=10); cluster-wide
                   bytes on join, leave and failure (N=6)
  sim1000          SimCluster N=1000: time for an update (leave, crash, join) to reach every node,
                   per-node packets/s and bytes/s, false positives

Writes bench/results/membership.json, membership.md and membership.png; prints the markdown.
Every process is started through ProcCluster (a context manager) and killed on exit or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import _report
from _report import log
from idunno.client import ClientError
from idunno.localcluster import ClusterError, is_running
from idunno.membership.config import preset
from idunno.membership.core import MemberChanged
from idunno.membership.messages import Status
from idunno.node.logs import read_events
from idunno.testing.procs import ProcCluster, WaitTimeoutError, wait_for
from idunno.testing.sim import NetConfig, SimCluster

PRESET = "lan"
SECTIONS = ("detection", "false_positives", "bandwidth", "sim1000")

# Figures to reach (the targets).
DETECT_TARGET_S = 2.5
CPU_TARGET_PCT = 1.0
RSS_TARGET_MB = 60.0
BG_TARGET_BPS = 2000.0  # "2 KB/s", read strictly as 2000 bytes/s, sent + received
SPREAD_TARGET_S = 10.0

DETECT_SIZES = (6, 10)
SIGNALS = ("SIGKILL", "SIGSTOP")
FP_SIZES = (2, 6, 10)
FP_LOSSES = (0.03, 0.10, 0.30)
STARTUP_ATTEMPTS = 3
DETECT_TIMEOUT_S = 20.0
RECOVER_TIMEOUT_S = 75.0  # > TCP TIME_WAIT (60 s): a restart may wait out a taken port
SIM_SEED = 1
SIM_WARMUP_S = 12.0  # lets the bootstrap's 1000 queued Alive rumours drain
SIM_EVENT_WINDOW_S = 10.0  # protocol time each event runs (load is averaged over it)
SIM_EVENT_TIMEOUT_S = 30.0


# --- settings and harness ------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    quick: bool
    trials: int
    sections: tuple[str, ...]
    fp_seeds: int
    fp_duration_s: float  # simulated protocol time per seed
    real_fp_duration_s: float
    settle_s: float
    idle_window_s: float
    event_window_s: float
    sim_n: int
    sim_steady_s: float
    out_dir: Path
    keep: bool


def parse_args(argv: Sequence[str] | None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    _report.add_run_args(
        p,
        SECTIONS,
        quick_help="smoke run: 3 trials, short windows",
        trials_help="detection trials per case (default 10, quick 3)",
    )
    p.add_argument("--fp-seeds", type=int, help="simulated seeds per (N, loss) cell")
    p.add_argument("--sim-n", type=int, help="size of the large simulation (1000, quick 200)")
    _report.add_output_args(p)
    a = p.parse_args(argv)
    sections = _report.parse_sections(p, a.only, SECTIONS)
    q = a.quick
    trials = _report.parse_trials(p, a.trials, 3 if q else 10)
    return Settings(
        quick=q,
        trials=trials,
        sections=sections,
        fp_seeds=a.fp_seeds or (2 if q else 10),
        fp_duration_s=120.0 if q else 600.0,
        real_fp_duration_s=20.0 if q else 60.0,
        settle_s=0.5 if q else 1.0,
        idle_window_s=10.0 if q else 30.0,
        event_window_s=6.0 if q else 10.0,
        sim_n=a.sim_n or (200 if q else 1000),
        sim_steady_s=5.0 if q else 10.0,
        out_dir=a.out,
        keep=a.keep,
    )


@dataclass
class Harness:
    root: Path
    settings: Settings
    startup_failures: list[dict[str, Any]] = field(default_factory=list)

    def cluster(
        self, stack: ExitStack, n: int, label: str, extra: Sequence[str] = ()
    ) -> ProcCluster:
        """Start n real nodes (retrying a start that does not converge); closed with `stack`."""
        last = ""
        for attempt in range(1, STARTUP_ATTEMPTS + 1):
            directory = self.root / f"{label}-try{attempt}"
            try:
                return stack.enter_context(ProcCluster(n, directory, preset=PRESET, extra=extra))
            except ClusterError as exc:
                last = str(exc)
                self.startup_failures.append(
                    {"cluster": label, "n": n, "attempt": attempt, "error": last}
                )
                log(f"  cluster {label} did not start (attempt {attempt}): {last}")
        raise ClusterError(f"cluster {label} did not start in {STARTUP_ATTEMPTS} attempts: {last}")


# --- real-process helpers ------------------------------------------------------------------


def all_alive(cluster: ProcCluster, names: Sequence[str]) -> bool:
    """Every node in `names` answers and sees every node in `names` alive."""
    for observer in names:
        view = cluster.statuses(observer)
        if view is None or any(view.get(m) != "alive" for m in names):
            return False
    return True


def wait_all_alive(cluster: ProcCluster, names: Sequence[str], timeout: float) -> float:
    t0 = time.monotonic()
    wait_for(lambda: all_alive(cluster, names), timeout, "every node to see all alive", 0.1)
    return time.monotonic() - t0


def sees(cluster: ProcCluster, observers: Sequence[str], member: str, status: str) -> bool:
    return all((cluster.statuses(o) or {}).get(member) == status for o in observers)


def data_dir(cluster: ProcCluster, name: str) -> Path:
    return Path(cluster.nodes[name].data_dir)


def changes_since(cluster: ProcCluster, name: str, since: float) -> list[dict[str, Any]]:
    return read_events(data_dir(cluster, name), "member_changed", since)


def first_marks(
    cluster: ProcCluster, observers: Sequence[str], member: str, status: str, since: float
) -> dict[str, float | None]:
    """Per observer, the wall time of its first log record marking `member` as `status`."""
    out: dict[str, float | None] = {}
    for o in observers:
        times = [
            float(e["ts"])
            for e in changes_since(cluster, o, since)
            if e.get("member") == member and e.get("new") == status
        ]
        out[o] = min(times) if times else None
    return out


def exited(pid: int) -> bool:
    """True once our child `pid` has exited (reaping it). Not `is_running`: a process spawned
    a moment ago can show an empty /proc/PID/cmdline and look gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done != 0


def reap(pid: int, timeout: float = 5.0) -> None:
    """Collect our child's exit status once it has exited (no zombie left behind)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                time.sleep(0.05)
                continue
        return


# --- detection (real processes) -----------------------------------------------------------


@dataclass
class Trial:
    victim: str
    detected: bool
    detection_s: float | None  # last survivor's failed mark minus kill time
    first_suspect_s: float | None
    first_failed_s: float | None
    per_survivor_s: dict[str, float | None]
    other_failures: list[dict[str, Any]]  # non-victims marked failed during the trial
    recovery_s: float | None
    recovery_notes: list[str]
    recovery_error: str | None


def _offsets(marks: dict[str, float | None], t0: float) -> list[float]:
    return [t - t0 for t in marks.values() if t is not None]


def inject(cluster: ProcCluster, victim: str, sig: str) -> None:
    if sig == "SIGKILL":
        cluster.kill(victim)
    else:
        cluster.pause(victim)


class RecoveryError(Exception):
    """The cluster did not get back to all-alive after a trial (the message says what it saw)."""


def stderr_tail(cluster: ProcCluster, name: str) -> str:
    try:
        lines = (data_dir(cluster, name) / "stderr.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line.strip()), "")[:300]


def diagnose(cluster: ProcCluster, victim: str) -> str:
    views = []
    for o in cluster.nodes:
        view = cluster.statuses(o)
        odd = "no answer" if view is None else {m: s for m, s in view.items() if s != "alive"}
        if odd:
            views.append(f"{o}: {odd}")
    running = is_running(cluster.nodes[victim])
    return (
        f"not all alive after {RECOVER_TIMEOUT_S:g} s; {'; '.join(views) or 'views all alive'}; "
        f"{victim} running={running}; its stderr: {stderr_tail(cluster, victim)}"
    )


def recover(cluster: ProcCluster, victim: str, sig: str) -> tuple[float, list[str]]:
    """Restart (SIGKILL) or continue (SIGSTOP) the victim; wait until every node sees every node
    alive. A restarted process that exits at once (its port taken meanwhile by someone's
    ephemeral port, say) is started again; each such retry is returned as a note."""
    t0 = time.monotonic()
    notes: list[str] = []
    if sig == "SIGKILL":
        cluster.restart(victim)
    else:
        cluster.resume(victim)
    names = list(cluster.nodes)
    while not all_alive(cluster, names):
        if time.monotonic() - t0 > RECOVER_TIMEOUT_S:
            raise RecoveryError(diagnose(cluster, victim))
        if sig == "SIGKILL" and exited(cluster.nodes[victim].pid):
            notes.append(f"restarted {victim} exited: {stderr_tail(cluster, victim)}")
            log(f"  {notes[-1]}; starting it again")
            time.sleep(1.0)
            cluster.restart(victim)
        time.sleep(0.1)
    return time.monotonic() - t0, notes


def other_failures(
    cluster: ProcCluster, survivors: Sequence[str], victim: str, since: float
) -> list[dict[str, Any]]:
    return [
        {"observer": o, "member": e["member"], "ts": e["ts"]}
        for o in survivors
        for e in changes_since(cluster, o, since)
        if e.get("new") == "failed" and e.get("member") != victim
    ]


def run_trial(cluster: ProcCluster, victim: str, sig: str) -> Trial:
    survivors = [n for n in cluster.nodes if n != victim]
    t0 = time.time()  # wall clock, like the nodes' log `ts`
    inject(cluster, victim, sig)

    def all_marked() -> dict[str, float | None] | None:
        marks = first_marks(cluster, survivors, victim, "failed", t0)
        return marks if all(v is not None for v in marks.values()) else None

    try:
        failed = wait_for(all_marked, DETECT_TIMEOUT_S, f"{victim} failed everywhere", 0.1)
    except WaitTimeoutError:
        failed = first_marks(cluster, survivors, victim, "failed", t0)
    suspects = _offsets(first_marks(cluster, survivors, victim, "suspect", t0), t0)
    failed_at = _offsets(failed, t0)
    detected = len(failed_at) == len(survivors)
    recovery: float | None = None
    notes: list[str] = []
    error: str | None = None
    try:
        recovery, notes = recover(cluster, victim, sig)
    except RecoveryError as exc:
        error = str(exc)
    return Trial(
        victim=victim,
        detected=detected,
        detection_s=max(failed_at) if detected else None,
        first_suspect_s=min(suspects) if suspects else None,
        first_failed_s=min(failed_at) if failed_at else None,
        per_survivor_s={o: (None if t is None else t - t0) for o, t in failed.items()},
        other_failures=other_failures(cluster, survivors, victim, t0),
        recovery_s=recovery,
        recovery_notes=notes,
        recovery_error=error,
    )


def phase_means(trials: Sequence[Trial]) -> dict[str, float | None]:
    """Mean of each phase: kill -> first suspicion -> first failed mark -> last failed mark."""
    full = [
        t
        for t in trials
        if t.detected and t.first_suspect_s is not None and t.first_failed_s is not None
    ]
    if not full:
        return {"to_first_suspect": None, "suspicion": None, "dissemination": None}
    k = len(full)
    return {
        "to_first_suspect": sum(t.first_suspect_s or 0.0 for t in full) / k,
        "suspicion": sum((t.first_failed_s or 0.0) - (t.first_suspect_s or 0.0) for t in full) / k,
        "dissemination": sum((t.detection_s or 0.0) - (t.first_failed_s or 0.0) for t in full) / k,
    }


def detection_case(h: Harness, n: int, sig: str) -> dict[str, Any]:
    """`trials` kills of rotating victims on a fresh cluster of n nodes."""
    settings = h.settings
    trials: list[Trial] = []
    with ExitStack() as stack:
        cluster = h.cluster(stack, n, f"detect-n{n}-{sig}")
        names = list(cluster.nodes)
        for i in range(settings.trials):
            victim = names[i % n]
            wait_all_alive(cluster, names, RECOVER_TIMEOUT_S)
            time.sleep(settings.settle_s)
            trial = run_trial(cluster, victim, sig)
            trials.append(trial)
            shown = "missed" if trial.detection_s is None else f"{trial.detection_s:.3f} s"
            log(f"  N={n} {sig} {i + 1}/{settings.trials}: {victim} failed everywhere in {shown}")
            if trial.recovery_error is not None:
                log(f"  N={n} {sig}: stopping this case: {trial.recovery_error}")
                break
    times = [t.detection_s for t in trials if t.detection_s is not None]
    summary = _report.summarize(times)
    p99 = summary["p99"]
    return {
        "n": n,
        "signal": sig,
        "trials": [asdict(t) for t in trials],
        "planned_trials": settings.trials,
        "missed": sum(not t.detected for t in trials),
        "aborted": next((t.recovery_error for t in trials if t.recovery_error), None),
        "restart_retries": sum(len(t.recovery_notes) for t in trials),
        "summary": summary,
        "phases_mean_s": phase_means(trials),
        "other_failures": sum(len(t.other_failures) for t in trials),
        "pass": bool(times) and len(times) == len(trials) and (p99 or 0.0) <= DETECT_TARGET_S,
    }


def run_detection(h: Harness) -> dict[str, Any]:
    cases = [detection_case(h, n, sig) for n in DETECT_SIZES for sig in SIGNALS]
    return {"source": "real processes on loopback", "preset": PRESET, "cases": cases}


# --- false positives (simulated protocol time, plus a short real check) --------------------


def failed_spans(changes: Sequence[tuple[float, str, MemberChanged]], end: float) -> list[float]:
    """How long each (observer, member) failed mark lasted before the member was seen again."""
    start: dict[tuple[str, str], float] = {}
    spans: list[float] = []
    for t, observer, c in changes:
        key = (observer, c.name)
        if c.new == Status.FAILED:
            start.setdefault(key, t)
        elif key in start:
            spans.append(t - start.pop(key))
    return spans + [end - t for t in start.values()]


def fp_run(n: int, loss: float, seed: int, duration: float) -> dict[str, Any]:
    cluster = SimCluster(n, preset(PRESET), seed=seed, net=NetConfig(drop=loss))
    t0 = time.monotonic()
    cluster.run_for(duration)
    failed = [c for _, _, c in cluster.changes if c.new == Status.FAILED]
    suspect = [c for _, _, c in cluster.changes if c.new == Status.SUSPECT]
    live_at_end = cluster.live_names()
    wrong_at_end = sum(
        1 for o in live_at_end for m in live_at_end if cluster.status(o, m) != Status.ALIVE
    )
    return {
        "seed": seed,
        "false_failures": len({(c.name, c.incarnation) for c in failed}),
        "failed_marks": len(failed),
        "suspicions": len({(c.name, c.incarnation) for c in suspect}),
        "suspect_marks": len(suspect),
        "wrong_views_at_end": wrong_at_end,  # suspect or failed entries in the final snapshot
        "longest_false_failed_s": max(failed_spans(cluster.changes, cluster.now), default=0.0),
        "wall_s": time.monotonic() - t0,
    }


def fp_cell(n: int, loss: float, settings: Settings) -> dict[str, Any]:
    runs = [fp_run(n, loss, seed, settings.fp_duration_s) for seed in range(settings.fp_seeds)]
    node_hours = n * settings.fp_duration_s * len(runs) / 3600.0
    false_failures = sum(r["false_failures"] for r in runs)
    suspicions = sum(r["suspicions"] for r in runs)
    log(
        f"  sim N={n} loss={loss:.0%}: {false_failures} false failures, {suspicions} suspicions "
        f"in {len(runs)} x {settings.fp_duration_s:g} s"
    )
    return {
        "n": n,
        "loss": loss,
        "seeds": len(runs),
        "duration_s_per_seed": settings.fp_duration_s,
        "node_hours": node_hours,
        "false_failures": false_failures,
        "failed_marks": sum(r["failed_marks"] for r in runs),
        "fp_per_node_hour": false_failures / node_hours,
        "runs_without_fp": sum(r["false_failures"] == 0 for r in runs),
        "suspicions": suspicions,
        "suspicions_per_node_hour": suspicions / node_hours,
        "wrong_views_at_end": sum(r["wrong_views_at_end"] for r in runs),
        "longest_false_failed_s": max(r["longest_false_failed_s"] for r in runs),
        "runs": runs,
    }


def real_fp_check(h: Harness, n: int = 10, loss: float = 0.10) -> dict[str, Any]:
    """Real processes with the transport's fault hook dropping `loss` of outgoing datagrams."""
    duration = h.settings.real_fp_duration_s
    with ExitStack() as stack:
        cluster = h.cluster(stack, n, "fp-real", extra=["--fault-drop", str(loss)])
        names = list(cluster.nodes)
        time.sleep(2.0)
        before = traffic_all(cluster, names)
        t0 = time.time()
        log(f"  real N={n} at {loss:.0%} loss for {duration:g} s")
        time.sleep(duration)
        after = traffic_all(cluster, names)
        events = [e for o in names for e in changes_since(cluster, o, t0)]
        refuted = sum(len(read_events(data_dir(cluster, o), "refuted", t0)) for o in names)
        healthy = all_alive(cluster, names)
    dropped = _delta_sum(before, after, ("fault_dropped",))
    sent = _delta_sum(before, after, ("udp_sent_packets",))
    failed = [e for e in events if e.get("new") == "failed"]
    return {
        "source": "real processes on loopback, --fault-drop",
        "n": n,
        "loss": loss,
        "duration_s": duration,
        "measured_drop_fraction": dropped / (dropped + sent) if dropped + sent else None,
        "false_failures": len({(e["member"], e.get("incarnation")) for e in failed}),
        "failed_marks": len(failed),
        "suspect_marks": sum(e.get("new") == "suspect" for e in events),
        "refutations": refuted,
        "all_alive_at_end": healthy,
    }


def run_false_positives(h: Harness) -> dict[str, Any]:
    cells = [fp_cell(n, loss, h.settings) for n in FP_SIZES for loss in FP_LOSSES]
    return {
        "source": "simulated protocol time (SimCluster, seeded lossy network)",
        "preset": PRESET,
        "cells": cells,
        "real_check": real_fp_check(h),
    }


# --- bandwidth, CPU and memory (real processes) -------------------------------------------

SENT_KEYS = ("udp_sent_bytes", "tcp_sent_bytes")
IP_UDP_HEADER = 28  # IPv4 (20) + UDP (8) bytes per datagram, not in the payload counters
RECV_KEYS = ("udp_recv_bytes", "tcp_recv_bytes")


def traffic_all(cluster: ProcCluster, names: Sequence[str]) -> dict[str, dict[str, int]]:
    """/v1/self traffic counters of every node that answers."""
    out: dict[str, dict[str, int]] = {}
    for name in names:
        with contextlib.suppress(ClientError):
            out[name] = dict(cluster.client(name).self_info()["traffic"])
    return out


def _delta(before: dict[str, int] | None, after: dict[str, int], keys: Sequence[str]) -> int:
    return sum(after.get(k, 0) - (before or {}).get(k, 0) for k in keys)


def _delta_sum(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], keys: Sequence[str]
) -> int:
    """Sum of counter deltas over nodes present at the end (absent at the start: from zero)."""
    return sum(_delta(before.get(name), t, keys) for name, t in after.items())


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, p in procs.items():
        t = p.cpu_times()
        out[name] = t.user + t.system
    return out


IDLE_METRICS = (
    "sent_Bps",
    "recv_Bps",
    "total_Bps",
    "udp_sent_Bps",
    "udp_wire_Bps",
    "tcp_sent_Bps",
    "sent_packets_ps",
    "cpu_pct",
    "rss_mb",
)


def _node_rates(
    before: dict[str, int] | None, after: dict[str, int], cpu_s: float, rss: int, dt: float
) -> dict[str, float]:
    sent = _delta(before, after, SENT_KEYS) / dt
    recv = _delta(before, after, RECV_KEYS) / dt
    return {
        "sent_Bps": sent,
        "recv_Bps": recv,
        "total_Bps": sent + recv,
        "udp_sent_Bps": _delta(before, after, ("udp_sent_bytes",)) / dt,
        "udp_wire_Bps": _delta(before, after, ("udp_sent_bytes",)) / dt
        + IP_UDP_HEADER * _delta(before, after, ("udp_sent_packets",)) / dt,
        "tcp_sent_Bps": _delta(before, after, ("tcp_sent_bytes",)) / dt,
        "sent_packets_ps": _delta(before, after, ("udp_sent_packets",)) / dt,
        "cpu_pct": 100.0 * cpu_s / dt,
        "rss_mb": rss / 1e6,
    }


def _mean_max(xs: Sequence[float]) -> dict[str, float]:
    return {"mean": sum(xs) / len(xs), "max": max(xs)}


def idle_window(cluster: ProcCluster, names: Sequence[str], seconds: float) -> dict[str, Any]:
    """Per-node traffic, CPU (% of one core) and peak RSS of an idle cluster over `seconds`.

    Counters are read over HTTP before the CPU clock starts and after it stops, so serving
    those requests is not charged to the window."""
    procs = {n: psutil.Process(cluster.nodes[n].pid) for n in names}
    before = traffic_all(cluster, names)
    cpu0, t0 = cpu_seconds(procs), time.monotonic()
    rss = dict.fromkeys(names, 0)
    while (left := seconds - (time.monotonic() - t0)) > 0:
        time.sleep(min(1.0, left))
        for n, p in procs.items():
            rss[n] = max(rss[n], p.memory_info().rss)
    cpu1, dt = cpu_seconds(procs), time.monotonic() - t0
    after = traffic_all(cluster, names)
    nodes = {
        n: _node_rates(before.get(n), after[n], cpu1[n] - cpu0[n], rss[n], dt)
        for n in names
        if n in after
    }
    return {
        "n": len(names),
        "window_s": dt,
        "nodes": nodes,
        "summary": {k: _mean_max([v[k] for v in nodes.values()]) for k in IDLE_METRICS},
    }


@dataclass(frozen=True)
class Event:
    """An action and the log mark that says it converged: every observer marked `member` as
    `status` (read from the node logs afterwards, so nothing is polled during the window)."""

    name: str
    action: Callable[[], object]
    observers: tuple[str, ...]
    member: str
    status: str


def event_window(
    cluster: ProcCluster, event: Event, window: float, idle_sent_bps: float
) -> dict[str, Any]:
    """Cluster-wide membership bytes over `window` seconds from the event's action."""
    names = list(cluster.nodes)
    before = traffic_all(cluster, names)
    t0, wall0 = time.monotonic(), time.time()
    event.action()
    time.sleep(max(0.0, window - (time.monotonic() - t0)))
    dt = time.monotonic() - t0
    after = traffic_all(cluster, names)
    marks = first_marks(cluster, event.observers, event.member, event.status, wall0)
    done = [t for t in marks.values() if t is not None]
    steady = [n for n in after if n in before]
    sent, recv = _delta_sum(before, after, SENT_KEYS), _delta_sum(before, after, RECV_KEYS)
    expected = idle_sent_bps * dt * len(steady)
    return {
        "window_s": dt,
        "converged_s": max(done) - wall0 if len(done) == len(marks) else None,
        "nodes_before": len(before),
        "nodes_after": len(after),
        "sent_bytes": sent,
        "recv_bytes": recv,
        "idle_expected_sent_bytes": expected,
        "extra_sent_bytes": sent - expected,
    }


def stop_gracefully(cluster: ProcCluster, name: str) -> None:
    cluster.signal(name, signal.SIGTERM)


def events_n6(h: Harness) -> dict[str, Any]:
    """N=6 idle window, then a 7th node joining, leaving (SIGTERM) and failing (SIGKILL)."""
    s = h.settings
    with ExitStack() as stack:
        cluster = h.cluster(stack, 7, "bw-n6")
        names = list(cluster.nodes)
        base, extra = names[:6], names[6]
        stop_gracefully(cluster, extra)  # the 7th waits outside: the cluster is N=6
        reap(cluster.nodes[extra].pid)
        wait_for(lambda: sees(cluster, base, extra, "left"), 15, f"{extra} to be left")
        time.sleep(3.0)
        log(f"  N=6 idle window {s.idle_window_s:g} s")
        idle = idle_window(cluster, base, s.idle_window_s)
        rate = idle["summary"]["sent_Bps"]["mean"]
        log("  N=6 join / leave / failure windows")
        obs = tuple(base)
        join = event_window(
            cluster,
            Event("join", lambda: cluster.restart(extra), obs, extra, "alive"),
            s.event_window_s,
            rate,
        )
        time.sleep(3.0)
        leave = event_window(
            cluster,
            Event("leave", lambda: stop_gracefully(cluster, extra), obs, extra, "left"),
            s.event_window_s,
            rate,
        )
        reap(cluster.nodes[extra].pid)
        cluster.restart(extra)
        wait_all_alive(cluster, names, RECOVER_TIMEOUT_S)
        time.sleep(3.0)
        failure = event_window(
            cluster,
            Event("failure", lambda: cluster.kill(extra), obs, extra, "failed"),
            s.event_window_s,
            rate,
        )
    return {"idle": idle, "join": join, "leave": leave, "failure": failure}


def idle_n(h: Harness, n: int) -> dict[str, Any]:
    with ExitStack() as stack:
        cluster = h.cluster(stack, n, f"bw-n{n}")
        time.sleep(3.0)
        log(f"  N={n} idle window {h.settings.idle_window_s:g} s")
        return idle_window(cluster, list(cluster.nodes), h.settings.idle_window_s)


def run_bandwidth(h: Harness) -> dict[str, Any]:
    n6 = events_n6(h)
    n10 = idle_n(h, 10)
    s10 = n10["summary"]
    return {
        "source": "real processes on loopback",
        "preset": PRESET,
        "counters": "membership payload bytes from /v1/self: UDP frames as sent (HMAC-sealed), "
        "push-pull request/response bodies (no HTTP or IP headers)",
        "n6": n6,
        "n10_idle": n10,
        "pass": {
            "cpu": s10["cpu_pct"]["max"] < CPU_TARGET_PCT,
            "rss": s10["rss_mb"]["max"] < RSS_TARGET_MB,
            "background": s10["total_Bps"]["max"] < BG_TARGET_BPS,
        },
    }


# --- simulated N=1000 ----------------------------------------------------------------------


class Spread:
    """Listener: when each observer first marked `member` as `status` (seconds after t0)."""

    def __init__(self, member: str, status: Status, t0: float, need: int) -> None:
        self.member, self.status, self.t0, self.need = member, status, t0, need
        self.times: dict[str, float] = {}

    def __call__(self, now: float, observer: str, change: MemberChanged) -> None:
        if change.name == self.member and change.new == self.status and observer != self.member:
            self.times.setdefault(observer, now - self.t0)

    def done(self) -> bool:
        return len(self.times) >= self.need

    def summary(self) -> dict[str, Any]:
        xs = sorted(self.times.values())
        return {
            "informed": len(xs),
            "needed": self.need,
            "all_informed": self.done(),
            "first_s": xs[0] if xs else None,
            "p50_s": _report.percentile(xs, 50) if xs else None,
            "p90_s": _report.percentile(xs, 90) if xs else None,
            "all_s": xs[-1] if self.done() else None,
            "curve": [round(x, 4) for x in xs],
        }


def sim_counters(cluster: SimCluster) -> tuple[int, int, int]:
    nodes = cluster.nodes.values()
    return (
        sum(n.sent_packets for n in nodes),
        sum(n.sent_bytes for n in nodes),
        sum(n.recv_bytes for n in nodes),
    )


def per_node_load(cluster: SimCluster, run: Callable[[], object]) -> dict[str, float]:
    """Mean per-node packets/s and bytes/s while `run` advances the simulation."""
    before = {a: (n.sent_packets, n.sent_bytes, n.recv_bytes) for a, n in cluster.nodes.items()}
    t0 = cluster.now
    run()
    dt = max(cluster.now - t0, 1e-9)
    live = [a for a, n in cluster.nodes.items() if n.up and not n.paused and a in before]
    rates = [
        (
            (cluster.nodes[a].sent_packets - before[a][0]) / dt,
            (cluster.nodes[a].sent_bytes - before[a][1]) / dt,
            (cluster.nodes[a].recv_bytes - before[a][2]) / dt,
        )
        for a in live
    ]
    k = len(rates)
    return {
        "protocol_s": dt,
        "sent_packets_ps_mean": sum(r[0] for r in rates) / k,
        "sent_Bps_mean": sum(r[1] for r in rates) / k,
        "sent_Bps_max": max(r[1] for r in rates),
        "recv_Bps_mean": sum(r[2] for r in rates) / k,
        "recv_Bps_max": max(r[2] for r in rates),
    }


def leaving(cluster: SimCluster, name: str) -> bool:
    return cluster.core(name).leaving


def sim_event(
    cluster: SimCluster, member: str, status: Status, action: Callable[[], object]
) -> dict[str, Any]:
    """Apply `action` and run SIM_EVENT_WINDOW_S (longer, up to SIM_EVENT_TIMEOUT_S, until every
    other live node marks `member` as `status`); the load is averaged over that whole window."""
    t0 = cluster.now
    spread = Spread(member, status, t0, 0)
    suspect = Spread(member, Status.SUSPECT, t0, 0)
    cluster.listeners[:] = [spread, suspect]
    action()
    spread.need = sum(1 for n in cluster.live_names() if n != member and not leaving(cluster, n))

    def run() -> None:
        cluster.run_for(SIM_EVENT_WINDOW_S)
        if not spread.done():
            cluster.run_until(t0 + SIM_EVENT_TIMEOUT_S, spread.done)

    load = per_node_load(cluster, run)
    cluster.listeners.clear()
    out = spread.summary()
    out["first_suspect_s"] = min(suspect.times.values(), default=None)
    out["load"] = load
    return out


def sim_false_positives(
    cluster: SimCluster, expected: dict[str, Status], since: float
) -> dict[str, int]:
    """Failure/suspicion marks other than the ones the injected events explain."""
    wrong_failed = wrong_suspect = 0
    for t, _, c in cluster.changes:
        if t < since or c.new == Status.ALIVE:
            continue
        if c.new == Status.SUSPECT:
            wrong_suspect += c.name not in expected
        elif expected.get(c.name) != c.new and not (
            c.new == Status.FAILED and expected.get(c.name) == Status.LEFT
        ):
            wrong_failed += 1
    return {"false_failed_marks": wrong_failed, "false_suspect_marks": wrong_suspect}


def run_sim1000(h: Harness) -> dict[str, Any]:
    s = h.settings
    n = s.sim_n
    wall0 = time.monotonic()
    log(f"  sim N={n}: bootstrap and {SIM_WARMUP_S:g} s warm-up")
    cluster = SimCluster(n, preset(PRESET), seed=SIM_SEED, measure_bytes=False)
    cluster.run_for(SIM_WARMUP_S)
    cluster.measure_bytes = True
    steady = per_node_load(cluster, lambda: cluster.run_for(s.sim_steady_s))
    log(f"  sim N={n}: leave, crash, join")
    leaver, victim, joiner = f"n{n // 2}", f"n{n // 4}", f"n{n}"
    leave = sim_event(cluster, leaver, Status.LEFT, lambda: cluster.leave(leaver))
    crash = sim_event(cluster, victim, Status.FAILED, lambda: cluster.crash(victim))
    seed_addr = cluster.names["n1"]
    join = sim_event(cluster, joiner, Status.ALIVE, lambda: cluster.add_node(joiner, (seed_addr,)))
    fp = sim_false_positives(cluster, {leaver: Status.LEFT, victim: Status.FAILED}, 0.0)
    ok = all(e["all_s"] is not None and e["all_s"] <= SPREAD_TARGET_S for e in (leave, join))
    return {
        "source": "simulated protocol time (SimCluster, measure_bytes=True)",
        "n": n,
        "seed": SIM_SEED,
        "warmup_s": SIM_WARMUP_S,
        "steady": steady,
        "leave": leave,
        "crash": crash,
        "join": join,
        "false_positives": fp,
        "protocol_s": cluster.now,
        "wall_s": time.monotonic() - wall0,
        "pass": {
            "spread": ok,
            "crash_spread": crash["all_s"] is not None and crash["all_s"] <= SPREAD_TARGET_S,
            "no_false_positives": fp["false_failed_marks"] == 0,
        },
    }


# --- running -------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Harness], dict[str, Any]]] = {
    "detection": run_detection,
    "false_positives": run_false_positives,
    "bandwidth": run_bandwidth,
    "sim1000": run_sim1000,
}


def run_sections(h: Harness) -> dict[str, Any]:
    """Run each chosen section; one that fails is recorded as an error and the rest still run."""
    out: dict[str, Any] = {}
    for name in h.settings.sections:
        log(f"[{name}]")
        t0, load = time.monotonic(), os.getloadavg()[0]
        try:
            out[name] = RUNNERS[name](h)
        except Exception as exc:
            traceback.print_exc()
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        out[name]["section_wall_s"] = time.monotonic() - t0
        out[name]["loadavg_1min"] = [load, os.getloadavg()[0]]  # at start and end
    return out


def ok(section: dict[str, Any] | None) -> bool:
    return section is not None and "error" not in section


def good(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The section's results, or None if it was not run or failed."""
    sec: dict[str, Any] | None = data.get(name)
    return sec if sec is not None and "error" not in sec else None


# --- markdown ------------------------------------------------------------------------------


def _case(data: dict[str, Any], n: int, sig: str) -> dict[str, Any] | None:
    sec = good(data, "detection")
    if sec is None:
        return None
    return next((c for c in sec["cases"] if c["n"] == n and c["signal"] == sig), None)


def _cell(data: dict[str, Any], n: int, loss: float) -> dict[str, Any] | None:
    sec = good(data, "false_positives")
    if sec is None:
        return None
    return next((c for c in sec["cells"] if c["n"] == n and abs(c["loss"] - loss) < 1e-9), None)


def target_rows(data: dict[str, Any]) -> list[list[object]]:
    f = _report.fmt
    rows: list[list[object]] = []
    for sig in SIGNALS:
        c = _case(data, 10, sig)
        measured = (
            "not run"
            if c is None
            else f"p99 {f(c['summary']['p99'])} s (mean {f(c['summary']['mean'])}, "
            f"{c['summary']['n']} trials, {c['missed']} missed)"
        )
        rows.append(
            [
                f"Detection by all survivors, {sig}, N=10",
                f"p99 ≤ {DETECT_TARGET_S} s",
                measured,
                "real",
                _report.verdict(None if c is None else c["pass"]),
            ]
        )
    for loss, target in ((0.10, "0 in 10 min"), (0.30, "report")):
        c = _cell(data, 10, loss)
        measured = (
            "not run"
            if c is None
            else f"{c['false_failures']} false failures in {c['seeds']} x "
            f"{f(c['duration_s_per_seed'], 0)} s ({f(c['fp_per_node_hour'], 3)}/node-hour; "
            f"{c['runs_without_fp']}/{c['seeds']} runs clean)"
        )
        long_enough = c is not None and c["duration_s_per_seed"] >= 600.0
        passed = c["false_failures"] == 0 if c is not None and long_enough and loss <= 0.1 else None
        rows.append(
            [
                f"False positives, N=10, {loss:.0%} loss",
                target,
                measured,
                "simulated protocol time",
                _report.verdict(passed),
            ]
        )
    bw = good(data, "bandwidth")
    if bw is not None:
        s10, p = bw["n10_idle"]["summary"], bw["pass"]
        rows += [
            [
                "Idle CPU per node, N=10",
                f"< {CPU_TARGET_PCT:g}% of one core",
                f"max {f(s10['cpu_pct']['max'])}% (mean {f(s10['cpu_pct']['mean'])}%)",
                "real",
                _report.verdict(p["cpu"]),
            ],
            [
                "Idle RSS per node, N=10",
                f"< {RSS_TARGET_MB:g} MB",
                f"max {f(s10['rss_mb']['max'], 1)} MB",
                "real",
                _report.verdict(p["rss"]),
            ],
            [
                "Background traffic per node, N=10",
                "< 2 KB/s (sent + received)",
                f"max {f(s10['total_Bps']['max'], 0)} B/s (sent mean "
                f"{f(s10['sent_Bps']['mean'], 0)} B/s)",
                "real",
                _report.verdict(p["background"]),
            ],
        ]
    sim = good(data, "sim1000")
    if sim is not None:
        p = sim["pass"]
        rows += [
            [
                f"N={sim['n']}: update reaches every node (leave; join)",
                f"≤ {SPREAD_TARGET_S:g} s",
                f"{f(sim['leave']['all_s'])} s; {f(sim['join']['all_s'])} s",
                "simulated protocol time",
                _report.verdict(p["spread"]),
            ],
            [
                f"N={sim['n']}: crash detected by every node",
                f"(≤ {SPREAD_TARGET_S:g} s)",
                f"{f(sim['crash']['all_s'])} s",
                "simulated protocol time",
                _report.verdict(p["crash_spread"]),
            ],
            [
                f"N={sim['n']}: false positives",
                "0",
                f"{sim['false_positives']['false_failed_marks']} false failure marks",
                "simulated protocol time",
                _report.verdict(p["no_false_positives"]),
            ],
        ]
    return rows


def md_detection(sec: dict[str, Any]) -> str:
    rows = []
    for c in sec["cases"]:
        s, ph = c["summary"], c["phases_mean_s"]
        rows.append(
            [
                c["n"],
                c["signal"],
                f"{len(c['trials'])}/{c['planned_trials']}",
                c["missed"],
                s["mean"],
                s["sd"],
                s["p50"],
                s["p99"],
                s["max"],
                ph["to_first_suspect"],
                ph["suspicion"],
                ph["dissemination"],
                c["other_failures"],
                c["restart_retries"],
                _report.verdict(c["pass"]),
            ]
        )
    head = [
        "N",
        "signal",
        "trials",
        "missed",
        "mean s",
        "sd s",
        "p50 s",
        "p99 s",
        "max s",
        "kill→1st suspect",
        "suspect→1st failed",
        "1st→last failed",
        "other nodes failed",
        "restart retries",
        f"p99 ≤ {DETECT_TARGET_S} s",
    ]
    return (
        "## Detection time (real processes, loopback)\n\n"
        f"Real `idunno node` processes, preset `{sec['preset']}`. Detection = the last survivor's "
        "`member_changed new=failed` log record minus the wall time taken just before `os.kill`. "
        "After each trial the victim is restarted (SIGKILL) or continued (SIGCONT) and every node "
        "must see every node alive again; victims rotate. Phase columns are means. "
        "p99 interpolates between order statistics (with 10 trials it is close to the max). "
        "Restart retries: a restarted victim that exited at once and was started again.\n\n"
        + _report.table(head, rows, 3)
        + "".join(
            f"\n\nN={c['n']} {c['signal']} stopped early: {c['aborted']}"
            for c in sec["cases"]
            if c["aborted"]
        )
    )


def md_false_positives(sec: dict[str, Any]) -> str:
    rows = [
        [
            c["n"],
            f"{c['loss']:.0%}",
            f"{c['seeds']} x {c['duration_s_per_seed']:g} s",
            c["node_hours"],
            c["false_failures"],
            c["failed_marks"],
            c["fp_per_node_hour"],
            f"{c['runs_without_fp']}/{c['seeds']}",
            c["suspicions"],
            c["suspicions_per_node_hour"],
            c["longest_false_failed_s"],
        ]
        for c in sec["cells"]
    ]
    head = [
        "N",
        "loss",
        "runs x simulated protocol time",
        "node-hours",
        "false failures",
        "failed marks (all observers)",
        "false failures / node-hour",
        "runs with 0 FP",
        "suspicions",
        "suspicions / node-hour",
        "longest false failed mark s",
    ]
    text = (
        "## False positives (simulated protocol time)\n\n"
        "SimCluster: the node's own MembershipCore on a virtual clock; every datagram dropped "
        "with probability `loss` (push-pull is TCP: never lost). A false failure is one "
        "(member, incarnation) declared failed by anyone although nothing crashed; failed marks "
        "count every observer. Suspicions are distinct (member, incarnation) suspected. The last "
        "column is the longest time any observer held a live member as failed.\n\n"
        + _report.table(head, rows, 3)
    )
    real = sec.get("real_check")
    if real:
        rrows = [
            [
                real["n"],
                f"{real['loss']:.0%}",
                real["measured_drop_fraction"],
                real["duration_s"],
                real["false_failures"],
                real["failed_marks"],
                real["suspect_marks"],
                real["refutations"],
                real["all_alive_at_end"],
            ]
        ]
        rhead = [
            "N",
            "loss (--fault-drop)",
            "measured drop fraction",
            "wall s",
            "false failures",
            "failed marks",
            "suspect marks",
            "refutations",
            "all alive at end",
        ]
        text += (
            "\n\nReal-process check (real processes, wall-clock time; the transport's fault hook "
            "drops outgoing datagrams):\n\n" + _report.table(rhead, rrows, 3)
        )
    return text


def md_bandwidth(sec: dict[str, Any]) -> str:
    idle_rows = []
    for w in (sec["n6"]["idle"], sec["n10_idle"]):
        s = w["summary"]
        idle_rows.append(
            [
                w["n"],
                w["window_s"],
                s["sent_Bps"]["mean"],
                s["sent_Bps"]["max"],
                s["recv_Bps"]["mean"],
                s["total_Bps"]["max"],
                s["udp_sent_Bps"]["mean"],
                s["tcp_sent_Bps"]["mean"],
                s["sent_packets_ps"]["mean"],
                s["udp_wire_Bps"]["mean"],
                s["cpu_pct"]["mean"],
                s["cpu_pct"]["max"],
                s["rss_mb"]["max"],
            ]
        )
    idle_head = [
        "N",
        "window s",
        "sent B/s mean",
        "sent B/s max",
        "recv B/s mean",
        "sent+recv B/s max",
        "UDP sent B/s",
        "TCP sent B/s",
        "packets/s sent",
        "UDP sent B/s incl. IP+UDP headers",
        "CPU % mean",
        "CPU % max",
        "RSS MB max",
    ]
    ev_rows = []
    for name in ("join", "leave", "failure"):
        e = sec["n6"][name]
        ev_rows.append(
            [
                name,
                f"{e['nodes_before']} → {e['nodes_after']}",
                e["converged_s"],
                e["window_s"],
                e["sent_bytes"],
                e["recv_bytes"],
                e["idle_expected_sent_bytes"],
                e["extra_sent_bytes"],
            ]
        )
    ev_head = [
        "event (N=6)",
        "nodes answering",
        "converged s",
        "window s",
        "sent bytes",
        "recv bytes",
        "idle-expected sent",
        "extra sent bytes",
    ]
    return (
        "## Bandwidth, CPU and memory (real processes)\n\n"
        f"Counters: {sec['counters']}. CPU is % of one core from psutil over the window; RSS is "
        "the peak sampled once a second. The headers column adds 28 bytes (IPv4 + UDP) per "
        "datagram; push-pull HTTP/TCP headers (a few hundred bytes per exchange, one exchange "
        "per node every push_pull_interval) are not counted. (The machine's `lo` counters are "
        "not used: other work on this shared machine also talks over loopback.)\n\n"
        + _report.table(idle_head, idle_rows, 1)
        + "\n\nEvents, cluster-wide over a fixed window from the event (join: a 7th node starts; "
        "leave: SIGTERM of that node; failure: SIGKILL). A node that is gone at the end of the "
        "window cannot be read, so its own sent bytes are missing (its packets still show in "
        "the others' received bytes). Extra = sent minus the idle rate x window x nodes. "
        "Converged = the last of the other nodes' log records of the change (read afterwards; "
        "nothing is polled during the window).\n\n" + _report.table(ev_head, ev_rows, 1)
    )


def md_sim1000(sec: dict[str, Any]) -> str:
    rows = []
    for name in ("leave", "crash", "join"):
        e = sec[name]
        rows.append(
            [
                name,
                f"{e['informed']}/{e['needed']}",
                e["first_suspect_s"],
                e["first_s"],
                e["p50_s"],
                e["p90_s"],
                e["all_s"],
                e["load"]["sent_packets_ps_mean"],
                e["load"]["sent_Bps_mean"],
                e["load"]["sent_Bps_max"],
            ]
        )
    head = [
        "event",
        "informed",
        "first suspicion s",
        "first informed s",
        "p50 s",
        "p90 s",
        "all informed s",
        "packets/s per node",
        "sent B/s per node mean",
        "max",
    ]
    st = sec["steady"]
    steady = [
        [
            st["protocol_s"],
            st["sent_packets_ps_mean"],
            st["sent_Bps_mean"],
            st["sent_Bps_max"],
            st["recv_Bps_mean"],
            st["recv_Bps_max"],
        ]
    ]
    steady_head = [
        "protocol s",
        "packets/s per node",
        "sent B/s mean",
        "sent B/s max",
        "recv B/s mean",
        "recv B/s max",
    ]
    fp = sec["false_positives"]
    return (
        f"## Simulated N={sec['n']} (simulated protocol time)\n\n"
        f"SimCluster seed {sec['seed']}, bootstrapped fully joined, {sec['warmup_s']:g} s "
        "warm-up, then a steady window, a leave, a crash and a join in sequence, each run for "
        f"{SIM_EVENT_WINDOW_S:g} s (load columns average over it). Times are protocol seconds "
        "after the event until each other live node marks the member left / failed / alive. "
        "Bytes are encoded packets plus transport overhead "
        f"(measure_bytes=True). Wall time {sec['wall_s']:.0f} s for {sec['protocol_s']:.0f} s "
        "of protocol time.\n\n"
        + _report.table(head, rows, 3)
        + "\n\nSteady state per node:\n\n"
        + _report.table(steady_head, steady, 1)
        + f"\n\nFalse positives over the whole run: {fp['false_failed_marks']} failure marks and "
        f"{fp['false_suspect_marks']} suspicion marks about members that neither left nor "
        "crashed."
    )


SECTION_MD: dict[str, Callable[[dict[str, Any]], str]] = {
    "detection": md_detection,
    "false_positives": md_false_positives,
    "bandwidth": md_bandwidth,
    "sim1000": md_sim1000,
}


def render_markdown(data: dict[str, Any]) -> str:
    m, run = data["machine"], data["run"]
    dirty = " + uncommitted src changes" if data["git"]["src_changes"] else ""
    commit = (data["git"]["commit"] or "?")[:10]
    loads = ", ".join(
        f"{name} {a:.1f}→{b:.1f}"
        for name in SECTIONS
        if name in data and "loadavg_1min" in data[name]
        for a, b in [data[name]["loadavg_1min"]]
    )
    parts = [
        "# Membership benchmark",
        f"`{run['command']}` ({'quick smoke run' if run['quick'] else 'full run'}), "
        f"{m['date']}, {m['cores']} cores ({m['cpu_model']}), Python {m['python']}, "
        f"preset `{PRESET}`, commit `{commit}`{dirty}. **Real** = `idunno node` processes on "
        "127.0.0.1 started by ProcCluster; **simulated** = SimCluster, the same MembershipCore "
        "on a virtual clock (times are simulated protocol time, not wall time). 1-minute load "
        f"average at the start and end of each section: {loads} (the machine is shared; "
        "real-process timings include that noise).",
        "## Figures to reach\n\n"
        + _report.table(["figure", "target", "measured", "source", "result"], target_rows(data)),
    ]
    for name in SECTIONS:
        sec = data.get(name)
        if sec is None:
            continue
        if not ok(sec):
            parts.append(f"## {name}\n\nSection failed: `{sec['error']}`")
        else:
            parts.append(SECTION_MD[name](sec))
    if data["startup_failures"]:
        parts.append(_report.startup_failures_md(data["startup_failures"]))
    return "\n\n".join(parts) + "\n"


# --- figure --------------------------------------------------------------------------------


def plot_detection(ax: Axes, sec: dict[str, Any] | None) -> None:
    title = "Detection by all survivors (real processes)"
    if sec is None:
        return _report.blank_axis(ax, title)
    cases = sec["cases"]
    series = [
        [t["detection_s"] for t in c["trials"] if t["detection_s"] is not None] for c in cases
    ]
    labels = [f"N={c['n']}\n{c['signal']}" for c in cases]
    ax.boxplot(series, tick_labels=labels, widths=0.5)
    for i, ys in enumerate(series, start=1):
        xs = [i + 0.12 * ((j % 5) - 2) / 2 for j in range(len(ys))]
        ax.scatter(xs, ys, s=14, alpha=0.7, zorder=3)
    ax.axhline(DETECT_TARGET_S, color="red", linestyle="--", label=f"target {DETECT_TARGET_S} s")
    ax.set_ylabel("seconds after kill")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return None


def plot_false_positives(ax: Axes, sec: dict[str, Any] | None) -> None:
    title = "False positives vs loss (simulated protocol time)"
    if sec is None:
        return _report.blank_axis(ax, title)
    for n in FP_SIZES:
        cells = [c for c in sec["cells"] if c["n"] == n]
        xs = [100 * c["loss"] for c in cells]
        (line,) = ax.plot(xs, [c["fp_per_node_hour"] for c in cells], marker="o", label=f"N={n}")
        ax.plot(
            xs,
            [c["suspicions_per_node_hour"] for c in cells],
            linestyle=":",
            color=line.get_color(),
            label=f"N={n} suspicions",
        )
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlabel("datagram loss %")
    ax.set_ylabel("per node-hour (solid: false failures, dotted: suspicions)")
    ax.set_xticks([100 * x for x in FP_LOSSES])
    ax.set_title(title)
    ax.legend(fontsize=8)
    return None


def plot_bandwidth(ax: Axes, sec: dict[str, Any] | None) -> None:
    title = "Idle traffic per node (real processes)"
    if sec is None:
        return _report.blank_axis(ax, title)
    windows = [sec["n6"]["idle"], sec["n10_idle"]]
    labels = [f"N={w['n']}" for w in windows]
    xs = list(range(len(windows)))
    sent = [w["summary"]["sent_Bps"]["mean"] for w in windows]
    total_max = [w["summary"]["total_Bps"]["max"] for w in windows]
    ax.bar([x - 0.2 for x in xs], sent, width=0.4, label="sent, mean")
    ax.bar([x + 0.2 for x in xs], total_max, width=0.4, label="sent+recv, max node")
    ax.axhline(BG_TARGET_BPS, color="red", linestyle="--", label="target 2 KB/s")
    ax.set_xticks(xs, labels)
    ax.set_ylabel("bytes/s")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return None


def plot_spread(ax: Axes, sec: dict[str, Any] | None) -> None:
    title = "Update reaching every node, simulated N=1000"
    if sec is None:
        return _report.blank_axis(ax, title)
    for name in ("leave", "crash", "join"):
        e = sec[name]
        xs = e["curve"]
        ys = [(i + 1) / e["needed"] for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=name)
    ax.axvline(SPREAD_TARGET_S, color="red", linestyle="--", label=f"target {SPREAD_TARGET_S:g} s")
    ax.set_xlabel("protocol seconds after the event")
    ax.set_ylabel("fraction of nodes informed")
    ax.set_title(title.replace("1000", str(sec["n"])))
    ax.legend(fontsize=8)
    return None


def render_figure(data: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(12, 9), layout="constrained")
    axes = fig.subplots(2, 2)
    plot_detection(axes[0][0], good(data, "detection"))
    plot_false_positives(axes[0][1], good(data, "false_positives"))
    plot_bandwidth(axes[1][0], good(data, "bandwidth"))
    plot_spread(axes[1][1], good(data, "sim1000"))
    fig.suptitle(f"IDUNNO membership, preset {PRESET} ({data['machine']['date']})")
    return fig


# --- main ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    _report.stop_on_sigterm()  # unwind through every ProcCluster so the nodes are killed
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    t0 = time.monotonic()
    git = _report.git_info()  # before the run: the code the nodes were started from
    with _report.workdir(settings.keep, "idunno-bench-") as root:
        h = Harness(root, settings)
        results = run_sections(h)
    data: dict[str, Any] = {
        "machine": _report.machine_info(),
        "git": git,
        "run": {
            "command": " ".join(["python", *sys.argv]),
            "quick": settings.quick,
            "settings": {
                k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()
            },
            "wall_s": time.monotonic() - t0,
        },
        "preset": {"name": PRESET, **asdict(preset(PRESET))},
        "targets": {
            "detection_p99_s": DETECT_TARGET_S,
            "idle_cpu_pct": CPU_TARGET_PCT,
            "idle_rss_mb": RSS_TARGET_MB,
            "background_Bps": BG_TARGET_BPS,
            "spread_s": SPREAD_TARGET_S,
        },
        "startup_failures": h.startup_failures,
        **results,
    }
    markdown = render_markdown(data)
    paths = _report.write_results(
        "membership", data, markdown, render_figure(data), settings.out_dir
    )
    print(markdown)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if any(not ok(results[s]) for s in results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted: every node this run started has been stopped; no results written")
        sys.exit(130)
