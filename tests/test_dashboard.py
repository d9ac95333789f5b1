"""The web dashboard (`GET /` on every node, `idunno dashboard`).

Three layers:
- pure parts (log tail, event lines, job selection, CLI helpers) and the routes on an in-process
  aiohttp app with a fake node (content types, 401s, the stream's events, its end when the token
  expires or the node stops, the size of a 50-node, 10-job snapshot);
- the same routes on a real 4-node cluster holding the digits model and dataset;
- the page in a real headless browser (Debian's chromium driven through chromedriver by
  Selenium): it loads, shows the members with the coordinator and standby marked, its rate chart
  and progress move while a job runs, a wrong or expired token gets the 401 message, and it
  renders 50 nodes and 10 jobs quickly. `make test` installs the browser (`make browser`); where
  it cannot, these tests fail with a message saying what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from idunno.cli import dashboard_cmds
from idunno.client import Client
from idunno.dashboard import events as ev
from idunno.dashboard import hub as hub_mod
from idunno.dashboard import routes
from idunno.localcluster import KEY_FILE
from idunno.membership.messages import Status
from idunno.node.api import build_app
from idunno.node.logs import LOG_FILE
from idunno.testing.jobs import add_digits_catalog, add_digits_dataset, settled_reign
from idunno.testing.procs import ProcCluster, WaitTimeoutError, wait_for
from idunno.transport import keys, tokens
from tests.conftest import CliRunner, assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "src" / "idunno" / "dashboard" / "static"
KEY = bytes(range(32))
SETTLE = 45.0
LONG = "digits_x16"  # the digits 16 times over (28,752 items): a job that runs long enough
BROWSER_MISSING = (
    "the browser tests need Debian's chromium and chromium-driver: run `make browser` as root "
    "(it runs `apt-get install -y --no-install-recommends chromium chromium-driver`), or "
    "install them yourself, or point CHROME_BIN and CHROMEDRIVER at a Chromium and its driver"
)


# --- pure parts ----------------------------------------------------------------------------------


def _record(event: str, ts: float, node: str = "n1", **fields: Any) -> str:
    rec = {"ts": ts, "node": node, "level": "warning", "event": event, **fields}
    return json.dumps(rec, separators=(",", ":")) + "\n"


def test_log_tail_keeps_failures_and_folds_requeues(tmp_path: Path) -> None:
    log = tmp_path / LOG_FILE
    lines = [
        _record("node_started", 1.0),
        _record("member_changed", 2.0, member="n3", old="alive", new="suspect"),
        _record("member_changed", 2.5, member="n3", old="suspect", new="alive"),  # refuted
        _record("member_changed", 3.0, member="n4", old="suspect", new="failed"),
        _record("batch_requeued", 4.0, job="j1", worker="n4", batch=1, detail="x" * 500),
        _record("batch_requeued", 4.5, job="j1", worker="n4", batch=2, detail="boom"),
        _record("batch_requeued", 5.0, job="j2", worker="n4", batch=3),
        _record("worker_failed", 5.5, worker="n4", requeued=[4, 5, 6]),
    ]
    log.write_text("".join(lines))
    tail = ev.LogTail(log)
    tail.poll()
    got = tail.recent()
    assert [e["event"] for e in got] == [
        "member_changed",
        "member_changed",
        "batch_requeued",
        "batch_requeued",
        "worker_failed",
    ]
    assert got[2]["count"] == 2 and got[2]["ts"] == 4.5 and len(got[2]["detail"]) <= 160
    assert got[4]["requeued"] == 3
    assert ev.describe(got[1]) == "n4 is failed (was suspect), seen by n1"
    assert ev.describe(got[2], {"j1": "digits-job"}).startswith(
        "2 batches of job digits-job requeued from n4"
    )
    assert ev.describe(got[4]) == "worker n4 failed: 3 batches requeued by n1"
    # A line being written is left for the next poll; a later one is read once.
    with open(log, "a") as f:
        f.write(_record("coordinator_gone", 6.0, coordinator="n1", epoch=2)[:20])
    tail.poll()
    assert len(tail.recent()) == 5
    with open(log, "a") as f:
        f.write(_record("coordinator_gone", 6.0, coordinator="n1", epoch=2)[20:])
    tail.poll()
    tail.poll()
    assert [e["event"] for e in tail.recent()][-1] == "coordinator_gone"
    assert len(tail.recent()) == 6


def test_log_tail_starts_near_the_end_and_survives_a_missing_file(tmp_path: Path) -> None:
    log = tmp_path / LOG_FILE
    tail = ev.LogTail(log)
    tail.poll()  # no file yet
    assert tail.recent() == []
    filler = _record("file_put", 0.5, name="x" * 200)
    with open(log, "w") as f:
        f.write(_record("member_changed", 1.0, member="old", old="alive", new="failed"))
        for _ in range(ev.BACKLOG_BYTES // len(filler) + 10):
            f.write(filler)
        f.write(_record("member_changed", 2.0, member="new", old="alive", new="failed"))
    tail = ev.LogTail(log)
    tail.poll()
    assert [e["member"] for e in tail.recent()] == ["new"]


def test_merge_takes_the_coordinators_own_events_once_newest_first() -> None:
    mine = [ev.entry({"ts": 1.0, "node": "n2", "event": "member_changed", "new": "failed"})]
    theirs = [
        ev.entry({"ts": 0.5, "node": "n1", "event": "member_changed", "new": "failed"}),
        ev.entry({"ts": 2.0, "node": "n1", "event": "worker_failed", "worker": "n3"}),
        ev.entry({"ts": 3.0, "node": "n1", "event": "coordinator_elected", "epoch": 2}),
    ]
    merged = ev.merge(mine, theirs + theirs)
    assert [(e["node"], e["event"]) for e in merged] == [
        ("n1", "coordinator_elected"),
        ("n1", "worker_failed"),
        ("n2", "member_changed"),
    ]
    assert len(ev.merge(mine * 30, [], limit=20)) == 1  # duplicates of one record


def test_pick_jobs_shows_every_running_job_then_the_newest_finished() -> None:
    jobs = [{"id": f"r{i}", "status": "running", "submitted_at": i} for i in range(3)]
    jobs += [{"id": f"d{i}", "status": "done", "finished_at": i} for i in range(30)]
    picked, hidden = hub_mod.pick_jobs(jobs, limit=5)
    assert [j["id"] for j in picked] == ["r0", "r1", "r2", "d29", "d28"]
    assert hidden == 28


def test_sse_frames_are_one_json_line() -> None:
    frame = hub_mod.sse("snapshot", {"a": "x\ny"})
    assert frame == b'event: snapshot\ndata: {"a":"x\\ny"}\n\n'


def test_ttl_and_url() -> None:
    assert dashboard_cmds.parse_ttl("12h") == 43200
    assert dashboard_cmds.parse_ttl("90") == 90
    assert dashboard_cmds.parse_ttl("7d") == 7 * 86400
    for bad in ("", "12x", "-1h", "10s", "31d"):
        with pytest.raises(dashboard_cmds.DashboardUsage):
            dashboard_cmds.parse_ttl(bad)
    assert dashboard_cmds.dashboard_url("127.0.0.1:7100", "T") == "http://127.0.0.1:7100/#token=T"
    assert dashboard_cmds.dashboard_url("::1:7100", "T") == "http://[::1]:7100/#token=T"


def test_static_files_need_nothing_from_outside_and_hold_no_secret() -> None:
    texts = {name: (STATIC / name).read_text() for name in routes.CONTENT_TYPES}
    for name, text in texts.items():
        assert "idn1." not in text, name
        assert "access_token=" not in text or name == "app.js", name
        if name != "icon.svg":  # its xmlns names a namespace, it loads nothing
            assert "http://" not in text and "https://" not in text, name
        assert "url(" not in text and "@import" not in text, name
    # Every asset the page names is one the node serves itself.
    refs = re.findall(r'(?:src|href)="([^"]*)"', texts["index.html"])
    assert sorted(set(refs)) == ["/dashboard/app.js", "/dashboard/icon.svg", "/dashboard/style.css"]
    # The script talks to this node only, by path.
    fetched = re.findall(r'(?:fetch|EventSource)\(\s*"([^"]*)"', texts["app.js"])
    assert fetched and all(u.startswith("/v1/dashboard/") for u in fetched), fetched


def test_static_files_are_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["idunno"]
    for name in routes.CONTENT_TYPES:
        rel = f"dashboard/static/{name}"
        assert any(fnmatch(rel, p) for p in patterns), f"{rel} is not in package-data {patterns}"


# --- the routes on an in-process app with a fake node ---------------------------------------------


@dataclass
class FakeMember:
    name: str
    addr: str
    status: Status = Status.ALIVE


@dataclass
class FakeCoordinator:
    jobs: list[dict[str, Any]]
    me: str = "node-00"
    epoch: int = 3
    deposed: bool = False

    def jobs_view(self) -> list[dict[str, Any]]:
        return self.jobs

    def assignment(self) -> dict[str, Any]:
        held: dict[str, list[str]] = {}
        for j in self.jobs:
            for w in j["workers"]:
                held.setdefault(w, []).append(j["id"])
        shares = [{"id": j["id"], "share": 1 / len(self.jobs)} for j in self.jobs]
        return {"workers": held, "jobs": shares}


@dataclass
class FakePlane:
    coordinator: FakeCoordinator | None
    reign: Any
    live_names: set[str]
    rpc: Any = None

    def role_of(self, name: str) -> str:
        if name == self.reign.coordinator:
            return "coordinator"
        return "standby" if name == self.reign.standby else "worker"

    def coordinator_addr(self) -> str | None:
        return None


@dataclass
class FakeStore:
    members: list[str]

    async def inventory_everywhere(self) -> dict[str, dict[str, Any]]:
        files = {
            f"datasets/d/shard-{i}": {"versions": [{"version": 1, "size": 1000}]} for i in range(3)
        }
        return {m: files for m in self.members}


@dataclass
class FakeNode:
    """What the dashboard reads of a Node: members, control plane, store, log, key."""

    data_dir: Path
    n: int = 50
    jobs: int = 10
    name: str = "node-00"
    logged: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [f"node-{i:02d}" for i in range(self.n)]
        members = {
            m: FakeMember(m, f"10.0.{i // 250}.{i % 250 + 1}:7946") for i, m in enumerate(names)
        }
        members[names[-1]].status = Status.FAILED
        members[names[-2]].status = Status.SUSPECT
        self.membership = SimpleNamespace(core=SimpleNamespace(members=members))
        jobs = [
            {
                "id": f"j{k:08x}",
                "name": f"job-{k}",
                "model": "resnet18",
                "dataset": "photos",
                "batch_size": 8,
                "weight": 1.0,
                "status": "running",
                "total": 10_000,
                "done": 100 * k,
                "errors": 0,
                "submitted_at": 1000.0 + k,
                "finished_at": None,
                "rate": 12.345 * k,
                "workers": names[k * 4 : k * 4 + 5],
            }
            for k in range(self.jobs)
        ]
        reign = SimpleNamespace(epoch=3, coordinator=names[0], standby=names[1])
        self.control = FakePlane(FakeCoordinator(jobs), reign, set(names[:-1]))
        self.store = FakeStore(names[:-1])
        self.opts = SimpleNamespace(key=KEY)
        log = self.data_dir / LOG_FILE
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            for i in range(40):
                member = names[i % self.n]
                f.write(_record("member_changed", 100.0 + i, member=member, new="failed"))
                f.write(_record("batch_requeued", 100.5 + i, job=jobs[0]["id"], worker=member))

    def live_view(self) -> dict[str, str]:
        members = self.membership.core.members
        return {m: members[m].addr for m in self.store.members}

    def log(self, event: str, **fields: Any) -> None:
        self.logged.append((event, fields))


def _app(node: FakeNode) -> web.Application:
    app = build_app(node, KEY)  # type: ignore[arg-type]  # the auth middleware under test too
    routes.add_routes(app, node)  # type: ignore[arg-type]
    return app


def _bearer(ttl: float = 60.0) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.mint(KEY, ttl=ttl)}"}


async def _events(
    resp: aiohttp.ClientResponse, wanted: int, timeout: float
) -> list[tuple[str, Any]]:
    """Read server-sent events until `wanted` of them, the end of the stream, or `timeout`."""
    out: list[tuple[str, Any]] = []
    name = ""

    async def read() -> None:
        nonlocal name
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
                if len(out) >= wanted:
                    return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), timeout)
    return out


def test_snapshot_of_50_nodes_and_10_jobs_is_small_and_complete(tmp_path: Path) -> None:
    async def run() -> dict[str, Any]:
        async with TestClient(TestServer(_app(FakeNode(tmp_path)))) as client:
            r = await client.get("/v1/dashboard/snapshot", headers=_bearer())
            assert r.status == 200, await r.text()
            raw = await r.read()
            assert len(raw) < 40_000, f"a 50-node, 10-job snapshot takes {len(raw)} bytes"
            body: dict[str, Any] = json.loads(raw)
            return body

    snap = asyncio.run(run())
    assert len(snap["members"]) == 50 and len(snap["jobs"]) == 10
    roles = {m["id"]: m["role"] for m in snap["members"]}
    assert roles["node-00"] == "coordinator" and roles["node-01"] == "standby"
    assert roles["node-49"] is None  # failed: no role
    assert snap["counts"] == {"alive": 48, "suspect": 1, "failed": 1, "left": 0}
    assert snap["control"] == {"epoch": 3, "coordinator": "node-00", "standby": "node-01"}
    job = snap["jobs"][3]
    assert set(job) >= {"id", "name", "status", "batch_size", "total", "done", "rate", "workers"}
    assert job["rate"] == round(3 * 12.345, 2) and job["share"] == 0.1 and len(job["workers"]) == 5
    assert snap["members"][12]["jobs"] == ["j00000002", "j00000003"]
    assert len(snap["store"]["nodes"]) == 49 and snap["store"]["nodes"][0]["bytes"] == 3000
    assert len(snap["events"]) == hub_mod.EVENTS_SHOWN
    assert all(isinstance(e["text"], str) and e["text"] for e in snap["events"])
    assert snap["events"][0]["ts"] >= snap["events"][-1]["ts"]


def test_routes_public_files_and_401s(tmp_path: Path) -> None:
    async def run() -> None:
        async with TestClient(TestServer(_app(FakeNode(tmp_path, n=3, jobs=1)))) as client:
            for path, ctype in [
                ("/", "text/html"),
                ("/dashboard/", "text/html"),
                ("/dashboard/app.js", "text/javascript"),
                ("/dashboard/style.css", "text/css"),
                ("/dashboard/icon.svg", "image/svg+xml"),
            ]:
                r = await client.get(path)
                assert r.status == 200, path
                assert r.content_type == ctype, path
                assert "default-src 'none'" in r.headers["Content-Security-Policy"]
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert KEY.hex() not in await r.text()
                again = await client.get(path, headers={"If-None-Match": r.headers["ETag"]})
                assert again.status == 304
            r = await client.get("/dashboard/secret.txt")
            assert r.status == 404 and "the dashboard is at /" in (await r.json())["error"]
            for path in ("/v1/dashboard/stream", "/v1/dashboard/snapshot"):
                r = await client.get(path)
                assert r.status == 401 and "missing bearer token" in (await r.json())["error"]
            other = tokens.mint(bytes(32), ttl=60)
            expired = tokens.mint(KEY, ttl=-5)
            for token, why in [
                (other, "does not match this cluster's key"),
                (expired, "token expired"),
                ("idn1.x.y", "malformed token"),
            ]:
                r = await client.get(f"/v1/dashboard/stream?access_token={token}")
                assert r.status == 401 and why in (await r.json())["error"]
                r = await client.get(
                    "/v1/dashboard/snapshot", headers={"Authorization": f"Bearer {token}"}
                )
                assert r.status == 401 and why in (await r.json())["error"]
            # ?access_token= is for the dashboard's stream only, not the rest of the API.
            r = await client.get(f"/v1/members?access_token={tokens.mint(KEY, 60)}")
            assert r.status == 401

    asyncio.run(run())


def test_stream_sends_history_then_snapshots_and_ends_when_the_token_expires(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        node = FakeNode(tmp_path, n=3, jobs=2)
        async with TestClient(TestServer(_app(node))) as client:
            t0 = time.monotonic()
            token = tokens.mint(KEY, ttl=2.5)
            async with client.get(f"/v1/dashboard/stream?access_token={token}") as r:
                assert r.status == 200 and r.content_type == "text/event-stream"
                got = await _events(r, 10, timeout=8.0)
            took = time.monotonic() - t0
        names = [n for n, _ in got]
        assert names[0] == "history" and names[-1] == "expired", names
        assert 1 <= names.count("snapshot") <= 4, names
        assert "idunno dashboard" in got[-1][1]["error"]
        assert took < 6.0
        snaps = [d for n, d in got if n == "snapshot"]
        assert [len(s["jobs"]) for s in snaps] == [2] * len(snaps)
        assert not node.logged, node.logged  # no dashboard_error

    asyncio.run(run())


def test_stream_ends_at_once_when_the_node_stops_and_history_follows_jobs(tmp_path: Path) -> None:
    async def run() -> None:
        node = FakeNode(tmp_path, n=3, jobs=2)
        app = _app(node)
        server = TestServer(app)
        async with TestClient(server) as client:
            async with client.get("/v1/dashboard/stream", headers=_bearer()) as r:
                first = await _events(r, 3, timeout=5.0)
                assert [n for n, _ in first] == ["history", "snapshot", "snapshot"]
                hub = app[routes.HUB_KEY]
                assert hub.watchers == 1
                history = hub.history()["series"]
                assert set(history) == {"j00000000", "j00000001"}
                assert [r for _, r in history["j00000001"]] == [12.35, 12.35]
                t0 = time.monotonic()
                closing = asyncio.create_task(server.close())
                rest = await _events(r, 5, timeout=5.0)
                await closing
                assert time.monotonic() - t0 < 3.0
            assert rest and rest[-1][0] == "closing", rest
            assert hub.closed and hub.watchers == 0

    asyncio.run(run())


def test_a_page_that_goes_away_stops_its_stream_and_the_hub(tmp_path: Path) -> None:
    async def run() -> None:
        app = _app(FakeNode(tmp_path, n=3, jobs=1))
        hub = app[routes.HUB_KEY]
        async with TestClient(TestServer(app)) as client:
            for _ in range(2):  # the hub starts again for the next page
                r = await client.get("/v1/dashboard/stream", headers=_bearer())
                assert [n for n, _ in await _events(r, 2, timeout=5.0)] == ["history", "snapshot"]
                assert hub.watchers == 1
                r.close()  # the browser tab closes
                deadline = time.monotonic() + 5.0
                while hub.watchers and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert hub.watchers == 0
                await asyncio.sleep(hub_mod.INTERVAL_S * 1.5)
                assert hub._task is not None and hub._task.done()  # nobody watches: no work

    asyncio.run(run())


# --- a real cluster ------------------------------------------------------------------------------


@dataclass
class Env:
    c: ProcCluster
    coordinator: str
    standby: str
    viewer: str  # neither: its dashboard asks the coordinator for the jobs

    def roles(self) -> tuple[str, str]:
        """The coordinator and standby every node agrees on now (a busy machine may have
        failed over since the fixture looked)."""
        r = wait_for(lambda: _reign(self.c), SETTLE, "one reign with a standby on every node")
        self.coordinator, self.standby = r.coordinator, str(r.standby)
        return self.coordinator, self.standby

    def address(self, node: str | None = None) -> str:
        return self.c.nodes[node or self.viewer].address

    def client(self, node: str | None = None, timeout: float = 10.0) -> Client:
        return Client(self.address(node), self.c.key, timeout=timeout)

    def link(self, node: str | None = None, token: str | None = None) -> str:
        return f"http://{self.address(node)}/#token={token or tokens.mint(self.c.key, ttl=600)}"


def _reign(c: ProcCluster) -> Any:
    r = settled_reign({n: c.client(n) for n in c.nodes})
    return r if r is not None and r.standby is not None else None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with ProcCluster(4, tmp_path_factory.mktemp("dashboard") / "cluster") as c:
        admin = c.client("n1", timeout=60.0)
        add_digits_catalog(admin, ("digits_mlp",))
        add_digits_dataset(admin, LONG, 16)

        r = wait_for(lambda: _reign(c), SETTLE, "one reign with a standby on every node")
        viewer = sorted(set(c.nodes) - {r.coordinator, str(r.standby)})[0]
        yield Env(c, r.coordinator, str(r.standby), viewer)


def _get(
    address: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.mark.process
def test_real_node_serves_the_page_without_a_token_and_nothing_secret(env: Env) -> None:
    key_hex = env.c.key.hex()
    for path, ctype in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
        ("/dashboard/icon.svg", "image/svg+xml"),
    ]:
        status, headers, body = _get(env.address(), path)
        assert status == 200, (path, body[:200])
        assert headers["content-type"].startswith(ctype), (path, headers)
        text = body.decode()
        assert key_hex not in text and "idn1." not in text, path
        assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', ""), path


@pytest.mark.process
def test_real_node_stream_401_without_or_with_a_bad_token(env: Env) -> None:
    status, _, body = _get(env.address(), "/v1/dashboard/stream")
    assert status == 401 and "missing bearer token" in json.loads(body)["error"]
    wrong = tokens.mint(bytes(32), ttl=600)
    status, _, body = _get(env.address(), f"/v1/dashboard/stream?access_token={wrong}")
    assert status == 401 and "does not match this cluster's key" in json.loads(body)["error"]
    expired = tokens.mint(env.c.key, ttl=-1)
    status, _, body = _get(env.address(), f"/v1/dashboard/stream?access_token={expired}")
    assert status == 401 and "idunno dashboard" in json.loads(body)["error"]


@pytest.mark.process
def test_real_node_snapshot_and_stream(env: Env) -> None:
    env.roles()
    token = tokens.mint(env.c.key, ttl=600)
    status, _, body = _get(
        env.address(), "/v1/dashboard/snapshot", {"Authorization": f"Bearer {token}"}
    )
    assert status == 200, body[:300]
    snap = json.loads(body)
    assert snap["node"] == env.viewer
    assert {m["id"] for m in snap["members"]} == set(env.c.nodes)
    roles = {m["id"]: m["role"] for m in snap["members"]}
    assert roles[env.coordinator] == "coordinator" and roles[env.standby] == "standby"
    assert snap["control"]["coordinator"] == env.coordinator
    assert snap["jobs_note"] is None and isinstance(snap["jobs"], list)
    stored = {n["id"]: n for n in snap["store"]["nodes"]}
    assert set(stored) == set(env.c.nodes)
    assert sum(n["bytes"] for n in stored.values()) > 100_000  # the model and dataset copies
    assert any(e["event"] == "coordinator_elected" for e in snap["events"]), snap["events"]

    host, port = env.address().rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", f"/v1/dashboard/stream?access_token={token}")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
        seen: list[tuple[str, Any]] = []
        name = ""
        while len([n for n, _ in seen if n == "snapshot"]) < 2:
            line = resp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                seen.append((name, json.loads(line[6:])))
    finally:
        conn.close()
    assert seen[0][0] == "history"
    first, second = (d for n, d in seen if n == "snapshot")
    assert 0.5 <= second["t"] - first["t"] <= 3.0


@pytest.mark.process
def test_cli_prints_a_working_link(env: Env, idunno: CliRunner) -> None:
    at = ["--at", env.address(), "--key-file", str(env.c.directory / KEY_FILE)]
    r = idunno("dashboard", *at, "--ttl", "30m")
    assert r.returncode == 0, r.stderr
    url = next(w for w in r.stdout.split() if w.startswith("http://"))
    assert url.startswith(f"http://{env.address()}/#token=idn1.")
    token = url.split("#token=", 1)[1]
    assert tokens.check(env.c.key, token) is None
    assert abs(int(token.split(".")[1]) - (time.time() + 1800)) < 60
    assert f"node {env.viewer}" in r.stdout and "expires at" in r.stdout
    assert env.c.key.hex() not in r.stdout + r.stderr

    r = idunno("dashboard", *at, "--json")
    out = json.loads(r.stdout)
    assert out["node"] == env.viewer and out["ttl_s"] == 12 * 3600
    assert out["url"].startswith(f"http://{env.address()}/#token=")

    assert_one_line_error(idunno("dashboard", *at, "--ttl", "forever"), "--ttl", "12h")
    other = env.c.directory / "other.key"
    keys.write_key_file(other, bytes(32))
    bad = idunno("dashboard", "--at", env.address(), "--key-file", str(other))
    assert_one_line_error(bad, "refused our credentials", "does not match")


# --- the page in a real browser ------------------------------------------------------------------


def _browser_paths() -> tuple[str, str]:
    chrome = (
        os.environ.get("CHROME_BIN")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.fail(BROWSER_MISSING, pytrace=False)
    return chrome, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chrome, driver_path = _browser_paths()
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(
            "selenium is not installed: run `make setup` (it installs the dev dependencies)",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
    except WebDriverException as exc:
        pytest.fail(f"cannot start {chrome} through {driver_path}: {exc.msg}. {BROWSER_MISSING}")
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def _js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


MEMBERS_JS = """
return [...document.querySelectorAll('#members tbody tr')].map(
  tr => [tr.dataset.member, tr.dataset.status, tr.dataset.role]);
