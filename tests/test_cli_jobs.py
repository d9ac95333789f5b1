"""`idunno job ...`, `idunno train` and the ROLE column of `idunno members`, against an in-process
stub of the public job API (docs/control-plane.md, "Public job API").

The stub runs in a thread (http.server on 127.0.0.1, port 0), answers the contract's routes with
canned data, records every request, refuses requests without a valid bearer token, and can be
told to answer errors. The CLI runs in-process through `idunno.cli.main.main`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from idunno import client as client_module
from idunno.cli import job_cmds
from idunno.cli.main import main
from idunno.client import Client, ClientError
from idunno.localcluster import HOST, free_ports
from idunno.transport import keys, tokens
from tests.conftest import IDUNNO_ENV, assert_one_line_error

# --- the stub ---------------------------------------------------------------------------------


def _job(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "j-0001",
        "name": "digits-1",
        "model": "digits_mlp",
        "dataset": "digits",
        "batch_size": 16,
        "weight": 1.0,
        "status": "running",
        "total": 1797,
        "done": 900,
        "errors": 3,
        "submitted_at": 1_700_000_000.0,
        "finished_at": None,
        "rate": 123.44,
        "workers": ["n2", "n3"],
    }
    base.update(fields)
    return base


@dataclass
class Request:
    method: str
    raw_path: str  # as sent: quoting intact
    path: str  # without the query string, still quoted
    query: dict[str, list[str]]
    body: Any
    content_type: str | None


class Stub:
    """The node's public job API with canned, plausible data."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.at = ""  # HOST:PORT, once serving
        self.expect_bad_tokens = False
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.bad_tokens = 0
        self.errors: list[
            tuple[int, dict[str, str]]
        ] = []  # answered, in order, before anything else
        self.jobs = [
            _job(),
            _job(
                id="j-0002",
                name="my job/2",
                model="resnet18",
                dataset="photos",
                batch_size=8,
                status="done",
                total=100,
                done=100,
                errors=0,
                finished_at=1_700_000_050.0,
                rate=0.0,
                workers=[],
            ),
        ]
        # Successive (done, status) of GET /v1/jobs/{job}: the job advances once per poll.
        self.script: list[tuple[int, str]] = []
        self.stats: dict[str, Any] = {
            "count": 900,
            "mean_ms": 1.23456,
            "sd_ms": 0.5,
            "median_ms": 1.1,
            "p90_ms": 2.0,
            "p95_ms": 2.5,
            "p99_ms": 4.125,
        }
        self.train_errors: dict[tuple[str, str], str] = {}  # (model, node) -> error

    # -- plumbing

    def fail_next(self, status: int, error: str, count: int = 1) -> None:
        with self.lock:
            self.errors.extend([(status, {"error": error})] * count)

    def sent(self, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.method == method or method is None]

    def find(self, ref: str) -> dict[str, Any] | None:
        return next((j for j in self.jobs if ref in (j["id"], j["name"])), None)

    def answer(self, method: str, raw: str, headers: Any, data: bytes) -> tuple[int, Any]:
        token = (headers.get("Authorization") or "").removeprefix("Bearer ")
        if tokens.check(self.key, token) is not None:
            self.bad_tokens += 1
            return 401, {"error": "bad token"}
        split = urlsplit(raw)
        body = json.loads(data) if data else None
        with self.lock:
            self.requests.append(
                Request(
                    method,
                    raw,
                    split.path,
                    parse_qs(split.query),
                    body,
                    headers.get("Content-Type"),
                )
            )
            if self.errors:
                return self.errors.pop(0)
            return self.route(method, split.path, parse_qs(split.query), body)

    def route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        parts = [unquote(p) for p in path.split("/")[1:]]
        match method, parts:
            case "GET", ["v1", "members"]:
                return 200, MEMBERS
            case "GET", ["v1", "control"]:
                return 200, {"epoch": 7, "coordinator": "n1", "standby": "n2", "role": "worker"}
            case "GET", ["v1", "jobs"]:
                return 200, {"jobs": self.jobs, "coordinator": "n1", "epoch": 7}
            case "POST", ["v1", "jobs"]:
                if body["model"] == "nope":
                    return 404, {"error": "unknown model 'nope'"}
                if body["batch_size"] > 4096:
                    return 400, {"error": "batch_size must be 1..4096"}
                job = _job(
                    id="j-0003",
                    name=body.get("name", "j-0003"),
                    model=body["model"],
                    dataset=body["dataset"],
                    batch_size=body["batch_size"],
                    weight=body.get("weight", 1.0),
                    done=0,
                    errors=0,
                    rate=None,
                    workers=[],
                )
                return 201, {"job": job}
            case "GET", ["v1", "rates"]:
                jobs = [j for j in self.jobs if "job" not in query or j["name"] == query["job"][0]]
                keep = ("id", "name", "rate", "done", "total", "status")
                return 200, {"window_s": 10, "jobs": [{k: j[k] for k in keep} for j in jobs]}
            case "GET", ["v1", "assignment"]:
                return 200, ASSIGNMENT
            case "POST", ["v1", "train"]:
                return 200, self.train(body["models"] or ["digits_mlp", "resnet18"])
            case _, ["v1", "jobs", ref, *rest]:
                found = self.find(ref)
                if found is None:
                    return 404, {"error": f"unknown job {ref!r}"}
                return self.job_route(method, found, rest, query, body)
        return 404, {"error": f"no route {method} {path}"}

    def job_route(
        self,
        method: str,
        job: dict[str, Any],
        rest: list[str],
        query: dict[str, list[str]],
        body: Any,
    ) -> tuple[int, Any]:
        match method, rest:
            case "GET", []:
                if self.script:
                    job["done"], job["status"] = self.script.pop(0)
                    if job["status"] == "done":
                        job["finished_at"] = job["submitted_at"] + 12.5
                return 200, {"job": job}
            case "POST", ["cancel"]:
                if job["status"] == "running":
                    job["status"] = "cancelled"
                return 200, {"job": job}
            case "GET", ["stats"]:
                return 200, {"id": job["id"], "name": job["name"], **self.stats}
            case "POST", ["batch-size"]:
                previous = job["batch_size"]
                job["batch_size"] = body["batch_size"]
                return 200, {"job": job, "previous": previous}
            case "GET", ["results"]:
                rows = RESULTS
                if "query" in query:
                    rows = [r for r in rows if r["query"] == query["query"][0]]
                offset = int(query.get("offset", ["0"])[0])
                limit = int(query.get("limit", ["1000000"])[0])
                page = rows[offset : offset + limit]
                return 200, {
                    "id": job["id"],
                    "name": job["name"],
                    "total": job["total"],
                    "answered": len(RESULTS),
                    "results": page,
                }
        return 404, {"error": "no such route"}

    def train(self, models: list[str]) -> dict[str, Any]:
        out = []
        for i, name in enumerate(models):
            workers: dict[str, Any] = {}
            for node in ("n1", "n2"):
                if (name, node) in self.train_errors:
                    workers[node] = {"error": self.train_errors[name, node]}
                else:
                    workers[node] = {"cost_per_query_ms": 0.25 + i * 10 + (node == "n2")}
            out.append({"model": name, "version": 3, "workers": workers})
        return {"models": out}


