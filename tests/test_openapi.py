"""The OpenAPI document (GET /openapi.json) and a property-based fuzz of the API it describes.

Without processes: the document is valid OpenAPI 3.1, describes exactly the public routes a node
registers, and its name patterns agree with the server's own validators.

With a real 4-node cluster (one digits model and dataset, one job, one file): schemathesis
generates requests from the document as served, positive and negative, for every operation but
the two that cannot be fuzzed (POST /v1/leave stops the node; the dashboard's event stream never
ends), and checks that no answer is a server error, an undocumented status or content type, or a
body that does not match its schema. Explicit cases: malformed JSON, unknown routes, bad tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate as validate_openapi
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from idunno.client import Client
from idunno.inference import catalog
from idunno.membership.config import preset
from idunno.node import openapi
from idunno.node import server as node_server
from idunno.node.logs import read_events
from idunno.store import names
from idunno.testing.jobs import add_builtin_model, add_digits_dataset, settled_reign
from idunno.testing.procs import ProcCluster, wait_for
from idunno.transport import tokens

DOC = openapi.DOCUMENT
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
# Not fuzzed: POST /v1/leave stops the node it reaches; the event stream never ends (both are
# exercised by their own tests). Every other operation is.
NOT_FUZZED = {("POST", "/v1/leave"), ("GET", "/v1/dashboard/stream")}
# Answers 503 by design on the nodes that do not lead: fuzzed on the coordinator.
COORDINATOR_ONLY = {"/v1/dashboard/coordinator"}
EXAMPLES = 10  # per operation and mode: about 570 requests in all, 10-25 s
LATE_EXAMPLES = 5
CASE_TIMEOUT_S = 20.0  # /v1/train loads models on every worker
FUZZ_BUDGET_S = 90.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MODEL = "digits_logreg"
DATASET = "digits"
JOB = "probe-job"
KNOWN_FILE = "known/file one.bin"


# --- the document, without processes ------------------------------------------------------------


def described() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in DOC["paths"].items()
        for method in item
        if method in METHODS
    }


def test_document_is_valid_openapi_3_1() -> None:
    validate_openapi(DOC)
    assert DOC["openapi"].startswith("3.1")
    # Served as built: the bytes are this document.
    assert json.loads(openapi._BODY) == DOC
    # Every operation needs the bearer token except the public pages and this document.
    public = {
        (m.upper(), p)
        for p, item in DOC["paths"].items()
        for m, op in item.items()
        if m in METHODS and op.get("security") == []
    }
    assert public == {
        ("GET", openapi.PATH),
        ("GET", "/"),
        ("GET", "/dashboard/"),
        ("GET", "/dashboard/{name}"),
    }
    # Every authenticated operation documents its 401 and every error is the {error} object.
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            if op.get("security") != []:
                assert "401" in op["responses"], (method, path)
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")):
                    assert response == {"$ref": f"#/components/responses/{code}"}
    for response in DOC["components"]["responses"].values():
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}


class _Captured(Exception):
    pass


class _NoRunner:
    """Stands in for web.AppRunner: Node.start() stops right after registering its routes."""

    def __init__(self, app: Any, **_: Any) -> None:
        self.app = app

    async def setup(self) -> None:
        raise _Captured

    async def cleanup(self) -> None:
        pass


def registered_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> set[tuple[str, str]]:
    """(method, path) of every route a node registers (its real start-up code, no sockets)."""
    monkeypatch.setattr(node_server.web, "AppRunner", _NoRunner)
    opts = node_server.NodeOptions(
        name="solo",
        host="127.0.0.1",
        port=1,
        advertise="127.0.0.1:1",
        seeds=(),
        data_dir=tmp_path / "solo",
        key=b"k" * 32,
        preset="local",
        config=preset("local"),
        stderr_level="error",
        inference_threads=0,
    )
    node = node_server.Node(opts)

    async def routes() -> set[tuple[str, str]]:
        with contextlib.suppress(_Captured):
            await node.start()
        try:
            assert isinstance(node._runner, _NoRunner), "Node.start() no longer uses AppRunner"
            return {
                (r.method, r.resource.canonical)
                for r in node._runner.app.router.routes()
                if r.resource is not None
            }
        finally:
            await node._close()
            node.log.close()

    return asyncio.run(routes())


def test_every_public_route_is_described(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    routes = registered_routes(tmp_path, monkeypatch)
    public = {
        (m, p)
        for m, p in routes
        if m != "HEAD" and not p.startswith(openapi.INTERNAL_PREFIX)  # HEAD: aiohttp's, for GET
    }
    assert ("GET", "/v1/members") in public and ("PUT", "/v1/files/{name}") in public
    missing = public - described()
    assert not missing, f"routes not described in src/idunno/node/openapi.py: {sorted(missing)}"
    extra = described() - public
    assert not extra, f"described but not served: {sorted(extra)}"


# Characters that matter to the name rules, and a few ordinary ones.
_NAME_CHARS = st.sampled_from([*"ab.Z9-_/\\ \x00\x1f\x7f\né%?#", "..", "./", "/.."])


@settings(max_examples=400, deadline=None, database=None)
@given(parts=st.lists(_NAME_CHARS, min_size=0, max_size=8))
def test_file_name_pattern_agrees_with_the_server(parts: list[str]) -> None:
    name = "".join(parts)
    try:
        names.validate(name)
        valid = True
    except names.InvalidName:
        valid = False
    # ECMA-262 `$` is the end of the string (Python's allows a final newline): use fullmatch.
    pattern = openapi.FILE_NAME_PATTERN.removeprefix("^").removesuffix("$")
    assert (re.fullmatch(pattern, name) is not None) == valid, name


@settings(max_examples=300, deadline=None, database=None)
@given(
    name=st.one_of(
        st.text(st.sampled_from("aZ09._-/ é\n"), max_size=6),
        st.text(st.sampled_from("ab1_"), min_size=60, max_size=70),
    )
)
def test_catalog_name_pattern_agrees_with_the_server(name: str) -> None:
    try:
        catalog.validate_name(name)
        valid = True
    except catalog.CatalogError:
        valid = False
    pattern = openapi.CATALOG_NAME_PATTERN.removeprefix("^").removesuffix("$")
    assert (re.fullmatch(pattern, name) is not None) == valid, name


# --- a real cluster -------------------------------------------------------------------------------


@dataclass
class Api:
    c: ProcCluster

    def address(self, node: str = "n1") -> str:
        return self.c.nodes[node].address

    def url(self, path: str, node: str = "n1") -> str:
        return f"http://{self.address(node)}{path}"

    def token(self, ttl: float = 3600.0) -> str:
        return tokens.mint(self.c.key, ttl=ttl)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def client(self, node: str = "n1", timeout: float = 10.0) -> Client:
        return Client(self.address(node), self.c.key, timeout=timeout)

    def coordinator_address(self) -> str:
        return self.address(str(self.client().control()["coordinator"]))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with ProcCluster(4, tmp_path_factory.mktemp("openapi")) as c:
        a = Api(c)
        clients = {n: a.client(n) for n in c.nodes}
        wait_for(lambda: settled_reign(clients), 45.0, "a coordinator every node agrees on")
        add_builtin_model(a.client(timeout=60.0), MODEL)
        add_digits_dataset(a.client(timeout=60.0), DATASET)
        a.client(timeout=30.0).submit_job(MODEL, DATASET, 64, name=JOB)
        a.client(timeout=30.0).put(_local_file(c.directory), KNOWN_FILE)
        yield a


def _local_file(directory: Path) -> Path:
    path = directory / "known.bin"
    path.write_bytes(bytes(range(256)) * 4)
    return path


def call(
    a: Api,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    node: str = "n1",
) -> tuple[int, str, Any]:
    """(status, content type, JSON body or None) of one raw request."""
    req = urllib.request.Request(a.url(path, node), data=body, method=method)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10.0) as resp:
            status, ctype, data = resp.status, resp.headers.get_content_type(), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:  # closes its socket at once, not at some later garbage collection
            status, ctype, data = exc.code, exc.headers.get_content_type(), exc.read()
    parsed = json.loads(data) if ctype == "application/json" else None
    return status, ctype, parsed


def http_errors(a: Api, since: float = 0.0) -> list[dict[str, Any]]:
    """Every `http_error` event (an unexpected exception in a handler) in the nodes' logs."""
    return [
        e for nd in a.c.nodes.values() for e in read_events(Path(nd.data_dir), "http_error", since)
    ]