"""
JOB_JS = """
const card = document.querySelector('article.job[data-job="' + arguments[0] + '"]');
if (!card) return null;
const c = card.querySelector('canvas.chart');
return {done: +card.dataset.done, status: card.dataset.status,
        points: +(c.dataset.points || 0), last: +(c.dataset.last || 0),
        workers: [...card.querySelectorAll('.workers .chip')].map(e => e.textContent)};
"""


def _state(driver: Any) -> str:
    return str(_js(driver, "return document.body.dataset.state"))


@pytest.mark.process
def test_browser_page_shows_members_and_a_moving_chart(env: Env, browser: Any) -> None:
    env.roles()
    browser.get(env.link())
    wait_for(lambda: _state(browser) == "live", 15, "the page to go live")
    assert "#token" not in browser.current_url  # the token left the address bar
    assert "idn1." not in browser.page_source
    rows = wait_for(
        lambda: (r := _js(browser, MEMBERS_JS)) and len(r) == len(env.c.nodes) and r,
        10,
        "every member in the table",
    )
    table = {m: (status, role) for m, status, role in rows}
    assert set(table) == set(env.c.nodes)
    assert table[env.coordinator] == ("alive", "coordinator")
    assert table[env.standby] == ("alive", "standby")
    header = browser.find_element("id", "control").text
    assert f"coordinator {env.coordinator}" in header and f"standby {env.standby}" in header

    client = env.client()
    job = client.submit_job("digits_mlp", LONG, 2)  # runs 30 s or more: cancelled when seen
    try:
        samples: list[dict[str, Any]] = []

        def moved() -> bool:
            j = browser.execute_script(JOB_JS, job["id"])
            if j is not None:
                samples.append(j)
            # From the first result on: the job may wait for its model to load first.
            going = [s for s in samples if s["done"] > 0]
            return (
                len(going) >= 2
                and going[-1]["points"] >= going[0]["points"] + 3
                and going[-1]["done"] > going[0]["done"]
                and len({s["last"] for s in going if s["last"] > 0}) >= 2
            )

        try:
            wait_for(moved, 30, "the job's chart and progress to move", every=0.5)
        except WaitTimeoutError:
            pytest.fail(f"the chart did not move: {samples[:3]} ... {samples[-3:]}")
        assert samples[-1]["status"] == "running"
        assert samples[-1]["workers"], samples[-1]
    finally:
        client.cancel_job(job["id"])
    wait_for(
        lambda: (browser.execute_script(JOB_JS, job["id"]) or {}).get("status") == "cancelled",
        10,
        "the card to show the job cancelled",
    )


@pytest.mark.process
def test_browser_wrong_or_expired_token_gets_the_401_message(env: Env, browser: Any) -> None:
    wrong = tokens.mint(bytes(32), ttl=600)
    expired = tokens.mint(env.c.key, ttl=-60)
    for token, why in [(wrong, "does not match"), (expired, "token expired")]:
        browser.get("about:blank")  # a fresh page each time, not a same-page fragment change
        browser.get(env.link(token=token))
        wait_for(lambda: _state(browser) == "auth-error", 10, "the 401 message")
        message = browser.find_element("id", "auth-error").text
        assert "Token expired or wrong" in message and "idunno dashboard" in message, message
        assert why in message, message
        assert browser.find_element("id", "token-input").is_displayed()
        assert not browser.find_element("id", "main").is_displayed()
    # The form signs in with a good token (pasted as the whole link).
    browser.find_element("id", "token-input").send_keys(env.link())
    browser.find_element("css selector", "#token-form button").click()
    wait_for(lambda: _state(browser) == "live", 15, "the page to go live after the form")


@pytest.mark.process
def test_browser_renders_50_nodes_and_10_jobs_quickly(
    env: Env, browser: Any, tmp_path: Path
) -> None:
    async def snapshot() -> dict[str, Any]:
        async with TestClient(TestServer(_app(FakeNode(tmp_path)))) as client:
            r = await client.get("/v1/dashboard/snapshot", headers=_bearer())
            body: dict[str, Any] = await r.json()
            return body

    snap = asyncio.run(snapshot())
    browser.get(env.link())
    wait_for(lambda: _state(browser) == "live", 15, "the page to go live")
    took = browser.execute_script(
        """
        const d = window.idunnoDashboard;
        d.state.es.close();  // only the snapshots given here
        const snap = arguments[0];
        const t0 = performance.now();
        for (let i = 0; i < 60; i++) {
          snap.t += 1;
          snap.jobs.forEach((j, k) => { j.rate = (i * 7 + k * 13) % 50; j.done += 10; });
          d.render(snap);
        }
        return (performance.now() - t0) / 60;
        """,
        snap,
    )
    rows = _js(browser, MEMBERS_JS)
    assert len(rows) == 50
    assert [status for _, status, _ in rows[:3]] == ["failed", "suspect", "alive"]  # on top
    cards = _js(browser, "return document.querySelectorAll('article.job').length")
    assert cards == 10
    points = _js(
        browser, "return [...document.querySelectorAll('canvas.chart')].map(c => +c.dataset.points)"
    )
    assert min(points) >= 60
    assert took < 50, f"one render of 50 nodes and 10 jobs takes {took:.1f} ms"
    events = _js(browser, "return document.querySelectorAll('#events li').length")
    assert events == hub_mod.EVENTS_SHOWN


def test_no_chromium_left_running() -> None:
    """Every browser a test started was quit (runs last in this file)."""
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(os.getpid())],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert "chromedriver" not in out, out