MEMBERS = {
    "self": "n1",
    "members": [
        {
            "id": "n1",
            "address": "127.0.0.1:7100",
            "status": "alive",
            "incarnation": 0,
            "changed_at": 1_700_000_000.0,
            "role": "coordinator",
        },
        {
            "id": "n2",
            "address": "127.0.0.1:7101",
            "status": "alive",
            "incarnation": 2,
            "changed_at": 1_700_000_000.0,
            "role": "standby",
        },
        {
            "id": "n3",
            "address": "127.0.0.1:7102",
            "status": "failed",
            "incarnation": 1,
            "changed_at": 1_700_000_000.0,
        },
    ],
}

ASSIGNMENT = {
    "epoch": 7,
    "coordinator": "n1",
    "standby": "n2",
    "workers": {"n2": ["j-0001"], "n3": ["j-0001", "j-0004"], "n4": []},
    "jobs": [
        {"id": "j-0001", "name": "digits-1", "workers": ["n2", "n3"], "share": 0.625},
        {"id": "j-0004", "name": "photos-a", "workers": ["n3"], "share": 0.375},
    ],
}


def _result(i: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "query": f"img_{i:06d}.jpg",
        "index": i,
        "class_ids": [281, 282, 285, 287, 7, 9],
        "scores": [0.91234, 0.05, 0.02, 0.01, 0.005, 0.001],
        "labels": ["tabby", "tiger cat", "Egyptian cat", "lynx", "cock"],
        "output": None,
        "error": None,
        "worker": "n2",
        "processing_ms": 4.5678,
        "epoch": 7,
        "batch": 12,
    }
    row.update(fields)
    return row