def describe_errors(events: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{e.get('node')} {e.get('method')} {e.get('path')}: {e.get('error')}\n{e.get('traceback')}"
        for e in events
    )


@pytest.mark.process
def test_the_document_is_served_without_a_token(api: Api) -> None:
    for node in api.c.nodes:
        status, ctype, body = call(api, "GET", openapi.PATH, node=node)
        assert (status, ctype) == (200, "application/json")
        assert body == DOC


@pytest.mark.process
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", b"{not json"),
        ("/v1/jobs", b'{"model": "digits_logreg", "dataset": '),
        ("/v1/jobs", b"[1, 2, 3]"),
        ("/v1/jobs", b'"a string"'),
        ("/v1/jobs", b"\xff\xfe\x00 not utf-8"),
        ("/v1/jobs", b"{}"),
        (f"/v1/jobs/{JOB}/batch-size", b"{oops"),
        (f"/v1/jobs/{JOB}/batch-size", b'{"batch_size": 0}'),
        (f"/v1/jobs/{JOB}/batch-size", b'{"batch_size": 4097}'),
        (f"/v1/jobs/{JOB}/batch-size", b'{"batch_size": true}'),
        ("/v1/train", b"{oops"),
        ("/v1/train", b'{"models": "digits_logreg"}'),
    ],
)
def test_malformed_json_gets_400(api: Api, path: str, body: bytes) -> None:
    for node in ("n1", "n2", "n3", "n4"):  # the coordinator and nodes that forward to it
        status, ctype, out = call(
            api, "POST", path, body, {**api.auth(), "Content-Type": "application/json"}, node
        )
        assert (status, ctype) == (400, "application/json"), (node, status, out)
        assert isinstance(out["error"], str) and out["error"], out


