"""`idunno demo`: the measurements it reports, computed from synthetic events and results
(fast, pure), its events panel and view, and one end-to-end run with real node processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from idunno.demo import figures as fig
from idunno.demo import report, view
from idunno.demo.cluster import check_free
from idunno.demo.events import EventFeed, LogTail
from idunno.demo.figures import Kill, Period, ShareSample
from idunno.localcluster import (
    ClusterError,
    NodeProc,
    is_running,
    port_is_free,
    write_cluster,
)
from idunno.testing.procs import wait_for
from tests.conftest import IDUNNO, cli_env

T0 = 1_000_000.0


def steady(start: float, end: float, rate: float) -> list[float]:
    """Results accepted at a constant rate in [start, end)."""
    n = round((end - start) * rate)
    return [start + i / rate for i in range(n)]


def rows_of(times: Sequence[float], epoch: int = 1) -> list[dict[str, Any]]:
    return [{"accepted_at": t, "epoch": epoch, "worker": "n3", "processing_ms": 7.6} for t in times]


# --- rates and "back to normal" -------------------------------------------------------------------


def test_count_in_is_half_open() -> None:
    times = [1.0, 2.0, 2.0, 3.0]
    assert fig.count_in(times, 2.0, 3.0) == 2
    assert fig.count_in(times, 0.0, 1.0) == 0
    assert fig.count_in(times, 1.0, 3.5) == 4


def test_balanced_needs_every_job_and_20_percent() -> None:
    assert fig.balanced([40, 33])
    assert not fig.balanced([40, 31])
    assert not fig.balanced([40, 0])
    assert not fig.balanced([])


def test_back_to_normal_after_a_stall() -> None:
    # Both jobs at 40 q/s; job b stalls from 10 s to 12 s (a failure), then runs again.
    a = steady(T0, T0 + 20, 40)
    b = steady(T0, T0 + 10, 40) + steady(T0 + 12, T0 + 20, 40)
    got = fig.back_to_normal({"a": a, "b": b}, T0 + 10, T0 + 20)
    assert got is not None
    # The first 1 s window whose b count is within 20% of a's starts 0.2 s before b resumes.
    assert got - T0 == pytest.approx(11.8, abs=0.06)


def test_back_to_normal_none_when_it_never_recovers() -> None:
    a = steady(T0, T0 + 20, 40)
    b = steady(T0, T0 + 20, 20)  # half the rate all along
    assert fig.back_to_normal({"a": a, "b": b}, T0, T0 + 20) is None
    assert fig.back_to_normal({"a": a, "b": a}, T0, T0 + 0.5) is None  # no full window


# --- 1a, 1b ---------------------------------------------------------------------------------------


def test_both_running() -> None:
    jobs = [
        {"first_result_at": T0 + 1, "finished_at": T0 + 50},
        {"first_result_at": T0 + 6, "finished_at": None},
    ]
    assert fig.both_running(jobs) == Period(T0 + 6, T0 + 50)
    assert fig.both_running([jobs[0], {"first_result_at": None}]) is None
    assert fig.both_running([jobs[0], {"first_result_at": T0 + 60}]) is None


def test_share_samples_skip_warmup_and_failures() -> None:
    samples = [ShareSample(T0 + t, {"r": 0.6, "a": 0.4}) for t in range(0, 40)]
    during = Period(T0 + 5, T0 + 35)
    chosen, clean = fig.share_samples(samples, during, [Period(T0 + 20, T0 + 25)])
    assert clean
    ts = [s.t - T0 for s in chosen]
    assert ts[0] == 15  # 10 s after both answered: the C5 window holds both jobs only then
    assert ts[-1] == 35
    assert not any(20 <= t <= 25 for t in ts)
    assert len(chosen) == 21 - 6


def test_share_samples_fall_back_when_nothing_is_clean() -> None:
    samples = [ShareSample(T0 + t, {"r": 0.5}) for t in range(0, 10)]
    chosen, clean = fig.share_samples(samples, Period(T0 + 2, T0 + 8), [])
    assert not clean
    assert [s.t - T0 for s in chosen] == [2, 3, 4, 5, 6, 7, 8]


def test_mean_and_predicted_share() -> None:
    samples = [ShareSample(T0, {"r": 0.6}), ShareSample(T0 + 1, {"r": 0.7}), ShareSample(T0, {})]
    assert fig.mean_share(samples, "r") == pytest.approx(0.65)
    assert fig.mean_share(samples, "x") is None
    assert fig.predicted_share(16.0, 8.0) == pytest.approx(2 / 3)
    assert fig.predicted_share(None, 8.0) is None


def test_median_cost_ms() -> None:
    train = {
        "models": [
            {
                "model": "resnet18",
                "workers": {
                    "n1": {"cost_per_query_ms": 16.0},
                    "n2": {"cost_per_query_ms": 18.0},
                    "n3": {"cost_per_query_ms": 30.0},
                    "n4": {"error": "executor died"},
                },
            }
        ]
    }
    assert fig.median_cost_ms(train, "resnet18") == 18.0
    assert fig.median_cost_ms(train, "alexnet") is None


def test_first_result_ms() -> None:
    assert fig.first_result_ms({"submitted_at": T0, "first_result_at": T0 + 0.085}) == (
        pytest.approx(85.0)
    )
    assert fig.first_result_ms({"submitted_at": T0, "first_result_at": None}) is None


# --- 2, 3 -----------------------------------------------------------------------------------------


def failed(node: str, member: str, ts: float) -> dict[str, Any]:
    return {"ts": ts, "node": node, "event": "member_changed", "member": member, "new": "failed"}


def test_worker_figures() -> None:
    kill = Kill("worker", "n6", 123, T0 + 20, 1, "n1")
    events = [
        failed("n2", "n6", T0 + 5),  # an earlier incident: before the kill, ignored
        {"ts": T0 + 20.004, "node": "n1", "event": "batch_requeued", "worker": "n6", "batch": 7},
        {"ts": T0 + 20.006, "node": "n1", "event": "batch_requeued", "worker": "n6", "batch": 9},
        {"ts": T0 + 20.006, "node": "n1", "event": "batch_requeued", "worker": "n5", "batch": 8},
        *(failed(n, "n6", T0 + 21.1 + i / 10) for i, n in enumerate(["n2", "n3", "n4", "n5"])),
        failed("n1", "n6", T0 + 21.5),
        {"ts": T0 + 21.5, "node": "n1", "event": "worker_failed", "worker": "n6", "requeued": []},
    ]
    a = steady(T0, T0 + 40, 40)
    b = steady(T0, T0 + 20, 40) + steady(T0 + 22, T0 + 40, 40)
    w = fig.worker_figures(kill, events, {"a": a, "b": b}, T0 + 40)
    assert w.batches == 2
    assert w.first_requeue_s == pytest.approx(0.004)
    assert w.requeued_s == pytest.approx(1.5)  # the last requeue record naming n6
    assert w.confirmed_s == pytest.approx(1.1)
    assert w.all_confirmed_s == pytest.approx(1.5)
    assert w.confirmers == 5
    assert w.normal_s == pytest.approx(1.8, abs=0.06)  # scanned from the first requeue


def test_worker_figures_when_it_held_no_batch() -> None:
    kill = Kill("worker", "n6", 123, T0 + 20, 1, "n1")
    times = {"a": steady(T0, T0 + 40, 40), "b": steady(T0, T0 + 40, 40)}
    w = fig.worker_figures(kill, [failed("n2", "n6", T0 + 21)], times, T0 + 40)
    assert (w.batches, w.requeued_s, w.normal_s) == (0, None, 0.0)


def elected(node: str, epoch: int, ts: float, **extra: Any) -> dict[str, Any]:
    return {"ts": ts, "node": node, "event": "coordinator_elected", "epoch": epoch, **extra}


def test_coordinator_figures() -> None:
    kill = Kill("coordinator", "n1", 99, T0 + 30, 4, "n1")
    events = [
        elected("n1", 4, T0 + 1),  # the reign that was killed
        elected("n2", 5, T0 + 30.05, takeover="hot", took_ms=9.5),
        elected("n3", 6, T0 + 40, takeover="cold"),  # a later one: not the first
    ]
    rows = {
        "a": rows_of(steady(T0, T0 + 30, 40), 4) + rows_of(steady(T0 + 30.2, T0 + 50, 40), 5),
        "b": rows_of(steady(T0, T0 + 30, 40), 4) + rows_of(steady(T0 + 30.4, T0 + 50, 40), 5),
    }
    c = fig.coordinator_figures(kill, events, rows, T0 + 50)
    assert (c.coordinator, c.epoch, c.takeover, c.took_ms) == ("n2", 5, "hot", 9.5)
    assert c.elected_s == pytest.approx(0.05)
    assert c.first_result_s == pytest.approx(0.2)
    assert c.normal_s == pytest.approx(0.2, abs=0.06)


def test_coordinator_figures_same_epoch_number_other_coordinator() -> None:
    # The store may number a claim with the dead reign's epoch again: (epoch, node) differ.
    kill = Kill("coordinator", "n1", 99, T0 + 30, 4, "n1")
    events = [elected("n1", 4, T0 + 30.5), elected("n2", 4, T0 + 31, takeover="cold")]
    c = fig.coordinator_figures(kill, events, {"a": [], "b": []}, T0 + 50)
    assert (c.coordinator, c.elected_s, c.first_result_s) == ("n2", 1.0, None)
    none = fig.coordinator_figures(kill, [], {"a": []}, T0 + 50)
    assert none.elected_s is None


def test_marked_failed_in_order() -> None:
    events = [failed("n2", "n6", T0), failed("n1", "n3", T0 + 1), failed("n3", "n6", T0 + 2)]
    events.append(
        {"ts": T0, "node": "n1", "event": "member_changed", "member": "n4", "new": "left"}
    )
    assert fig.marked_failed(events) == ["n6", "n3"]


def test_failure_period() -> None:
    kill = Kill("worker", "n6", 1, T0, 1, "n1")
    assert fig.failure_period(kill, 1.5) == Period(T0, T0 + 1.5)
    assert fig.failure_period(kill, None) == Period(T0, T0 + 5.0)


def test_top1_accuracy() -> None:
    labels = [3, 1, 4, 1]
    rows = [
        {"query": "0", "class_ids": [3, 8]},
        {"query": "1", "class_ids": [7]},
        {"query": "2", "class_ids": [4], "error": None},
        {"query": "3", "class_ids": [1], "error": "cannot decode"},
        {"query": "x", "class_ids": [1]},
    ]
    assert fig.top1_accuracy(rows, labels) == (2, 5)


# --- events panel ---------------------------------------------------------------------------------


def test_feed_folds_repeats() -> None:
    feed = EventFeed(T0)
    records = [
        *(failed(n, "n6", T0 + 21 + i / 10) for i, n in enumerate(["n2", "n3", "n4", "n5"])),
        {"ts": T0 + 20.1, "node": "n1", "event": "batch_requeued", "worker": "n6", "batch": 7},
        {"ts": T0 + 20.1, "node": "n1", "event": "batch_requeued", "worker": "n6", "batch": 9},
        {"ts": T0 + 21.5, "node": "n1", "event": "worker_failed", "worker": "n6", "requeued": [9]},
        elected("n2", 5, T0 + 30.05, takeover="hot", took_ms=9.5, adopted=3),
        {"ts": T0 + 29.9, "node": "n2", "event": "coordinator_gone", "coordinator": "n1"},
        {"ts": T0 + 29.9, "node": "n3", "event": "coordinator_gone", "coordinator": "n1"},
        {"ts": T0 + 50, "node": "n2", "event": "job_done", "job": "j1", "name": "r", "queries": 9},
        {"ts": T0 + 51, "node": "n2", "event": "file_put", "file": "x"},  # not shown
    ]
    feed.note(T0 + 20, "SIGKILL n6 (the worker, pid 123)")
    feed.add(records)
    text = feed.last(20)
    assert text == [
        "+ 20.0s  demo: SIGKILL n6 (the worker, pid 123)",
        "+ 21.0s  n6 marked FAILED by n2 (+3 more)",
        "+ 20.1s  n1 requeued 2 batches of n6",
        "+ 30.1s  n2 elected coordinator: epoch 5, hot takeover in 10 ms, adopted 3 running "
        "batches",
        "+ 29.9s  n2 (+1 more): coordinator n1 is gone (its port refuses connections)",
        "+ 50.0s  job r done (9 queries, 0 errors)",
    ]
    assert feed.take_fresh() == text
    assert feed.take_fresh() == []


def test_log_tail_reads_only_new_complete_lines(tmp_path: Path) -> None:
    log = tmp_path / "n1" / "node.jsonl"
    log.parent.mkdir()
    first = json.dumps({"ts": T0 + 1, "node": "n1", "event": "job_done", "name": "r"})
    old = json.dumps({"ts": T0 - 1, "node": "n1", "event": "job_done", "name": "old"})
    log.write_text(old + "\n" + first + "\n" + '{"ts": 1000002.0, "node": "n1", "ev')
    tail = LogTail([tmp_path / "n1", tmp_path / "missing"], T0)
    assert [r["name"] for r in tail.poll()] == ["r"]
    with open(log, "a") as f:
        f.write('ent": "job_done", "name": "a"}\nnot json\n')
    assert [r["name"] for r in tail.poll()] == ["a"]
    assert tail.poll() == []


# --- view and report ------------------------------------------------------------------------------


def test_view_renders_and_plain_line() -> None:
    jobs = [
        {"name": "r", "model": "resnet18", "done": 400, "total": 1000, "rate": 41.5,
         "workers": ["n1", "n2"], "status": "running"},
    ]  # fmt: skip
    members = [
        {"id": "n2", "status": "alive", "role": "coordinator"},
        {"id": "n1", "status": "alive", "role": "worker"},
        {"id": "n6", "status": "failed", "role": "worker"},
    ]
    frame = view.Frame(12.3, view.job_rows(jobs), view.member_roles(members), ["+ 1.0s  x"])
    console = Console(record=True, width=120, force_terminal=False)
    console.print(view.render(frame))
    out = console.export_text()
    assert "400/1000" in out and "41.5" in out and "n6 FAILED" in out and "+ 1.0s  x" in out
    line = view.plain(frame)
    assert line.startswith("+ 12.3s r 400/1000 41.5 q/s 2 workers running")
    assert "n1:worker n2:coordinator n6:FAILED" in line


def outcome(**changes: Any) -> report.Outcome:
    r_times = steady(T0 + 1, T0 + 60, 40)
    a_times = steady(T0 + 6, T0 + 62, 40)
    base: dict[str, Any] = {
        "t0": T0 - 30,
        "names": ("resnet18", "alexnet"),
        "jobs": {
            "resnet18": {"submitted_at": T0, "first_result_at": T0 + 0.5, "finished_at": T0 + 60},
            "alexnet": {
                "submitted_at": T0 + 5,
                "first_result_at": T0 + 5.07,
                "finished_at": T0 + 62,
            },
        },
        "rows": {"resnet18": rows_of(r_times), "alexnet": rows_of(a_times)},
        "stats": {"resnet18": {"mean_ms": 16.0}, "alexnet": {"mean_ms": 8.0}},
        "samples": [ShareSample(T0 + t, {"resnet18": 0.66, "alexnet": 0.34}) for t in range(60)],
        "kills": [Kill("worker", "n6", 1, T0 + 20, 1, "n1")],
        "events": [failed("n2", "n6", T0 + 21)],
        "digits": (1745, 1797),
        "digits_model": "digits_logreg",
        "durations": {"total": 120.0, "setup": 40.0, "the two jobs": 70.0, "digits": 5.0},
        "dashboard": None,
    }
    return report.Outcome(**(base | changes))


def test_report_lines() -> None:
    text = "\n".join(report.lines(outcome()))
    assert "1a  share of the workers while both jobs ran: resnet18 0.660, alexnet 0.340" in text
    assert "predict 0.667 / 0.333" in text
    assert "1b  alexnet's first result: 70 ms after it was submitted" in text
    assert "(resnet18 running; it came from n3 at 8 ms/query)" in text
    assert "2   worker n6 SIGKILLed at +50.0s: it held no batch; membership confirmed" in text
    assert "3   coordinator SIGKILL: not done" in text
    assert "digits accuracy: 0.9711 top-1 (1745/1797 correct" in text
    assert "demo time: 120 s (setup 40 s, the two jobs 70 s, digits 5 s)" in text
    assert "dashboard: not built yet (issue 5)" in text
    assert "dashboard: http://127.0.0.1:7103/" in "\n".join(
        report.lines(outcome(dashboard="http://127.0.0.1:7103/"))
    )


def test_report_failover_lines() -> None:
    kills = [
        Kill("worker", "n6", 1, T0 + 20, 1, "n1"),
        Kill("coordinator", "n1", 2, T0 + 40, 1, "n1"),
    ]
    events = [
        {"ts": T0 + 20.003, "node": "n1", "event": "batch_requeued", "worker": "n6", "batch": 7},
        {"ts": T0 + 21.2, "node": "n1", "event": "worker_failed", "worker": "n6", "requeued": [9]},
        failed("n2", "n6", T0 + 21.1),
        elected("n2", 2, T0 + 40.04, takeover="hot", took_ms=6.0),
    ]
    rows = {
        "resnet18": rows_of(steady(T0 + 1, T0 + 40, 40))
        + rows_of(steady(T0 + 40.1, T0 + 60, 40), 2),
        "alexnet": rows_of(steady(T0 + 6, T0 + 40, 40))
        + rows_of(steady(T0 + 40.2, T0 + 62, 40), 2),
    }
    text = "\n".join(report.lines(outcome(kills=kills, events=events, rows=rows)))
    assert (
        "its 2 batches requeued after 3 ms (the last after 1.20 s); membership confirmed the "
        "failure after 1.10 s (1 member marked it failed within 1.10 s); rates back within "
        "20% after 3 ms" in text
    )
    assert (
        "3   coordinator n1 SIGKILLed at +70.0s: n2 elected after 40 ms (epoch 2, hot takeover "
        "in 6 ms); first result accepted by epoch 2 after 100 ms; rates back within 20% after "
        "100 ms" in text
    )


def test_report_without_data_says_so() -> None:
    text = "\n".join(report.lines(outcome(jobs={}, rows={}, kills=[], digits=None, samples=[])))
    assert "1a  shares: the two jobs never ran together" in text
    assert "1b  alexnet's first result: never" in text
    assert "digits accuracy: not measured" in text


# --- refusals -------------------------------------------------------------------------------------


def test_check_free_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ClusterError, match=r"idunno down.*--base-port") as info:
            check_free(tmp_path, port, 6)
    assert "\n" not in str(info.value)


def test_check_free_refuses_a_running_cluster(tmp_path: Path) -> None:
    data = tmp_path / "nodes" / "n1"
    # A stand-in for a node: is_running() knows a node by "idunno" and its data dir in argv.
    code = "import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, "idunno", str(data)])
    node = NodeProc("n1", "127.0.0.1:1", proc.pid, str(data))
    try:
        wait_for(lambda: is_running(node), 10.0, "the stand-in to start")  # exec'd, not forked
        write_cluster(tmp_path, [node], "lan")
        with pytest.raises(ClusterError, match=r"already running .*`idunno down`"):
            check_free(tmp_path, consecutive_free_ports(6), 6)
    finally:
        proc.kill()
        proc.wait()
    check_free(tmp_path, consecutive_free_ports(6), 6)  # a stale cluster.json is no obstacle


# --- end to end -----------------------------------------------------------------------------------

REPORT_LINES = {
    "1a": r"1a  share of the workers while both jobs ran: resnet18 0\.\d{3}, alexnet 0\.\d{3} "
    r"\(mean of [1-9]\d* C5 samples.*predict 0\.\d{3} / 0\.\d{3}",
    "1b": r"1b  alexnet's first result: \d+ ms after it was submitted",
    "2": r"2   worker n\d SIGKILLed at \+\d+\.\ds: "
    r"(its \d+ batches requeued after \d.*|it held no batch); membership "
    r"confirmed the failure after \d.*rates back within 20% after (\d|\(not seen\))",
    "3": r"3   coordinator n\d SIGKILLed at \+\d+\.\ds: n\d elected after \d.*\(epoch \d+, "
    r"(hot|cold) takeover.*first result accepted by epoch \d+ after \d",
    "time": r"demo time: \d+ s \(setup \d+ s, the two jobs \d+ s, digits \d+ s\)",
    "dashboard": r"dashboard: (not built yet \(issue 5\)|http://127\.0\.0\.1:\d+/)",
    "stopped": r"cluster stopped \(4 nodes left, 2 had been killed",
}


def consecutive_free_ports(n: int) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n < 65536 and all(port_is_free(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports")


# Enough for the ResNet18 job to span both kills, 5 s apart (the demo's default is 2000).
PHOTOS = 800


@pytest.mark.process
@pytest.mark.slow
@pytest.mark.timeout(175)
def test_demo_end_to_end(tmp_path: Path) -> None:
    base = consecutive_free_ports(6)
    cmd = [str(IDUNNO), "demo", "--dir", str(tmp_path), "--base-port", str(base)]
    cmd += ["--photos", str(PHOTOS)]
    code, out, err, left = run_demo_process(cmd, tmp_path, timeout=160)
    assert code == 0, out[-3000:] + err[-3000:]
    for name, pattern in REPORT_LINES.items():
        assert re.search(pattern, out), f"report line {name} missing:\n{out[-3000:]}"
    acc = re.search(r"digits accuracy: (0\.\d+) top-1", out)
    assert acc is not None and float(acc.group(1)) > 0.9, out[-2000:]
    assert re.search(rf"\+\s*\d+\.\ds resnet18 \d+/{PHOTOS}", out), "no plain progress line"
    assert "marked FAILED" in out and "elected coordinator" in out, out[-3000:]
    assert left == [], f"node processes left running: {left}"
    assert not (tmp_path / "cluster.json").exists()


def run_demo_process(
    cmd: list[str], directory: Path, timeout: float
) -> tuple[int, str, str, list[int]]:
    """Run the demo; on timeout SIGTERM it (it stops its cluster on the way out). Returns its
    exit code, output and the node processes still running afterwards (SIGKILLed then)."""
    proc = subprocess.Popen(
        cmd, cwd=directory, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        err += f"\n(timed out after {timeout:g} s)"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = node_pids(directory)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return proc.returncode, out, err, left


def node_pids(directory: Path) -> list[int]:
    """Processes running with a data dir of `directory` (cluster.json is gone at the end)."""
    return [
        pid
        for data in sorted((directory / "nodes").glob("n*"))
        for pid in pids_with(str(data.resolve()))
    ]


def pids_with(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(proc.name))
    return found
