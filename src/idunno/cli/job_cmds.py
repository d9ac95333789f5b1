"""CLI commands of the control plane: `idunno job ...` (the course's C1-C5) and `idunno train`.

    idunno job submit --model M --dataset D --batch-size B [--name N] [--weight W]
    idunno job list | wait JOB [--timeout S] | cancel JOB
    idunno job rate [JOB]                 C1: query rate over the last 10 s, progress
    idunno job stats JOB                  C2: per-query processing time (mean, sd, percentiles)
    idunno job set-batch-size JOB N       C3
    idunno job results JOB [--query ID] [--limit N] [--offset K]     C4
    idunno job assignment                 C5: which workers run which jobs, and their shares
    idunno train [--model NAME ...]       load models on every worker, report cost per query

JOB is a job's id or its name. Any node answers (it forwards to the coordinator); during a
coordinator failover the client retries the node's 503 for a few seconds.

Exit codes: 0 success; 1 the cluster refused or failed (unknown job, node unreachable, a job
that was cancelled or did not finish within --timeout, a model that failed to load); 2 a bad
argument (nothing is sent).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from idunno.cli.options import add_cluster_options
from idunno.cli.render import table
from idunno.client import Client, ClientError

ClientFactory = Callable[[argparse.Namespace], Client]
AddParser = Callable[..., argparse.ArgumentParser]

MAX_BATCH_SIZE = 4096
WAIT_POLL_S = 0.5
DEFAULT_RESULTS_LIMIT = 20


class JobUsage(ValueError):
    """A bad argument (main prints it as one line, exit 2; nothing is sent)."""


class JobFailed(Exception):
    """The cluster answered, but the outcome is a failure (one line on stderr, exit 1)."""


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _check_batch_size(n: int, flag: str) -> int:
    if not 1 <= n <= MAX_BATCH_SIZE:
        raise JobUsage(f"{flag} must be between 1 and {MAX_BATCH_SIZE}, got {n}")
    return n


def _label(job: dict[str, Any]) -> str:
    """How a job is named in messages: its name, and its id when that differs."""
    name, jid = job.get("name"), job.get("id")
    if name and jid and name != jid:
        return f"{name} ({jid})"
    return str(name or jid)


def _progress(done: int, total: int) -> str:
    pct = 100.0 * done / total if total else 100.0
    return f"{done}/{total} ({pct:.1f}%)"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f} q/s"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} ms" if value >= 0.1 else f"{value:.2g} ms"  # tiny models: 0.0012 ms


# --- job submit / list / wait / cancel -------------------------------------------------------


def cmd_submit(args: argparse.Namespace, client: Client) -> int:
    _check_batch_size(args.batch_size, "--batch-size")
    if args.weight is not None and not args.weight > 0:
        raise JobUsage(f"--weight must be a positive number, got {args.weight:g}")
    if args.name is not None and not args.name.strip():
        raise JobUsage("--name must not be empty (or leave it out for a generated name)")
    job = client.submit_job(args.model, args.dataset, args.batch_size, args.name, args.weight)
    if args.json:
        _print_json(job)
        return 0
    print(
        f"submitted job {_label(job)}: model {job['model']} on dataset {job['dataset']}, "
        f"{job['total']} queries, batch size {job['batch_size']}"
    )
    return 0


def cmd_list(args: argparse.Namespace, client: Client) -> int:
    data = client.jobs()
    if args.json:
        _print_json(data)
        return 0
    print(f"coordinator {data.get('coordinator') or '-'} (epoch {data.get('epoch', '-')})")
    jobs = data.get("jobs") or []
    if not jobs:
        print("(no jobs yet: submit one with `idunno job submit --model M --dataset D ...`)")
        return 0
    rows = [
        [
            str(j["name"]),
            str(j["id"]),
            str(j["model"]),
            str(j["dataset"]),
            str(j["status"]),
            _progress(j["done"], j["total"]),
            _rate(j.get("rate")),
            str(j["batch_size"]),
            str(len(j.get("workers") or [])),
        ]
        for j in jobs
    ]
    headers = ["JOB", "ID", "MODEL", "DATASET", "STATUS", "PROGRESS", "RATE", "BATCH", "WORKERS"]
    print(table(headers, rows))
    return 0


class QueryProgress:
    """A one-line progress bar on stderr for a job's queries (silent when not a TTY)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self._drawn = False

    def show(self, done: int, total: int, rate: float | None) -> None:
        if not self.enabled:
            return
        frac = min(1.0, done / total) if total else 1.0
        bar = "#" * int(frac * 30)
        sys.stderr.write(
            f"\r{self.label} [{bar:<30}] {frac:6.1%} {done}/{total} queries {_rate(rate)}"
        )
        sys.stderr.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._drawn = False