@pytest.mark.process
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/nope", 404),
        ("GET", "/nope", 404),
        ("POST", "/v2/jobs", 404),
        ("GET", "/v1/jobs/a/b/c", 404),
        ("DELETE", "/v1/jobs", 405),
        ("PUT", "/v1/members", 405),
        ("GET", "/v1/files/", 404),
        ("GET", "/v1/jobs/nosuchjob", 404),
        ("GET", "/v1/jobs/nosuchjob/results", 404),
        ("GET", "/v1/files/no/such/file", 404),
        ("GET", "/dashboard/nosuchfile.js", 404),
    ],
)
def test_unknown_routes_and_objects_get_json_4xx(
    api: Api, method: str, path: str, status: int
) -> None:
    got, ctype, out = call(api, method, path, None, api.auth())
    assert (got, ctype) == (status, "application/json"), (got, out)
    assert isinstance(out["error"], str) and out["error"], out


@pytest.mark.process
@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (None, "missing bearer token"),
        ("Basic dXNlcjpwYXNz", "missing bearer token"),
        ("Bearer", "missing bearer token"),
        ("Bearer not-a-token", "malformed token"),
        ("Bearer idn1.99999999999999.abc", "malformed token"),
        ("Bearer idn1.1.deadbeef", "does not match this cluster's key"),
        ("wrong key", "does not match this cluster's key"),
        ("expired", "token expired"),
    ],
)
def test_bad_tokens_get_401_naming_the_cause(api: Api, header: str | None, fragment: str) -> None:
    if header == "wrong key":
        header = f"Bearer {tokens.mint(b'x' * 32)}"
    elif header == "expired":
        header = f"Bearer {tokens.mint(api.c.key, ttl=-5)}"
    headers = {} if header is None else {"Authorization": header}
    for method, path in [
        ("GET", "/v1/members"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/files/known/file%20one.bin"),
        ("GET", "/v1/dashboard/snapshot"),
        ("GET", "/metrics"),
        ("GET", "/v1/nope"),  # unknown routes too: no token, no information
    ]:
        status, ctype, out = call(api, method, path, b"{}" if method == "POST" else None, headers)
        assert (status, ctype) == (401, "application/json"), (method, path, out)
        assert fragment in out["error"], (method, path, out)


@pytest.mark.process
@pytest.mark.parametrize(
    "path",
    [
        "/v1/logs/grep?pattern=x&limit=%C2%B2",
        f"/v1/jobs/{JOB}/results?limit=%C2%B2",
        f"/v1/jobs/{JOB}/results?offset=%C2%B2",
        "/v1/files/known/file%20one.bin?version=%C2%B2",
        f"/v1/jobs/{JOB}/results?limit=x1",
        "/v1/logs/grep?pattern=x&limit=-1",
        "/v1/files/known/file%20one.bin?version=0",
    ],
)
def test_whole_number_parameters_refuse_other_text_with_400(api: Api, path: str) -> None:
    """Only ASCII digits make a whole number ('²' passes str.isdigit() but not int())."""
    since = time.time()
    status, _, out = call(api, "GET", path, None, api.auth())
    assert status == 400, (status, out, describe_errors(http_errors(api, since)))


def _server_errors_in_logs(api: Api, since: float) -> str:
    events = http_errors(api, since)
    return describe_errors(events) if events else ""


def real_catalog(case: Any) -> Any:
    """A generated job submission, for the model and dataset the cluster has."""
    if isinstance(case.body, dict):
        case.body = {**case.body, "model": MODEL, "dataset": DATASET}
    return case


def _short(text: str, limit: int = 1500) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more)"