RESULTS = [
    _result(0),
    _result(1, labels=None, class_ids=[3, 8, 5], scores=[0.5, 0.3, 0.2], worker="n3"),
    _result(2, class_ids=None, scores=None, labels=None, error="cannot decode image"),
    *[_result(i) for i in range(3, 30)],
]


class _Handler(BaseHTTPRequestHandler):
    stub: Stub

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        status, obj = self.stub.answer(self.command, self.path, self.headers, data)
        payload = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:  # quiet: stderr is under test
        pass


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.key"
    keys.write_key_file(path, keys.generate())
    return path


@pytest.fixture
def stub(key_file: Path) -> Iterator[Stub]:
    s = Stub(keys.load(str(key_file)))
    handler = type("Handler", (_Handler,), {"stub": s})
    server = ThreadingHTTPServer((HOST, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    s.at = f"{HOST}:{server.server_address[1]}"
    try:
        yield s
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert s.bad_tokens == 0 or s.expect_bad_tokens, "a request without a valid token"


# --- running the CLI in-process ---------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str

    def process(self) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], self.code, self.out, self.err)


Cli = Callable[..., Result]


@pytest.fixture
def cli(
    stub: Stub, key_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    """`cli("job", "list")` runs `idunno job list --at STUB --key-file KEY` in-process."""
    for var in IDUNNO_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(job_cmds, "WAIT_POLL_S", 0.02)

    def run(*argv: str, at: str | None = None, key: Path | None = None) -> Result:
        capsys.readouterr()
        try:
            code = main([*argv, "--at", at or stub.at, "--key-file", str(key or key_file)])
        except SystemExit as exc:  # argparse's own usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def one_line_error(r: Result, code: int, *fragments: str) -> str:
    """Failed the documented way: exit CODE, one `idunno: error:` line, nothing on stdout."""
    if code == 2:
        return assert_one_line_error(r.process(), *fragments)
    assert r.code == code, (r.code, r.out, r.err)
    return assert_one_line_error(subprocess.CompletedProcess([], 2, r.out, r.err), *fragments)


def rows(text: str) -> list[list[str]]:
    """A table's lines split on runs of 2+ spaces (cells may contain single spaces)."""
    return [re.split(r"\s{2,}", ln.strip()) for ln in text.splitlines() if ln.strip()]


# --- submit / list ------------------------------------------------------------------------------


def test_submit_posts_the_job_as_json_and_prints_a_summary(cli: Cli, stub: Stub) -> None:
    r = cli(
        "job", "submit", "--model", "resnet18", "--dataset", "photos", "--batch-size", "16",
        "--name", "cats", "--weight", "2",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert r.err == ""
    assert r.out == (
        "submitted job cats (j-0003): model resnet18 on dataset photos, 1797 queries, "
        "batch size 16\n"
    )
    (req,) = stub.requests
    assert (req.method, req.raw_path) == ("POST", "/v1/jobs")
    assert req.content_type == "application/json"
    assert req.body == {
        "model": "resnet18",
        "dataset": "photos",
        "batch_size": 16,
        "name": "cats",
        "weight": 2.0,
    }
    assert type(req.body["batch_size"]) is int


def test_submit_without_name_or_weight_leaves_them_out_and_json_round_trips(
    cli: Cli, stub: Stub
) -> None:
    r = cli("job", "submit", "--model", "m", "--dataset", "d", "--batch-size", "4", "--json")
    assert r.code == 0, r.err
    assert stub.requests[0].body == {"model": "m", "dataset": "d", "batch_size": 4}
    shown = json.loads(r.out)
    assert shown["id"] == "j-0003"
    assert (shown["model"], shown["dataset"], shown["batch_size"]) == ("m", "d", 4)
    assert shown == _job(
        id="j-0003", name="j-0003", model="m", dataset="d", batch_size=4, weight=1.0,
        done=0, errors=0, rate=None, workers=[],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--batch-size", "0"], "--batch-size must be between 1 and 4096, got 0"),
        (["--batch-size", "5000"], "--batch-size must be between 1 and 4096, got 5000"),
        (["--batch-size", "4", "--weight", "0"], "--weight must be a positive number"),
        (["--batch-size", "4", "--name", " "], "--name must not be empty"),
        (["--batch-size", "x"], "invalid int value: 'x'"),
        ([], "--batch-size"),
    ],
)
def test_submit_usage_errors_send_nothing(
    cli: Cli, stub: Stub, args: list[str], fragment: str
) -> None:
    r = cli("job", "submit", "--model", "m", "--dataset", "d", *args)
    one_line_error(r, 2, fragment)
    assert stub.requests == []


def test_submit_unknown_model_is_a_one_line_error_naming_the_fix(cli: Cli, stub: Stub) -> None:
    r = cli("job", "submit", "--model", "nope", "--dataset", "d", "--batch-size", "4")
    one_line_error(r, 1, "answered 404", "unknown model 'nope'", "idunno model list")
    assert len(stub.requests) == 1  # a 404 is not retried


def test_list_shows_the_coordinator_and_every_job(cli: Cli, stub: Stub) -> None:
    r = cli("job", "list")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "coordinator n1 (epoch 7)"
    table = rows("\n".join(lines[1:]))
    assert table[0] == [
        "JOB", "ID", "MODEL", "DATASET", "STATUS", "PROGRESS", "RATE", "BATCH", "WORKERS",
    ]  # fmt: skip
    assert table[1] == [
        "digits-1", "j-0001", "digits_mlp", "digits", "running", "900/1797 (50.1%)",
        "123.4 q/s", "16", "2",
    ]  # fmt: skip
    assert table[2] == [
        "my job/2", "j-0002", "resnet18", "photos", "done", "100/100 (100.0%)", "0.0 q/s",
        "8", "0",
    ]  # fmt: skip
    assert [(q.method, q.raw_path) for q in stub.requests] == [("GET", "/v1/jobs")]

    r = cli("job", "list", "--json")
    assert json.loads(r.out) == {"jobs": stub.jobs, "coordinator": "n1", "epoch": 7}


def test_list_with_no_jobs_says_how_to_submit(cli: Cli, stub: Stub) -> None:
    stub.jobs = []
    r = cli("job", "list")
    assert r.code == 0
    assert r.out.splitlines() == [
        "coordinator n1 (epoch 7)",
        "(no jobs yet: submit one with `idunno job submit --model M --dataset D ...`)",
    ]


# --- wait / cancel ------------------------------------------------------------------------------


def test_wait_polls_until_done(cli: Cli, stub: Stub) -> None:
    stub.script = [(1000, "running"), (1500, "running"), (1797, "done")]
    r = cli("job", "wait", "digits-1")
    assert r.code == 0, r.err
    assert r.out == "job digits-1 (j-0001) done: 1797 queries, 3 errors, in 12.5 s\n"
    assert r.err == ""  # not a TTY: no progress bar
    gets = [(q.method, q.raw_path) for q in stub.requests]
    assert gets == [("GET", "/v1/jobs/digits-1")] * 3


def test_wait_draws_a_progress_bar_on_a_tty(
    cli: Cli, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    stub.script = [(0, "running"), (898, "running"), (1797, "done")]
    r = cli("job", "wait", "j-0001")
    assert r.code == 0, r.err
    frames = r.err.split("\r")[1:]
    assert len(frames) == 3
    assert frames[0].startswith("job j-0001 [" + " " * 30 + "]   0.0% 0/1797 queries")
    assert frames[1].startswith("job j-0001 [" + "#" * 14 + " " * 16 + "]  50.0% 898/1797")
    assert frames[2] == "job j-0001 [" + "#" * 30 + "] 100.0% 1797/1797 queries 123.4 q/s\n"
    assert "done: 1797 queries" in r.out


def test_wait_on_a_cancelled_job_exits_1(cli: Cli, stub: Stub) -> None:
    stub.script = [(1000, "running"), (1200, "cancelled")]
    r = cli("job", "wait", "digits-1")
    one_line_error(r, 1, "job digits-1 (j-0001) was cancelled after 1200/1797 queries")
    assert len(stub.requests) == 2


def test_wait_timeout_exits_1_and_says_what_to_do(
    cli: Cli, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_cmds, "WAIT_POLL_S", 0.5)  # the real interval
    t0 = time.monotonic()
    r = cli("job", "wait", "digits-1", "--timeout", "0.7")
    took = time.monotonic() - t0
    one_line_error(r, 1, "not done after 0.7 s", "900/1797", "idunno job wait digits-1")
    assert 0.7 <= took < 2.0
    assert len(stub.requests) == 3  # at 0, 0.5 and 0.7 s


def test_wait_rides_out_a_failover(cli: Cli, stub: Stub) -> None:
    stub.script = [(1797, "done")]
    stub.fail_next(503, "no coordinator reachable yet", count=2)
    r = cli("job", "wait", "digits-1")
    assert r.code == 0, r.err
    assert "done: 1797 queries, 3 errors" in r.out
    assert len(stub.requests) == 3


def test_wait_bad_timeout_is_a_usage_error(cli: Cli, stub: Stub) -> None:
    one_line_error(
        cli("job", "wait", "x", "--timeout", "-1"), 2, "--timeout must be a positive number", "-1"
    )
    assert stub.requests == []


def test_cancel_quotes_the_name_in_the_path(cli: Cli, stub: Stub) -> None:
    r = cli("job", "cancel", "digits-1")
    assert r.code == 0, r.err
    assert r.out == "cancelled job digits-1 (j-0001) after 900/1797 queries\n"
    r = cli("job", "cancel", "my job/2")
    assert r.code == 0, r.err
    assert r.out == "job my job/2 (j-0002) is already done: nothing to cancel\n"
    assert [(q.method, q.raw_path) for q in stub.requests] == [
        ("POST", "/v1/jobs/digits-1/cancel"),
        ("POST", "/v1/jobs/my%20job%2F2/cancel"),
    ]


def test_unknown_job_is_a_one_line_error_with_exit_1(cli: Cli, stub: Stub) -> None:
    for argv in (
        ["job", "wait", "ghost"],
        ["job", "cancel", "ghost"],
        ["job", "stats", "ghost"],
        ["job", "results", "ghost"],
        ["job", "set-batch-size", "ghost", "8"],
    ):
        r = cli(*argv)
        one_line_error(r, 1, "answered 404", "unknown job 'ghost'", "idunno job list")
    assert len(stub.requests) == 5


# --- C1 rate, C2 stats, C3 set-batch-size ----------------------------------------------------


def test_rate_for_all_jobs_and_for_one(cli: Cli, stub: Stub) -> None:
    r = cli("job", "rate")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "query rates over the last 10 s:"
    assert rows("\n".join(lines[1:])) == [
        ["JOB", "RATE", "PROCESSED", "STATUS"],
        ["digits-1", "123.4 q/s", "900/1797", "running"],
        ["my job/2", "0.0 q/s", "100/100", "done"],
    ]
    r = cli("job", "rate", "my job/2", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["jobs"] == [
        {"id": "j-0002", "name": "my job/2", "rate": 0.0, "done": 100, "total": 100,
         "status": "done"},
    ]  # fmt: skip
    assert stub.requests[0].raw_path == "/v1/rates"
    assert stub.requests[1].path == "/v1/rates"
    assert stub.requests[1].query == {"job": ["my job/2"]}


def test_stats_prints_ms_with_two_decimals(cli: Cli, stub: Stub) -> None:
    r = cli("job", "stats", "digits-1")
    assert r.code == 0, r.err
    assert r.out.splitlines() == [
        "job digits-1 (j-0001): processing time per query",
        "queries  900",
        "mean     1.23 ms",
        "sd       0.50 ms",
        "median   1.10 ms",
        "p90      2.00 ms",
        "p95      2.50 ms",
        "p99      4.12 ms",
    ]
    assert stub.requests[0].raw_path == "/v1/jobs/digits-1/stats"
    r = cli("job", "stats", "digits-1", "--json")
    assert json.loads(r.out) == {"id": "j-0001", "name": "digits-1", **stub.stats}


def test_stats_with_no_queries_yet_shows_dashes(cli: Cli, stub: Stub) -> None:
    stub.stats = {k: None for k in stub.stats} | {"count": 0}
    r = cli("job", "stats", "my job/2")
    assert r.code == 0, r.err
    assert rows(r.out)[1:] == [["queries", "0"]] + [
        [s, "-"] for s in ("mean", "sd", "median", "p90", "p95", "p99")
    ]
    assert stub.requests[0].raw_path == "/v1/jobs/my%20job%2F2/stats"


def test_set_batch_size_posts_an_int_and_reports_the_change(cli: Cli, stub: Stub) -> None:
    r = cli("job", "set-batch-size", "digits-1", "32")
    assert r.code == 0, r.err
    assert r.out == "job digits-1 (j-0001): batch size 16 -> 32 (from the next batch)\n"
    (req,) = stub.requests
    assert (req.method, req.raw_path, req.content_type) == (
        "POST",
        "/v1/jobs/digits-1/batch-size",
        "application/json",
    )
    assert req.body == {"batch_size": 32}
    assert type(req.body["batch_size"]) is int
    r = cli("job", "set-batch-size", "j-0001", "4096", "--json")
    assert json.loads(r.out)["previous"] == 32
    assert json.loads(r.out)["job"]["batch_size"] == 4096


@pytest.mark.parametrize("n", ["0", "5000", "-3"])
def test_set_batch_size_out_of_range_is_a_usage_error_and_sends_nothing(
    cli: Cli, stub: Stub, n: str
) -> None:
    r = cli("job", "set-batch-size", "digits-1", n)
    one_line_error(r, 2, "the batch size must be between 1 and 4096", f"got {n}")
    assert stub.requests == []


# --- C4 results, C5 assignment --------------------------------------------------------------


def test_results_table(cli: Cli, stub: Stub) -> None:
    r = cli("job", "results", "digits-1")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "job digits-1 (j-0001): 30/1797 queries answered"
    table = rows("\n".join(lines[1:-1]))
    assert table[0] == ["QUERY", "TOP-1", "SCORE", "TOP-5", "WORKER", "MS"]
    assert table[1] == ["img_000000.jpg", "tabby", "0.9123", "281,282,285,287,7", "n2", "4.57"]
    assert table[2] == ["img_000001.jpg", "3", "0.5000", "3,8,5", "n3", "4.57"]
    assert table[3] == ["img_000002.jpg", "error: cannot decode image", "-", "-", "n2", "4.57"]
    assert len(table) == 21  # the default limit
    assert lines[-1] == "... 10 more: use --limit/--offset"
    (req,) = stub.requests
    assert req.path == "/v1/jobs/digits-1/results"
    assert req.query == {"limit": ["20"], "offset": ["0"]}


def test_results_paging_query_and_json(cli: Cli, stub: Stub) -> None:
    r = cli("job", "results", "my job/2", "--limit", "5", "--offset", "25")
    assert r.code == 0, r.err
    assert [row[0] for row in rows(r.out)[2:]] == [f"img_{i:06d}.jpg" for i in range(25, 30)]
    assert "more" not in r.out
    assert stub.requests[0].path == "/v1/jobs/my%20job%2F2/results"
    assert stub.requests[0].query == {"limit": ["5"], "offset": ["25"]}

    r = cli("job", "results", "digits-1", "--query", "img_000001.jpg", "--json")
    assert r.code == 0, r.err
    assert stub.requests[1].query == {"query": ["img_000001.jpg"], "limit": ["20"], "offset": ["0"]}
    assert json.loads(r.out) == {
        "id": "j-0001",
        "name": "digits-1",
        "total": 1797,
        "answered": 30,
        "results": [RESULTS[1]],
    }
    r = cli("job", "results", "digits-1", "--query", "missing.jpg")
    assert r.code == 0, r.err
    assert r.out.splitlines()[-1] == "(no result for query 'missing.jpg' yet)"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--limit", "0"], "--limit must be at least 1"), (["--offset", "-1"], "--offset must")],
)
def test_results_bad_paging_is_a_usage_error(
    cli: Cli, stub: Stub, args: list[str], fragment: str
) -> None:
    one_line_error(cli("job", "results", "digits-1", *args), 2, fragment)
    assert stub.requests == []


def test_assignment(cli: Cli, stub: Stub) -> None:
    r = cli("job", "assignment")
    assert r.code == 0, r.err
    head, nodes, jobs = r.out.split("\n", 1)[0], *r.out.split("\n", 1)[1].split("\n\n")
    assert head == "coordinator n1, standby n2, epoch 7"
    assert rows(nodes) == [
        ["NODE", "JOBS"],
        ["n2", "digits-1"],
        ["n3", "digits-1, photos-a"],
        ["n4", "-"],
    ]
    assert rows(jobs) == [
        ["JOB", "WORKERS", "SHARE"],
        ["digits-1", "n2, n3", "62.5%"],
        ["photos-a", "n3", "37.5%"],
    ]
    r = cli("job", "assignment", "--json")
    assert json.loads(r.out) == ASSIGNMENT
    assert [q.raw_path for q in stub.requests] == ["/v1/assignment"] * 2


# --- train ----------------------------------------------------------------------------------------


def test_train_named_models(cli: Cli, stub: Stub) -> None:
    r = cli("train", "--model", "resnet18", "--model", "alexnet")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith("loaded 2 models on 2 workers in ")
    assert rows("\n".join(lines[1:])) == [
        ["MODEL", "NODE", "COST/QUERY"],
        ["resnet18", "n1", "0.25 ms"],
        ["resnet18", "n2", "1.25 ms"],
        ["alexnet", "n1", "10.25 ms"],
        ["alexnet", "n2", "11.25 ms"],
    ]
    (req,) = stub.requests
    assert (req.method, req.raw_path, req.content_type) == (
        "POST",
        "/v1/train",
        "application/json",
    )
    assert req.body == {"models": ["resnet18", "alexnet"]}


def test_train_every_model_json(cli: Cli, stub: Stub) -> None:
    r = cli("train", "--json")
    assert r.code == 0, r.err
    assert stub.requests[0].body == {"models": []}
    assert [m["model"] for m in json.loads(r.out)["models"]] == ["digits_mlp", "resnet18"]


def test_train_failure_prints_everything_then_exits_1(cli: Cli, stub: Stub) -> None:
    stub.train_errors = {("resnet18", "n2"): "out of memory"}
    r = cli("train")
    assert r.code == 1
    table = rows(r.out)[1:]
    assert ["resnet18", "n2", "error: out of memory"] in table
    assert ["digits_mlp", "n2", "1.25 ms"] in table
    assert len(table) == 5
    lines = r.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("idunno: error: 1 load failed (resnet18 on n2)")
    assert "idunno train" in lines[0]


def test_train_uses_a_long_timeout() -> None:
    assert client_module.TRAIN_TIMEOUT >= 60


# --- members ROLE ---------------------------------------------------------------------------------


def test_members_shows_each_role(cli: Cli, stub: Stub) -> None:
    r = cli("members")
    assert r.code == 0, r.err
    table = rows(r.out)
    assert table[0] == ["ID", "ADDRESS", "STATUS", "ROLE", "INCARNATION", "SINCE"]
    assert [row[:5] for row in table[1:]] == [
        ["n1 (self)", "127.0.0.1:7100", "alive", "coordinator", "0"],
        ["n2", "127.0.0.1:7101", "alive", "standby", "2"],
        ["n3", "127.0.0.1:7102", "failed", "-", "1"],
    ]
    r = cli("members", "--json")
    assert json.loads(r.out) == MEMBERS


# --- failover retries and transport errors ---------------------------------------------------


def test_503_is_retried_and_succeeds_after_two_failures(cli: Cli, stub: Stub) -> None:
    stub.fail_next(503, "no coordinator reachable yet", count=2)
    t0 = time.monotonic()
    r = cli("job", "list")
    took = time.monotonic() - t0
    assert r.code == 0, r.err
    assert r.out.startswith("coordinator n1 (epoch 7)\n")
    assert len(stub.requests) == 3
    assert 0.25 <= took < 2.0  # backed off 0.1 then 0.2 s


def test_503_that_persists_is_a_one_line_error(
    cli: Cli, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "FAILOVER_WAIT", 1.0)
    stub.fail_next(503, "no coordinator reachable yet", count=1000)
    t0 = time.monotonic()
    r = cli("job", "stats", "digits-1")
    took = time.monotonic() - t0
    one_line_error(
        r, 1, "answered 503: no coordinator reachable yet", "after 1 s", "idunno members"
    )
    assert 0.6 <= took < 2.5
    assert 4 <= len(stub.requests) <= 6  # 0.1, 0.2, 0.4 s pauses fit in 1 s


def test_400_is_not_retried(cli: Cli, stub: Stub) -> None:
    stub.fail_next(400, "dataset 'd' is empty")
    r = cli("job", "submit", "--model", "m", "--dataset", "d", "--batch-size", "4")
    one_line_error(r, 1, "answered 400: dataset 'd' is empty")
    assert len(stub.requests) == 1


def test_409_name_taken_says_pick_another_name(cli: Cli, stub: Stub) -> None:
    stub.fail_next(409, "job name 'cats' is taken")
    r = cli("job", "submit", "--model", "m", "--dataset", "d", "--batch-size", "4", "--name", "x")
    one_line_error(r, 1, "answered 409: job name 'cats' is taken", "pick another --name")


def test_wrong_key_is_a_one_line_error(cli: Cli, stub: Stub, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    keys.write_key_file(other, keys.generate())
    stub.expect_bad_tokens = True
    r = cli("job", "list", key=other)
    one_line_error(r, 1, "refused our credentials", "bad token")
    assert stub.bad_tokens == 1
    assert stub.requests == []


def test_unreachable_node_is_a_one_line_error(cli: Cli) -> None:
    at = f"{HOST}:{free_ports(1)[0]}"
    r = cli("job", "list", at=at)
    one_line_error(r, 1, "cannot reach a node at " + at, "connection refused")


def test_key_from_the_environment(
    stub: Stub, key_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDUNNO_CLUSTER_KEY", key_file.read_text().strip())
    monkeypatch.setenv("IDUNNO_AT", stub.at)
    monkeypatch.delenv("IDUNNO_DIR", raising=False)
    assert main(["job", "assignment", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ASSIGNMENT


# --- the client methods directly ------------------------------------------------------------------


def test_client_methods_unwrap_jobs_and_quote_names(stub: Stub, key_file: Path) -> None:
    c = Client(stub.at, keys.load(str(key_file)))
    assert c.job("my job/2") == stub.jobs[1]
    assert c.cancel_job("j-0001")["status"] == "cancelled"
    assert c.control() == {"epoch": 7, "coordinator": "n1", "standby": "n2", "role": "worker"}
    assert c.jobs()["epoch"] == 7
    assert c.rates()["window_s"] == 10
    assert c.job_stats("j-0001")["count"] == 900
    assert c.set_batch_size("digits-1", 64) == {"job": stub.jobs[0], "previous": 16}
    assert c.job_results("digits-1", limit=2)["results"] == RESULTS[:2]
    assert c.assignment() == ASSIGNMENT
    assert c.submit_job("m", "d", 2)["batch_size"] == 2
    assert [(q.method, q.raw_path) for q in stub.requests] == [
        ("GET", "/v1/jobs/my%20job%2F2"),
        ("POST", "/v1/jobs/j-0001/cancel"),
        ("GET", "/v1/control"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/rates"),
        ("GET", "/v1/jobs/j-0001/stats"),
        ("POST", "/v1/jobs/digits-1/batch-size"),
        ("GET", "/v1/jobs/digits-1/results?limit=2"),
        ("GET", "/v1/assignment"),
        ("POST", "/v1/jobs"),
    ]
    with pytest.raises(ClientError) as info:
        c.job("ghost")
    assert info.value.status == 404
    assert str(info.value) == f"node at {stub.at} answered 404: unknown job 'ghost'"