def cmd_wait(args: argparse.Namespace, client: Client) -> int:
    if args.timeout is not None and not args.timeout > 0:
        raise JobUsage(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    t0 = time.monotonic()
    deadline = None if args.timeout is None else t0 + args.timeout
    bar = QueryProgress(f"job {args.job}")
    try:
        while True:
            job = client.job(args.job)
            bar.show(job["done"], job["total"], job.get("rate"))
            if job["status"] != "running":
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise JobFailed(
                    f"job {_label(job)} is not done after {args.timeout:g} s "
                    f"({job['done']}/{job['total']} queries): it keeps running; wait again with "
                    f"`idunno job wait {args.job}` or stop it with `idunno job cancel {args.job}`"
                )
            pause = WAIT_POLL_S if deadline is None else min(WAIT_POLL_S, deadline - now)
            time.sleep(max(pause, 0.0))
    finally:
        bar.close()
    if job["status"] == "cancelled":
        raise JobFailed(
            f"job {_label(job)} was cancelled after {job['done']}/{job['total']} queries: "
            "its results so far are in `idunno job results " + args.job + "`"
        )
    if job["status"] != "done":
        raise JobFailed(f"job {_label(job)} ended with unexpected status {job['status']!r}")
    if job.get("finished_at") is not None and job.get("submitted_at") is not None:
        took = job["finished_at"] - job["submitted_at"]
    else:
        took = time.monotonic() - t0
    errors = job.get("errors") or 0
    print(
        f"job {_label(job)} done: {job['total']} queries, {errors} error{'s' * (errors != 1)}, "
        f"in {took:.1f} s"
    )
    return 0


def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    job = client.cancel_job(args.job)
    if args.json:
        _print_json(job)
        return 0
    if job["status"] == "cancelled":
        print(f"cancelled job {_label(job)} after {job['done']}/{job['total']} queries")
    else:
        print(f"job {_label(job)} is already {job['status']}: nothing to cancel")
    return 0


# --- C1-C5 -----------------------------------------------------------------------------------


def cmd_rate(args: argparse.Namespace, client: Client) -> int:
    data = client.rates(args.job)
    if args.json:
        _print_json(data)
        return 0
    window = data.get("window_s", 10)
    print(f"query rates over the last {window:g} s:")
    rows = [
        [
            str(j["name"]),
            _rate(j.get("rate")),
            f"{j['done']}/{j['total']}",
            str(j["status"]),
        ]
        for j in data.get("jobs") or []
    ]
    print(table(["JOB", "RATE", "PROCESSED", "STATUS"], rows))
    if not rows:
        print("(no jobs yet: submit one with `idunno job submit`)")
    return 0


STAT_ROWS = [
    ("mean", "mean_ms"),
    ("sd", "sd_ms"),
    ("median", "median_ms"),
    ("p90", "p90_ms"),
    ("p95", "p95_ms"),
    ("p99", "p99_ms"),
]


def cmd_stats(args: argparse.Namespace, client: Client) -> int:
    data = client.job_stats(args.job)
    if args.json:
        _print_json(data)
        return 0
    count = data.get("count") or 0
    print(f"job {_label(data)}: processing time per query")
    rows = [["queries", str(count)]]
    rows += [[label, _ms(data.get(key)) if count else "-"] for label, key in STAT_ROWS]
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")
    return 0


def cmd_set_batch_size(args: argparse.Namespace, client: Client) -> int:
    _check_batch_size(args.size, "the batch size")
    data = client.set_batch_size(args.job, args.size)
    if args.json:
        _print_json(data)
        return 0
    job = data["job"]
    print(
        f"job {_label(job)}: batch size {data['previous']} -> {job['batch_size']} "
        "(from the next batch)"
    )
    return 0


def _result_row(r: dict[str, Any]) -> list[str]:
    worker = str(r.get("worker") or "-")
    ms = "-" if r.get("processing_ms") is None else f"{r['processing_ms']:.2f}"
    if r.get("error"):
        return [str(r["query"]), f"error: {r['error']}", "-", "-", worker, ms]
    class_ids = r.get("class_ids") or []
    labels = r.get("labels") or []
    scores = r.get("scores") or []
    top1 = str(labels[0]) if labels else (str(class_ids[0]) if class_ids else "-")
    score = f"{scores[0]:.4f}" if scores else "-"
    top5 = ",".join(str(c) for c in class_ids[:5]) or "-"
    return [str(r["query"]), top1, score, top5, worker, ms]


def cmd_results(args: argparse.Namespace, client: Client) -> int:
    if args.limit < 1:
        raise JobUsage(f"--limit must be at least 1, got {args.limit}")
    if args.offset < 0:
        raise JobUsage(f"--offset must be 0 or more, got {args.offset}")
    data = client.job_results(args.job, args.query, args.limit, args.offset)
    if args.json:
        _print_json(data)
        return 0
    results = data.get("results") or []
    answered = data.get("answered", len(results))
    print(f"job {_label(data)}: {answered}/{data.get('total', '?')} queries answered")
    if args.query is not None and not results:
        print(f"(no result for query {args.query!r} yet)")
        return 0
    print(
        table(
            ["QUERY", "TOP-1", "SCORE", "TOP-5", "WORKER", "MS"], [_result_row(r) for r in results]
        )
    )
    more = answered - args.offset - len(results) if args.query is None else 0
    if more > 0:
        print(f"... {more} more: use --limit/--offset")
    return 0


def cmd_assignment(args: argparse.Namespace, client: Client) -> int:
    data = client.assignment()
    if args.json:
        _print_json(data)
        return 0
    jobs = data.get("jobs") or []
    names = {j["id"]: str(j.get("name") or j["id"]) for j in jobs}
    print(
        f"coordinator {data.get('coordinator') or '-'}, standby {data.get('standby') or '-'}, "
        f"epoch {data.get('epoch', '-')}"
    )
    workers: dict[str, list[str]] = data.get("workers") or {}
    node_rows = [
        [node, ", ".join(names.get(j, j) for j in ids) or "-"]
        for node, ids in sorted(workers.items())
    ]
    print(table(["NODE", "JOBS"], node_rows))
    print()
    job_rows = [
        [
            names[j["id"]],
            ", ".join(j.get("workers") or []) or "-",
            "-" if j.get("share") is None else f"{100 * j['share']:.1f}%",
        ]
        for j in jobs
    ]
    print(table(["JOB", "WORKERS", "SHARE"], job_rows))
    if not job_rows:
        print("(no running jobs)")
    return 0


# --- train -----------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace, client: Client) -> int:
    t0 = time.monotonic()
    data = client.train(args.model)
    models = data.get("models") or []
    failed: list[str] = []
    rows = []
    for m in models:
        for node, report in sorted((m.get("workers") or {}).items()):
            if "error" in report:
                rows.append([str(m["model"]), node, f"error: {report['error']}"])
                failed.append(f"{m['model']} on {node}")
            else:
                rows.append([str(m["model"]), node, _ms(report.get("cost_per_query_ms"))])
    if args.json:
        _print_json(data)
    else:
        nodes = {r[1] for r in rows}
        print(
            f"loaded {len(models)} model{'s' * (len(models) != 1)} on {len(nodes)} "
            f"worker{'s' * (len(nodes) != 1)} in {time.monotonic() - t0:.1f} s"
        )
        print(table(["MODEL", "NODE", "COST/QUERY"], rows))
        if not models:
            print("(no models in the store: add one with `idunno model add NAME --builtin`)")
    if failed:
        raise JobFailed(
            f"{len(failed)} load{'s' * (len(failed) != 1)} failed ({', '.join(failed)}): "
            "see the errors above, fix the model (`idunno model list NAME`) and rerun "
            "`idunno train`"
        )
    return 0


# --- registration ----------------------------------------------------------------------------


def _hint(command: str, exc: ClientError) -> str:
    """What to do about an error the node answered, when its message does not say."""
    if "`idunno " in str(exc) or "--name" in str(exc):
        return ""
    if exc.status == 404:
        if command == "submit":
            return " (see `idunno model list` and `idunno dataset list`)"
        if command != "train":
            return " (see `idunno job list`)"
    if exc.status == 409 and command == "submit":
        return " (pick another --name)"
    return ""


def _bind(
    fn: Callable[[argparse.Namespace, Client], int], client: ClientFactory
) -> Callable[..., int]:
    """Run FN with a client; errors from the cluster are one line on stderr with exit 1."""
    command = fn.__name__.removeprefix("cmd_")

    def run(args: argparse.Namespace) -> int:
        c = client(args)
        try:
            return fn(args, c)
        except ClientError as exc:
            print(f"idunno: error: {exc}{_hint(command, exc)}", file=sys.stderr)
        except JobFailed as exc:
            print(f"idunno: error: {exc}", file=sys.stderr)
        return 1

    return run


def _no_action(args: argparse.Namespace) -> int:  # pragma: no cover - argparse requires ACTION
    raise JobUsage("give an ACTION (see `idunno job --help`)")


def register(add: AddParser, client: ClientFactory) -> None:
    parent = add(
        "job",
        _no_action,
        "inference jobs: submit, list, wait, cancel, rate, stats, set-batch-size, results, "
        "assignment",
        common=False,
    )
    sub = parent.add_subparsers(
        dest="job_action", metavar="ACTION", required=True, parser_class=type(parent)
    )

    def action(
        name: str,
        fn: Callable[[argparse.Namespace, Client], int],
        help_: str,
        job_arg: bool = True,
        listing: bool = False,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=_bind(fn, client))
        add_cluster_options(p, listing)
        if job_arg:
            p.add_argument("job", metavar="JOB", help="the job's id or name")
        return p

    p = action("submit", cmd_submit, "run MODEL on every item of DATASET", job_arg=False)
    p.add_argument("--model", required=True, metavar="M", help="a stored model")
    p.add_argument("--dataset", required=True, metavar="D", help="a stored dataset")
    p.add_argument(
        "--batch-size",
        required=True,
        type=int,
        metavar="B",
        help=f"queries per batch sent to a worker (1..{MAX_BATCH_SIZE})",
    )
    p.add_argument("--name", metavar="N", help="a unique job name (default: generated)")
    p.add_argument(
        "--weight",
        type=float,
        metavar="W",
        help="fair share weight (default 1: every job gets the same query rate)",
    )
    action("list", cmd_list, "every job, its progress and query rate", False, listing=True)
    p = action("wait", cmd_wait, "wait until JOB is done (exit 1 if cancelled or timed out)")
    p.add_argument(
        "--timeout", type=float, metavar="S", help="give up after S seconds (default: never)"
    )
    action("cancel", cmd_cancel, "cancel JOB (its results so far are kept)")
    p = action(
        "rate", cmd_rate, "C1: query rate over the last 10 s and queries processed", False, True
    )
    p.add_argument("job", metavar="JOB", nargs="?", help="only this job (id or name)")
    action(
        "stats",
        cmd_stats,
        "C2: per-query processing time of JOB: mean, sd, median, p90, p95, p99",
        listing=True,
    )
    p = action(
        "set-batch-size", cmd_set_batch_size, "C3: change JOB's batch size (from the next batch)"
    )
    p.add_argument("size", metavar="N", type=int, help=f"the new batch size (1..{MAX_BATCH_SIZE})")
    p = action(
        "results",
        cmd_results,
        "C4: JOB's results in dataset order (top-1 label or class, score, top-5 classes, "
        f"worker, processing time); --limit defaults to {DEFAULT_RESULTS_LIMIT}, with --json too",
        listing=True,
    )
    p.add_argument("--query", metavar="ID", help="only the result of this query id")
    p.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_RESULTS_LIMIT,
        metavar="N",
        help=f"at most N results (default {DEFAULT_RESULTS_LIMIT})",
    )
    p.add_argument(
        "--offset", type=int, default=0, metavar="K", help="skip the first K results (default 0)"
    )
    action(
        "assignment",
        cmd_assignment,
        "C5: coordinator, standby, which workers run which jobs, and each job's share",
        False,
        True,
    )

    p = add(
        "train",
        _bind(cmd_train, client),
        "load models on every worker and measure their cost per query (exit 1 if any fails)",
        listing=True,
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help="a model to load (repeat for more; default: every stored model)",
    )