@pytest.mark.process
@pytest.mark.timeout(300)
def test_fuzz_the_api_finds_no_server_error(api: Api) -> None:
    started = time.monotonic()
    since = time.time()
    schema = schemathesis.openapi.from_url(api.url(openapi.PATH))  # as served, no token
    session = requests.Session()
    auth = api.auth()
    bases = itertools.cycle([f"http://{api.address(n)}" for n in api.c.nodes])
    coordinator = f"http://{api.coordinator_address()}"
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    took: dict[str, float] = {}
    runs = 0

    def run(label: str, strategy: Any, negative: bool = False) -> None:
        nonlocal runs

        # Past most of the budget (a busy machine), the remaining runs take a few examples each.
        late = time.monotonic() - started > FUZZ_BUDGET_S * 0.6

        @settings(
            max_examples=LATE_EXAMPLES if late else EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def fuzz(case: Any) -> None:
            base = coordinator if case.operation.path in COORDINATOR_ONLY else next(bases)
            response = case.call(
                base_url=base, session=session, headers=auth, timeout=CASE_TIMEOUT_S
            )
            statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS, headers=auth)

        runs += 1
        t0 = time.monotonic()
        try:
            fuzz()
        except Unsatisfiable:
            # No invalid request exists (an operation without parameters or body).
            assert negative, label
        except (Exception, BaseExceptionGroup) as exc:  # one minimal case per run
            failures.append(f"--- {label}\n{_short(str(exc))}")
        took[label] = time.monotonic() - t0

    operations = [r.ok() for r in schema.get_all_operations()]
    fuzzed = [op for op in operations if (op.method.upper(), op.path) not in NOT_FUZZED]
    # schemathesis leaves out the document's own route (served and checked above).
    assert {(op.method.upper(), op.path) for op in fuzzed} == described() - NOT_FUZZED - {
        ("GET", openapi.PATH)
    }
    # Deletes last: they may remove the job's or the file's data other operations read.
    fuzzed.sort(key=lambda op: op.method.upper() == "DELETE")
    for op in fuzzed:
        run(f"{op.label} (positive)", op.as_strategy(GenerationMode.POSITIVE))
        run(f"{op.label} (negative)", op.as_strategy(GenerationMode.NEGATIVE), negative=True)
        # The same operation on a job and a file that exist, to reach the success paths.
        fixed = {}
        if "{job}" in op.path:
            fixed["job"] = JOB
        if op.path == "/v1/files/{name}":
            fixed["name"] = KNOWN_FILE
        if fixed:
            run(f"{op.label} on {fixed}", op.as_strategy(path_parameters=fixed))
        if op.path == "/v1/jobs" and op.method.upper() == "POST":
            run(f"{op.label} of {MODEL} on {DATASET}", op.as_strategy().map(real_catalog))
    elapsed = time.monotonic() - started
    logged = _server_errors_in_logs(api, since)
    report = "\n".join(failures)
    assert not failures and not logged, (
        f"{len(failures)} of {runs} fuzz runs failed:\n{report}\n\nhttp_error events:\n{logged}"
    )
    total = sum(statuses.values())
    print(f"fuzzed {len(fuzzed)} operations: {runs} runs, {total} requests in {elapsed:.1f} s")
    print("statuses:", dict(sorted(statuses.items())))
    slowest = sorted(took.items(), key=lambda kv: -kv[1])[:5]
    print("slowest:", ", ".join(f"{label} {s:.1f} s" for label, s in slowest))
    assert statuses[200] and statuses[201] and statuses[400] and statuses[404]


@pytest.mark.process
def test_leave_answers_as_described(api: Api) -> None:
    """Last in this module: POST /v1/leave stops the node it reaches (n4)."""
    schema = schemathesis.openapi.from_dict(DOC)
    leave = schema["/v1/leave"]["POST"]
    case = leave.Case()
    response = case.call(base_url=f"http://{api.address('n4')}", headers=api.auth(), timeout=10)
    case.validate_response(response, checks=CHECKS)
    assert (response.status_code, response.json()) == (202, {"leaving": "n4"})
    api.c.wait_status("n4", "left", timeout=20.0)
